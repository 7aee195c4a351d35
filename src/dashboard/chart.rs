//! A small inline SVG bar chart of per-minute counts: one bar per minute,
//! the refused part drawn over the rest. Colours come from the page's
//! stylesheet (classes), since the CSP allows no inline `style` attribute.

use std::fmt::Write as _;

const BAR: usize = 4;
const HEIGHT: u64 = 40;

/// The SVG for `requests` and, drawn over them, `refused` (same length,
/// oldest minute first). Bars scale to the busiest minute.
pub fn bars(requests: &[u64], refused: &[u64]) -> String {
    let width = requests.len() * BAR;
    let peak = requests.iter().copied().max().unwrap_or(0).max(1);
    let total: u64 = requests.iter().sum();
    let mut svg = format!(
        "<svg class=\"chart\" width=\"{width}\" height=\"{HEIGHT}\" viewBox=\"0 0 {width} {HEIGHT}\" \
         role=\"img\" aria-label=\"{total} requests in the last hour, at most {peak} a minute\">"
    );
    let _ = write!(
        svg,
        "<line class=\"axis\" x1=\"0\" y1=\"{y}\" x2=\"{width}\" y2=\"{y}\"/>",
        y = HEIGHT - 1
    );
    for (i, &n) in requests.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let x = i * BAR;
        let minutes_ago = requests.len() - 1 - i;
        let bad = refused.get(i).copied().unwrap_or(0).min(n);
        let _ = write!(
            svg,
            "<g><title>{}: {n} requests, {bad} refused</title>{}{}</g>",
            when(minutes_ago),
            rect(x, n, peak, "req"),
            if bad > 0 {
                rect(x, bad, peak, "bad")
            } else {
                String::new()
            },
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A bar of `n` out of `peak`, at least a pixel high.
fn rect(x: usize, n: u64, peak: u64, class: &str) -> String {
    let h = (n * HEIGHT).div_ceil(peak).clamp(1, HEIGHT);
    format!(
        "<rect class=\"{class}\" x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{h}\"/>",
        HEIGHT - h,
        BAR - 1
    )
}

fn when(minutes_ago: usize) -> String {
    match minutes_ago {
        0 => "this minute".to_owned(),
        1 => "1 minute ago".to_owned(),
        n => format!("{n} minutes ago"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bar_per_busy_minute_scaled_to_the_peak() {
        let mut requests = vec![0; 60];
        let mut refused = vec![0; 60];
        requests[59] = 10;
        refused[59] = 5;
        requests[0] = 1;
        let svg = bars(&requests, &refused);
        assert!(svg.starts_with("<svg class=\"chart\" width=\"240\""));
        assert!(svg.ends_with("</svg>"));
        assert_eq!(svg.matches("class=\"req\"").count(), 2);
        assert_eq!(svg.matches("class=\"bad\"").count(), 1);
        assert!(svg.contains("<rect class=\"req\" x=\"236\" y=\"0\" width=\"3\" height=\"40\"/>"));
        assert!(svg.contains("<rect class=\"bad\" x=\"236\" y=\"20\" width=\"3\" height=\"20\"/>"));
        // A small count is still visible.
        assert!(svg.contains("<rect class=\"req\" x=\"0\" y=\"36\" width=\"3\" height=\"4\"/>"));
        assert!(svg.contains("<title>this minute: 10 requests, 5 refused</title>"));
        assert!(svg.contains("<title>59 minutes ago: 1 requests, 0 refused</title>"));
        assert!(svg.contains("aria-label=\"11 requests in the last hour, at most 10 a minute\""));
        assert!(
            !svg.contains("style="),
            "the CSP forbids inline style attributes"
        );
    }

    #[test]
    fn an_idle_hour_is_an_empty_chart() {
        let svg = bars(&[0; 60], &[0; 60]);
        assert!(!svg.contains("<rect"));
        assert!(svg.contains("aria-label=\"0 requests in the last hour"));
    }
}
