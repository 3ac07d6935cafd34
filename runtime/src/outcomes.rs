//! What became of the requests one loaded component answered: how many,
//! how many succeeded (below 400), and how many failed (a 5xx status, or
//! given up by the platform's `request_timeout`), by reason. A cluster
//! compares these between an app's old and new versions to decide whether
//! a rollout goes on or rolls back.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The most distinct failure reasons kept; later ones count as `other`.
const MAX_REASONS: usize = 16;

/// Counters of answered and failed requests, since the component loaded.
#[derive(Debug, Default)]
pub struct Outcomes {
    answered: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    /// Failures by reason (`trap`, `timeout`, `status_500`...).
    reasons: Mutex<BTreeMap<String, u64>>,
}

/// A copy of [`Outcomes`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutcomeCounts {
    /// Requests whose response head was ready (or that failed).
    pub answered: u64,
    /// Those answered below 400.
    pub succeeded: u64,
    /// Those answered with a 5xx status.
    pub failed: u64,
    /// Failures by reason.
    pub reasons: BTreeMap<String, u64>,
}

impl Outcomes {
    /// Records one request answered with `status`; a failure's `reason` is
    /// the platform's (a trap, a timeout) when it had one, else
    /// `status_NNN`.
    pub fn record(&self, status: u16, reason: Option<&'static str>) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        if status < 400 {
            self.succeeded.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if status < 500 {
            return;
        }
        self.failed.fetch_add(1, Ordering::Relaxed);
        let reason = reason.map_or_else(|| format!("status_{status}"), str::to_string);
        let mut reasons = self.reasons.lock().expect("outcomes lock");
        let key = if reasons.contains_key(&reason) || reasons.len() < MAX_REASONS {
            reason
        } else {
            "other".to_string()
        };
        *reasons.entry(key).or_default() += 1;
    }

    /// Forgets what was counted: the requests a node made itself (health
    /// checks) before the version took traffic are not its clients'.
    pub fn reset(&self) {
        self.answered.store(0, Ordering::Relaxed);
        self.succeeded.store(0, Ordering::Relaxed);
        self.failed.store(0, Ordering::Relaxed);
        self.reasons.lock().expect("outcomes lock").clear();
    }

    /// The counts now.
    pub fn counts(&self) -> OutcomeCounts {
        OutcomeCounts {
            answered: self.answered.load(Ordering::Relaxed),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            reasons: self.reasons.lock().expect("outcomes lock").clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_by_reason() {
        let outcomes = Outcomes::default();
        outcomes.record(200, None);
        outcomes.record(500, Some("trap"));
        outcomes.record(503, None);
        outcomes.record(404, None);
        outcomes.record(499, None);
        outcomes.record(504, Some("request_timeout"));
        let counts = outcomes.counts();
        assert_eq!(
            (counts.answered, counts.succeeded, counts.failed),
            (6, 1, 3)
        );
        assert_eq!(counts.reasons["request_timeout"], 1);
        assert_eq!(counts.reasons["trap"], 1);
        assert_eq!(counts.reasons["status_503"], 1);
    }
}
