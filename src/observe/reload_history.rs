//! The last few snapshot loads, for the dashboard: when, what set them off,
//! the generation that served afterwards, and why a refused one was
//! refused. Written by the reload thread, read by the metrics listener.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

/// How many loads are remembered.
pub const KEEP: usize = 10;

/// One load of the configuration and everything it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadRecord {
    pub at: SystemTime,
    /// `start`, `file change` or `SIGHUP`.
    pub trigger: &'static str,
    /// The generation serving after it: the new one, or the old one when
    /// the load was refused.
    pub generation: u64,
    /// `None` when it was taken; otherwise the reason (file, key, why).
    pub refused: Option<String>,
}

/// A ring of the last [`KEEP`] loads.
#[derive(Debug, Default)]
pub struct ReloadHistory {
    records: Mutex<VecDeque<ReloadRecord>>,
}

impl ReloadHistory {
    pub fn new() -> ReloadHistory {
        ReloadHistory::default()
    }

    pub fn push(&self, record: ReloadRecord) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() == KEEP {
            records.pop_front();
        }
        records.push_back(record);
    }

    /// The remembered loads, newest first.
    pub fn recent(&self) -> Vec<ReloadRecord> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_loads_newest_first() {
        let h = ReloadHistory::new();
        for generation in 1..=(KEEP as u64 + 3) {
            h.push(ReloadRecord {
                at: SystemTime::UNIX_EPOCH,
                trigger: "SIGHUP",
                generation,
                refused: (generation % 2 == 0).then(|| "projects.toml: bad".to_owned()),
            });
        }
        let recent = h.recent();
        assert_eq!(recent.len(), KEEP);
        assert_eq!(recent[0].generation, KEEP as u64 + 3);
        assert_eq!(recent[KEEP - 1].generation, 4);
        assert_eq!(recent[1].refused.as_deref(), Some("projects.toml: bad"));
    }
}
