//! What `skiff top` shows: each component's requests a second, errors,
//! latency percentiles and requests in flight over the last [`WINDOW`],
//! from the traffic its nodes report in their heartbeats (counts since it
//! began serving there; this takes the differences), and each node's
//! share of it beside its memory.

use crate::api::{ComponentTop, NodeTop, NodeView, ReplicaView, TopView, Traffic};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The span the figures cover, ending now.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);

/// A component whose traffic was last reported this long ago is forgotten
/// (a node reports a component only when its figures change, so an idle
/// one is silent).
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// Reports kept per component and node; enough for [`WINDOW`] at one a
/// heartbeat.
const MAX_SAMPLES: usize = 32;

/// The most requests in flight a report may claim for one component; a
/// larger figure (a node's lie) is taken as this.
const MAX_IN_FLIGHT: u64 = 1_000_000;

/// Components whose traffic is kept per node: a node busy in more at once
/// has the rest left out of `skiff top` (and a node lying about what it
/// holds costs the control plane at most this much).
pub(crate) const MAX_COMPONENTS: usize = 10_000;

/// `(app, component)`.
type Key = (String, String);

/// The traffic one node reported, by component, with when it came.
#[derive(Debug, Default)]
pub(crate) struct TrafficLog {
    samples: HashMap<Key, VecDeque<(Instant, Traffic)>>,
    /// When components not heard of for a while were last forgotten.
    pruned: Option<Instant>,
}

/// What one component did at one node over the window.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Delta {
    requests: u64,
    errors: u64,
    durations: Vec<u64>,
    in_flight: u64,
    seconds: f64,
}

impl TrafficLog {
    /// Takes `traffic` for `key`, reported at `now`. A report whose
    /// figures went down (the node restarted, or the component was
    /// unloaded and loaded again) starts the component afresh; one with
    /// the wrong number of duration buckets is ignored.
    pub(crate) fn record(&mut self, key: Key, mut traffic: Traffic, now: Instant) {
        if traffic.durations.len() != skiff_runtime::metrics::REQUEST_DURATION_BUCKETS.len() + 1 {
            return;
        }
        // A node's figures are its word: kept within what can be true.
        traffic.errors = traffic.errors.min(traffic.requests);
        traffic.in_flight = traffic.in_flight.min(MAX_IN_FLIGHT);
        if !self.samples.contains_key(&key) && self.samples.len() >= MAX_COMPONENTS {
            return;
        }
        let samples = self.samples.entry(key).or_default();
        let went_down = samples.back().is_some_and(|(_, last)| {
            traffic.requests < last.requests
                || traffic.errors < last.errors
                || traffic
                    .durations
                    .iter()
                    .zip(&last.durations)
                    .any(|(now, before)| now < before)
        });
        if went_down {
            samples.clear();
        }
        samples.push_back((now, traffic));
        // The last report from before the window stays, as its baseline.
        let window_start = now.checked_sub(WINDOW).unwrap_or(now);
        while samples.len() > MAX_SAMPLES
            || samples.get(1).is_some_and(|(at, _)| *at <= window_start)
        {
            samples.pop_front();
        }
        if self
            .pruned
            .is_none_or(|at| now.saturating_duration_since(at) > WINDOW)
        {
            self.pruned = Some(now);
            self.samples.retain(|_, samples| {
                samples
                    .back()
                    .is_some_and(|(at, _)| now.saturating_duration_since(*at) < FORGET_AFTER)
            });
        }
    }

    /// Forgets the traffic of components not in `assigned`.
    pub(crate) fn keep_only(&mut self, assigned: &std::collections::HashSet<Key>) {
        if !self.samples.is_empty() {
            self.samples.retain(|key, _| assigned.contains(key));
        }
    }

