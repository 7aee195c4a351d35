//! The API's query string: `pid`, read strictly (docs/design.md §3). Every
//! parameter must percent-decode once to UTF-8 without control characters,
//! so a malformed query is refused instead of half understood.

use std::borrow::Cow;

use crate::config::is_valid_project_id;

/// Longest query string looked at; longer ones are refused with 414.
pub const MAX_QUERY_LEN: usize = 2048;
/// Most `&`-separated query parameters accepted.
pub const MAX_QUERY_PARAMS: usize = 32;

/// Why a query string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("missing pid parameter")]
    MissingPid,
    #[error("invalid pid parameter")]
    InvalidPid,
    #[error("repeated pid parameter")]
    RepeatedPid,
    #[error("malformed query string")]
    Malformed,
    #[error("too many query parameters")]
    TooManyParams,
    #[error("query string too long")]
    TooLong,
}

impl QueryError {
    pub fn status(&self) -> u16 {
        match self {
            QueryError::TooLong => 414,
            _ => 400,
        }
    }
}

/// Extracts `pid` from a query string, strictly: every parameter must
/// percent-decode (once) to UTF-8 without control characters, `pid` must
/// appear exactly once and match `[A-Za-z0-9_-]{1,64}`.
pub fn project_id_from_query(query: &str) -> Result<Cow<'_, str>, QueryError> {
    if query.len() > MAX_QUERY_LEN {
        return Err(QueryError::TooLong);
    }
    let mut pid = None;
    let mut count = 0;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        count += 1;
        if count > MAX_QUERY_PARAMS {
            return Err(QueryError::TooManyParams);
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key)?;
        let value = percent_decode(value)?;
        if key == "pid" {
            if pid.is_some() {
                return Err(QueryError::RepeatedPid);
            }
            pid = Some(value);
        }
    }
    let pid = pid.ok_or(QueryError::MissingPid)?;
    if pid.is_empty() {
        return Err(QueryError::MissingPid);
    }
    if !is_valid_project_id(&pid) {
        return Err(QueryError::InvalidPid);
    }
    Ok(pid)
}

/// `application/x-www-form-urlencoded` decoding without leniency: a `%` must
/// start a two-digit hex escape, the result must be UTF-8, and control
/// characters (including NUL) are refused.
pub fn percent_decode(s: &str) -> Result<Cow<'_, str>, QueryError> {
    let bytes = s.as_bytes();
    if !bytes.iter().any(|&b| b == b'%' || b == b'+') {
        // The same test as after decoding: C1 controls (U+0080..=U+009F)
        // are not ASCII but are control characters too.
        return if s.chars().any(char::is_control) {
            Err(QueryError::Malformed)
        } else {
            Ok(Cow::Borrowed(s))
        };
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(QueryError::Malformed)?;
                let hi = hex_value(hex[0]).ok_or(QueryError::Malformed)?;
                let lo = hex_value(hex[1]).ok_or(QueryError::Malformed)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    let text = String::from_utf8(out).map_err(|_| QueryError::Malformed)?;
    if text.chars().any(char::is_control) {
        return Err(QueryError::Malformed);
    }
    Ok(Cow::Owned(text))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;

    #[test]
    fn fuzz_regression_c1_control() {
        for s in ["\u{80}", "a\u{85}b", "\u{9f}"] {
            assert_eq!(percent_decode(s), Err(QueryError::Malformed), "{s:?}");
            let plus = format!("{s}+");
            assert_eq!(
                percent_decode(&plus),
                Err(QueryError::Malformed),
                "{plus:?}"
            );
        }
        assert_eq!(
            project_id_from_query("pid=demo&x=\u{85}"),
            Err(QueryError::Malformed)
        );
        assert_eq!(percent_decode("\u{a0}é").as_deref(), Ok("\u{a0}é"));
    }

    #[test]
    fn query_cases() {
        use QueryError::*;
        let cases: &[(&str, Result<&str, QueryError>)] = &[
            ("pid=demo", Ok("demo")),
            ("pid=demo&x=1", Ok("demo")),
            ("x=1&pid=demo&", Ok("demo")),
            ("&&pid=demo", Ok("demo")),
            ("pid=%64emo", Ok("demo")),
            ("%70id=demo", Ok("demo")),
            ("pid=A-b_9", Ok("A-b_9")),
            ("", Err(MissingPid)),
            ("pid=", Err(MissingPid)),
            ("pid", Err(MissingPid)),
            ("PID=demo", Err(MissingPid)),
            ("pid=demo&pid=demo", Err(RepeatedPid)),
            ("pid=demo&pid=", Err(RepeatedPid)),
            ("pid=de%2", Err(Malformed)),
            ("pid=de%zz", Err(Malformed)),
            ("pid=%", Err(Malformed)),
            ("pid=%00", Err(Malformed)),
            ("pid=%0a", Err(Malformed)),
            ("pid=%ff", Err(Malformed)),
            ("x=%c3%28&pid=demo", Err(Malformed)),
            ("pid=demo%2500", Err(InvalidPid)),
            ("pid=de+mo", Err(InvalidPid)),
            ("pid=a.b", Err(InvalidPid)),
            ("pid=%C3%A9", Err(InvalidPid)),
            ("pid=../etc", Err(InvalidPid)),
        ];
        for (q, want) in cases {
            let got = project_id_from_query(q);
            assert_eq!(
                got.as_deref().map_err(Clone::clone),
                want.clone(),
                "query {q:?}"
            );
        }
        let long_pid = format!("pid={}", "x".repeat(65));
        assert_eq!(project_id_from_query(&long_pid), Err(InvalidPid));
        let many = format!("{}pid=demo", "a=1&".repeat(40));
        assert_eq!(project_id_from_query(&many), Err(TooManyParams));
        let long = format!("pid=demo&x={}", "y".repeat(MAX_QUERY_LEN));
        assert_eq!(project_id_from_query(&long), Err(TooLong));
        assert_eq!(TooLong.status(), 414);
        assert_eq!(Malformed.status(), 400);
    }
}
