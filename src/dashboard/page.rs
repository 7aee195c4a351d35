//! The dashboard as one HTML page: server-rendered, readable without
//! JavaScript (there is none), no external asset, every dynamic text
//! HTML-escaped, and a Content-Security-Policy that allows nothing but the
//! page's own stylesheet, by hash.

use std::fmt::Write as _;

use super::chart;
use super::{CertificateStatus, ProjectStatus, Status};
use crate::observe::usage::UsageReport;

/// The page's only style; its hash is in [`CONTENT_SECURITY_POLICY`] (a
/// unit test keeps the two in step).
const STYLE: &str = "\
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d2330;background:#fff}\
h1{font-size:1.5em;margin:0}h2{font-size:1.15em;margin:1.6em 0 .5em}\
.meta{color:#5a6478;margin:.3em 0 0}\
table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:.35em .6em;border-bottom:1px solid #e3e6ee;vertical-align:top}\
th{font-weight:600;color:#5a6478;font-size:.85em}\
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}\
ol,ul{margin:0;padding-left:1.2em}\
.origin{font-family:ui-monospace,monospace}\
.up{color:#17803d;font-weight:600}.down{color:#c0262d;font-weight:600}\
.warn{color:#b45309;font-weight:600}.none{color:#8a93a6}\
svg.chart .req{fill:#7c9cd9}svg.chart .bad{fill:#d9534f}svg.chart .axis{stroke:#c5cad6}\
";

/// Sent with the page. `'none'` for everything, the stylesheet above by
/// its SHA-256 (no `'unsafe-inline'`), no framing, no forms.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; \
     style-src 'sha256-j6Eiv/4ti5MIc0xvd/Vy46CsNsWMdWW3t1wUkz7g8zA='; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// How often the page reloads itself (a `<meta>` refresh: no script).
const REFRESH_SECONDS: u32 = 30;

/// The dashboard page for `s`.
pub fn render(s: &Status) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>visitord dashboard</title><style>{STYLE}</style></head><body>\
         <header><h1>visitord</h1><p class=\"meta\">version {} · generation <span id=\"generation\">{}</span> \
         · up {} · snapshot loaded {} · as of {} (refreshes every {REFRESH_SECONDS} s; \
         also as <a href=\"status.json\">status.json</a>)</p></header>",
        esc(s.version),
        s.generation,
        duration(s.uptime_seconds),
        esc(&s.snapshot_loaded_at),
        esc(&s.now),
    );
    projects(&mut h, s);
    databases(&mut h, s);
    certificates(&mut h, s);
    sites(&mut h, s);
    reloads(&mut h, s);
    h.push_str("</body></html>");
    h
}

fn projects(h: &mut String, s: &Status) {
    h.push_str(
        "<section id=\"projects\"><h2>API usage by project</h2><table><thead><tr>\
         <th>Project</th><th class=\"n\">This minute</th><th class=\"n\">Last hour</th>\
         <th>Requests per minute, last hour (refused in red)</th>\
         <th class=\"n\">200</th><th class=\"n\">204</th><th class=\"n\">403</th>\
         <th class=\"n\">429</th><th class=\"n\">Other</th>\
         <th>Refusals by reason</th><th>Most refused origins</th></tr></thead><tbody>",
    );
    for ProjectStatus { id, usage } in &s.projects {
        usage_row(h, id, &esc(id), usage);
    }
    usage_row(
        h,
        "",
        "<span class=\"none\">(no project)</span>",
        &s.no_project,
    );
    h.push_str(
        "</tbody></table><p class=\"meta\">Statuses, reasons and origins count since the \
         process started. Origins are the sites that called, never visitors; an origin \
         that is an IP address is shown as such, without the address.</p></section>",
    );
}

