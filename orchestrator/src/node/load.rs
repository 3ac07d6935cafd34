//! The demand on the components this node serves, as its heartbeats
//! report it to the autoscaler: each one's requests in its instances or
//! queued for one, averaged over time (each request counts for exactly
//! its time there, however short) in samples of [`SAMPLE_EVERY`], and
//! over the last [`SAMPLES`] samples (a second), plus the requests held for it
//! while no replica runs (see `hold`). A component that starts queueing,
//! or whose demand doubled since the control plane last heard of it, is
//! news: the control plane hears of it at once, not with the next
//! heartbeat.
//!
//! Heartbeats also carry what became of the requests each version
//! answered (counts since it loaded, sent when they changed), which the
//! control plane compares during a rollout; a version's first failures
//! since the last heartbeat are news too, so a bad version is rolled back
//! within a second or two.

use super::NodeShared;
use crate::api::{ComponentLoad, Traffic, VersionOutcomes};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often each serving component's demand is sampled.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Samples averaged: one second's worth.
const SAMPLES: usize = 10;

/// `(app, component)`.
type Key = (String, String);

/// The last second of demand of each component that had any.
#[derive(Default)]
pub(crate) struct LoadMeter {
    windows: Mutex<HashMap<Key, Window>>,
    /// Per version, the counts last reported: `((app, component),
    /// package) -> (answered, failed)`.
    told: Mutex<HashMap<(Key, String), (u64, u64)>>,
    /// When failures were last news: at most once per [`FAILURE_NEWS_EVERY`].
    failure_news: Mutex<Option<Instant>>,
    /// Each component's traffic as last reported.
    told_traffic: Mutex<HashMap<Key, Traffic>>,
}

/// How often new failures of a version may be news.
const FAILURE_NEWS_EVERY: Duration = Duration::from_secs(1);

/// One component's last samples, and whether it was queueing at the last.
#[derive(Default)]
struct Window {
    samples: [f64; SAMPLES],
    next: usize,
    saturated: bool,
    /// The average last reported (or told as news).
    told: f64,
    /// Sampled this round; a component no longer serving here is not,
    /// and gets a zero.
    sampled: bool,
}

impl Window {
    fn push(&mut self, demand: f64) {
        self.samples[self.next] = demand;
        self.next = (self.next + 1) % SAMPLES;
    }

    fn mean(&self) -> f64 {
        self.samples.iter().sum::<f64>() / SAMPLES as f64
    }

    fn idle(&self) -> bool {
        self.samples.iter().all(|s| *s == 0.0)
    }
}

impl LoadMeter {
    /// Takes one sample of every component serving here; returns whether
    /// one started queueing since the last sample (news for the control
    /// plane). Components idle for a whole window are forgotten, so an
    /// idle node costs nothing per component.
    fn sample(&self, node: &NodeShared) -> bool {
        let mut windows = self.windows.lock().expect("load lock");
        let mut news = false;
        // Every version of a component adds to its demand.
        let mut now: HashMap<Key, (f64, bool)> = HashMap::new();
        let mut new_failures = false;
        {
            let told = self.told.lock().expect("load lock");
            node.replicas.for_each_serving(|key, package, component| {
                let entry = now.entry(key.clone()).or_default();
                entry.0 += component.take_average_demand();
                entry.1 |= component.is_saturated();
                let failed = component.outcomes.counts().failed;
                let before = told
                    .get(&(key.clone(), package.to_string()))
                    .map_or(0, |(_, failed)| *failed);
                new_failures |= failed > before;
            });
        }
        if new_failures {
            let mut last = self.failure_news.lock().expect("load lock");
            if last.is_none_or(|at| at.elapsed() >= FAILURE_NEWS_EVERY) {
                *last = Some(Instant::now());
                news = true;
            }
        }
        for (key, (demand, saturated)) in now {
            let key = &key;
            let window = match windows.get_mut(key) {
                Some(window) => window,
                None if demand == 0.0 => continue,
                None => windows.entry(key.clone()).or_default(),
            };
            window.push(demand);
            window.sampled = true;
            // News: it starts queueing, or its demand doubled since the
            // control plane last heard of it.
            let mean = window.mean();
            if (saturated && !window.saturated) || (mean >= 1.0 && mean >= 2.0 * window.told) {
                news = true;
                window.told = mean;
            }
            window.saturated = saturated;
        }
        windows.retain(|_, w| {
            if !std::mem::take(&mut w.sampled) {
                w.push(0.0);
                w.saturated = false;
            }
            !w.idle()
        });
        news
    }

