use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::{Metric, Registry};

/// A process's metric registry, shared by every component in it.
///
/// Metric names follow `qmesh_<component>_<what>_<unit>`; the registry adds
/// no prefix of its own, so the full name is given at registration (without
/// the `_total` suffix a counter gets on exposition).
#[derive(Clone, Default)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Registers `metric` (a clone is kept; metrics are handles onto shared
    /// values, so the caller's copy and the registry's stay in step).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.lock().register(name, help, metric);
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.lock());
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while registering leaves the registry usable; carry on.
        self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn renders_registered_counters() {
        let metrics = Metrics::new();
        let served: Counter = Counter::default();
        metrics.register("qmesh_test_requests", "Requests served.", served.clone());
        served.inc_by(3);
        let text = metrics.render();
        assert!(text.contains("qmesh_test_requests_total 3"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
