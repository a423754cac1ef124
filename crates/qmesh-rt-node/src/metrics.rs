//! The node's Prometheus metrics (`qmesh_rt_*`), labelled by stream.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use qmesh_process::Metrics;

type Labels = Vec<(String, String)>;

/// Every metric the node keeps.
#[derive(Debug, Clone)]
pub struct NodeMetrics {
    pub appended: Family<Labels, Counter>,
    pub appended_bytes: Family<Labels, Counter>,
    pub duplicates: Family<Labels, Counter>,
    pub dedup_gaps: Family<Labels, Counter>,
    pub errors: Family<Labels, Counter>,
    pub fsyncs: Family<Labels, Counter>,
    pub fsync_seconds: Histogram,
    pub group_commit_messages: Histogram,
    pub delivered: Family<Labels, Counter>,
    pub events: Family<Labels, Counter>,
    pub subscribers: Family<Labels, Gauge>,
    pub copies: Family<Labels, Gauge>,
    pub archived_segments: Family<Labels, Counter>,
    pub latest_position: Family<Labels, Gauge>,
    pub rebases: Family<Labels, Counter>,
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
}

impl NodeMetrics {
    pub fn new(metrics: &Metrics) -> NodeMetrics {
        let m = NodeMetrics {
            appended: Family::default(),
            appended_bytes: Family::default(),
            duplicates: Family::default(),
            dedup_gaps: Family::default(),
            errors: Family::default(),
            fsyncs: Family::default(),
            fsync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 14)),
            group_commit_messages: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            delivered: Family::default(),
            events: Family::default(),
            subscribers: Family::default(),
            copies: Family::default(),
            archived_segments: Family::default(),
            latest_position: Family::default(),
            rebases: Family::default(),
        };
        metrics.register("qmesh_rt_appended_messages", "Messages appended to a stream.", m.appended.clone());
        metrics.register(
            "qmesh_rt_appended_bytes",
            "Payload bytes appended to a stream.",
            m.appended_bytes.clone(),
        );
        metrics.register("qmesh_rt_duplicates", "Deduplicated messages dropped.", m.duplicates.clone());
        metrics.register(
            "qmesh_rt_dedup_gaps",
            "Ids skipped by a dedup key (messages a publisher never sent).",
            m.dedup_gaps.clone(),
        );
        metrics.register(
            "qmesh_rt_errors",
            "Requests refused or failed, by kind (async ones are only logged and counted here).",
            m.errors.clone(),
        );
        metrics.register(
            "qmesh_rt_fsyncs",
            "fsyncs of a stream's log (one per group commit).",
            m.fsyncs.clone(),
        );
        metrics.register("qmesh_rt_fsync_seconds", "Time one fsync took.", m.fsync_seconds.clone());
        metrics.register(
            "qmesh_rt_group_commit_messages",
            "Messages made durable by one fsync.",
            m.group_commit_messages.clone(),
        );
        metrics.register(
            "qmesh_rt_delivered_messages",
            "Messages pushed to subscribers.",
            m.delivered.clone(),
        );
        metrics.register("qmesh_rt_events", "Events pushed to subscribers, by event.", m.events.clone());
        metrics.register("qmesh_rt_subscribers", "Subscriptions open.", m.subscribers.clone());
        metrics.register(
            "qmesh_rt_copies",
            "Connections copying the stream to a subscriber's local copy (.rt.ship.pull).",
            m.copies.clone(),
        );
        metrics.register(
            "qmesh_rt_archived_segments",
            "Segments removed, by reason (age, size, disk, prune).",
            m.archived_segments.clone(),
        );
        metrics.register(
            "qmesh_rt_latest_position",
            "The position after the last durable message.",
            m.latest_position.clone(),
        );
        metrics.register(
            "qmesh_rt_ship_rebases",
            "Shipping publishers' marks forgotten because their local log was wiped or replaced (.rt.ship.rebase).",
            m.rebases.clone(),
        );
        m
    }

    pub fn stream(stream: &str) -> Labels {
        l(&[("stream", stream)])
    }

    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&l(&[("kind", kind)])).inc();
    }

    pub fn event(&self, stream: &str, event: &str) {
        self.events.get_or_create(&l(&[("stream", stream), ("event", event)])).inc();
    }

    pub fn archived(&self, stream: &str, reason: &str, n: u64) {
        self.archived_segments.get_or_create(&l(&[("stream", stream), ("reason", reason)])).inc_by(n);
    }
}
