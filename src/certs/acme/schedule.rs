//! When to order: renewal times and retry backoff, as pure functions of
//! what is known (the certificate served, its record), the clock and a
//! random number, so that every rule is tested without a CA.

use std::time::Duration;

use super::store::{AriWindow, Meta};

/// The first wait after a failed order; doubled after each further one.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(120);
/// The longest wait between two orders for one name. Let's Encrypt allows
/// five failed validations per name and hour; at most one attempt in six
/// hours stays far below, while a certificate still valid for weeks loses
/// nothing.
pub const BACKOFF_MAX: Duration = Duration::from_secs(6 * 3600);
/// Bounds on how soon to ask for a renewal window again, whatever the CA's
/// `Retry-After` says (RFC 9773 §4.3.3 leaves limits to the client).
pub const ARI_RECHECK_MIN: Duration = Duration::from_secs(600);
pub const ARI_RECHECK_MAX: Duration = Duration::from_secs(24 * 3600);

/// The certificate a name is served with now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// When to renew without a renewal window from the CA: `renew_before`
/// ahead of expiry, or else once two thirds of the lifetime have passed
/// (day 60 of a 90-day certificate, as certbot and Caddy do).
pub fn default_renew_at(not_before: i64, not_after: i64, renew_before: Option<Duration>) -> i64 {
    let ahead = match renew_before {
        Some(d) => secs(d),
        None => not_after.saturating_sub(not_before).max(0) / 3,
    };
    not_after.saturating_sub(ahead)
}

/// A uniformly random moment in `[start, end]` (RFC 9773 §4.2: spread the
/// renewals of many clients over the window).
pub fn pick_in_window(start: i64, end: i64, random: u64) -> i64 {
    if end <= start {
        return start;
    }
    let span = end.abs_diff(start);
    start.saturating_add_unsigned(random % span.saturating_add(1))
}

/// The wait after the `failures`-th failed order in a row: doubling from
/// [`BACKOFF_FIRST`] up to [`BACKOFF_MAX`], then a random point in its
/// upper half, so that nodes and names do not retry in step.
pub fn backoff(failures: u32, random: u64) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    let full = BACKOFF_FIRST
        .saturating_mul(1u32 << doublings)
        .min(BACKOFF_MAX)
        .as_secs();
    let half = full / 2;
    Duration::from_secs(half + random % (full - half + 1))
}

/// The record of `meta` if it describes the `current` certificate.
fn record_for<'m>(current: Option<&Current>, meta: Option<&'m Meta>) -> Option<&'m Meta> {
    meta.filter(|m| current.is_some_and(|c| m.serial.as_deref() == Some(c.serial.as_str())))
}

/// When the next order for a name is due, Unix seconds: at once when it
/// has no certificate, else at the renewal time its record holds (or the
/// default one); never before the backoff of a failed order ends.
pub fn due_at(
    current: Option<&Current>,
    meta: Option<&Meta>,
    renew_before: Option<Duration>,
) -> i64 {
    let renew = match current {
        None => i64::MIN,
        Some(c) => record_for(current, meta)
            .and_then(|m| m.renew_at)
            .unwrap_or_else(|| default_renew_at(c.not_before, c.not_after, renew_before)),
    };
    let retry = meta.and_then(|m| m.retry_at).unwrap_or(i64::MIN);
    renew.max(retry)
}

/// Whether to ask the CA for the current certificate's renewal window.
pub fn ari_check_due(current: &Current, meta: Option<&Meta>, now: i64) -> bool {
    record_for(Some(current), meta)
        .and_then(|m| m.ari)
        .is_none_or(|a| a.next_check <= now)
}

/// Folds a renewal window the CA suggested into the record: a new window
/// gets a new random renewal time inside it; the same window keeps the
/// time already picked, so asking again does not move it.
pub fn apply_window(
    meta: &mut Meta,
    start: i64,
    end: i64,
    retry_after: Duration,
    now: i64,
    random: u64,
) {
    let recheck = retry_after.clamp(ARI_RECHECK_MIN, ARI_RECHECK_MAX);
    let same = meta.ari.is_some_and(|a| a.start == start && a.end == end);
    if !same || meta.renew_at.is_none() {
        meta.renew_at = Some(pick_in_window(start, end, random));
    }
    meta.ari = Some(AriWindow {
        start,
        end,
        next_check: now.saturating_add(secs(recheck)),
    });
}

