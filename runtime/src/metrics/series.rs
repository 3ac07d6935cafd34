//! One component's series: plain atomics on the request path, encoded as
//! Prometheus families at each scrape.

use crate::limits::ConcurrencyGate;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Why the platform answered a request itself, as the `reason` label
/// shows it; `None` (no label) when the guest answered. The last entry
/// takes any reason not listed.
const REASONS: [Option<&str>; 16] = [
    None,
    Some("overloaded"),
    Some("memory_pressure"),
    Some("timeout"),
    Some("memory_limit"),
    Some("stack_overflow"),
    Some("trap"),
    Some("no_response"),
    Some("instantiate"),
    Some("request_too_large"),
    Some("response_too_large"),
    Some("caller_not_allowed"),
    Some("hop_limit"),
    Some("request_timeout"),
    Some("caller_gone"),
    Some("other"),
];

/// Status classes counted: 1xx to 5xx.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// What became of an outbound call a guest made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundOutcome {
    /// A response came back (whatever its status).
    Answered,
    /// It was sent but failed: no connection, TLS, a timeout.
    Failed,
    /// It was refused before it left: not in `allowed_outbound_hosts`, an
    /// internal address, no mesh.
    Denied,
    /// The instance had used up its `max_outbound_requests`.
    Limited,
}

impl OutboundOutcome {
    const ALL: [OutboundOutcome; 4] = [
        OutboundOutcome::Answered,
        OutboundOutcome::Failed,
        OutboundOutcome::Denied,
        OutboundOutcome::Limited,
    ];

    fn as_str(self) -> &'static str {
        match self {
            OutboundOutcome::Answered => "answered",
            OutboundOutcome::Failed => "failed",
            OutboundOutcome::Denied => "denied",
            OutboundOutcome::Limited => "limited",
        }
    }
}