/// One row; `key` is the `data-project` value (empty for no project).
fn usage_row(h: &mut String, key: &str, label: &str, u: &UsageReport) {
    let count = |status: &str| u.answers.get(status).copied().unwrap_or(0);
    let _ = write!(
        h,
        "<tr data-project=\"{}\"><td>{label}</td><td class=\"n\" data-k=\"this-minute\">{}</td>\
         <td class=\"n\" data-k=\"last-hour\">{}</td><td>{}</td>",
        esc(key),
        u.requests_this_minute,
        u.requests_last_hour,
        chart::bars(&u.requests_per_minute, &u.refused_per_minute),
    );
    for status in ["200", "204", "403", "429", "other"] {
        let _ = write!(
            h,
            "<td class=\"n\" data-k=\"{status}\">{}</td>",
            count(status)
        );
    }
    h.push_str("<td>");
    let reasons: Vec<String> = u
        .refusals
        .iter()
        .chain(&u.rate_limited)
        .filter(|(_, &n)| n > 0)
        .map(|(reason, n)| format!("<li data-k=\"{reason}\">{reason}: {n}</li>"))
        .collect();
    list(h, &reasons);
    h.push_str("</td><td>");
    let origins: Vec<String> = u
        .top_refused_origins
        .iter()
        .map(|o| {
            let bound = match o.error {
                0 => String::new(),
                e => format!(" (at least {})", o.count - e),
            };
            format!(
                "<li><span class=\"origin\">{}</span>: {}{bound}</li>",
                esc(&o.origin),
                o.count
            )
        })
        .collect();
    list(h, &origins);
    h.push_str("</td></tr>");
}

/// `<ul>` of `items`, or a dash.
fn list(h: &mut String, items: &[String]) {
    if items.is_empty() {
        h.push_str("<span class=\"none\">–</span>");
        return;
    }
    h.push_str("<ul>");
    for item in items {
        h.push_str(item);
    }
    h.push_str("</ul>");
}

fn databases(h: &mut String, s: &Status) {
    h.push_str(
        "<section id=\"databases\"><h2>Databases</h2><table><thead><tr><th>File</th>\
         <th>Type</th><th>Read as</th><th>Built</th><th class=\"n\">Age (days)</th></tr></thead><tbody>",
    );
    for d in &s.databases {
        let _ = write!(
            h,
            "<tr><td class=\"origin\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td></tr>",
            esc(&d.file),
            esc(&d.database_type),
            d.shape,
            esc(&d.built_at),
            d.age_days
        );
    }
    h.push_str("</tbody></table></section>");
}

fn certificates(h: &mut String, s: &Status) {
    h.push_str(
        "<section id=\"certificates\"><h2>Certificates</h2><table><thead><tr><th>Names</th>\
         <th>Source</th><th>File</th><th>Expires</th><th class=\"n\">Days left</th></tr></thead><tbody>",
    );
    if s.certificates.is_empty() {
        h.push_str("<tr><td colspan=\"5\" class=\"none\">No TLS listener.</td></tr>");
    }
    for CertificateStatus {
        names,
        source,
        file,
        expires_at,
        days_left,
    } in &s.certificates
    {
        let class = if *days_left < 14 { " warn" } else { "" };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{source}</td><td class=\"origin\">{}</td><td>{}</td>\
             <td class=\"n{class}\">{days_left}</td></tr>",
            esc(&names.join(", ")),
            esc(file),
            esc(expires_at),
        );
    }
    h.push_str("</tbody></table></section>");
}

fn sites(h: &mut String, s: &Status) {
    if s.sites.is_empty() {
        return;
    }
    h.push_str(
        "<section id=\"sites\"><h2>Sites</h2><table><thead><tr><th>Site</th><th>Hosts</th>\
         <th>Upstreams</th></tr></thead><tbody>",
    );
    for site in &s.sites {
        let upstreams: Vec<String> = site
            .upstreams
            .iter()
            .map(|u| {
                let (class, state) = if u.up { ("up", "up") } else { ("down", "down") };
                format!(
                    "<li>{} ({}) <span class=\"{class}\">{state}</span></li>",
                    esc(&u.upstream),
                    esc(&u.address)
                )
            })
            .collect();
        let _ = write!(
            h,
            "<tr data-site=\"{}\"><td>{}</td><td>{}</td><td>",
            esc(&site.site),
            esc(&site.site),
            esc(&site.hosts.join(", ")),
        );
        list(h, &upstreams);
        h.push_str("</td></tr>");
    }
    h.push_str("</tbody></table></section>");
}