/// The record after a failed order: one more failure, and the next
/// attempt after its backoff.
pub fn after_failure(meta: &mut Meta, error: String, now: i64, random: u64) -> Duration {
    meta.failures = meta.failures.saturating_add(1);
    let wait = backoff(meta.failures, random);
    meta.retry_at = Some(now.saturating_add(secs(wait)));
    meta.last_error = Some(error);
    wait
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn cert(serial: &str) -> Current {
        Current {
            serial: serial.into(),
            not_before: 0,
            not_after: 90 * DAY,
        }
    }

    #[test]
    fn without_a_window_renew_a_third_of_the_lifetime_ahead_or_as_configured() {
        assert_eq!(default_renew_at(0, 90 * DAY, None), 60 * DAY);
        assert_eq!(default_renew_at(0, 6 * DAY, None), 4 * DAY);
        assert_eq!(
            default_renew_at(0, 90 * DAY, Some(Duration::from_secs(7 * 86400))),
            83 * DAY
        );
        // A renew_before longer than the lifetime renews at once.
        assert_eq!(
            default_renew_at(100, 200, Some(Duration::from_secs(1000))),
            -800
        );
    }

    #[test]
    fn a_window_is_picked_uniformly_and_inclusively() {
        assert_eq!(pick_in_window(10, 20, 0), 10);
        assert_eq!(pick_in_window(10, 20, 10), 20);
        assert_eq!(pick_in_window(10, 20, 11), 10);
        assert_eq!(
            pick_in_window(10, 20, u64::MAX),
            10 + (u64::MAX % 11) as i64
        );
        assert_eq!(
            pick_in_window(20, 10, 5),
            20,
            "an inverted window starts now"
        );
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered_in_the_upper_half() {
        assert_eq!(backoff(1, 0), Duration::from_secs(60));
        assert_eq!(backoff(1, 60), Duration::from_secs(120));
        assert_eq!(backoff(2, 0), Duration::from_secs(120));
        assert_eq!(backoff(3, 0), Duration::from_secs(240));
        for failures in [10, 50, u32::MAX] {
            for random in [0, 7, u64::MAX] {
                let wait = backoff(failures, random);
                assert!(wait <= BACKOFF_MAX, "{failures}: {wait:?}");
                assert!(wait >= BACKOFF_MAX / 2, "{failures}: {wait:?}");
            }
        }
        assert_eq!(backoff(0, 0), Duration::from_secs(60));
    }

    #[test]
    fn a_name_without_a_certificate_is_due_at_once_unless_backing_off() {
        assert_eq!(due_at(None, None, None), i64::MIN);
        let failed = Meta {
            retry_at: Some(500),
            failures: 1,
            ..Meta::default()
        };
        assert_eq!(due_at(None, Some(&failed), None), 500);
    }

    #[test]
    fn the_record_decides_only_for_its_own_certificate() {
        let c = cert("aa");
        let mine = Meta {
            serial: Some("aa".into()),
            renew_at: Some(70 * DAY),
            ..Meta::default()
        };
        assert_eq!(due_at(Some(&c), Some(&mine), None), 70 * DAY);
        // A record about another certificate (a renewal whose file the
        // reload has not read yet) does not move the schedule.
        let other = Meta {
            serial: Some("bb".into()),
            renew_at: Some(DAY),
            ..Meta::default()
        };
        assert_eq!(due_at(Some(&c), Some(&other), None), 60 * DAY);
        assert_eq!(due_at(Some(&c), None, None), 60 * DAY);
        // ...but its backoff does: the whole fleet waits out a failure.
        let failing = Meta {
            retry_at: Some(65 * DAY),
            ..mine.clone()
        };
        assert_eq!(
            due_at(
                Some(&c),
                Some(&Meta {
                    renew_at: Some(DAY),
                    ..failing
                }),
                None
            ),
            65 * DAY
        );
    }

    #[test]
    fn a_window_is_kept_until_it_changes() {
        let mut m = Meta::default();
        apply_window(
            &mut m,
            60 * DAY,
            62 * DAY,
            Duration::from_secs(6 * 3600),
            0,
            7,
        );
        let first = m.renew_at.unwrap();
        assert!((60 * DAY..=62 * DAY).contains(&first));
        assert_eq!(m.ari.unwrap().next_check, 6 * 3600);
        apply_window(
            &mut m,
            60 * DAY,
            62 * DAY,
            Duration::from_secs(1),
            100,
            99_999,
        );
        assert_eq!(m.renew_at, Some(first), "same window, same time");
        assert_eq!(m.ari.unwrap().next_check, 100 + 600, "rechecks are bounded");
        // The CA moves the window (an incident): renew inside the new one.
        apply_window(&mut m, 10, 20, Duration::from_secs(3 * 86_400), 5, 3);
        assert_eq!(m.renew_at, Some(13));
        assert_eq!(m.ari.unwrap().next_check, 5 + 86_400);
    }

    #[test]
    fn windows_are_asked_for_again_when_their_recheck_time_comes() {
        let c = cert("aa");
        assert!(ari_check_due(&c, None, 0));
        let mut m = Meta {
            serial: Some("aa".into()),
            ..Meta::default()
        };
        assert!(ari_check_due(&c, Some(&m), 0));
        apply_window(&mut m, 1, 2, Duration::from_secs(3600), 0, 0);
        assert!(!ari_check_due(&c, Some(&m), 3599));
        assert!(ari_check_due(&c, Some(&m), 3600));
        assert!(
            ari_check_due(&cert("bb"), Some(&m), 0),
            "another certificate"
        );
    }

    #[test]
    fn failures_count_up_and_set_the_next_attempt() {
        let mut m = Meta::default();
        let wait = after_failure(&mut m, "CA down".into(), 1000, 0);
        assert_eq!(wait, Duration::from_secs(60));
        assert_eq!((m.failures, m.retry_at), (1, Some(1060)));
        assert_eq!(m.last_error.as_deref(), Some("CA down"));
        after_failure(&mut m, "again".into(), 2000, 0);
        assert_eq!((m.failures, m.retry_at), (2, Some(2120)));
    }
}
