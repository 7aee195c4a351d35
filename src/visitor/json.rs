//! Writing the success answer's JSON by hand, into one buffer: string
//! escaping, numbers, addresses and coordinates without going through
//! `serde_json` or allocating per field (docs/performance.md).
//!
//! The output is byte for byte what `serde_json` writes for the same values:
//! `"` and `\` escaped, `\b \f \n \r \t` in short form, other control
//! characters as `\u00XX` (lower-case hex), everything else (DEL, non-ASCII,
//! `/`) as is. The tests check this against `serde_json`.

use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::ops::Deref;

/// How `push_str` treats each byte: 0 copies it, anything else is the
/// character after the backslash (`u` for `\u00XX`).
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Appends `s` as a JSON string, quotes included.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    // Runs of plain bytes are copied in one go.
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = ESCAPE[usize::from(b)];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[run..i]);
        run = i + 1;
        if escape == b'u' {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', escape]);
        }
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// Whether any byte of `bytes` is a control character, `"` or `\\`,
/// eight bytes at a time: almost every string has none.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte of the result is set where a byte of `x`
    // is below `n` (for bytes below 0x80; the `!x` mask drops the others).
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS;
    let equal = |x: u64, b: u8| below(x ^ (ONES * u64::from(b)), 1);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        if below(x, 0x20) | equal(x, b'"') | equal(x, b'\\') != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| ESCAPE[usize::from(b)] != 0)
}

/// Appends `["a","b"]`.
pub fn push_str_array<'a>(out: &mut Vec<u8>, items: impl IntoIterator<Item = &'a str>) {
    out.push(b'[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_str(out, item);
    }
    out.push(b']');
}

/// Appends `n` in decimal.
pub fn push_u32(out: &mut Vec<u8>, n: u32) {
    let mut digits = [0u8; 10];
    let start = decimal(n, &mut digits);
    out.extend_from_slice(&digits[start..]);
}

/// Writes `n` right-aligned into `buf`; returns where the digits start.
fn decimal(mut n: u32, buf: &mut [u8; 10]) -> usize {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return i;
        }
    }
}

/// Longest text kept inline: an IPv6 address in its longest form
/// (`ffff:…:255.255.255.255`, 45 bytes) or any coordinate pair on the globe
/// (`-89.123456,-179.123456`, 22 bytes).
const INLINE: usize = 46;

/// Text built per request without a heap allocation in the common case: the
/// visitor's address and coordinates. Longer text (only coordinates far off
/// the globe, which no database yields) moves to the heap.
#[derive(Clone)]
pub enum ShortText {
    Inline { bytes: [u8; INLINE], len: u8 },
    Heap(String),
}

impl ShortText {
    pub const fn new() -> ShortText {
        ShortText::Inline {
            bytes: [0; INLINE],
            len: 0,
        }
    }

    /// An address as `IpAddr`'s `Display` writes it.
    pub fn ip(ip: IpAddr) -> ShortText {
        let mut text = ShortText::new();
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(".");
                    }
                    let mut digits = [0u8; 10];
                    let start = decimal(u32::from(octet), &mut digits);
                    // Digits are ASCII.
                    text.push(std::str::from_utf8(&digits[start..]).unwrap_or_default());
                }
            }
            // Writing into a ShortText cannot fail.
            IpAddr::V6(v6) => {
                let _ = write!(text, "{v6}");
            }
        }
        text
    }

    /// `lat,long` with six decimals each, as `format!("{lat:.6},{long:.6}")`.
    pub fn lat_long(latitude: f64, longitude: f64) -> ShortText {
        let mut text = ShortText::new();
        push_fixed6(&mut text, latitude);
        text.push(",");
        push_fixed6(&mut text, longitude);
        text
    }

    pub fn as_str(&self) -> &str {
        match self {
            // Only whole `&str`s are ever appended, so the bytes are UTF-8.
            ShortText::Inline { bytes, len } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            ShortText::Heap(s) => s,
        }
    }

    fn push(&mut self, s: &str) {
        match self {
            ShortText::Inline { bytes, len } => {
                let at = usize::from(*len);
                match bytes.get_mut(at..at + s.len()) {
                    Some(slot) => {
                        slot.copy_from_slice(s.as_bytes());
                        // at + s.len() <= INLINE < 256.
                        *len += s.len() as u8;
                    }
                    None => {
                        let mut heap = String::with_capacity(at + s.len());
                        heap.push_str(self.as_str());
                        heap.push_str(s);
                        *self = ShortText::Heap(heap);
                    }
                }
            }
            ShortText::Heap(heap) => heap.push_str(s),
        }
    }
}

impl Default for ShortText {
    fn default() -> Self {
        ShortText::new()
    }
}

impl fmt::Write for ShortText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s);
        Ok(())
    }
}

