//! Outlier ejection: a node that fails the requests forwarded to it
//! several times in a row (it cannot be reached, does not answer in time,
//! or answers with a server error other than 503, which is overload, not
//! breakage) is left out of forwarding for a while, and tried again once
//! that while has passed. Each ejection in a row lasts twice the one
//! before, up to [`MAX_EJECTION`]; an answer resets it. Like Linkerd's
//! and Envoy's consecutive-failure detectors, it needs no control plane:
//! every node judges the nodes it forwards to by what it sees.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Failures in a row that eject a node.
pub(crate) const FAILURES_TO_EJECT: u32 = 5;

/// The first ejection; each in a row lasts twice the one before.
pub(crate) const FIRST_EJECTION: Duration = Duration::from_secs(10);

/// The longest ejection.
pub(crate) const MAX_EJECTION: Duration = Duration::from_secs(300);

/// How forwarding to each node went lately.
#[derive(Default)]
pub(crate) struct Outliers {
    nodes: Mutex<HashMap<String, Health>>,
    /// How many `nodes` holds, readable without the lock: while none has
    /// failed lately (the usual case), forwarding skips the bookkeeping.
    tracked: AtomicUsize,
}

#[derive(Default)]
struct Health {
    failures: u32,
    ejected_until: Option<Instant>,
    ejections: u32,
}

/// What one forwarded request to a node came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// An answer a healthy node gives (any status but a 5xx other than
    /// 503).
    Answered,
    /// Unreachable, no answer in time, or a server error.
    Failed,
}

impl Outliers {
    /// Records `outcome` for `node` at `now`; returns how long the node is
    /// now ejected for, when this outcome ejected it.
    pub(crate) fn record(&self, node: &str, outcome: Outcome, now: Instant) -> Option<Duration> {
        let mut nodes = self.nodes.lock().expect("outliers lock");
        if outcome == Outcome::Answered {
            // Nothing to remember of a node that answers.
            nodes.remove(node);
            self.tracked.store(nodes.len(), Ordering::Relaxed);
            return None;
        }
        if !nodes.contains_key(node) {
            nodes.insert(node.to_string(), Health::default());
            self.tracked.store(nodes.len(), Ordering::Relaxed);
        }
        let health = nodes.get_mut(node).expect("inserted above");
        health.failures += 1;
        let ejected = health.ejected_until.is_some_and(|until| until > now);
        if ejected || health.failures < FAILURES_TO_EJECT {
            return None;
        }
        // Ejected; once back, one more failure ejects it again, for longer.
        health.ejections += 1;
        health.failures = FAILURES_TO_EJECT - 1;
        let doublings = (health.ejections - 1).min(16);
        let length = FIRST_EJECTION
            .saturating_mul(1 << doublings)
            .min(MAX_EJECTION);
        health.ejected_until = Some(now + length);
        Some(length)
    }

    /// Whether any node failed lately (so one may be ejected): when not,
    /// an answer has nothing to reset and nothing is ejected.
    pub(crate) fn any(&self) -> bool {
        self.tracked.load(Ordering::Relaxed) > 0
    }

    /// Whether `node` is ejected at `now`.
    pub(crate) fn ejected(&self, node: &str, now: Instant) -> bool {
        self.nodes
            .lock()
            .expect("outliers lock")
            .get(node)
            .and_then(|h| h.ejected_until)
            .is_some_and(|until| until > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_eject_a_node_for_longer_each_time_and_an_answer_resets_it() {
        let outliers = Outliers::default();
        let start = Instant::now();
        for _ in 1..FAILURES_TO_EJECT {
            assert_eq!(outliers.record("n2", Outcome::Failed, start), None);
        }
        assert!(!outliers.ejected("n2", start));
        assert!(outliers.any());
        assert_eq!(
            outliers.record("n2", Outcome::Failed, start),
            Some(FIRST_EJECTION)
        );
        assert!(outliers.ejected("n2", start));
        assert!(!outliers.ejected("n1", start), "only the failing node");
        // Failures reported while ejected (requests already under way)
        // do not lengthen it.
        assert_eq!(outliers.record("n2", Outcome::Failed, start), None);
        // Back after the ejection: one failure ejects it again, twice as long.
        let back = start + FIRST_EJECTION + Duration::from_millis(1);
        assert!(!outliers.ejected("n2", back));
        assert_eq!(
            outliers.record("n2", Outcome::Failed, back),
            Some(FIRST_EJECTION * 2)
        );
        // Never past the maximum.
        let mut now = back;
        for _ in 0..20 {
            now += MAX_EJECTION + Duration::from_secs(1);
            if let Some(length) = outliers.record("n2", Outcome::Failed, now) {
                assert!(length <= MAX_EJECTION);
            }
        }
        // An answer forgets it all.
        now += MAX_EJECTION + Duration::from_secs(1);
        outliers.record("n2", Outcome::Answered, now);
        assert!(!outliers.any());
        for _ in 1..FAILURES_TO_EJECT {
            assert_eq!(outliers.record("n2", Outcome::Failed, now), None);
        }
    }

    #[test]
    fn an_answer_between_failures_keeps_a_node_in() {
        let outliers = Outliers::default();
        let now = Instant::now();
        for _ in 0..10 {
            for _ in 1..FAILURES_TO_EJECT {
                outliers.record("n2", Outcome::Failed, now);
            }
            outliers.record("n2", Outcome::Answered, now);
        }
        assert!(!outliers.ejected("n2", now));
    }
}