fn reloads(h: &mut String, s: &Status) {
    h.push_str(
        "<section id=\"reloads\"><h2>Recent loads</h2><table><thead><tr><th>When</th>\
         <th>Trigger</th><th>Result</th><th class=\"n\">Serving generation</th><th>Reason</th></tr></thead><tbody>",
    );
    for r in &s.reloads {
        let class = if r.reason.is_some() { "down" } else { "up" };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"{class}\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            esc(&r.at),
            r.trigger,
            r.result,
            r.generation,
            esc(r.reason.as_deref().unwrap_or("")),
        );
    }
    h.push_str("</tbody></table></section>");
}

/// `3d 4h`, `2h 5m`, `7m 3s`, `42s`.
fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// Text as HTML, for element content and quoted attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::tests::status;

    #[test]
    fn the_policy_allows_exactly_this_stylesheet() {
        use base64::Engine as _;
        let digest = ring::digest::digest(&ring::digest::SHA256, STYLE.as_bytes());
        let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
        assert!(
            CONTENT_SECURITY_POLICY.contains(&format!("style-src 'sha256-{hash}'")),
            "update CONTENT_SECURITY_POLICY to 'sha256-{hash}'"
        );
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
        assert!(CONTENT_SECURITY_POLICY.starts_with("default-src 'none';"));
    }

    #[test]
    fn everything_dynamic_is_escaped_and_nothing_is_loaded() {
        let page = render(&status());
        assert!(page.contains("https://&lt;b&gt;evil&lt;/b&gt;.example"));
        assert!(!page.contains("<b>evil"));
        assert!(page.contains("project[0].id: &quot;&lt;x&gt;&quot;: invalid"));
        for forbidden in [
            "<script",
            "style=",
            "src=",
            "<link",
            "http://",
            "https://fonts",
        ] {
            assert!(!page.contains(forbidden), "{forbidden} in the page");
        }
        assert_eq!(page.matches("<style>").count(), 1);
        assert!(page.contains(&format!("<style>{STYLE}</style>")));
    }

    #[test]
    fn the_page_shows_the_figures() {
        let page = render(&status());
        let row = page
            .split("<tr data-project=\"demo\">")
            .nth(1)
            .and_then(|r| r.split("</tr>").next())
            .unwrap();
        assert!(
            row.contains("<td class=\"n\" data-k=\"200\">1</td>"),
            "{row}"
        );
        assert!(
            row.contains("<td class=\"n\" data-k=\"403\">1</td>"),
            "{row}"
        );
        assert!(
            row.contains("<td class=\"n\" data-k=\"last-hour\">2</td>"),
            "{row}"
        );
        assert!(
            row.contains("<li data-k=\"not_listed\">not_listed: 1</li>"),
            "{row}"
        );
        assert!(row.contains("<svg class=\"chart\""), "{row}");
        assert!(page.contains("<tr data-project=\"\"><td><span class=\"none\">(no project)</span>"));
        assert!(page.contains("127.0.0.1:2 (127.0.0.1:2) <span class=\"down\">down</span>"));
        assert!(page.contains("<span id=\"generation\">1</span>"));
        assert!(page.contains("· up 3h 2m ·"));
        assert!(page.contains("<td>SIGHUP</td><td class=\"down\">refused</td>"));
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(7 * 60 + 3), "7m 3s");
        assert_eq!(duration(2 * 3600 + 5 * 60 + 9), "2h 5m");
        assert_eq!(duration(3 * 86_400 + 4 * 3600), "3d 4h");
    }
}