    /// The outcomes of each version serving here whose counts changed
    /// since the last call, by `(app, component)`: for the next heartbeat.
    pub(crate) fn changed_outcomes(&self, node: &NodeShared) -> HashMap<Key, Vec<VersionOutcomes>> {
        let mut changed: HashMap<Key, Vec<VersionOutcomes>> = HashMap::new();
        {
            let mut told = self.told.lock().expect("load lock");
            let mut serving = std::collections::HashSet::new();
            node.replicas.for_each_serving(|key, package, component| {
                let version = (key.clone(), package.to_string());
                let counts = component.outcomes.counts();
                let now = (counts.answered, counts.failed);
                if told.get(&version) != Some(&now) && counts.answered > 0 {
                    changed
                        .entry(key.clone())
                        .or_default()
                        .push(VersionOutcomes {
                            package: package.to_string(),
                            answered: counts.answered,
                            succeeded: counts.succeeded,
                            failed: counts.failed,
                            reasons: counts.reasons,
                        });
                    told.insert(version.clone(), now);
                }
                serving.insert(version);
            });
            told.retain(|version, _| serving.contains(version));
        }
        changed
    }

    /// The traffic of each component serving here whose figures changed
    /// since the last call: for the next heartbeat.
    pub(crate) fn changed_traffic(&self, node: &NodeShared) -> HashMap<Key, Traffic> {
        let mut told = self.told_traffic.lock().expect("load lock");
        let mut now: HashMap<Key, Traffic> = HashMap::new();
        node.replicas.for_each_serving(|key, _, component| {
            // Every version shares the component's series.
            now.entry(key.clone()).or_insert_with(|| {
                let counts = component.series.traffic();
                Traffic {
                    requests: counts.requests,
                    errors: counts.errors,
                    durations: counts.durations,
                    in_flight: counts.in_flight,
                    since_unix_ms: counts.since_unix_ms,
                }
            });
        });
        told.retain(|key, _| now.contains_key(key));
        now.retain(|key, traffic| {
            let changed = told.get(key) != Some(traffic) && traffic.requests > 0;
            if changed {
                told.insert(key.clone(), traffic.clone());
            }
            changed
        });
        now
    }

    /// What the next heartbeat reports: each component with demand, with
    /// the requests `held` for it, the `outcomes` of its versions and its
    /// `traffic` (by `(app, component)`).
    pub(crate) fn report(
        &self,
        held: HashMap<Key, u32>,
        mut outcomes: HashMap<Key, Vec<VersionOutcomes>>,
        mut traffic: HashMap<Key, Traffic>,
    ) -> Vec<ComponentLoad> {
        let mut windows = self.windows.lock().expect("load lock");
        let mut load: HashMap<&Key, ComponentLoad> = windows
            .iter_mut()
            .map(|(key, window)| {
                window.told = window.mean();
                (
                    key,
                    ComponentLoad {
                        app: key.0.clone(),
                        component: key.1.clone(),
                        concurrency: window.told,
                        held: 0,
                        versions: Vec::new(),
                        traffic: None,
                    },
                )
            })
            .collect();
        let empty = |key: &Key| ComponentLoad {
            app: key.0.clone(),
            component: key.1.clone(),
            concurrency: 0.0,
            held: 0,
            versions: Vec::new(),
            traffic: None,
        };
        for (key, count) in &held {
            load.entry(key).or_insert_with(|| empty(key)).held = *count;
        }
        for (key, versions) in &mut outcomes {
            load.entry(key).or_insert_with(|| empty(key)).versions = std::mem::take(versions);
        }
        for (key, traffic) in &mut traffic {
            load.entry(key).or_insert_with(|| empty(key)).traffic = Some(std::mem::take(traffic));
        }
        load.into_values().collect()
    }
}

/// Samples demand until aborted, telling the control plane at once when
/// a component starts queueing.
pub(crate) async fn run(node: Arc<NodeShared>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if node.load.sample(&node) {
            node.changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_averages_its_last_second_and_is_idle_once_it_holds_only_zeros() {
        let mut window = Window::default();
        for _ in 0..5 {
            window.push(8.0);
        }
        assert_eq!(window.mean(), 4.0);
        assert!(!window.idle());
        for _ in 0..SAMPLES {
            window.push(0.0);
        }
        assert!(window.idle());
    }

    #[test]
    fn held_requests_are_reported_beside_the_demand_measured() {
        let meter = LoadMeter::default();
        let key = ("shop".to_string(), "api".to_string());
        {
            let mut windows = meter.windows.lock().unwrap();
            let window = windows.entry(key.clone()).or_default();
            for _ in 0..SAMPLES {
                window.push(3.0);
            }
        }
        let held = HashMap::from([
            (key.clone(), 2),
            (("shop".to_string(), "cold".to_string()), 5),
        ]);
        let outcomes = HashMap::from([(
            key.clone(),
            vec![VersionOutcomes {
                package: "sha256:p".to_string(),
                answered: 10,
                succeeded: 9,
                failed: 1,
                reasons: Default::default(),
            }],
        )]);
        let mut report = meter.report(held, outcomes, HashMap::new());
        report.sort_by(|a, b| a.component.cmp(&b.component));
        assert_eq!(report.len(), 2);
        assert_eq!((report[0].concurrency, report[0].held), (3.0, 2));
        assert_eq!(report[0].versions[0].failed, 1);
        assert_eq!(report[1].component, "cold");
        assert_eq!((report[1].concurrency, report[1].held), (0.0, 5));
    }
}
