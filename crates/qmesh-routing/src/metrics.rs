//! Prometheus metrics of the load balancer and the gateway.
//!
//! Counters and histograms are updated as events happen; gauges and the
//! cores' own counters are read from the state when `/metrics` is scraped
//! (a [`StateMetric`] takes the router's lock once per metric, briefly).
//!
//! Gateway (`qmesh_gateway_…`):
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `requests_total` | `mode` (sync, deferred, callback, http) | client requests received |
//! | `errors_total` | `kind` (catalog word) | requests answered with an error |
//! | `request_duration_seconds` | `service` | time from request to reply (histogram) |
//! | `waiting_requests` | `service` | parts waiting for an allocation (the gateway's queue depth) |
//! | `in_flight_requests` | `service` | parts dispatched to an instance, not yet answered |
//! | `instances_up` | `service` | instances with a live link |
//! | `stale_results_total` | | results for requests long gone |
//!
//! Load balancer (`qmesh_lb_…`):
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `queue_depth_requests` | `service` | requests waiting for a free instance |
//! | `instances` | `service`, `state` (free, busy) | registered instances |
//! | `allocations_total` | | leases granted |
//! | `denied_total` | `reason` | requests refused |
//! | `stale_releases_total` | `from` (gateway, service) | releases that named no current lease (ignored) |
//! | `dropped_instances_total` | | instances dropped as stuck |
//! | `orphan_probes_total` | `outcome` (sent, released) | probes of instances holding a dead gateway's allocation; allocations they ended (the query never reached the instance) |

use std::sync::{Arc, Weak};

use bytes::Bytes;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use qmesh_process::Metrics;

/// Label pairs of one sample.
pub type Labels = Vec<(String, String)>;

type Sampler = dyn Fn() -> Vec<(Labels, i64)> + Send + Sync;

/// A metric whose samples are computed at scrape time.
pub struct StateMetric {
    sample: Box<Sampler>,
    counter: bool,
}

impl std::fmt::Debug for StateMetric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMetric").field("counter", &self.counter).finish_non_exhaustive()
    }
}

impl StateMetric {
    pub fn gauge(sample: impl Fn() -> Vec<(Labels, i64)> + Send + Sync + 'static) -> StateMetric {
        StateMetric { sample: Box::new(sample), counter: false }
    }

    pub fn counter(sample: impl Fn() -> Vec<(Labels, i64)> + Send + Sync + 'static) -> StateMetric {
        StateMetric { sample: Box::new(sample), counter: true }
    }
}

impl EncodeMetric for StateMetric {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counter = self.counter;
        let put = |e: &mut MetricEncoder, v: i64| {
            if counter {
                e.encode_counter::<NoLabelSet, u64, u64>(&(v.max(0) as u64), None)
            } else {
                e.encode_gauge(&v)
            }
        };
        for (labels, v) in (self.sample)() {
            if labels.is_empty() {
                put(&mut encoder, v)?;
            } else {
                put(&mut encoder.encode_family(&labels)?, v)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        if self.counter { MetricType::Counter } else { MetricType::Gauge }
    }
}

/// One label.
pub fn label(k: &str, v: impl Into<String>) -> Labels {
    vec![(k.to_string(), v.into())]
}

/// Registers a state metric that samples through a weak reference (so the
/// registry does not keep the router alive).
pub fn register_state<T: Send + Sync + 'static>(
    metrics: &Metrics,
    name: &str,
    help: &str,
    target: &Arc<T>,
    counter: bool,
    f: impl Fn(&T) -> Vec<(Labels, i64)> + Send + Sync + 'static,
) {
    let weak: Weak<T> = Arc::downgrade(target);
    let sample = move || weak.upgrade().map(|t| f(&t)).unwrap_or_default();
    let m = if counter { StateMetric::counter(sample) } else { StateMetric::gauge(sample) };
    metrics.register(name, help, m);
}

/// The event-driven metrics of a gateway. Handles used on every request are
/// created once (no label allocation per request).
#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    pub requests: Family<Labels, Counter>,
    pub errors: Family<Labels, Counter>,
    pub latency: Family<Labels, Histogram>,
    by_mode: [Counter; 4],
    by_service: Arc<std::sync::Mutex<std::collections::HashMap<Bytes, Histogram>>>,
}

/// Reply modes, for [`GatewayMetrics::request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Sync = 0,
    Deferred = 1,
    Callback = 2,
    Http = 3,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Deferred => "deferred",
            Mode::Callback => "callback",
            Mode::Http => "http",
        }
    }
}

/// Latency buckets: 20 µs doubling to about 84 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(20e-6, 2.0, 23))
}

impl GatewayMetrics {
    pub fn register(metrics: &Metrics) -> GatewayMetrics {
        let requests: Family<Labels, Counter> = Family::default();
        let by_mode = [Mode::Sync, Mode::Deferred, Mode::Callback, Mode::Http]
            .map(|m| requests.get_or_create(&label("mode", m.name())).clone());
        let m = GatewayMetrics {
            requests,
            errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            by_mode,
            by_service: Arc::default(),
        };
        metrics.register(
            "qmesh_gateway_requests",
            "Client requests received, by reply mode",
            m.requests.clone(),
        );
        metrics.register(
            "qmesh_gateway_errors",
            "Requests answered with an error, by kind",
            m.errors.clone(),
        );
        metrics.register(
            "qmesh_gateway_request_duration_seconds",
            "Time from a client request to its reply, by (first) service",
            m.latency.clone(),
        );
        m
    }

    /// Counts a request.
    pub fn request(&self, mode: Mode) {
        self.by_mode[mode as usize].inc();
    }

    /// Counts an error of `kind`.
    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&label("kind", kind)).inc();
    }

    /// Records a request's duration.
    pub fn observe(&self, service: &crate::types::ServiceName, seconds: f64) {
        let mut map = self.by_service.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(h) = map.get(service.bytes()) {
            h.observe(seconds);
            return;
        }
        let h = self.latency.get_or_create(&label("service", service.text())).clone();
        h.observe(seconds);
        map.insert(service.bytes().clone(), h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_metrics_render_with_labels() {
        let metrics = Metrics::new();
        let target = Arc::new(5i64);
        register_state(&metrics, "qmesh_test_depth", "Depth", &target, false, |v| {
            vec![(label("service", "EQ"), *v), (label("service", "FX"), 1)]
        });
        register_state(&metrics, "qmesh_test_things", "Things", &target, true, |v| vec![(Vec::new(), *v)]);
        let text = metrics.render();
        assert!(text.contains("qmesh_test_depth{service=\"EQ\"} 5"), "{text}");
        assert!(text.contains("qmesh_test_depth{service=\"FX\"} 1"), "{text}");
        assert!(text.contains("qmesh_test_things_total 5"), "{text}");
        drop(target);
        assert!(!metrics.render().contains("qmesh_test_depth{"));
    }
}
