//! Deduplication: messages naming a `dedup` key are merged per key with a
//! high watermark of `id`; a message whose id is at or below the watermark
//! is a duplicate and is dropped.
//!
//! Ids follow rt.qpk's rule: "the message identifier … should … have a
//! distance from zero that is increasing by one with each message. For
//! example: `1 -2 3 4` is a valid sequence of ids, but `1 2 -2 4` is not."
//! So the watermark is kept on the distance from zero, `|id|`, and the sign
//! is free. Several publishers sending the same messages with the same ids
//! (rt.qpk's `dedup_id`) are merged into one copy: whichever copy arrives
//! first is kept.
//!
//! An id more than one above the watermark is accepted (a publisher that
//! lost messages before they reached the node cannot send them again) and
//! reported as a gap, which the node counts.

use std::collections::BTreeMap;

/// The distance from zero of an id, the quantity the watermark tracks;
/// `None` for the null long, which is no id.
pub fn distance(id: i64) -> Option<u64> {
    if id == i64::MIN { None } else { Some(id.unsigned_abs()) }
}

/// What [`Watermarks::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A new message; `gap` ids were skipped since the watermark (0 when
    /// the id is the next one, or the key is new).
    Accept { gap: u64 },
    /// At or below the watermark: drop it.
    Duplicate { watermark: u64 },
}

/// The high watermarks, one per dedup key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watermarks {
    marks: BTreeMap<String, u64>,
}

impl Watermarks {
    /// No keys.
    pub fn new() -> Watermarks {
        Watermarks::default()
    }

    /// What [`admit`](Watermarks::admit) would decide, without changing anything.
    pub fn check(&self, key: &str, id: i64) -> Verdict {
        let Some(d) = distance(id) else {
            return Verdict::Duplicate { watermark: self.get(key).unwrap_or(0) };
        };
        match self.marks.get(key) {
            None => Verdict::Accept { gap: 0 },
            Some(&w) if d <= w => Verdict::Duplicate { watermark: w },
            Some(&w) => Verdict::Accept { gap: d - w - 1 },
        }
    }

    /// Decides on a message with `id` under `key` and, when it is new,
    /// raises the watermark to it.
    pub fn admit(&mut self, key: &str, id: i64) -> Verdict {
        let v = self.check(key, id);
        if let (Verdict::Accept { .. }, Some(d)) = (v, distance(id)) {
            match self.marks.get_mut(key) {
                Some(w) => *w = d,
                None => {
                    self.marks.insert(key.to_string(), d);
                }
            }
        }
        v
    }

    /// Raises `key`'s watermark to `id` if it is higher (recovery: replaying
    /// the log's records, which were all admitted once).
    pub fn observe(&mut self, key: &str, id: i64) {
        if let Some(d) = distance(id) {
            let w = self.marks.entry(key.to_string()).or_insert(d);
            *w = (*w).max(d);
        }
    }

    /// The watermark of `key`.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.marks.get(key).copied()
    }

    /// Every key and its watermark, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.marks.iter().map(|(k, &w)| (k.as_str(), w))
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.marks.len()
    }

    /// Whether no key has a watermark.
    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }

    /// Forgets every watermark (a hard reset starts a new session).
    pub fn clear(&mut self) {
        self.marks.clear();
    }

    /// Forgets `key`'s watermark, returning it (the node's shipping marks: a publisher whose local log was wiped
    /// starts its positions again, [`crate::ship::REBASE`]).
    pub fn remove(&mut self, key: &str) -> Option<u64> {
        self.marks.remove(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rt_qpk_sequence_is_accepted_and_repeats_dropped() {
        let mut w = Watermarks::new();
        for id in [1, -2, 3, 4] {
            assert_eq!(w.admit("trade", id), Verdict::Accept { gap: 0 }, "id {id}");
        }
        assert_eq!(w.admit("trade", 4), Verdict::Duplicate { watermark: 4 });
        assert_eq!(w.admit("trade", -3), Verdict::Duplicate { watermark: 4 });
        assert_eq!(w.get("trade"), Some(4));
    }

    #[test]
    fn keys_are_independent_and_two_publishers_merge() {
        let mut w = Watermarks::new();
        // publisher A and B send the same ids; the first copy wins
        let mut kept = Vec::new();
        for (p, id) in [("A", 1), ("B", 1), ("B", 2), ("A", 2), ("A", 3), ("B", 3), ("B", 4)] {
            if let Verdict::Accept { .. } = w.admit("trade", id) {
                kept.push((p, id));
            }
        }
        assert_eq!(kept, vec![("A", 1), ("B", 2), ("A", 3), ("B", 4)]);
        assert_eq!(w.admit("quote", 1), Verdict::Accept { gap: 0 });
    }

    #[test]
    fn gaps_are_reported() {
        let mut w = Watermarks::new();
        w.admit("k", 1);
        assert_eq!(w.admit("k", 5), Verdict::Accept { gap: 3 });
        assert_eq!(w.get("k"), Some(5));
    }

    #[test]
    fn null_id_is_never_admitted() {
        let mut w = Watermarks::new();
        assert!(matches!(w.admit("k", i64::MIN), Verdict::Duplicate { .. }));
        assert!(w.is_empty());
    }

    #[test]
    fn observe_only_raises() {
        let mut w = Watermarks::new();
        w.observe("k", 5);
        w.observe("k", -3);
        assert_eq!(w.get("k"), Some(5));
        w.clear();
        assert!(w.is_empty());
    }

    #[test]
    fn remove_forgets_one_key() {
        let mut w = Watermarks::new();
        w.observe("a", 5);
        w.observe("b", 7);
        assert_eq!(w.remove("a"), Some(5));
        assert_eq!(w.remove("a"), None);
        assert_eq!((w.get("a"), w.get("b")), (None, Some(7)));
        // a forgotten key starts again from anything
        w.observe("a", 1);
        assert_eq!(w.get("a"), Some(1));
    }
}
