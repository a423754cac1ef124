//! The metrics read from the cores when `/metrics` is scraped (gauges of
//! queues and instances, counters the cores keep), registered on the
//! process shell's registry.

use std::sync::Arc;

use qmesh_process::Metrics;

use super::{Core, Router};
use crate::lb::LoadBalancer;
use crate::metrics::{Labels, label, register_state};

pub(crate) fn register_lb_metrics(metrics: &Metrics, router: &Arc<Router>) {
    fn lb_sample(r: &Router, f: impl Fn(&LoadBalancer) -> Vec<(Labels, i64)>) -> Vec<(Labels, i64)> {
        r.lock().lb.as_ref().map(f).unwrap_or_default()
    }
    register_state(
        metrics,
        "qmesh_lb_queue_depth_requests",
        "Requests waiting for a free instance",
        router,
        false,
        |r| {
            lb_sample(r, |lb| {
                lb.snapshot()
                    .into_iter()
                    .map(|s| (label("service", s.service.text()), s.queued as i64))
                    .collect()
            })
        },
    );
    register_state(metrics, "qmesh_lb_instances", "Registered instances, free or busy", router, false, |r| {
        lb_sample(r, |lb| {
            lb.snapshot()
                .into_iter()
                .flat_map(|s| {
                    let name = s.service.text();
                    [
                        (
                            vec![
                                ("service".to_string(), name.clone()),
                                ("state".to_string(), "free".to_string()),
                            ],
                            s.free as i64,
                        ),
                        (
                            vec![("service".to_string(), name), ("state".to_string(), "busy".to_string())],
                            s.busy as i64,
                        ),
                    ]
                })
                .collect()
        })
    });
    register_state(metrics, "qmesh_lb_allocations", "Leases granted", router, true, |r| {
        lb_sample(r, |lb| vec![(Vec::new(), lb.stats().allocations as i64)])
    });
    register_state(metrics, "qmesh_lb_denied", "Requests refused, by reason", router, true, |r| {
        lb_sample(r, |lb| {
            let s = lb.stats();
            vec![
                (label("reason", "queue full"), s.denied_queue_full as i64),
                (label("reason", "unknown service"), s.denied_unknown as i64),
                (label("reason", "no instance"), s.denied_no_instance as i64),
            ]
        })
    });
    register_state(
        metrics,
        "qmesh_lb_stale_releases",
        "Releases that named no current lease (ignored)",
        router,
        true,
        |r| {
            lb_sample(r, |lb| {
                let s = lb.stats();
                vec![
                    (label("from", "gateway"), s.stale_gateway_releases as i64),
                    (label("from", "service"), s.stray_service_returns as i64),
                ]
            })
        },
    );
    register_state(
        metrics,
        "qmesh_lb_dropped_instances",
        "Instances dropped from the pool as stuck",
        router,
        true,
        |r| lb_sample(r, |lb| vec![(Vec::new(), lb.stats().dropped_stuck as i64)]),
    );
    register_state(
        metrics,
        "qmesh_lb_orphan_probes",
        "Probes of instances holding a dead gateway's allocation, and allocations they ended",
        router,
        true,
        |r| {
            lb_sample(r, |lb| {
                let s = lb.stats();
                vec![
                    (label("outcome", "sent"), s.probes as i64),
                    (label("outcome", "released"), s.orphans_released as i64),
                ]
            })
        },
    );
}

pub(crate) fn register_gw_metrics(metrics: &Metrics, router: &Arc<Router>) {
    fn gw_sample(r: &Router, f: impl Fn(&Core) -> Vec<(Labels, i64)>) -> Vec<(Labels, i64)> {
        r.lock().gw.as_ref().map(f).unwrap_or_default()
    }
    register_state(
        metrics,
        "qmesh_gateway_waiting_requests",
        "Request parts waiting for an allocation",
        router,
        false,
        |r| {
            gw_sample(r, |g| {
                g.snapshot()
                    .into_iter()
                    .map(|s| (label("service", s.service.text()), s.waiting as i64))
                    .collect()
            })
        },
    );
    register_state(
        metrics,
        "qmesh_gateway_in_flight_requests",
        "Request parts running on an instance",
        router,
        false,
        |r| {
            gw_sample(r, |g| {
                g.snapshot()
                    .into_iter()
                    .map(|s| (label("service", s.service.text()), s.in_flight as i64))
                    .collect()
            })
        },
    );
    register_state(metrics, "qmesh_gateway_instances_up", "Instances with a live link", router, false, |r| {
        gw_sample(r, |g| {
            g.snapshot()
                .into_iter()
                .map(|s| (label("service", s.service.text()), s.instances_up as i64))
                .collect()
        })
    });
    register_state(
        metrics,
        "qmesh_gateway_stale_results",
        "Results for requests long gone",
        router,
        true,
        |r| gw_sample(r, |g| vec![(Vec::new(), g.stats().stale_results as i64)]),
    );
}