impl Deref for ShortText {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for ShortText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<&str> for ShortText {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for ShortText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ShortText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ShortText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// `{v:.6}` without the formatter's exact decimal expansion, when that is
/// safe: if `v * 1e6` lies clearly away from a half (its fraction is not
/// within 0.01 of .5), rounding the product gives the same six decimals
/// as rounding the exact value, whatever the tie rule. Below 1e12 the
/// product's own rounding error is under 2e-4, far inside that margin.
/// Anything else (near-ties, NaN, infinities, values beyond a million
/// degrees) takes `format!`'s path.
fn push_fixed6(out: &mut ShortText, v: f64) {
    let scaled = v * 1e6;
    let rounded = scaled.round();
    let clear = (scaled - rounded).abs() < 0.49;
    if !(clear && rounded.abs() < 1e12) {
        let _ = write!(out, "{v:.6}");
        return;
    }
    // |rounded| < 1e12 fits a u64 exactly.
    let units = rounded.abs() as u64;
    if v.is_sign_negative() {
        // `{:.6}` keeps the sign of a negative value that rounds to zero
        // (and of -0.0).
        out.push("-");
    }
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = units;
    // At least seven digits: one before the point, six after.
    while n > 0 || digits.len() - i < 7 {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let (whole, fraction) = digits[i..].split_at(digits.len() - i - 6);
    // Digits are ASCII.
    out.push(std::str::from_utf8(whole).unwrap_or_default());
    out.push(".");
    out.push(std::str::from_utf8(fraction).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> String {
        let mut out = Vec::new();
        push_str(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_are_escaped_exactly_as_serde_json_does() {
        let mut tricky: Vec<String> = [
            "",
            "plain",
            "a \"quoted\" \\ reason",
            "\\\\\"\"",
            "line\nbreak\r\ttab\u{8}\u{c}",
            "\u{0}\u{1}\u{1f}\u{7f}",
            "São Paulo / Zürich – 東京 🎉",
            "\u{2028}\u{2029}",
            "</script>",
            "ends with \\",
            "\"",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        tricky.extend((0u8..=0x7f).map(|b| format!("x{}y", char::from(b))));
        // Every position of the eight-byte chunks and their tail.
        for special in ['\u{0}', '\u{1f}', ' ', '"', '\\', '\u{7f}', 'é', '\u{a0}'] {
            for at in 0..20 {
                let mut s: String = "abcdefghijklmnopqrst".chars().take(20).collect();
                s.insert(at, special);
                tricky.push(s);
            }
        }
        for s in &tricky {
            assert_eq!(json(s), serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn arrays_and_numbers() {
        let mut out = Vec::new();
        push_str_array(&mut out, ["EUR", "a\"b"]);
        out.push(b' ');
        push_str_array(&mut out, []);
        for n in [0, 7, 10, 4_294_967_295] {
            out.push(b' ');
            push_u32(&mut out, n);
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"["EUR","a\"b"] [] 0 7 10 4294967295"#
        );
    }

    #[test]
    fn addresses_print_as_display_does() {
        for ip in [
            "0.0.0.0",
            "8.8.8.8",
            "81.2.69.142",
            "255.255.255.255",
            "10.0.100.1",
            "::",
            "::1",
            "2001:db8::1",
            "2a02:c7c:1234:5678:9abc:def0:1234:5678",
            "::ffff:1.2.3.4",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let text = ShortText::ip(ip);
            assert_eq!(text, ip.to_string().as_str());
            assert!(matches!(text, ShortText::Inline { .. }), "{ip}");
        }
    }

    #[test]
    fn coordinates_print_as_format_does() {
        let mut values = vec![
            0.0,
            -0.0,
            51.5142,
            -0.0931,
            90.0,
            -90.0,
            180.0,
            -180.0,
            1e-7,
            -1e-7,
            5e-7,
            -5e-7,
            4.9999999e-7,
            0.0000005,
            1.0000005,
            2.5e-6,
            48.856_613,
            -33.868_82,
            123.456_789_5,
            f64::EPSILON,
            1e20,
            -1e300,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        // Many values on and off the micro-degree grid, both signs.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let unit = (state >> 11) as f64 / (1u64 << 53) as f64;
            let v = unit * 360.0 - 180.0;
            values.push(v);
            values.push((v * 1e4).round() / 1e4);
            values.push((v * 1e6).round() / 1e6 + 5e-7);
            values.push(f64::from(v as f32));
        }
        for lat in &values {
            let text = ShortText::lat_long(*lat, -*lat);
            assert_eq!(text.as_str(), format!("{lat:.6},{:.6}", -*lat), "{lat:e}");
        }
        assert!(matches!(
            ShortText::lat_long(-89.123456, -179.123456),
            ShortText::Inline { .. }
        ));
        assert!(matches!(
            ShortText::lat_long(1e300, 0.0),
            ShortText::Heap(_)
        ));
    }
}
