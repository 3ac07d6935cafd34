//! The control plane's Prometheus metrics: API requests by route and
//! status, heartbeat handling time, scheduling decisions and their time,
//! store commit time, and (read at each scrape) nodes and replicas by
//! state and the replicas pending.

use super::Shared;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// The API's routes, as route labels name them: `:name` stands for any
/// one segment. A request on no route is labelled `unmatched`, so the
/// label's values are these whatever clients ask for.
const ROUTES: [&str; 32] = [
    "/v1/health",
    "/v1/join",
    "/v1/node/sync",
    "/v1/node/news",
    "/v1/node/renew",
    "/v1/node/workload-cert",
    "/v1/node/blobs/:name",
    "/v1/blobs/:name",
    "/v1/standby/blobs/:name",
    "/v1/apps",
    "/v1/apps/:name",
    "/v1/apps/:name/scale",
    "/v1/apps/:name/logs",
    "/v1/apps/:name/rollback",
    "/v1/apps/:name/promote",
    "/v1/events",
    "/v1/join-tokens",
    "/v1/nodes",
    "/v1/nodes/:name",
    "/v1/nodes/:name/labels",
    "/v1/nodes/:name/:name",
    "/v1/replicas",
    "/v1/certs",
    "/v1/certs/:name",
    "/v1/top",
    "/v1/ui/links",
    "/ui",
    "/ui/login",
    "/ui/logout",
    "/ui/app.js",
    "/ui/style.css",
    "/",
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    method: &'static str,
    route: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: &'static str,
}