    /// Whether no component's traffic is kept.
    pub(crate) fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// What each component did over the window ending `now` (Unix time
    /// `now_unix_ms`): the change since its figures at the window's
    /// start. A node reports only changes, so the figures of the last
    /// report before the window held until its start. Without one, the
    /// counts began within the window (from zero) or are known from the
    /// first report on.
    pub(crate) fn deltas(
        &self,
        now: Instant,
        now_unix_ms: u64,
    ) -> impl Iterator<Item = (&Key, Delta)> {
        let window_start = now.checked_sub(WINDOW).unwrap_or(now);
        let seconds_since = move |at: Instant| {
            now.saturating_duration_since(at)
                .max(Duration::from_secs(1))
                .as_secs_f64()
        };
        self.samples.iter().filter_map(move |(key, samples)| {
            let (last_at, last) = samples.back()?;
            // Nothing reported within the window: nothing changed in it.
            if *last_at <= window_start {
                return Some((
                    key,
                    Delta {
                        durations: vec![0; last.durations.len()],
                        seconds: WINDOW.as_secs_f64(),
                        ..Delta::default()
                    },
                ));
            }
            let zero = Traffic {
                durations: vec![0; last.durations.len()],
                ..Traffic::default()
            };
            // The figures at the window's start: the last report before it
            // (they held until then); else zero if the counts began within
            // the window; else the first report (what came before it is
            // unknown, as after the control plane started).
            let before = samples.iter().rev().find(|(at, _)| *at <= window_start);
            let (from_at, from) = match before {
                Some((_, before)) => (window_start, before),
                None => {
                    let (first_at, first) = samples.front()?;
                    let began = now.checked_sub(Duration::from_millis(
                        now_unix_ms.saturating_sub(first.since_unix_ms),
                    ));
                    match began {
                        Some(began) if began >= window_start => (began.min(now), &zero),
                        _ => (*first_at, first),
                    }
                }
            };
            Some((
                key,
                Delta {
                    requests: last.requests.saturating_sub(from.requests),
                    errors: last.errors.saturating_sub(from.errors),
                    durations: last
                        .durations
                        .iter()
                        .zip(&from.durations)
                        .map(|(now, before)| now.saturating_sub(*before))
                        .collect(),
                    in_flight: last.in_flight,
                    seconds: seconds_since(from_at),
                },
            ))
        })
    }
}

/// What each node's components did over the window ending `now`: taken
/// under the state lock, cheaply, so the view is made outside it.
pub(crate) fn snapshot<'a>(
    logs: impl Iterator<Item = (&'a str, &'a TrafficLog)>,
    now: Instant,
    now_unix_ms: u64,
) -> Vec<(String, Vec<(Key, Delta)>)> {
    logs.map(|(node, log)| {
        let deltas = log
            .deltas(now, now_unix_ms)
            .map(|(key, delta)| (key.clone(), delta))
            .collect();
        (node.to_string(), deltas)
    })
    .collect()
}

