//! The most frequent keys of an unbounded stream in fixed memory: the
//! Space-Saving algorithm (Metwally, Agrawal, El Abbadi, "Efficient
//! Computation of Frequent and Top-k Elements in Data Streams", ICDT 2005).
//!
//! `K` counters. A key already counted is incremented; a new key takes a
//! free counter, or else replaces the key with the smallest count and
//! inherits that count (+1), remembered as its possible overcount. Every key
//! seen more than `total / K` times is guaranteed to be held, and a held
//! key's true count lies in `count - error ..= count`. However many distinct
//! keys an attacker sends, memory stays `K` entries of bounded length.

/// The longest key kept, in bytes; longer keys are cut at a character
/// boundary. A normalised origin is at most scheme, a 253-byte host and a
/// port, so nothing real is cut.
pub const MAX_KEY_LEN: usize = 300;

/// One counted key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub key: Box<str>,
    /// Upper bound of how often the key was seen.
    pub count: u64,
    /// How much of `count` may belong to keys it replaced.
    pub error: u64,
}

/// A Space-Saving summary of at most `k` keys.
#[derive(Debug)]
pub struct TopK {
    k: usize,
    entries: Vec<Counted>,
}

impl TopK {
    pub fn new(k: usize) -> TopK {
        TopK {
            k,
            entries: Vec::with_capacity(k),
        }
    }

    /// Counts one occurrence of `key`.
    pub fn add(&mut self, key: &str) {
        let key = cut(key);
        if let Some(e) = self.entries.iter_mut().find(|e| &*e.key == key) {
            e.count += 1;
            return;
        }
        if self.entries.len() < self.k {
            self.entries.push(Counted {
                key: key.into(),
                count: 1,
                error: 0,
            });
            return;
        }
        if let Some(min) = self.entries.iter_mut().min_by_key(|e| e.count) {
            let floor = min.count;
            *min = Counted {
                key: key.into(),
                count: floor + 1,
                error: floor,
            };
        }
    }

    /// The held keys, most frequent first (ties by key, for a stable page).
    pub fn top(&self) -> Vec<Counted> {
        let mut out = self.entries.clone();
        out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        out
    }
}

fn cut(key: &str) -> &str {
    if key.len() <= MAX_KEY_LEN {
        return key;
    }
    let mut end = MAX_KEY_LEN;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    &key[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(t: &TopK) -> Vec<(String, u64, u64)> {
        t.top()
            .into_iter()
            .map(|c| (c.key.into(), c.count, c.error))
            .collect()
    }

    #[test]
    fn exact_while_there_is_room() {
        let mut t = TopK::new(3);
        for k in ["a", "b", "a", "c", "a", "b"] {
            t.add(k);
        }
        assert_eq!(
            keys(&t),
            [("a".into(), 3, 0), ("b".into(), 2, 0), ("c".into(), 1, 0)]
        );
    }

    #[test]
    fn a_new_key_replaces_the_smallest_and_inherits_its_count() {
        let mut t = TopK::new(2);
        for k in ["a", "a", "a", "b", "c"] {
            t.add(k);
        }
        // "c" replaced "b" (count 1): it may have been seen once, or twice.
        assert_eq!(keys(&t), [("a".into(), 3, 0), ("c".into(), 2, 1)]);
    }

    #[test]
    fn a_flood_of_distinct_keys_keeps_memory_and_the_heavy_hitter() {
        let mut t = TopK::new(10);
        for i in 0..100_000 {
            t.add(&format!("https://n{i}.example"));
            if i % 4 == 0 {
                t.add("https://frequent.example");
            }
        }
        let top = t.top();
        assert_eq!(top.len(), 10);
        assert_eq!(&*top[0].key, "https://frequent.example");
        // Its true count (25 000) is within the bounds reported.
        assert!(top[0].count - top[0].error <= 25_000 && 25_000 <= top[0].count);
    }

    #[test]
    fn long_keys_are_cut_on_a_character_boundary() {
        let mut t = TopK::new(1);
        let long = "é".repeat(MAX_KEY_LEN);
        t.add(&long);
        let kept = &t.top()[0].key;
        assert!(kept.len() <= MAX_KEY_LEN && kept.len() >= MAX_KEY_LEN - 1);
        // The same long key counts as the same key.
        t.add(&long);
        assert_eq!(t.top()[0].count, 2);
    }
}