/// Buckets of API request durations, seconds: a node's heartbeat is held
/// up to its interval, a deploy waits for its placement.
fn api_duration_histogram() -> Histogram {
    Histogram::new([
        0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    outcome: &'static str,
}

/// The control plane's own metrics.
#[derive(Debug)]
pub(crate) struct ControlMetrics {
    api_requests: Family<ApiLabels, Counter>,
    api_durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
    heartbeats: Histogram,
    decisions: Family<DecisionLabels, Counter>,
    scheduling: Histogram,
}

impl Default for ControlMetrics {
    fn default() -> Self {
        ControlMetrics {
            api_requests: Family::default(),
            api_durations: Family::new_with_constructor(api_duration_histogram),
            heartbeats: Histogram::new([
                0.000_1, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            decisions: Family::default(),
            scheduling: Histogram::new([
                0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
            ]),
        }
    }
}

impl ControlMetrics {
    /// Counts an API request `method` `path` answered with `status`
    /// after `took`.
    pub(crate) fn record_api(
        &self,
        method: &http::Method,
        path: &str,
        status: http::StatusCode,
        took: Duration,
    ) {
        let (method, route) = (method_label(method), route_label(path));
        self.api_requests
            .get_or_create(&ApiLabels {
                method,
                route,
                status: status.as_u16(),
            })
            .inc();
        self.api_durations
            .get_or_create(&RouteLabels { method, route })
            .observe(took.as_secs_f64());
    }

    /// Records how long the control plane took over one heartbeat (up to
    /// holding it for news).
    pub(crate) fn record_heartbeat(&self, took: Duration) {
        self.heartbeats.observe(took.as_secs_f64());
    }

    /// Records one scheduler run that placed `placed` replicas and could
    /// not place `unplaced` in `took`.
    pub(crate) fn record_scheduling(&self, placed: u64, unplaced: u64, took: Duration) {
        self.scheduling.observe(took.as_secs_f64());
        for (outcome, count) in [("placed", placed), ("unplaced", unplaced)] {
            if count > 0 {
                self.decisions
                    .get_or_create(&DecisionLabels { outcome })
                    .inc_by(count);
            }
        }
    }
}

/// Adds the control plane's metrics to `registry`.
pub(crate) fn register(shared: &Arc<Shared>, registry: &mut Registry) {
    let metrics = &shared.metrics;
    registry.register(
        "api_requests",
        "Control plane API requests, by method, route and status",
        metrics.api_requests.clone(),
    );
    registry.register_with_unit(
        "api_request_duration",
        "Time the control plane took to answer an API request, by method and route (a deploy waits for its placement; a node's sync is held while nothing changes for it)",
        Unit::Seconds,
        metrics.api_durations.clone(),
    );
    registry.register_with_unit(
        "heartbeat_duration",
        "Time the control plane took over a node's heartbeat, before holding it for news",
        Unit::Seconds,
        metrics.heartbeats.clone(),
    );
    registry.register(
        "scheduling_decisions",
        "Replicas the scheduler placed or could not place",
        metrics.decisions.clone(),
    );
    registry.register_with_unit(
        "scheduling_duration",
        "Time one scheduler run took",
        Unit::Seconds,
        metrics.scheduling.clone(),
    );
    registry.register_with_unit(
        "store_write_duration",
        "Time a cluster state transaction took to commit",
        Unit::Seconds,
        crate::state::WRITE_DURATIONS.clone(),
    );
    registry.register_collector(Box::new(ClusterState(Arc::downgrade(shared))));
}

/// Adds when the cluster CA expires to `registry` (a node in the same
/// process reports it already).
pub(crate) fn register_certificates(shared: &Shared, registry: &mut Registry) {
    let ca = shared.ca.cert_pem().to_string();
    registry.register_collector(Box::new(crate::mesh::metrics::CertificateExpiry(
        move || vec![("ca", ca.clone())],
    )));
}

/// `GET` and the like as themselves; anything else as `OTHER`.
fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

/// The route of [`ROUTES`] `path` is on (the most literal one first), or
/// `unmatched`.
fn route_label(path: &str) -> &'static str {
    ROUTES
        .iter()
        .filter(|route| super::path_fits(route, path))
        .min_by_key(|route| route.matches(":name").count())
        .copied()
        .unwrap_or("unmatched")
}

/// Nodes and replicas by state, read from the live state at each scrape.
struct ClusterState(Weak<Shared>);

impl std::fmt::Debug for ClusterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterState")
    }
}

impl Collector for ClusterState {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(shared) = self.0.upgrade() else {
            return Ok(());
        };
        let nodes = count_by(
            &["ready", "down", "unknown", "cordoned", "draining"],
            super::views::node_views(&shared)
                .into_iter()
                .map(|n| n.state),
        );
        let replicas = count_by(
            &["pending", "starting", "running", "failed", "unknown"],
            super::views::replica_views(&shared, None)
                .into_iter()
                .map(|r| r.state),
        );
        for (name, help, counts) in [
            ("nodes", "Nodes, by state.", &nodes),
            ("replicas", "Replicas, by state.", &replicas),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (state, count) in counts {
                ConstGauge::new(*count)
                    .encode(family.encode_family(&[("state", state.as_str())])?)?;
            }
        }
        // Each certificate the cluster serves apps with, and each domain
        // whose order or renewal is failing: what an alert on expiry, or
        // on ACME, watches.
        let (expiries, failing) = {
            let live = shared.live();
            let expiries: Vec<(String, &'static str, i64)> = live
                .certs
                .stored
                .values()
                .map(|held| {
                    (
                        held.record.domain.clone(),
                        super::certs::source_name(held.record.source),
                        held.info.not_after,
                    )
                })
                .collect();
            let failing: Vec<String> = live
                .certs
                .acme
                .iter()
                .filter(|(_, progress)| progress.error.is_some())
                .map(|(domain, _)| domain.clone())
                .collect();
            (expiries, failing)
        };
        let mut family = encoder.encode_descriptor(
            "app_certificate_expiry_timestamp",
            "When each certificate the cluster serves apps with over HTTPS stops being valid, Unix time, by domain and source (uploaded, acme).",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for (domain, source, not_after) in &expiries {
            ConstGauge::new(*not_after).encode(
                family.encode_family(&[("domain", domain.as_str()), ("source", *source)])?,
            )?;
        }
        let mut family = encoder.encode_descriptor(
            "app_certificate_order_failing",
            "Domains whose ACME order or renewal failed last time (1), by domain; `skiff certs` says why.",
            None,
            MetricType::Gauge,
        )?;
        for domain in &failing {
            ConstGauge::new(1).encode(family.encode_family(&[("domain", domain.as_str())])?)?;
        }
        let pending = replicas.get("pending").copied().unwrap_or(0);
        ConstGauge::new(pending).encode(encoder.encode_descriptor(
            "replicas_pending",
            "Replicas waiting for a node to place them on.",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

/// How many of `states` are each state; every one of `known` shows, at
/// zero when none is in it.
fn count_by(known: &[&str], states: impl Iterator<Item = String>) -> BTreeMap<String, i64> {
    let mut counts: BTreeMap<String, i64> =
        known.iter().map(|state| (state.to_string(), 0)).collect();
    for state in states {
        *counts.entry(state).or_default() += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_the_apis_own_or_unmatched() {
        assert_eq!(route_label("/v1/apps/shop/scale"), "/v1/apps/:name/scale");
        assert_eq!(route_label("/v1/node/sync"), "/v1/node/sync");
        assert_eq!(route_label("/v1/nodes/a/labels"), "/v1/nodes/:name/labels");
        assert_eq!(route_label("/v1/nodes/a/drain"), "/v1/nodes/:name/:name");
        assert_eq!(route_label("/v1/blobs/sha256:abc"), "/v1/blobs/:name");
        assert_eq!(route_label("/"), "/");
        assert_eq!(route_label("/v1/certs/*.example.com"), "/v1/certs/:name");
        assert_eq!(route_label("/health/rollback/nodes/node"), "unmatched");
        assert_eq!(route_label("/a/b/c/d/e/f/g/h"), "unmatched");
        assert_eq!(method_label(&http::Method::PATCH), "OTHER");
    }
}