/// Request durations in [`super::REQUEST_DURATION_BUCKETS`], lock-free on
/// the request path: a count per bucket (the last past every bound) and
/// the sum.
#[derive(Debug)]
pub(crate) struct Durations {
    buckets: [AtomicU64; super::REQUEST_DURATION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Default for Durations {
    fn default() -> Self {
        Durations {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl Durations {
    fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = super::REQUEST_DURATION_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(super::REQUEST_DURATION_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The count in each bucket (not cumulative), the last past every
    /// bound.
    pub(crate) fn counts(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .collect()
    }

    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::MetricEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        let counts = self.counts();
        let buckets: Vec<(f64, u64)> = super::REQUEST_DURATION_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(counts.iter().copied())
            .collect();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(
            sum,
            counts.iter().sum(),
            &buckets,
            None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
        )
    }
}

/// A component's traffic on this node so far, for a cluster's `skiff top`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrafficCounts {
    /// Requests answered.
    pub requests: u64,
    /// Of those, answered 5xx.
    pub errors: u64,
    /// Their durations, a count per bucket of
    /// [`super::REQUEST_DURATION_BUCKETS`] (the last past every bound).
    pub durations: Vec<u64>,
    /// Requests inside an instance or queued now.
    pub in_flight: u64,
    /// When these counts began (the series was made), Unix milliseconds.
    pub since_unix_ms: u64,
}

/// The series of one component (or of the overflow).
#[derive(Debug)]
pub struct ComponentSeries {
    app: String,
    component: String,
    /// Requests by status class and reason: `CLASSES` x `REASONS`.
    requests: [AtomicU64; CLASSES.len() * REASONS.len()],
    /// Seconds from a request's arrival to its response head.
    durations: Durations,
    instances: AtomicU64,
    outbound: [AtomicU64; OutboundOutcome::ALL.len()],
    /// Whether a request was recorded: only then does it show.
    served: AtomicBool,
    /// The gates of its loaded versions, read for in-flight and queued.
    gates: Mutex<Vec<Weak<ConcurrencyGate>>>,
    /// When it was made, Unix milliseconds.
    since_unix_ms: u64,
}

impl ComponentSeries {
    pub(super) fn new(app: &str, component: &str) -> ComponentSeries {
        ComponentSeries {
            app: app.to_string(),
            component: component.to_string(),
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            durations: Durations::default(),
            instances: AtomicU64::new(0),
            outbound: std::array::from_fn(|_| AtomicU64::new(0)),
            served: AtomicBool::new(false),
            gates: Mutex::default(),
            since_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }

    /// Records a request answered with `status` after `took`; `reason` is
    /// the platform's when it answered itself (see [`crate::invoke::FailureReason`],
    /// plus `request_timeout` and `caller_gone`).
    pub fn record_request(&self, status: u16, reason: Option<&str>, took: Duration) {
        let class = usize::from(status / 100).clamp(1, CLASSES.len()) - 1;
        let reason = REASONS
            .iter()
            .position(|known| *known == reason)
            .unwrap_or(REASONS.len() - 1);
        self.requests[class * REASONS.len() + reason].fetch_add(1, Ordering::Relaxed);
        self.durations.observe(took);
        if !self.served.load(Ordering::Relaxed) {
            self.served.store(true, Ordering::Relaxed);
        }
    }

    /// Records that an instance was created.
    pub fn record_instance(&self) {
        self.instances.fetch_add(1, Ordering::Relaxed);
    }

    /// Records an outbound call's outcome.
    pub fn record_outbound(&self, outcome: OutboundOutcome) {
        let index = OutboundOutcome::ALL
            .iter()
            .position(|known| *known == outcome)
            .unwrap_or_default();
        self.outbound[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Its traffic so far, and its requests in flight now.
    pub fn traffic(&self) -> TrafficCounts {
        let class_total = |class: usize| -> u64 {
            self.requests[class * REASONS.len()..(class + 1) * REASONS.len()]
                .iter()
                .map(|count| count.load(Ordering::Relaxed))
                .sum()
        };
        let (inside, queued) = self.in_flight_and_queued();
        TrafficCounts {
            requests: (0..CLASSES.len()).map(class_total).sum(),
            errors: class_total(CLASSES.len() - 1),
            durations: self.durations.counts(),
            in_flight: (inside + queued) as u64,
            since_unix_ms: self.since_unix_ms,
        }
    }

    pub(super) fn add_gate(&self, gate: &Arc<ConcurrencyGate>) {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        gates.retain(|gate| gate.strong_count() > 0);
        gates.push(Arc::downgrade(gate));
    }

    pub(super) fn served(&self) -> bool {
        self.served.load(Ordering::Relaxed)
    }

    pub(super) fn labels(&self) -> [(&'static str, &str); 2] {
        [("app", &self.app), ("component", &self.component)]
    }

    /// Requests inside instances and waiting for one, over its versions.
    fn in_flight_and_queued(&self) -> (usize, usize) {
        let gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        gates
            .iter()
            .filter_map(Weak::upgrade)
            .fold((0, 0), |(inside, queued), gate| {
                let waiting = gate.queued();
                (
                    inside + gate.in_flight().saturating_sub(waiting),
                    queued + waiting,
                )
            })
    }
}

/// Encodes `all` as one family per metric.
pub(super) fn encode(
    all: &[Arc<ComponentSeries>],
    encoder: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "requests",
        "Requests answered, by status class and, where the platform answered itself, the reason.",
        None,
        MetricType::Counter,
    )?;
    for series in all {
        for (class_index, class) in CLASSES.iter().enumerate() {
            for (reason_index, reason) in REASONS.iter().enumerate() {
                let count = series.requests[class_index * REASONS.len() + reason_index]
                    .load(Ordering::Relaxed);
                if count == 0 {
                    continue;
                }
                let mut labels = series.labels().to_vec();
                labels.push(("class", class));
                if let Some(reason) = reason {
                    labels.push(("reason", reason));
                }
                ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
            }
        }
    }

    let mut family = encoder.encode_descriptor(
        "request_duration",
        "Time from a request's arrival to its response head.",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for series in all {
        series
            .durations
            .encode(&mut family.encode_family(&series.labels())?)?;
    }

    let mut family = encoder.encode_descriptor(
        "instances_created",
        "Instances created to serve requests.",
        None,
        MetricType::Counter,
    )?;
    for series in all {
        let count = series.instances.load(Ordering::Relaxed);
        ConstCounter::new(count).encode(family.encode_family(&series.labels())?)?;
    }

    let in_flight_and_queued: Vec<(usize, usize)> = all
        .iter()
        .map(|series| series.in_flight_and_queued())
        .collect();
    let mut family = encoder.encode_descriptor(
        "requests_in_flight",
        "Requests inside an instance now.",
        None,
        MetricType::Gauge,
    )?;
    for (series, (inside, _)) in all.iter().zip(&in_flight_and_queued) {
        ConstGauge::new(*inside as i64).encode(family.encode_family(&series.labels())?)?;
    }
    let mut family = encoder.encode_descriptor(
        "requests_queued",
        "Requests waiting for an instance now (the component is at max_concurrency).",
        None,
        MetricType::Gauge,
    )?;
    for (series, (_, queued)) in all.iter().zip(&in_flight_and_queued) {
        ConstGauge::new(*queued as i64).encode(family.encode_family(&series.labels())?)?;
    }

    let mut family = encoder.encode_descriptor(
        "outbound_requests",
        "Outbound HTTP and mesh calls guests made, by outcome.",
        None,
        MetricType::Counter,
    )?;
    for series in all {
        for (index, outcome) in OutboundOutcome::ALL.iter().enumerate() {
            let count = series.outbound[index].load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let mut labels = series.labels().to_vec();
            labels.push(("outcome", outcome.as_str()));
            ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// Every [`crate::invoke::FailureReason`] has its own `reason` label value.
#[cfg(test)]
pub(super) fn reason_is_known(reason: crate::invoke::FailureReason) -> bool {
    REASONS[..REASONS.len() - 1].contains(&Some(reason.as_str()))
}
