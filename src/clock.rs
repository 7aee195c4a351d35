//! Wall-clock time as Unix seconds, and those seconds as RFC 3339 text (UTC,
//! to the second) for logs, the dashboard and `visitord certs`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch of `t`: 0 before it, saturating far after.
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Seconds since the Unix epoch now.
pub fn now() -> i64 {
    unix_seconds(SystemTime::now())
}

/// `secs` as RFC 3339 in UTC (`2026-12-01T17:00:00Z`); a time before the
/// epoch reads as the epoch.
pub fn rfc3339(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_trip_through_system_time() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        assert_eq!(unix_seconds(t), 1_796_000_000);
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(5)), 0);
        assert!(now() > 1_700_000_000);
    }

    #[test]
    fn rfc3339_is_utc_to_the_second_and_clamps_before_the_epoch() {
        assert_eq!(rfc3339(1_796_000_000), "2026-11-30T00:53:20Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(-1), "1970-01-01T00:00:00Z");
    }
}
