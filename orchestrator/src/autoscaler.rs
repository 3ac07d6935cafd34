//! The autoscaler: how many replicas a component should run, from the
//! demand its nodes report (requests in flight or queued, and requests
//! held while it has no replica). Pure: demand and the time in, a new
//! count and its reason out; the controller applies it.
//!
//! Two windows, as Knative's autoscaler has: scale-up follows the demand
//! now (each node averages it over about a second), at once, so a step in
//! load is met within a heartbeat or two; scale-down follows the highest
//! demand seen over the whole `scale_down_delay`, so replicas are removed
//! only once demand has stayed low that long, and load that comes and
//! goes keeps the replicas its peaks need rather than flapping.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// One component's autoscaling settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Fewest replicas; 0 lets an idle component run none.
    pub min: u32,
    /// Most replicas.
    pub max: u32,
    /// Requests in flight per replica to aim for.
    pub target: u32,
    /// How long demand must stay low before replicas are removed.
    pub scale_down_delay: Duration,
}

impl Policy {
    /// Replicas needed to keep `demand` at or under the target per
    /// replica, bounds aside.
    fn needed(&self, demand: f64) -> u32 {
        // `as` saturates: absurd demand asks for `u32::MAX`.
        (demand / f64::from(self.target.max(1))).ceil() as u32
    }

    /// [`Policy::needed`] within the bounds.
    fn bounded(&self, demand: f64) -> u32 {
        self.needed(demand).clamp(self.min, self.max.max(self.min))
    }
}

/// A change of a component's replica count, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Replicas before.
    pub from: u32,
    /// Replicas after.
    pub to: u32,
    /// Why, for `skiff events`: `concurrency 290 over target 50 per
    /// replica`.
    pub reason: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}: {}", self.from, self.to, self.reason)
    }
}

/// What the autoscaler remembers of one component between observations.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    desired: u32,
    /// The demand last observed.
    demand: f64,
    /// The demand observed over the last `scale_down_delay` that may
    /// still be its highest: each entry is higher than every later one
    /// (a sliding-window maximum), so a steady or rising demand keeps one
    /// entry however long the delay.
    window: VecDeque<(Instant, f64)>,
    /// Since when the window holds every observation that matters for a
    /// scale-down: the autoscaler's start (a control plane just started
    /// knows nothing of the demand before) or its last scale-up.
    watched_since: Instant,
}

impl Autoscaler {
    /// An autoscaler for a component running `current` replicas, at `now`.
    pub fn new(current: u32, now: Instant) -> Autoscaler {
        Autoscaler {
            desired: current,
            demand: 0.0,
            window: VecDeque::new(),
            watched_since: now,
        }
    }

    /// Runs at least `replicas` from `now`, and keeps them a whole
    /// `scale_down_delay` unless demand asks for more: a new version of a
    /// component that may scale to zero starts one replica, so the deploy
    /// loads (and checks) it and its first requests find it warm.
    pub fn start_with(&mut self, replicas: u32, now: Instant) {
        if self.desired < replicas {
            self.desired = replicas;
            self.watched_since = now;
        }
    }

    /// The replicas the component should run.
    pub fn desired(&self) -> u32 {
        self.desired
    }

    /// The demand last observed.
    pub fn demand(&self) -> f64 {
        self.demand
    }

