//! What a publisher's local log holds that the node has not acknowledged: counted from the log itself, so a
//! stopping publisher can say how many of its messages wait there for the next start
//! ([`crate::publisher::Publisher::acked`] is a position, not a count).

use qmesh_log::{Item, LogHandle, Position, Start};

/// Counts the messages of `log` at or after `from` (a record's position, e.g. the first message published this
/// run) that come after `acked` (the last position the node acknowledged, [`crate::publisher::Publisher::acked`];
/// `None`: nothing acknowledged, every message from `from` counts). Blocking: it reads the log from
/// `max(from, acked)` to its end.
pub fn unacknowledged(log: &LogHandle, from: u64, acked: Option<u64>) -> Result<u64, qmesh_log::Error> {
    let (from, acked) = (Position::from_u64(from), acked.map(Position::from_u64));
    // the acknowledged record's segment is never truncated (only segments wholly at or before it are)
    let start = match acked {
        Some(a) if a >= from => a,
        _ => from,
    };
    let mut r = log.reader(Start::At(start))?;
    let mut n = 0u64;
    while let Some(item) = r.next()? {
        if let Item::Entry(e) = item
            && e.position >= from
            && acked.is_none_or(|a| e.position > a)
        {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qmesh_log::{Durability, Log, LogOptions, RecordHeader};

    #[test]
    fn counts_what_follows_the_acknowledged_position_from_this_runs_first() {
        let dir = std::env::temp_dir().join(format!("qmesh-backlog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let opts =
            LogOptions { segment_size: qmesh_log::DEFAULT_SEGMENT_SIZE, durability: Durability::Never };
        let (mut log, _) = Log::open(&dir, opts).expect("open");
        let h = RecordHeader { on: b"p", ts: 0, id: i64::MIN, to: i64::MIN, dedup: None };
        let earlier: Vec<Position> = (0..3).map(|_| log.append(&h, b"x").expect("append")).collect();
        let run: Vec<Position> = (0..5).map(|_| log.append(&h, b"y").expect("append")).collect();
        log.sync().expect("sync");
        let handle = log.handle();
        // nothing acknowledged: this run's five
        assert_eq!(unacknowledged(&handle, run[0].as_u64(), None).expect("count"), 5);
        // acknowledged up to an earlier run's record: still this run's five
        assert_eq!(unacknowledged(&handle, run[0].as_u64(), Some(earlier[1].as_u64())).expect("count"), 5);
        // acknowledged up to this run's second: three left
        assert_eq!(unacknowledged(&handle, run[0].as_u64(), Some(run[1].as_u64())).expect("count"), 3);
        // everything acknowledged
        assert_eq!(unacknowledged(&handle, run[0].as_u64(), Some(run[4].as_u64())).expect("count"), 0);
        drop(log);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
