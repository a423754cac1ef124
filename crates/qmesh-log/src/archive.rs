//! Garbage collection: the archiver's policies (RT's `retentionDuration`, `maxLogSize`, `maxDiskUsagePercent`) and
//! a lead subscriber's prune. Only rolled segments are removed, oldest first, so the log stays one contiguous run of
//! segments; readers positioned in a removed segment get `skip-forward`.

use std::time::Duration;

use crate::error::Result;
use crate::log::{Log, MaxTs};
use crate::position::{Position, SegmentId};
use crate::storage::Storage;

/// When rolled segments are removed. Each limit is optional; a segment goes when any limit says so.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct ArchivePolicy {
    /// Remove a rolled segment whose newest record (by record `ts`) is older than this (RT's `retentionDuration`,
    /// default 7 days there). Segments without a timestamped record count as old.
    pub max_age: Option<Duration>,
    /// Remove the oldest rolled segments while all segments together hold more bytes than this (RT's
    /// `maxLogSize`, default 5 GiB there).
    pub max_bytes: Option<u64>,
    /// Remove the oldest rolled segments while the device holding the log is fuller than this percentage (RT's
    /// `maxDiskUsagePercent`, default 90 there).
    pub max_disk_percent: Option<f64>,
}

impl ArchivePolicy {
    /// RT's defaults: 7 days, 5 GiB, 90 %.
    pub fn rt_defaults() -> Self {
        Self {
            max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            max_bytes: Some(5 << 30),
            max_disk_percent: Some(90.0),
        }
    }
}

/// What an archive or prune removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveReport {
    /// Segments removed, oldest first.
    pub removed: Vec<SegmentId>,
    /// Bytes freed.
    pub bytes: u64,
    /// The first unarchived position afterwards.
    pub first: Position,
}

/// Why the oldest segment goes.
fn due<S: Storage>(log: &mut Log<S>, policy: &ArchivePolicy, oldest: SegmentId, now: i64) -> Result<bool> {
    if let Some(age) = policy.max_age {
        let cutoff = now.saturating_sub(i64::try_from(age.as_nanos()).unwrap_or(i64::MAX));
        match log.max_ts_of(oldest)? {
            MaxTs::At(t) if t >= cutoff => {}
            _ => return Ok(true),
        }
    }
    if policy.max_bytes.is_some_and(|max| log.handle().total_bytes() > max) {
        return Ok(true);
    }
    if let Some(max) = policy.max_disk_percent {
        let usage = log.handle().storage().disk_usage().map_err(|source| crate::Error::Io {
            op: "statvfs",
            segment: oldest,
            source,
        })?;
        if usage.is_some_and(|u| u.percent() > max) {
            return Ok(true);
        }
    }
    Ok(false)
}

impl<S: Storage> Log<S> {
    /// Runs the archiver once: removes rolled segments, oldest first, while `policy` says the oldest must go.
    /// `now` is the current time as a kdb+ timestamp (nanoseconds since 2000.01.01), given by the caller.
    pub fn archive(&mut self, policy: &ArchivePolicy, now: i64) -> Result<ArchiveReport> {
        let mut report = ArchiveReport::default();
        while let Some(oldest) = self.oldest_rolled() {
            if !due(self, policy, oldest, now)? {
                break;
            }
            report.bytes += self.remove_segment(oldest)?;
            report.removed.push(oldest);
        }
        report.first = self.first_position();
        Ok(report)
    }

    /// A lead subscriber's `.rt.prune`: removes every rolled segment all of whose records are before `pos`. Takes
    /// precedence over the archiver (it may remove what the policy would keep); never removes the active segment.
    pub fn prune(&mut self, pos: Position) -> Result<ArchiveReport> {
        let mut report = ArchiveReport::default();
        while let Some(oldest) = self.oldest_rolled() {
            let end = self.handle().segments().first().map(|s| s.end).unwrap_or_default();
            if oldest >= pos.segment() && end > pos {
                break;
            }
            report.bytes += self.remove_segment(oldest)?;
            report.removed.push(oldest);
        }
        report.first = self.first_position();
        Ok(report)
    }

    fn oldest_rolled(&self) -> Option<SegmentId> {
        self.handle().segments().first().filter(|s| s.rolled && s.id != self.active_segment()).map(|s| s.id)
    }
}
