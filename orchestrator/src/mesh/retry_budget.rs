//! The retry budget, one per component on each node: a node sends again
//! at most a fifth as many of a component's requests as it forwards, plus
//! a few a second (Linkerd's and Finagle's budget), over the last ten
//! seconds. Retries then never multiply an overload:
//! when most attempts fail, most requests fail once, instead of every
//! request failing on every replica.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Retries allowed per request forwarded.
pub(crate) const RETRY_RATIO: f64 = 0.2;
/// Retries allowed a second whatever the traffic, so a quiet node still
/// moves on from a replica that just went away.
pub(crate) const MIN_RETRIES_PER_SEC: f64 = 10.0;
/// The window requests and retries are counted over.
const WINDOW: Duration = Duration::from_secs(10);
/// Slices of the window: counts older than the window go a slice at a time.
const SLICES: usize = 10;

/// Requests and retries of the last [`WINDOW`].
pub(crate) struct RetryBudget {
    counts: Mutex<Window>,
}

struct Window {
    /// `(requests, retries)` per slice, the current one at `at`.
    slices: [(u64, u64); SLICES],
    at: usize,
    /// When the current slice began.
    began: Instant,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            counts: Mutex::new(Window {
                slices: [(0, 0); SLICES],
                at: 0,
                began: Instant::now(),
            }),
        }
    }
}

impl Window {
    /// Moves to the slice `now` falls in, clearing the slices passed.
    fn advance(&mut self, now: Instant) {
        let slice = WINDOW / SLICES as u32;
        let passed = (now.saturating_duration_since(self.began).as_nanos() / slice.as_nanos())
            .min(SLICES as u128) as usize;
        for _ in 0..passed {
            self.at = (self.at + 1) % SLICES;
            self.slices[self.at] = (0, 0);
        }
        if passed > 0 {
            self.began = now;
        }
    }

    fn totals(&self) -> (u64, u64) {
        self.slices
            .iter()
            .fold((0, 0), |(q, r), (sq, sr)| (q + sq, r + sr))
    }
}

impl RetryBudget {
    /// Counts a request forwarded (its first attempt).
    pub(crate) fn request(&self) {
        self.request_at(Instant::now());
    }

    fn request_at(&self, now: Instant) {
        let mut window = self.counts.lock().expect("retry budget lock");
        window.advance(now);
        let at = window.at;
        window.slices[at].0 += 1;
    }

    fn allowed(requests: u64) -> f64 {
        requests as f64 * RETRY_RATIO + MIN_RETRIES_PER_SEC * WINDOW.as_secs_f64()
    }

    /// Whether one more retry fits the budget; if so it is counted.
    pub(crate) fn try_retry(&self) -> bool {
        self.try_retry_at(Instant::now())
    }

    fn try_retry_at(&self, now: Instant) -> bool {
        let mut window = self.counts.lock().expect("retry budget lock");
        window.advance(now);
        let (requests, retries) = window.totals();
        if (retries as f64) < Self::allowed(requests) {
            let at = window.at;
            window.slices[at].1 += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_fifth_of_requests_plus_a_few_a_second() {
        let budget = RetryBudget::default();
        let now = Instant::now();
        for _ in 0..1_000 {
            budget.request_at(now);
        }
        let retried = (0..10_000).filter(|_| budget.try_retry_at(now)).count();
        assert_eq!(retried, 200 + 100);
        // Ten seconds later the window has moved on: the budget is back.
        let later = now + Duration::from_secs(11);
        let retried = (0..10_000).filter(|_| budget.try_retry_at(later)).count();
        assert_eq!(retried, 100);
    }
}
