//! Peak-EWMA latency per replica, as Linkerd's balancer keeps it: each
//! answer's time to its head moves an exponentially weighted average,
//! except that a slower answer than the average takes its place at once
//! (the peak), so a replica that turns slow is avoided after one slow
//! answer and trusted again only gradually. Without answers the estimate
//! decays toward zero, so a replica avoided for being slow is tried again
//! after a while. The balancer weighs it by the requests in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How fast old answers stop counting: Linkerd's default decay.
pub(crate) const DECAY: Duration = Duration::from_secs(10);

/// One replica's estimate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeakEwma {
    /// Seconds.
    estimate: f64,
    updated: Instant,
}

impl PeakEwma {
    fn new(now: Instant) -> PeakEwma {
        PeakEwma {
            estimate: 0.0,
            updated: now,
        }
    }

    /// The estimate at `now`, decayed since its last answer.
    fn at(&self, now: Instant) -> f64 {
        let idle = now.saturating_duration_since(self.updated).as_secs_f64();
        self.estimate * (-idle / DECAY.as_secs_f64()).exp()
    }

    /// Takes an answer that took `rtt`, at `now`.
    fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_secs_f64();
        let current = self.at(now);
        self.estimate = if rtt > current {
            rtt
        } else {
            // An answer counts for more the longer since the last one.
            let since = now.saturating_duration_since(self.updated).as_secs_f64();
            let weight = (-since / DECAY.as_secs_f64()).exp();
            current * weight + rtt * (1.0 - weight)
        };
        self.updated = now;
    }
}

/// Every replica's estimate, by its key.
#[derive(Default)]
pub(crate) struct Latencies {
    by_replica: RwLock<HashMap<String, Arc<Mutex<PeakEwma>>>>,
}

/// Replicas remembered at most; past that the map starts afresh.
const MAX_REPLICAS: usize = 100_000;

impl Latencies {
    /// Records that `replica` answered in `rtt`.
    pub(crate) fn observe(&self, replica: &str, rtt: Duration) {
        let now = Instant::now();
        let found = self
            .by_replica
            .read()
            .expect("latency lock")
            .get(replica)
            .cloned();
        let entry = match found {
            Some(entry) => entry,
            None => {
                let mut all = self.by_replica.write().expect("latency lock");
                if all.len() >= MAX_REPLICAS {
                    all.clear();
                }
                all.entry(replica.to_string())
                    .or_insert_with(|| Arc::new(Mutex::new(PeakEwma::new(now))))
                    .clone()
            }
        };
        entry.lock().expect("latency lock").observe(rtt, now);
    }

    /// `replica`'s estimate now, seconds (0 when it has none).
    pub(crate) fn estimate(&self, replica: &str) -> f64 {
        self.by_replica
            .read()
            .expect("latency lock")
            .get(replica)
            .map_or(0.0, |e| e.lock().expect("latency lock").at(Instant::now()))
    }
}

/// The balancer's cost of sending one more request to a replica whose
/// latency estimate is `estimate` seconds with `in_flight` requests from
/// here: Linkerd's `estimate x (in flight + 1)`. A replica without an
/// estimate costs what a fast one would, so it gets tried.
pub(crate) fn cost(estimate: f64, in_flight: usize) -> f64 {
    const UNKNOWN: f64 = 0.000_1;
    estimate.max(UNKNOWN) * (in_flight as f64 + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_answer_takes_over_at_once_and_fast_ones_bring_it_down_gradually() {
        let start = Instant::now();
        let mut ewma = PeakEwma::new(start);
        ewma.observe(Duration::from_millis(2), start);
        ewma.observe(
            Duration::from_millis(100),
            start + Duration::from_millis(10),
        );
        let peak = ewma.at(start + Duration::from_millis(10));
        assert!((peak - 0.1).abs() < 1e-6, "{peak}");
        for i in 1..=10 {
            ewma.observe(
                Duration::from_millis(2),
                start + Duration::from_millis(10 + i * 10),
            );
        }
        let after = ewma.at(start + Duration::from_millis(110));
        assert!(after > 0.09 && after < 0.1, "still near the peak: {after}");
        // Idle, it decays: after a minute it is tried again.
        assert!(ewma.at(start + Duration::from_secs(60)) < 0.001);
    }

    #[test]
    fn cost_weighs_latency_by_requests_in_flight() {
        assert!(cost(0.010, 0) < cost(0.010, 3));
        assert!(
            cost(0.050, 0) > cost(0.002, 3),
            "a slow replica costs more than a busy fast one"
        );
        assert!(cost(0.0, 0) > 0.0);
    }
}
