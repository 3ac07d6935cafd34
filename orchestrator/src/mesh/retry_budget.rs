//! The retry budget, one per component on each node: a node sends again
//! at most a fifth as many of a component's requests as it forwards, plus
//! a few a second, over the last ten seconds: Finagle's and Linkerd's
//! budget, as tower implements it (`TpsBudget`). Retries then never
//! multiply an overload: when most attempts fail, most requests fail
//! once, instead of every request failing on every replica.

use std::time::Duration;
pub(crate) use tower::retry::budget::{Budget, TpsBudget as RetryBudget};

/// Retries allowed per request forwarded.
pub(crate) const RETRY_RATIO: f32 = 0.2;
/// Retries allowed a second whatever the traffic, so a quiet node still
/// moves on from a replica that just went away.
pub(crate) const MIN_RETRIES_PER_SEC: u32 = 10;
/// The window requests and retries are counted over.
const WINDOW: Duration = Duration::from_secs(10);

/// A fresh budget: deposit one per request forwarded, withdraw one per
/// retry.
pub(crate) fn budget() -> RetryBudget {
    RetryBudget::new(WINDOW, MIN_RETRIES_PER_SEC, RETRY_RATIO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retries_are_a_fifth_of_requests_plus_a_few_a_second() {
        let budget = budget();
        for _ in 0..1_000 {
            budget.deposit();
        }
        let retried = (0..10_000).filter(|_| budget.withdraw()).count();
        assert_eq!(retried, 200 + 100);
    }
}
