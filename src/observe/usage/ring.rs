//! Per-minute counts over the last hour, in a fixed ring: no lock, no
//! allocation, one relaxed atomic add per count in the steady state.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// How many minutes the ring remembers.
pub const MINUTES: usize = 60;

/// Sixty slots, each holding the minute it counts (high 32 bits) and its
/// count (low 32 bits) in one word, so that starting a new minute and
/// counting in it never tear: a slot left over from an hour ago is
/// replaced by one compare-and-swap, then counted into with `fetch_add`.
/// A count cannot reach 2^32 in one minute (71 million a second).
#[derive(Debug)]
pub struct MinuteRing {
    slots: [AtomicU64; MINUTES],
}

impl Default for MinuteRing {
    fn default() -> Self {
        MinuteRing {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

fn pack(minute: u32, count: u32) -> u64 {
    (u64::from(minute) << 32) | u64::from(count)
}

fn minute_of(word: u64) -> u32 {
    (word >> 32) as u32
}

fn count_of(word: u64) -> u64 {
    word & u64::from(u32::MAX)
}

impl MinuteRing {
    /// Counts one event in `minute` (minutes since the recorder's epoch).
    pub fn add(&self, minute: u32) {
        let slot = &self.slots[minute as usize % MINUTES];
        let mut word = slot.load(Relaxed);
        loop {
            let held = minute_of(word);
            if held == minute {
                slot.fetch_add(1, Relaxed);
                return;
            }
            // A request that started an hour before the slot's minute
            // (impossible in practice) is not allowed to erase newer counts.
            if held > minute {
                return;
            }
            match slot.compare_exchange_weak(word, pack(minute, 1), Relaxed, Relaxed) {
                Ok(_) => return,
                Err(now) => word = now,
            }
        }
    }

    /// The counts of the hour ending with `now` (a minute still running),
    /// oldest first.
    pub fn last_hour(&self, now: u32) -> [u64; MINUTES] {
        let mut out = [0; MINUTES];
        for (k, out) in out.iter_mut().enumerate() {
            let Some(minute) = (now + k as u32).checked_sub(MINUTES as u32 - 1) else {
                continue;
            };
            let word = self.slots[minute as usize % MINUTES].load(Relaxed);
            if minute_of(word) == minute {
                *out = count_of(word);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_their_minute_and_age_out_after_an_hour() {
        let ring = MinuteRing::default();
        for _ in 0..3 {
            ring.add(5);
        }
        ring.add(6);
        let hour = ring.last_hour(6);
        assert_eq!(hour[MINUTES - 1], 1, "the running minute is last");
        assert_eq!(hour[MINUTES - 2], 3);
        assert_eq!(hour.iter().sum::<u64>(), 4);
        // Minute 5 is still inside the hour that ends with minute 64...
        assert_eq!(ring.last_hour(64)[0], 3);
        // ...and gone from the one that ends with minute 65.
        assert_eq!(ring.last_hour(65).iter().sum::<u64>(), 1);
        // Minute 65 reuses minute 5's slot and starts from one.
        ring.add(65);
        assert_eq!(ring.last_hour(65)[MINUTES - 1], 1);
        assert_eq!(ring.last_hour(65).iter().sum::<u64>(), 2);
    }

    #[test]
    fn a_late_count_does_not_erase_a_newer_minute() {
        let ring = MinuteRing::default();
        ring.add(70);
        ring.add(10);
        assert_eq!(ring.last_hour(70)[MINUTES - 1], 1);
    }

    #[test]
    fn the_first_hour_has_no_negative_minutes() {
        let ring = MinuteRing::default();
        ring.add(0);
        let hour = ring.last_hour(0);
        assert_eq!(hour[MINUTES - 1], 1);
        assert_eq!(hour.iter().sum::<u64>(), 1);
    }

    #[test]
    fn threads_counting_at_once_lose_nothing() {
        let ring = std::sync::Arc::new(MinuteRing::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let ring = ring.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u32 {
                        ring.add(100 + i / 5_000);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let hour = ring.last_hour(101);
        assert_eq!(hour[MINUTES - 2], 20_000);
        assert_eq!(hour[MINUTES - 1], 20_000);
    }
}
