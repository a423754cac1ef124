//! The registry's Prometheus metrics: its own counters and histograms, and
//! one state gauge per process.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use qmesh_process::Metrics;

use crate::registry::{Change, State};

type Labels = Vec<(String, String)>;

/// Handles onto the registry's metrics (clones share the values).
#[derive(Debug, Clone)]
pub struct RegistryMetrics {
    /// Heartbeats accepted, by form (`async`, `sync`).
    pub heartbeats: Family<Labels, Counter>,
    /// Heartbeats and calls refused, by reason.
    pub rejected: Family<Labels, Counter>,
    /// Processes per state.
    pub processes: Family<Labels, Gauge>,
    /// `qmesh_discovery_process_state{process,kind,state} 1` per process.
    pub process_state: Family<Labels, Gauge>,
    /// Changes made (the feed's head).
    pub changes: Counter,
    /// WebSocket subscribers now.
    pub ws_subscribers: Gauge,
    /// WebSocket subscribers dropped as too slow.
    pub ws_dropped: Counter,
    /// Time to handle one heartbeat (decode, registry, feed), seconds.
    pub heartbeat_seconds: Histogram,
    /// Time to write one batch to the store, seconds.
    pub persist_seconds: Histogram,
    /// Rows written to the store.
    pub persisted_rows: Counter,
}

impl RegistryMetrics {
    /// Creates the metrics and registers them in `metrics`.
    pub fn new(metrics: &Metrics) -> RegistryMetrics {
        let m = RegistryMetrics {
            heartbeats: Family::default(),
            rejected: Family::default(),
            processes: Family::default(),
            process_state: Family::default(),
            changes: Counter::default(),
            ws_subscribers: Gauge::default(),
            ws_dropped: Counter::default(),
            heartbeat_seconds: Histogram::new(exponential_buckets(0.000_001, 4.0, 12)),
            persist_seconds: Histogram::new(exponential_buckets(0.000_1, 4.0, 10)),
            persisted_rows: Counter::default(),
        };
        metrics.register("qmesh_discovery_heartbeats", "Heartbeats accepted, by form", m.heartbeats.clone());
        metrics.register(
            "qmesh_discovery_rejected",
            "Heartbeats and calls refused, by reason",
            m.rejected.clone(),
        );
        metrics.register("qmesh_discovery_processes", "Processes per state", m.processes.clone());
        metrics.register(
            "qmesh_discovery_process_state",
            "1 for each process, labelled with its current state",
            m.process_state.clone(),
        );
        metrics.register("qmesh_discovery_changes", "Changes made to the registry", m.changes.clone());
        metrics.register(
            "qmesh_discovery_ws_subscribers",
            "WebSocket subscribers now",
            m.ws_subscribers.clone(),
        );
        metrics.register(
            "qmesh_discovery_ws_dropped",
            "WebSocket subscribers dropped as too slow",
            m.ws_dropped.clone(),
        );
        metrics.register(
            "qmesh_discovery_heartbeat_seconds",
            "Time to handle one heartbeat",
            m.heartbeat_seconds.clone(),
        );
        metrics.register(
            "qmesh_discovery_persist_seconds",
            "Time to write one batch of rows to the store",
            m.persist_seconds.clone(),
        );
        metrics.register(
            "qmesh_discovery_persisted_rows",
            "Rows written to the store",
            m.persisted_rows.clone(),
        );
        for s in State::ALL {
            if s != State::Removed {
                m.processes.get_or_create(&state_label(s)).set(0);
            }
        }
        m
    }

    pub fn reject(&self, reason: &str) {
        self.rejected.get_or_create(&vec![("reason".to_string(), reason.to_string())]).inc();
    }

    pub fn heartbeat(&self, form: &'static str) {
        self.heartbeats.get_or_create(&vec![("form".to_string(), form.to_string())]).inc();
    }
}

fn state_label(s: State) -> Labels {
    vec![("state".to_string(), s.word().to_string())]
}

/// Keeps the per-process gauge and the per-state counts in step with the
/// changes (called under the registry's lock, for every change).
#[derive(Debug, Default)]
pub struct StateGauges {
    current: HashMap<Arc<str>, (Arc<str>, State)>,
}

impl StateGauges {
    pub fn apply(&mut self, m: &RegistryMetrics, change: &Change) {
        let (name, next) = match change {
            Change::Beat { .. } => return,
            Change::Upsert(p) => (&p.name, Some((Arc::clone(&p.kind), p.state))),
            Change::Removed { name, .. } => (name, None),
        };
        let prev = self.current.get(name).cloned();
        if prev == next {
            return;
        }
        if let Some((kind, state)) = &prev {
            m.process_state.remove(&labels(name, kind, *state));
            m.processes.get_or_create(&state_label(*state)).dec();
        }
        match next {
            Some((kind, state)) => {
                m.process_state.get_or_create(&labels(name, &kind, state)).set(1);
                m.processes.get_or_create(&state_label(state)).inc();
                self.current.insert(Arc::clone(name), (kind, state));
            }
            None => {
                self.current.remove(name);
            }
        }
    }

    /// A row restored at start (no change is emitted for those).
    pub fn restore(&mut self, m: &RegistryMetrics, p: &Arc<crate::registry::Process>) {
        self.apply(m, &Change::Upsert(Arc::clone(p)));
    }
}

fn labels(name: &str, kind: &str, state: State) -> Labels {
    vec![
        ("process".to_string(), name.to_string()),
        ("kind".to_string(), kind.to_string()),
        ("state".to_string(), state.word().to_string()),
    ]
}
