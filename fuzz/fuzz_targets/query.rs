//! The query string: `pid` extraction and percent-decoding.
//!
//! Input: the query string (without `?`), as UTF-8.
#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use visitord::request::query::{percent_decode, project_id_from_query, QueryError, MAX_QUERY_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };

    match project_id_from_query(query) {
        Ok(pid) => {
            assert!(is_pid(&pid), "accepted pid {pid:?}");
            assert!(query.len() <= MAX_QUERY_LEN);
            assert_eq!(
                project_id_from_query(&format!("pid={pid}")),
                Ok(pid.clone())
            );
        }
        Err(QueryError::TooLong) => assert!(query.len() > MAX_QUERY_LEN),
        Err(e) => assert_eq!(e.status(), 400),
    }

    // Every `&`-separated piece, and the whole string, on its own.
    for piece in query.split(['&', '=']).chain([query]) {
        let Ok(decoded) = percent_decode(piece) else {
            continue;
        };
        assert!(
            !decoded.chars().any(char::is_control),
            "{piece:?} decoded to {decoded:?}, which holds a control character"
        );
        if !piece.contains(['%', '+']) {
            assert_eq!(decoded, piece, "nothing to decode, yet it changed");
            assert!(matches!(decoded, Cow::Borrowed(_)));
        }
        // Encoding the result again decodes back to it.
        let again = encode(&decoded);
        assert_eq!(
            percent_decode(&again).as_deref(),
            Ok(&*decoded),
            "{piece:?} -> {decoded:?} -> {again:?}"
        );
    }
});

/// `[A-Za-z0-9_-]{1,64}`.
fn is_pid(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
