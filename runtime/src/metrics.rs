//! The runtime's Prometheus metrics, in `prometheus-client`'s types: per
//! component, requests by status class and reason, request durations,
//! instances created, requests in flight and queued, and outbound calls by
//! outcome; per process, compile-cache lookups and component load times.
//!
//! A component's series are shared by every version and replica of it in
//! the process, live while one is loaded, and show from its first request,
//! so an idle app adds nothing to a scrape. At most
//! [`MAX_COMPONENT_SERIES`] components have series of their own; the
//! components loaded past that share one set labelled
//! `app="_other",component="_other"`, which keeps a scrape of a node with
//! thousands of apps bounded in size and time.

mod endpoint;
mod process;
mod series;

pub use endpoint::{MAX_SCRAPE_CONNECTIONS, MetricsEndpoint};
pub use process::ProcessCollector;
pub use series::{ComponentSeries, OutboundOutcome, TrafficCounts};

use crate::cache::CacheOutcome;
use crate::limits::ConcurrencyGate;
use crate::mesh::WorkloadId;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Components with series of their own in one process; those loaded
/// beyond share the `_other` series.
pub const MAX_COMPONENT_SERIES: usize = 2_000;

/// The label value of the series shared by components past
/// [`MAX_COMPONENT_SERIES`].
pub const OVERFLOW_LABEL: &str = "_other";

/// Upper bounds of the request duration buckets, seconds: Wasm requests
/// often finish well under a millisecond, so the buckets start there, and
/// they reach past the default 30 s timeout.
pub const REQUEST_DURATION_BUCKETS: [f64; 15] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0,
];

/// Upper bounds of the component load time buckets, seconds: from a
/// component already in memory (well under a millisecond) to a large
/// first compile (tens of seconds).
const LOAD_DURATION_BUCKETS: [f64; 10] =
    [0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0];

/// The `q` quantile (0 to 1) of durations counted per bucket of
/// [`REQUEST_DURATION_BUCKETS`] (the last past every bound), in seconds,
/// interpolated linearly within its bucket as Prometheus'
/// `histogram_quantile` does; `None` when nothing was counted. In the
/// last bucket it is the largest bound.
pub fn quantile(counts: &[u64], q: f64) -> Option<f64> {
    // Counts from other processes may be anything: summed in floating
    // point, no sum overflows.
    let total: f64 = counts.iter().map(|count| *count as f64).sum();
    if total == 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let mut below = 0.0;
    for (index, count) in counts.iter().enumerate() {
        let Some(upper) = REQUEST_DURATION_BUCKETS.get(index) else {
            break;
        };
        let count = *count as f64;
        if count > 0.0 && below + count >= rank {
            let lower = if index == 0 {
                0.0
            } else {
                REQUEST_DURATION_BUCKETS[index - 1]
            };
            let within = (rank - below) / count;
            return Some(lower + (upper - lower) * within);
        }
        below += count;
    }
    REQUEST_DURATION_BUCKETS.last().copied()
}

/// The metrics of one process's runtime.
#[derive(Debug)]
pub struct RuntimeMetrics {
    /// The live components' series, by app and component name.
    components: Mutex<HashMap<(String, String), Weak<ComponentSeries>>>,
    /// Shared by the components past [`MAX_COMPONENT_SERIES`].
    overflow: Arc<ComponentSeries>,
    /// Compile-cache lookups by result (`hit`, `miss`, `shared`).
    cache_lookups: Family<[(&'static str, &'static str); 1], Counter>,
    /// How long loading a component took, compile included.
    load_durations: Histogram,
}

impl Default for RuntimeMetrics {
    fn default() -> Self {
        RuntimeMetrics {
            components: Mutex::default(),
            overflow: Arc::new(ComponentSeries::new(OVERFLOW_LABEL, OVERFLOW_LABEL)),
            cache_lookups: Family::default(),
            load_durations: Histogram::new(LOAD_DURATION_BUCKETS),
        }
    }
}

impl RuntimeMetrics {
    /// Adds these metrics to `registry` (whose prefix, `skiff`, they take).
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        registry.register(
            "compile_cache_lookups",
            "Components loaded, by where their machine code came from: hit (the sealed compile cache), miss (compiled), shared (already in this process)",
            self.cache_lookups.clone(),
        );
        registry.register_with_unit(
            "component_load_duration",
            "Time to load a component: read, verify, compile or map from the cache, link",
            Unit::Seconds,
            self.load_durations.clone(),
        );
        registry.register_collector(Box::new(ComponentsCollector(self.clone())));
    }

    /// The series of `workload`, whose requests pass through `gate`: the
    /// ones every loaded version of it shares, made if none is loaded (or
    /// the overflow series, past [`MAX_COMPONENT_SERIES`]).
    pub fn component(
        &self,
        workload: &WorkloadId,
        gate: &Arc<ConcurrencyGate>,
    ) -> Arc<ComponentSeries> {
        let key = (workload.app.to_string(), workload.component.to_string());
        let mut components = self.components.lock().unwrap_or_else(|e| e.into_inner());
        let series = match components.get(&key).and_then(Weak::upgrade) {
            Some(series) => series,
            None => {
                components.retain(|_, series| series.strong_count() > 0);
                if components.len() >= MAX_COMPONENT_SERIES {
                    self.overflow.clone()
                } else {
                    let series = Arc::new(ComponentSeries::new(&key.0, &key.1));
                    components.insert(key, Arc::downgrade(&series));
                    series
                }
            }
        };
        series.add_gate(gate);
        series
    }

    /// Records that a component was loaded in `took`, its machine code
    /// coming from `cache`.
    pub fn record_load(&self, cache: CacheOutcome, took: Duration) {
        let result = match cache {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Compiled => "miss",
            CacheOutcome::Shared => "shared",
        };
        self.cache_lookups
            .get_or_create(&[("result", result)])
            .inc();
        self.load_durations.observe(took.as_secs_f64());
    }
}

/// Encodes the live components' series at each scrape.
#[derive(Debug)]
struct ComponentsCollector(Arc<RuntimeMetrics>);

impl Collector for ComponentsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut live: Vec<Arc<ComponentSeries>> = {
            let components = self.0.components.lock().unwrap_or_else(|e| e.into_inner());
            components.values().filter_map(Weak::upgrade).collect()
        };
        live.push(self.0.overflow.clone());
        // Components that never served a request add nothing.
        live.retain(|series| series.served());
        live.sort_by(|a, b| a.labels().cmp(&b.labels()));
        series::encode(&live, &mut encoder)
    }
}

#[cfg(test)]
mod tests;