/// The `skiff top` view of the cluster from each node's `traffic` (see
/// [`snapshot`]) and the replicas and nodes as `skiff ps` and `skiff
/// nodes` show them. Every sum saturates: no report overflows it.
pub(crate) fn view(
    traffic: &[(String, Vec<(Key, Delta)>)],
    replicas: &[ReplicaView],
    nodes: &[NodeView],
) -> TopView {
    #[derive(Default)]
    struct Sum {
        requests: f64,
        errors: f64,
        durations: Vec<u64>,
        in_flight: u64,
    }
    impl Sum {
        fn add(&mut self, delta: &Delta) {
            self.requests += delta.requests as f64 / delta.seconds;
            self.errors += delta.errors as f64 / delta.seconds;
            self.in_flight = self.in_flight.saturating_add(delta.in_flight);
            if self.durations.len() < delta.durations.len() {
                self.durations.resize(delta.durations.len(), 0);
            }
            for (sum, count) in self.durations.iter_mut().zip(&delta.durations) {
                *sum = sum.saturating_add(*count);
            }
        }
    }
    let mut by_component: BTreeMap<Key, Sum> = BTreeMap::new();
    let mut by_node: BTreeMap<&str, Sum> = BTreeMap::new();
    for (node, deltas) in traffic {
        for (key, delta) in deltas {
            by_component.entry(key.clone()).or_default().add(delta);
            by_node.entry(node).or_default().add(delta);
        }
    }
    // Every component with a replica shows, busy or not.
    let mut counts: BTreeMap<Key, (u32, u32)> = BTreeMap::new();
    for replica in replicas {
        let entry = counts
            .entry((replica.app.clone(), replica.component.clone()))
            .or_default();
        entry.1 += 1;
        if replica.state == "running" {
            entry.0 += 1;
        }
    }
    let keys: std::collections::BTreeSet<&Key> = by_component.keys().chain(counts.keys()).collect();
    let ms = |seconds: f64| (seconds * 1e6).round() / 1e3;
    // Rates to a tenth, as shown.
    let tenth = |rate: f64| (rate * 10.0).round() / 10.0;
    let components = keys
        .into_iter()
        .map(|key| {
            let sum = by_component.get(key);
            let (running, replicas) = counts.get(key).copied().unwrap_or_default();
            let quantile = |q| {
                sum.and_then(|s| skiff_runtime::metrics::quantile(&s.durations, q))
                    .map(ms)
            };
            let rps = sum.map_or(0.0, |s| s.requests);
            let errors = sum.map_or(0.0, |s| s.errors);
            ComponentTop {
                app: key.0.clone(),
                component: key.1.clone(),
                rps: tenth(rps),
                errors_per_sec: tenth(errors),
                error_rate: if rps > 0.0 {
                    (errors / rps * 1e4).round() / 1e4
                } else {
                    0.0
                },
                p50_ms: quantile(0.5),
                p99_ms: quantile(0.99),
                in_flight: sum.map_or(0, |s| s.in_flight),
                running,
                replicas,
            }
        })
        .collect();
    let nodes = nodes
        .iter()
        .map(|node| {
            let sum = by_node.get(node.name.as_str());
            NodeTop {
                name: node.name.clone(),
                state: node.state.clone(),
                rps: tenth(sum.map_or(0.0, |s| s.requests)),
                in_flight: sum.map_or(0, |s| s.in_flight),
                replicas: node.replicas,
                used: node.used,
                reserved: node.reserved,
                memory: node.memory,
            }
        })
        .collect();
    TopView {
        window_secs: WINDOW.as_secs_f64(),
        components,
        nodes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUCKETS: usize = skiff_runtime::metrics::REQUEST_DURATION_BUCKETS.len() + 1;

    /// Counts that began at Unix time `since` seconds.
    fn traffic(requests: u64, errors: u64, in_flight: u64, since: u64) -> Traffic {
        let mut durations = vec![0; BUCKETS];
        // Every request took between 1 and 2.5 ms.
        durations[2] = requests;
        Traffic {
            requests,
            errors,
            durations,
            in_flight,
            since_unix_ms: since * 1000,
        }
    }

    fn replica(app: &str, component: &str, state: &str) -> ReplicaView {
        serde_json::from_value(serde_json::json!({
            "id": format!("{app}-{component}-1"), "app": app, "component": component,
            "node": "a", "state": state, "age_secs": 1
        }))
        .unwrap()
    }

    /// Instant `second` of the test, Unix time 1000 + `second`.
    fn at(start: Instant, second: u64) -> Instant {
        start + Duration::from_secs(second)
    }

    #[test]
    fn rates_come_from_the_reports_across_the_window_summed_over_nodes() {
        let start = Instant::now();
        let key = ("shop".to_string(), "web".to_string());
        let (mut a, mut b) = (TrafficLog::default(), TrafficLog::default());
        // Node a, counting since long before: 100 requests before the
        // window, then 10 a second for its 10 s.
        a.record(key.clone(), traffic(100, 0, 0, 0), at(start, 20));
        for second in 1..=10 {
            a.record(
                key.clone(),
                traffic(100 + 10 * second, second, 2, 0),
                at(start, 20 + second),
            );
        }
        // Node b restarted at second 25: its figures went down, and its
        // new counts began within the window: 50 in 5 s.
        b.record(key.clone(), traffic(500, 0, 0, 0), at(start, 20));
        b.record(key.clone(), traffic(30, 0, 1, 1025), at(start, 27));
        b.record(key.clone(), traffic(50, 0, 1, 1025), at(start, 30));
        let now = at(start, 30);
        let top = view(
            &snapshot([("a", &a), ("b", &b)].into_iter(), now, 1_030_000),
            &[
                replica("shop", "web", "running"),
                replica("shop", "web", "starting"),
                replica("idle", "api", "running"),
            ],
            &[],
        );
        let shop = &top.components[1];
        assert_eq!(
            (shop.app.as_str(), shop.component.as_str()),
            ("shop", "web")
        );
        assert!((shop.rps - 20.0).abs() < 1e-9, "{}", shop.rps);
        assert!((shop.errors_per_sec - 1.0).abs() < 1e-9);
        assert!((shop.error_rate - 0.05).abs() < 1e-9);
        let p50 = shop.p50_ms.unwrap();
        assert!((1.0..=2.5).contains(&p50), "{p50}");
        assert_eq!(shop.in_flight, 3);
        assert_eq!((shop.running, shop.replicas), (1, 2));
        // A component with replicas but no traffic shows, idle.
        let idle = &top.components[0];
        assert_eq!(
            (idle.app.as_str(), idle.rps, idle.p99_ms),
            ("idle", 0.0, None)
        );
    }

    #[test]
    fn a_component_silent_before_a_burst_counts_only_the_burst_over_the_window() {
        let start = Instant::now();
        let key = ("shop".to_string(), "web".to_string());
        let mut log = TrafficLog::default();
        // Counting since second 0; last reported at second 100, then
        // silent (no change) until 30 requests at second 695.
        log.record(key.clone(), traffic(1_000, 0, 0, 1000), at(start, 100));
        log.record(key.clone(), traffic(1_030, 0, 0, 1000), at(start, 695));
        let rates: Vec<f64> = log
            .deltas(at(start, 700), 1_700_000)
            .map(|(_, d)| d.requests as f64 / d.seconds)
            .collect();
        assert_eq!(rates, vec![3.0]);
        // A first report (a control plane just started) of counts that
        // began long ago says nothing of the window: no rate until the
        // next.
        let mut fresh = TrafficLog::default();
        fresh.record(key.clone(), traffic(1_030, 0, 0, 1000), at(start, 695));
        let deltas: Vec<Delta> = fresh
            .deltas(at(start, 700), 1_700_000)
            .map(|(_, d)| d)
            .collect();
        assert_eq!(deltas[0].requests, 0);
    }

    #[test]
    fn rates_fall_to_zero_once_the_window_holds_no_report() {
        let start = Instant::now();
        let key = ("shop".to_string(), "web".to_string());
        let mut log = TrafficLog::default();
        // A burst over seconds 0 to 5, counting since long before, then
        // silence (a node reports only changes).
        for second in 0..=5 {
            log.record(
                key.clone(),
                traffic(1_000 + second * 100, 0, 4, 0),
                at(start, second),
            );
        }
        let rate = |log: &TrafficLog, second: u64| {
            let deltas: Vec<Delta> = log
                .deltas(at(start, second), 1_000_000 + second * 1000)
                .map(|(_, d)| d)
                .collect();
            (
                deltas[0].requests as f64 / deltas[0].seconds,
                deltas[0].in_flight,
            )
        };
        assert!(rate(&log, 6).0 > 0.0);
        assert_eq!(rate(&log, 16), (0.0, 0), "idle for a whole window");
        assert_eq!(rate(&log, 600), (0.0, 0));
        // A node that comes back with lower figures starts afresh.
        log.record(key.clone(), traffic(10, 0, 0, 1_000_700), at(start, 700));
        assert!(rate(&log, 701).0 > 0.0);
    }

    #[test]
    fn a_node_has_traffic_kept_for_a_bounded_number_of_components() {
        let start = Instant::now();
        let mut log = TrafficLog::default();
        for n in 0..MAX_COMPONENTS + 10 {
            log.record(
                (format!("app{n}"), "web".to_string()),
                traffic(1, 0, 0, 0),
                at(start, 1),
            );
        }
        assert_eq!(log.samples.len(), MAX_COMPONENTS);
    }

    #[test]
    fn a_nodes_lies_are_bounded_and_sums_saturate() {
        let start = Instant::now();
        let key = ("shop".to_string(), "web".to_string());
        let (mut a, mut b) = (TrafficLog::default(), TrafficLog::default());
        let lie = Traffic {
            requests: 10,
            errors: 1_000,
            durations: vec![u64::MAX; BUCKETS],
            in_flight: u64::MAX,
            since_unix_ms: 1_000_000,
        };
        a.record(key.clone(), lie.clone(), at(start, 5));
        b.record(key.clone(), lie, at(start, 5));
        let top = view(
            &snapshot([("a", &a), ("b", &b)].into_iter(), at(start, 6), 1_006_000),
            &[],
            &[],
        );
        let shop = &top.components[0];
        assert_eq!(shop.in_flight, 2 * MAX_IN_FLIGHT);
        assert!(shop.error_rate <= 1.0, "{}", shop.error_rate);
        assert!(shop.p99_ms.is_some_and(f64::is_finite));
    }

    #[test]
    fn old_reports_leave_the_window_and_silent_components_are_forgotten() {
        let start = Instant::now();
        let key = ("shop".to_string(), "web".to_string());
        let mut log = TrafficLog::default();
        for second in 0..40 {
            log.record(key.clone(), traffic(second * 5, 0, 0, 0), at(start, second));
        }
        let samples = &log.samples[&key];
        assert!(samples.len() <= 12, "{}", samples.len());
        // Wrong bucket counts are ignored.
        log.record(
            key.clone(),
            Traffic {
                durations: vec![1; 3],
                ..traffic(1_000, 0, 0, 0)
            },
            at(start, 41),
        );
        assert_eq!(log.samples[&key].back().unwrap().1.requests, 195);
        let other = ("other".to_string(), "web".to_string());
        log.record(other.clone(), traffic(1, 0, 0, 0), at(start, 4_000));
        assert!(!log.samples.contains_key(&key));
        assert!(log.samples.contains_key(&other));
    }
}
