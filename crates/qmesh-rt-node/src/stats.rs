//! Per-stream bookkeeping for `/api/streams`: publishers with their last id
//! and message rate. Sans-IO: time is passed in.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The window a publisher's rate is measured over.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Most publishers (origins) remembered per stream; past it the one heard
/// from least recently is forgotten, so a stream fed by ever new origins
/// does not grow the node's memory.
pub const MAX_PUBLISHERS: usize = 1024;

/// One publisher, by origin (`on`).
#[derive(Debug, Clone, PartialEq)]
pub struct Publisher {
    /// Messages appended.
    pub messages: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// The last id it sent, if it sends ids.
    pub last_id: Option<i64>,
    /// Messages per second over the last complete [`RATE_WINDOW`].
    pub rate: f64,
    window_start: Instant,
    window_count: u64,
    last_seen: Instant,
}

impl Publisher {
    fn new(now: Instant) -> Publisher {
        Publisher {
            messages: 0,
            duplicates: 0,
            last_id: None,
            rate: 0.0,
            window_start: now,
            window_count: 0,
            last_seen: now,
        }
    }

    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= RATE_WINDOW {
            // a window with no message in it since the last one: rate 0
            self.rate = if elapsed < 2 * RATE_WINDOW {
                self.window_count as f64 / elapsed.as_secs_f64()
            } else {
                0.0
            };
            self.window_start = now;
            self.window_count = 0;
        }
    }

    /// The rate as of `now` (a publisher that went quiet decays to 0).
    pub fn rate_at(&self, now: Instant) -> f64 {
        if now.saturating_duration_since(self.window_start) >= 2 * RATE_WINDOW { 0.0 } else { self.rate }
    }
}

/// The publishers of one stream.
#[derive(Debug, Clone, Default)]
pub struct Publishers {
    by_origin: BTreeMap<String, Publisher>,
}

impl Publishers {
    /// Counts a message from `origin`.
    pub fn appended(&mut self, origin: &str, id: Option<i64>, now: Instant) {
        let p = self.entry(origin, now);
        p.roll(now);
        p.messages += 1;
        p.window_count += 1;
        if id.is_some() {
            p.last_id = id;
        }
    }

    /// Counts a duplicate from `origin`.
    pub fn duplicate(&mut self, origin: &str, id: i64, now: Instant) {
        let p = self.entry(origin, now);
        p.duplicates += 1;
        p.last_id = Some(id);
    }

    fn entry(&mut self, origin: &str, now: Instant) -> &mut Publisher {
        if !self.by_origin.contains_key(origin) && self.by_origin.len() >= MAX_PUBLISHERS {
            let oldest = self.by_origin.iter().min_by_key(|(_, p)| p.last_seen).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.by_origin.remove(&k);
            }
        }
        let p = self.by_origin.entry(origin.to_string()).or_insert_with(|| Publisher::new(now));
        p.last_seen = now;
        p
    }

    /// Every publisher by origin.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Publisher)> {
        self.by_origin.iter().map(|(k, p)| (k.as_str(), p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_ids_and_rate() {
        let t0 = Instant::now();
        let mut p = Publishers::default();
        for i in 0..10 {
            p.appended("feed", Some(i), t0 + Duration::from_millis(i as u64 * 50));
        }
        p.appended("feed", Some(10), t0 + Duration::from_millis(1000));
        let (_, f) = p.iter().next().expect("one");
        assert_eq!(f.messages, 11);
        assert_eq!(f.last_id, Some(10));
        assert!((f.rate - 10.0).abs() < 1e-9, "rate {}", f.rate);
        assert_eq!(f.rate_at(t0 + Duration::from_secs(5)), 0.0);
        p.duplicate("feed", 3, t0);
        assert_eq!(p.iter().next().expect("one").1.duplicates, 1);
    }

    #[test]
    fn forgets_the_least_recent_past_the_bound() {
        let t0 = Instant::now();
        let mut p = Publishers::default();
        for i in 0..=MAX_PUBLISHERS {
            p.appended(&format!("o{i}"), None, t0 + Duration::from_micros(i as u64));
        }
        assert_eq!(p.iter().count(), MAX_PUBLISHERS);
        assert!(p.iter().all(|(k, _)| k != "o0"));
    }
}