    /// Takes the component's demand at `now` (requests in flight, queued
    /// or held, summed over its nodes) and returns the change of replica
    /// count it calls for, if any.
    pub fn observe(&mut self, policy: &Policy, demand: f64, now: Instant) -> Option<Change> {
        // Nothing a node reports can be negative or not a number.
        let demand = if demand.is_finite() {
            demand.max(0.0)
        } else {
            0.0
        };
        self.demand = demand;
        while self.window.back().is_some_and(|(_, d)| *d <= demand) {
            self.window.pop_back();
        }
        self.window.push_back((now, demand));
        while self
            .window
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > policy.scale_down_delay)
        {
            self.window.pop_front();
        }
        let from = self.desired;
        let max = policy.max.max(policy.min);
        let wanted_now = policy.bounded(demand);
        let target = policy.target;
        let (to, reason) = if wanted_now > from {
            let mut reason = if policy.needed(demand) <= policy.min {
                format!("below the minimum of {}", policy.min)
            } else if from == 0 {
                match demand.ceil() {
                    1.0 => "1 request waiting for a replica".to_string(),
                    n => format!("{n} requests waiting for a replica"),
                }
            } else {
                format!("concurrency {demand:.1} over target {target} per replica")
            };
            if policy.needed(demand) > max {
                reason.push_str(&format!(" (max {max})"));
            }
            (wanted_now, reason)
        } else if from > max {
            (max, format!("above the maximum of {max}"))
        } else {
            let peak = self.window.front().map_or(0.0, |(_, d)| *d);
            let wanted = policy.bounded(peak);
            let watched = now.saturating_duration_since(self.watched_since);
            if wanted >= from || watched < policy.scale_down_delay {
                return None;
            }
            let delay = humantime::format_duration(policy.scale_down_delay);
            let reason = if peak == 0.0 {
                format!("no requests for {delay}")
            } else {
                format!("concurrency at most {peak:.1} for {delay}, target {target} per replica")
            };
            (wanted, reason)
        };
        if to > from {
            // A scale-down waits a whole delay after any scale-up.
            self.watched_since = now;
        }
        self.desired = to;
        Some(Change { from, to, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(min: u32, max: u32) -> Policy {
        Policy {
            min,
            max,
            target: 10,
            scale_down_delay: Duration::from_secs(30),
        }
    }

    fn secs(start: Instant, s: u64) -> Instant {
        start + Duration::from_secs(s)
    }

    #[test]
    fn a_load_step_scales_up_at_once_to_what_it_needs() {
        let start = Instant::now();
        let mut a = Autoscaler::new(1, start);
        let p = policy(1, 10);
        assert_eq!(a.observe(&p, 5.0, start), None);
        let change = a.observe(&p, 42.0, secs(start, 1)).unwrap();
        assert_eq!((change.from, change.to), (1, 5));
        assert_eq!(change.reason, "concurrency 42.0 over target 10 per replica");
    }

    #[test]
    fn demand_past_max_stops_at_max_whatever_a_node_claims() {
        let start = Instant::now();
        let p = policy(1, 4);
        for absurd in [1e12, f64::MAX] {
            let mut a = Autoscaler::new(1, start);
            let change = a.observe(&p, absurd, start).unwrap();
            assert_eq!(change.to, 4, "{absurd}");
            assert!(change.reason.ends_with("(max 4)"), "{}", change.reason);
        }
        let mut a = Autoscaler::new(2, start);
        for garbage in [f64::NAN, -5.0, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(a.observe(&p, garbage, start), None, "{garbage}");
        }
    }

    #[test]
    fn scale_down_waits_for_demand_to_stay_low_a_whole_delay() {
        let start = Instant::now();
        let mut a = Autoscaler::new(1, start);
        let p = policy(1, 10);
        a.observe(&p, 60.0, start).unwrap();
        assert_eq!(a.desired(), 6);
        // Quiet, but not for long enough yet.
        for s in 1..=30 {
            assert_eq!(a.observe(&p, 0.0, secs(start, s)), None, "at {s}s");
        }
        let change = a.observe(&p, 0.0, secs(start, 31)).unwrap();
        assert_eq!((change.from, change.to), (6, 1));
        assert_eq!(change.reason, "no requests for 30s");
    }

    #[test]
    fn scale_down_goes_to_what_the_peak_of_the_window_needs() {
        let start = Instant::now();
        let mut a = Autoscaler::new(1, start);
        let p = policy(1, 10);
        a.observe(&p, 80.0, start).unwrap();
        for s in 1..=31 {
            a.observe(&p, 25.0, secs(start, s));
        }
        assert_eq!(a.desired(), 3);
    }

    #[test]
    fn a_long_delay_keeps_few_observations() {
        let start = Instant::now();
        let mut a = Autoscaler::new(1, start);
        let p = Policy {
            scale_down_delay: Duration::from_secs(3600),
            ..policy(1, 10)
        };
        for s in 0..3600 {
            a.observe(&p, 5.0 + (s % 7) as f64, secs(start, s));
        }
        assert!(a.window.len() <= 8, "{}", a.window.len());
    }

    #[test]
    fn load_that_comes_and_goes_does_not_flap_replicas() {
        let start = Instant::now();
        let mut a = Autoscaler::new(1, start);
        let p = policy(1, 10);
        let mut changes = Vec::new();
        // Two minutes of bursts: 5 s at 50 in flight, 5 s idle.
        for s in 0..120 {
            let demand = if (s / 5) % 2 == 0 { 50.0 } else { 0.0 };
            if let Some(change) = a.observe(&p, demand, secs(start, s)) {
                changes.push(change);
            }
        }
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(a.desired(), 5);
    }

    #[test]
    fn min_zero_goes_to_zero_when_idle_and_held_requests_bring_replicas_back() {
        let start = Instant::now();
        let mut a = Autoscaler::new(1, start);
        let p = policy(0, 10);
        for s in 0..=31 {
            a.observe(&p, 0.0, secs(start, s));
        }
        assert_eq!(a.desired(), 0);
        // A burst of 25 held requests asks for three replicas at once.
        let change = a.observe(&p, 25.0, secs(start, 40)).unwrap();
        assert_eq!((change.from, change.to), (0, 3));
        assert_eq!(change.reason, "25 requests waiting for a replica");
        let mut a = Autoscaler::new(0, start);
        let change = a.observe(&p, 0.4, start).unwrap();
        assert_eq!(change.reason, "1 request waiting for a replica");
    }

    #[test]
    fn a_new_version_starts_one_replica_and_keeps_it_a_delay() {
        let start = Instant::now();
        let p = policy(0, 10);
        let mut a = Autoscaler::new(0, start);
        a.start_with(1, start);
        assert_eq!(a.desired(), 1);
        for s in 1..30 {
            assert_eq!(a.observe(&p, 0.0, secs(start, s)), None, "at {s}s");
        }
        assert_eq!(a.observe(&p, 0.0, secs(start, 31)).unwrap().to, 0);
        // Never fewer than it runs.
        let mut busy = Autoscaler::new(4, start);
        busy.start_with(1, start);
        assert_eq!(busy.desired(), 4);
    }

    #[test]
    fn bounds_moved_are_followed_at_once() {
        let start = Instant::now();
        let mut a = Autoscaler::new(5, start);
        let change = a.observe(&policy(1, 3), 0.0, start).unwrap();
        assert_eq!(
            (change.to, change.reason.as_str()),
            (3, "above the maximum of 3")
        );
        let change = a.observe(&policy(4, 8), 0.0, start).unwrap();
        assert_eq!(
            (change.to, change.reason.as_str()),
            (4, "below the minimum of 4")
        );
    }
}
