//! Rollouts: how an app moves from one version to the next. A deploy of a
//! new package starts one (replica by replica within each component's
//! `rollout` bounds, or by canary steps); each controller pass moves it
//! on, and compares what became of the new version's requests with the
//! old one's, rolling back when the new one fails clearly more (or fails
//! to load). Meanwhile requests are split between the versions (see
//! [`split`]). The last few versions are kept for `skiff rollback`.

use super::Live;
use super::events::EventKind;
use crate::api::{LoadState, VersionOutcomes};
use crate::node::replicas::short;
use crate::state::{AppRecord, FailedVersion, KEPT_VERSIONS, Replicas, Rollout, RolloutStrategy};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// How long a rollout whose replicas all run the new version is still
/// watched for errors, and rolled back if they come.
pub(crate) const WATCH: Duration = Duration::from_secs(30);

/// Failed requests the new version must have had before its failure rate
/// is judged: a couple of errors prove nothing.
pub(crate) const MIN_FAILED: u64 = 5;

/// How much the new version's failure rate may exceed the old one's
/// before it is rolled back: 10 points (1% failing before, 11% now).
pub(crate) const MAX_EXTRA_FAILURE_RATE: f64 = 0.10;

/// A canary asked for by a deploy: its steps (percent, ending at 100) and
/// how long each lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Canary {
    pub(crate) steps: Vec<u32>,
    pub(crate) interval: Duration,
}

/// The record `current` becomes when `package` is deployed at `scale`,
/// by a canary or a rolling update, and what the user should know (a
/// rollout under way was replaced). A new version of a running app starts
/// a rollout from the version that served last; the same version changes
/// only the scale.
pub(crate) fn deploy(
    current: Option<&AppRecord>,
    name: &str,
    package: &str,
    scale: BTreeMap<String, Replicas>,
    canary: Option<Canary>,
    now_ms: u64,
) -> (AppRecord, Vec<String>) {
    let mut record = current.cloned().unwrap_or_else(|| AppRecord::new(name));
    record.scale = scale;
    let mut notes = Vec::new();
    if current.is_none() || record.package.is_empty() {
        record.package = package.to_string();
        return (record, notes);
    }
    if record.package == package {
        return (record, notes);
    }
    // The version that served last: where a rollback of this one returns.
    let stable = match &record.rollout {
        Some(Rollout {
            from,
            strategy: RolloutStrategy::Rolling | RolloutStrategy::Canary { .. },
            done_unix_ms: None,
            ..
        }) => {
            notes.push(format!(
                "a rollout to {} was under way; this deploy replaces it: its replicas are replaced by this version's, and a rollback returns to {}",
                short(&record.package),
                short(from)
            ));
            from.clone()
        }
        Some(Rollout {
            strategy: RolloutStrategy::Rollback { .. },
            from,
            ..
        }) => {
            notes.push(format!(
                "a rollback from {} was under way; this deploy replaces it",
                short(from)
            ));
            record.package.clone()
        }
        _ => record.package.clone(),
    };
    if let Some(Rollout {
        from,
        done_unix_ms: Some(_),
        strategy: RolloutStrategy::Rolling | RolloutStrategy::Canary { .. },
        ..
    }) = &record.rollout
    {
        // The last rollout finished; only its watch is cut short.
        remember(&mut record.history, from);
    }
    record.failed = None;
    if package == stable {
        record.rollout = Some(Rollout {
            from: record.package.clone(),
            started_unix_ms: now_ms,
            strategy: RolloutStrategy::Rollback {
                reason: "the version that served before was deployed again".to_string(),
            },
            done_unix_ms: None,
        });
        record.package = package.to_string();
        return (record, notes);
    }
    let strategy = match canary {
        Some(canary) => RolloutStrategy::Canary {
            steps: canary.steps,
            step: 0,
            interval_ms: canary.interval.as_millis() as u64,
            step_started_unix_ms: now_ms,
        },
        None => RolloutStrategy::Rolling,
    };
    record.rollout = Some(Rollout {
        from: stable,
        started_unix_ms: now_ms,
        strategy,
        done_unix_ms: None,
    });
    record.package = package.to_string();
    (record, notes)
}

/// Adds `package` to `history` (newest last), keeping [`KEPT_VERSIONS`].
fn remember(history: &mut Vec<String>, package: &str) {
    history.retain(|p| p != package);
    history.push(package.to_string());
    if history.len() > KEPT_VERSIONS {
        history.remove(0);
    }
}

/// The record `current` becomes when it is rolled back by hand, and what
/// was done: a rollout under way returns to the version before it; else
/// the app returns to the last version in its history (taken from it, so
/// rolling back again goes one further back).
///
/// # Errors
///
/// A rollback already under way, or no rollout under way and no earlier
/// version kept.
pub(crate) fn rollback(current: &AppRecord, now_ms: u64) -> Result<(AppRecord, String), String> {
    let mut record = current.clone();
    let name = &record.name;
    match &record.rollout {
        // Asking again while it goes back does not go further back.
        Some(Rollout {
            strategy: RolloutStrategy::Rollback { .. },
            ..
        }) => Err(format!(
            "app {name:?} is already rolling back to {}; `skiff apps` shows how far it is (roll back further once it is done)",
            short(&record.package)
        )),
        Some(Rollout {
            from,
            strategy: RolloutStrategy::Rolling | RolloutStrategy::Canary { .. },
            done_unix_ms: None,
            ..
        }) => {
            let from = from.clone();
            let message = format!(
                "rollout of {name} to {} stopped by hand; back to {}",
                short(&record.package),
                short(&from)
            );
            fail_to(&mut record, from, "rolled back by hand".to_string(), now_ms);
            Ok((record, message))
        }
        _ => {
            if let Some(Rollout {
                from,
                done_unix_ms: Some(_),
                strategy: RolloutStrategy::Rolling | RolloutStrategy::Canary { .. },
                ..
            }) = &record.rollout
            {
                let from = from.clone();
                remember(&mut record.history, &from);
            }
            let Some(previous) = record.history.pop() else {
                return Err(format!(
                    "app {name:?} has no earlier version left to roll back to: Skiff keeps the last {KEPT_VERSIONS} versions an app ran, and each rollback goes one further back (to go forward again, deploy the version you want)"
                ));
            };
            let message = format!(
                "{name} rolling back from {} to {}",
                short(&record.package),
                short(&previous)
            );
            record.rollout = Some(Rollout {
                from: record.package.clone(),
                started_unix_ms: now_ms,
                strategy: RolloutStrategy::Rollback {
                    reason: "rolled back by hand".to_string(),
                },
                done_unix_ms: None,
            });
            record.package = previous;
            Ok((record, message))
        }
    }
}

/// Sends `record` back to version `to`, recording its current version as
/// failed for `reason`.
fn fail_to(record: &mut AppRecord, to: String, reason: String, now_ms: u64) {
    let failed = std::mem::replace(&mut record.package, to);
    record.failed = Some(FailedVersion {
        package: failed.clone(),
        reason: reason.clone(),
        unix_ms: now_ms,
    });
    record.rollout = Some(Rollout {
        from: failed,
        started_unix_ms: now_ms,
        strategy: RolloutStrategy::Rollback { reason },
        done_unix_ms: None,
    });
}

/// The record `current` becomes when its canary is promoted: the new
/// version goes straight to its last step (all requests, replica by
/// replica).
///
/// # Errors
///
/// No canary under way.
pub(crate) fn promote(current: &AppRecord, now_ms: u64) -> Result<(AppRecord, u32), String> {
    let mut record = current.clone();
    match &mut record.rollout {
        Some(Rollout {
            strategy:
                RolloutStrategy::Canary {
                    steps,
                    step,
                    step_started_unix_ms,
                    ..
                },
            done_unix_ms: None,
            ..
        }) if *step + 1 < steps.len() => {
            let from = steps[*step];
            *step = steps.len() - 1;
            *step_started_unix_ms = now_ms;
            Ok((record, from))
        }
        _ => Err(format!(
            "app {:?} has no canary under way to promote; `skiff apps` shows its rollout",
            current.name
        )),
    }
}

/// Requests one version answered, and how many failed, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) answered: u64,
    /// Answered below 400: what proves a version works.
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    pub(crate) reasons: BTreeMap<String, u64>,
    /// When a node last reported requests of it, Unix milliseconds.
    pub(crate) last_unix_ms: u64,
}

impl Tally {
    fn add(&mut self, counts: &Counts) {
        if counts.answered > 0 {
            self.last_unix_ms = crate::clock::unix_ms();
        }
        self.answered = self.answered.saturating_add(counts.answered);
        self.succeeded = self.succeeded.saturating_add(counts.succeeded);
        self.failed = self.failed.saturating_add(counts.failed);
        for (reason, n) in &counts.reasons {
            // A few reasons per tally, whatever many nodes report.
            let reason = if self.reasons.contains_key(reason) || self.reasons.len() < MAX_REASONS {
                reason.clone()
            } else {
                "other".to_string()
            };
            let count = self.reasons.entry(reason).or_default();
            *count = count.saturating_add(*n);
        }
    }

    /// Requests that either worked or failed: a 4xx is the client's
    /// doing, so a flood of requests for missing paths dilutes nothing.
    fn judged(&self) -> u64 {
        self.succeeded.saturating_add(self.failed)
    }

    fn rate(&self) -> f64 {
        match self.judged() {
            0 => 0.0,
            judged => self.failed as f64 / judged as f64,
        }
    }

    /// `12 of 40 requests failed (30%: trap 10, status_500 2)`.
    fn describe(&self) -> String {
        let reasons: Vec<String> = self
            .reasons
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        format!(
            "{} of {} requests failed ({:.0}%{}{})",
            self.failed,
            self.judged(),
            self.rate() * 100.0,
            if reasons.is_empty() { "" } else { ": " },
            reasons.join(", ")
        )
    }
}

/// Why the new version should be rolled back, judging what became of its
/// requests (`new`) against the old version's (`old`) since the rollout
/// began: at least [`MIN_FAILED`] failures, a failure rate more than
/// [`MAX_EXTRA_FAILURE_RATE`] above the old one's, and a difference too
/// large to be chance (a two-proportion z-test at [`MIN_Z`]), so a few
/// unlucky requests on a small canary do not roll back a good version.
pub(crate) fn judge(new: &Tally, old: &Tally) -> Option<String> {
    if new.failed < MIN_FAILED || new.rate() - old.rate() <= MAX_EXTRA_FAILURE_RATE {
        return None;
    }
    if !significant(new, old) {
        return None;
    }
    let before = if old.judged() == 0 {
        "the version before answered none meanwhile".to_string()
    } else {
        format!(
            "the version before: {:.0}% of {}",
            old.rate() * 100.0,
            old.judged()
        )
    };
    Some(format!("{}; {before}", new.describe()))
}

/// How many standard errors apart the two failure rates must be.
pub(crate) const MIN_Z: f64 = 3.0;

/// Whether `new` fails more than `old` by more than chance: a one-sided
/// two-proportion z-test. With nothing from the old version to compare
/// with, the rate alone decides.
fn significant(new: &Tally, old: &Tally) -> bool {
    let (n1, n2) = (new.judged() as f64, old.judged() as f64);
    if n2 == 0.0 || n1 == 0.0 {
        return true;
    }
    let pooled = (new.failed + old.failed) as f64 / (n1 + n2);
    let error = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if error == 0.0 {
        return new.rate() > old.rate();
    }
    (new.rate() - old.rate()) / error >= MIN_Z
}

/// What each node last said each version answered, per `(app, component,
/// package)`: the next report's counts are taken as differences from
/// these.
pub(crate) type OutcomesSeen = HashMap<(String, String, String), Counts>;

/// Takes the outcomes node `node` reported for `app`'s `component`
/// (counts since each version loaded there) as differences from what it
/// reported before, into the app's tallies while a rollout of it is
/// judged. A version the node holds no replica of is ignored, so a node
/// speaks only of what it runs; its figures are bounded (no more failures
/// than answers, a few reasons of a few words), so no report can overflow
/// a tally or bloat what is stored.
///
/// A version never heard of from this node (the control plane or the
/// node restarted since, or it was down) gives a baseline, not requests:
/// its counts may go back to before the rollout. Only the new version's
/// count in full: it loaded after the rollout began.
///
/// Returns whether a judged version failed more requests: the controller
/// should look now, not at its next pass.
pub(crate) fn take_outcomes(
    live: &mut Live,
    node: &str,
    app: &str,
    component: &str,
    versions: Vec<VersionOutcomes>,
) -> bool {
    let Some(record) = live.apps.get(app) else {
        return false;
    };
    let mut failures = false;
    let judged = matches!(
        &record.rollout,
        Some(Rollout {
            strategy: RolloutStrategy::Rolling | RolloutStrategy::Canary { .. },
            ..
        })
    );
    let new_version = record.package.clone();
    let started = record.rollout.as_ref().map_or(0, |r| r.started_unix_ms);
    let prefix = format!("{app}/{component}/");
    let mut reported = std::collections::HashSet::new();
    for version in versions.into_iter().take(MAX_VERSIONS_PER_REPORT) {
        if !reported.insert(version.package.clone()) {
            continue;
        }
        let held = live
            .replicas_under(&prefix)
            .any(|r| r.node.as_deref() == Some(node) && r.package == version.package);
        let Some(seen) = live.nodes.get_mut(node).map(|n| &mut n.outcomes_seen) else {
            return failures;
        };
        if !held {
            continue;
        }
        if seen.len() >= MAX_SEEN_PER_NODE {
            seen.clear();
        }
        let now = Counts::bounded(&version);
        let key = (
            app.to_string(),
            component.to_string(),
            version.package.clone(),
        );
        let new = match seen.get(&key) {
            Some(before) if now.answered >= before.answered && now.failed >= before.failed => {
                now.since(before)
            }
            // Counts that went down are of a new load there: all new.
            Some(_) => now.clone(),
            // The new version loaded after the rollout began: all of it
            // counts, unless this control plane started since (then its
            // counts before are in no tally either).
            None if judged && version.package == new_version && live.started_unix_ms <= started => {
                now.clone()
            }
            None => Counts::default(),
        };
        seen.insert(key, now);
        failures |= judged && new.failed > 0;
        if judged {
            live.tallies
                .entry((app.to_string(), version.package))
                .or_default()
                .add(&new);
        }
    }
    failures
}

/// Versions remembered per node before the memory starts afresh.
const MAX_SEEN_PER_NODE: usize = 200_000;

/// Failure reasons kept per version, and the longest reason kept.
const MAX_REASONS: usize = 16;
const MAX_REASON_LEN: usize = 40;

/// A node's counts for one version, bounded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    answered: u64,
    succeeded: u64,
    failed: u64,
    reasons: BTreeMap<String, u64>,
}

impl Counts {
    /// What `version` says, with no more failures than answers and at
    /// most [`MAX_REASONS`] reasons of [`MAX_REASON_LEN`] characters.
    fn bounded(version: &VersionOutcomes) -> Counts {
        let failed = version.failed.min(version.answered);
        let succeeded = version.succeeded.min(version.answered - failed);
        let reasons = version
            .reasons
            .iter()
            .take(MAX_REASONS)
            .map(|(reason, n)| {
                let reason: String = reason.chars().take(MAX_REASON_LEN).collect();
                (reason, (*n).min(failed))
            })
            .collect();
        Counts {
            answered: version.answered,
            succeeded,
            failed,
            reasons,
        }
    }

    /// What was added since `before`.
    fn since(&self, before: &Counts) -> Counts {
        Counts {
            answered: self.answered - before.answered,
            succeeded: self.succeeded.saturating_sub(before.succeeded),
            failed: self.failed - before.failed,
            reasons: self
                .reasons
                .iter()
                .map(|(reason, n)| {
                    let was = before.reasons.get(reason).copied().unwrap_or(0);
                    (reason.clone(), n.saturating_sub(was))
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }
}

/// Versions one report may speak of per component: a node holds at most
/// two during a rollout.
const MAX_VERSIONS_PER_REPORT: usize = 4;

/// Moves every app's rollout on by one pass at `now_ms`: rolls back a new
/// version that fails to load or fails clearly more than the old, takes a
/// canary's next step when its interval passed, marks a rollout done when
/// every replica runs the new version, and ends its watch. Returns the
/// records that changed, to be stored.
pub(super) fn progress(live: &mut Live, now_ms: u64) -> Vec<AppRecord> {
    let mut changed = Vec::new();
    let rolling: Vec<String> = live
        .apps
        .values()
        .filter(|a| a.rollout.is_some())
        .map(|a| a.name.clone())
        .collect();
    for name in rolling {
        let record = live.apps[&name].clone();
        let Some(rollout) = &record.rollout else {
            continue;
        };
        let mut next = record.clone();
        let moved = all_moved(live, &record);
        match &rollout.strategy {
            RolloutStrategy::Rollback { .. } => {
                if moved {
                    next.rollout = None;
                    live.events.record_app(
                        EventKind::RolloutDone,
                        &name,
                        format!(
                            "{name} rolled back: every replica runs {} again",
                            short(&record.package)
                        ),
                    );
                }
            }
            strategy => {
                if let Some(why) = failing(live, &record) {
                    let from = rollout.from.clone();
                    let message = format!(
                        "{name} {} rolled back to {}: {why}",
                        short(&record.package),
                        short(&from)
                    );
                    tracing::warn!(app = name, "{message}");
                    live.events
                        .record_app(EventKind::RolledBack, &name, message);
                    fail_to(&mut next, from, why, now_ms);
                } else if let RolloutStrategy::Canary {
                    steps,
                    step,
                    interval_ms,
                    step_started_unix_ms,
                } = strategy
                    && step + 1 < steps.len()
                    && now_ms.saturating_sub(*step_started_unix_ms) >= *interval_ms
                {
                    let share = steps[step + 1];
                    if let Some(RolloutStrategy::Canary {
                        step,
                        step_started_unix_ms,
                        ..
                    }) = next.rollout.as_mut().map(|r| &mut r.strategy)
                    {
                        *step += 1;
                        *step_started_unix_ms = now_ms;
                    }
                    let tally = live
                        .tallies
                        .get(&(name.clone(), record.package.clone()))
                        .cloned()
                        .unwrap_or_default();
                    let now = if share >= 100 {
                        "replaces the old version replica by replica".to_string()
                    } else {
                        format!("now gets {share}% of requests")
                    };
                    live.events.record_app(
                        EventKind::RolloutStep,
                        &name,
                        format!(
                            "{name} canary {} {now} ({} so far)",
                            short(&record.package),
                            tally.describe()
                        ),
                    );
                } else if rollout.done_unix_ms.is_none() && moved && at_last_step(strategy) {
                    if let Some(r) = next.rollout.as_mut() {
                        r.done_unix_ms = Some(now_ms);
                    }
                    live.events.record_app(
                        EventKind::RolloutDone,
                        &name,
                        format!(
                            "{name} every replica runs {}; its errors are watched for {}s more",
                            short(&record.package),
                            WATCH.as_secs()
                        ),
                    );
                } else if rollout
                    .done_unix_ms
                    .is_some_and(|done| now_ms.saturating_sub(done) >= WATCH.as_millis() as u64)
                {
                    remember(&mut next.history, &rollout.from);
                    next.rollout = None;
                    live.events.record_app(
                        EventKind::RolloutDone,
                        &name,
                        format!("{name} rollout to {} complete", short(&record.package)),
                    );
                }
            }
        }
        if next != record {
            if next.rollout.as_ref().is_none_or(|r| r.from != rollout.from) {
                // The tallies of this rollout are of no use to the next.
                live.tallies.retain(|(app, _), _| app != &name);
            }
            live.apps.insert(name.clone(), next.clone());
            changed.push(next);
        }
    }
    changed
}

/// How long a rollout whose app gets no requests waits for one (since it
/// began, or since the last) before its new version's readiness is proof
/// enough.
pub(crate) const IDLE_PROOF: Duration = Duration::from_secs(5);

/// Whether `record`'s new version may replace old replicas: it answered
/// a request successfully (below 400) since its rollout began (the first
/// successful request is the readiness that counts), or the app got no
/// requests for [`IDLE_PROOF`], so there is nothing to prove it on (a
/// version that took none while others did waits for more). A
/// rollback proves nothing: the version it returns to served before.
pub(crate) fn proven(live: &Live, record: &AppRecord, now_ms: u64) -> bool {
    let Some(rollout) = &record.rollout else {
        return true;
    };
    if matches!(rollout.strategy, RolloutStrategy::Rollback { .. }) {
        return true;
    }
    let tally = |package: &str| {
        live.tallies
            .get(&(record.name.clone(), package.to_string()))
    };
    let new = tally(&record.package);
    if new.is_some_and(|t| t.succeeded > 0) {
        return true;
    }
    // Quiet since the rollout began (or this control plane started, not
    // knowing what came before), or since the last request.
    let last = [tally(&rollout.from), new]
        .into_iter()
        .flatten()
        .map(|t| t.last_unix_ms)
        .fold(rollout.started_unix_ms.max(live.started_unix_ms), u64::max);
    now_ms.saturating_sub(last) >= IDLE_PROOF.as_millis() as u64
}

/// Whether `strategy` sends the new version all requests now: a canary
/// only at its last step.
fn at_last_step(strategy: &RolloutStrategy) -> bool {
    match strategy {
        RolloutStrategy::Canary { steps, step, .. } => steps[*step] >= 100,
        _ => true,
    }
}

/// Whether every component of `record` runs only its new version, with
/// as many replicas serving as it should run.
fn all_moved(live: &Live, record: &AppRecord) -> bool {
    let Some(spec) = live.specs.get(&record.package) else {
        return false;
    };
    let prefix = format!("{}/", record.name);
    let replicas: Vec<_> = live.replicas_under(&prefix).collect();
    if replicas.iter().any(|r| r.package != record.package) {
        return false;
    }
    spec.components.iter().all(|(component, plan)| {
        let desired = live.desired_replicas(record, component, plan);
        let serving = replicas
            .iter()
            .filter(|r| &r.component == component)
            .filter(|r| super::reconcile::endpoint_node(live, r).is_some())
            .count() as u32;
        serving >= desired
    })
}

/// Why `record`'s new version should be rolled back now: a node failed
/// to load it, or its requests fail clearly more than the old version's.
fn failing(live: &Live, record: &AppRecord) -> Option<String> {
    let Rollout { from, .. } = record.rollout.as_ref()?;
    // Where the new version's replicas are, and whether any serves: a
    // node speaks only of replicas it was given, and a version that
    // serves elsewhere failed only on that node (its replica moves).
    let prefix = format!("{}/", record.name);
    let placed: Vec<&crate::state::ReplicaRecord> = live
        .replicas_under(&prefix)
        .filter(|r| r.package == record.package)
        .collect();
    let serves_somewhere = placed
        .iter()
        .any(|r| super::reconcile::endpoint_node(live, r).is_some());
    if !serves_somewhere {
        for replica in &placed {
            let Some(name) = replica.node.as_deref() else {
                continue;
            };
            let Some(node) = live.nodes.get(name).filter(|n| !n.down) else {
                continue;
            };
            if let Some(status) = node
                .component(&record.name, &replica.component, &record.package)
                .filter(|status| status.state == LoadState::Failed)
            {
                let error = status.error.as_deref().unwrap_or("no reason given");
                // The node's note of its next retry is no verdict's.
                let error = error
                    .rsplit_once(" (attempt ")
                    .map_or(error, |(error, _)| error);
                return Some(format!(
                    "component {} failed to start on node {name}: {error}",
                    replica.component
                ));
            }
        }
    }
    let tally = |package: &str| {
        live.tallies
            .get(&(record.name.clone(), package.to_string()))
            .cloned()
            .unwrap_or_default()
    };
    judge(&tally(&record.package), &tally(from))
}

/// How `record`'s `component` splits its requests between versions now,
/// given the versions of its endpoints: a canary's new version gets its
/// step's share once it and another version serve; a version rolled back
/// to gets all of them once it serves. `None`: any endpoint will do.
pub(super) fn split<'a>(
    record: &AppRecord,
    mut endpoint_versions: impl Iterator<Item = &'a str> + Clone,
) -> Option<(String, u32)> {
    let new = record.package.as_str();
    let new_serves = endpoint_versions.clone().any(|p| p == new);
    let other_serves = endpoint_versions.any(|p| p != new);
    if !new_serves || !other_serves {
        return None;
    }
    match &record.rollout.as_ref()?.strategy {
        RolloutStrategy::Canary { steps, step, .. } if steps[*step] < 100 => {
            Some((new.to_string(), steps[*step]))
        }
        RolloutStrategy::Rollback { .. } => Some((new.to_string(), 100)),
        _ => None,
    }
}

/// How many replicas of a component's new version should exist now, and
/// how many of the other versions' are kept regardless of readiness
/// (a canary keeps the old version whole until its last step).
pub(super) struct VersionTargets {
    /// Replicas of the new version wanted now.
    pub(super) new: u32,
    /// Replicas of the old versions kept whatever the new ones' state
    /// (a canary's); `None` during a rolling update, which removes old
    /// ones as new ones become ready.
    pub(super) keep_old: Option<u32>,
    /// Fewest ready replicas (of any version) while old ones are removed.
    pub(super) min_ready: u32,
}

/// The targets for a component that should run `desired` replicas, with
/// `old` replicas of other versions, under `record`'s rollout and the
/// component's `(surge, unavailable)` bounds.
pub(super) fn targets(
    record: &AppRecord,
    desired: u32,
    old: u32,
    (surge, unavailable): (u32, u32),
) -> VersionTargets {
    if let Some(Rollout {
        strategy: RolloutStrategy::Canary { steps, step, .. },
        ..
    }) = &record.rollout
        && steps[*step] < 100
    {
        let share = u64::from(steps[*step]);
        let new = if desired == 0 {
            0
        } else {
            (u64::from(desired) * share).div_ceil(100).max(1) as u32
        };
        return VersionTargets {
            new,
            keep_old: Some(desired),
            min_ready: desired,
        };
    }
    let new = desired.min(desired.saturating_add(surge).saturating_sub(old));
    VersionTargets {
        new,
        keep_old: None,
        min_ready: desired.saturating_sub(unavailable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "shop" at v1, deployed as v2 by a canary of `steps`.
    fn canary_of_v2(steps: &[u32]) -> AppRecord {
        let canary = Canary {
            steps: steps.to_vec(),
            interval: Duration::from_secs(60),
        };
        deploy(
            Some(&app("v1")),
            "shop",
            "v2",
            BTreeMap::new(),
            Some(canary),
            5,
        )
        .0
    }

    fn app(package: &str) -> AppRecord {
        let mut record = AppRecord::new("shop");
        record.package = package.to_string();
        record.generation = 1;
        record
    }

    #[test]
    fn a_new_version_starts_a_rollout_from_the_one_serving() {
        let (record, notes) = deploy(Some(&app("v1")), "shop", "v2", BTreeMap::new(), None, 5);
        assert_eq!(record.package, "v2");
        let rollout = record.rollout.expect("a rollout");
        assert_eq!(rollout.from, "v1");
        assert_eq!(rollout.strategy, RolloutStrategy::Rolling);
        assert!(notes.is_empty());
        let (same, _) = deploy(Some(&app("v1")), "shop", "v1", BTreeMap::new(), None, 5);
        assert_eq!(same.rollout, None, "the same version only scales");
    }

    #[test]
    fn a_deploy_during_a_rollout_replaces_it_and_still_returns_to_the_last_good_version() {
        let (v2, _) = deploy(Some(&app("v1")), "shop", "v2", BTreeMap::new(), None, 5);
        let (v3, notes) = deploy(Some(&v2), "shop", "v3", BTreeMap::new(), None, 6);
        assert_eq!(v3.rollout.as_ref().unwrap().from, "v1");
        assert!(notes[0].contains("replaces it"), "{notes:?}");
        // Deploying the last good version again is a rollback.
        let (back, _) = deploy(Some(&v3), "shop", "v1", BTreeMap::new(), None, 7);
        assert!(matches!(
            back.rollout.unwrap().strategy,
            RolloutStrategy::Rollback { .. }
        ));
    }

    #[test]
    fn rollback_by_hand_stops_a_rollout_or_walks_the_history_back() {
        let (v2, _) = deploy(Some(&app("v1")), "shop", "v2", BTreeMap::new(), None, 5);
        let (stopped, _) = rollback(&v2, 6).unwrap();
        assert_eq!(stopped.package, "v1");
        assert_eq!(stopped.failed.as_ref().unwrap().package, "v2");
        let again = rollback(&stopped, 7).unwrap_err();
        assert!(again.contains("already rolling back"), "{again}");

        let mut done = v2.clone();
        done.rollout = None;
        done.history = vec!["v0".into(), "v1".into()];
        let (back, _) = rollback(&done, 7).unwrap();
        assert_eq!(back.package, "v1");
        assert_eq!(back.history, vec!["v0".to_string()]);
        let err = rollback(&app("v1"), 8).unwrap_err();
        assert!(err.contains("no earlier version"), "{err}");
    }

    #[test]
    fn history_keeps_the_last_few_versions() {
        let mut history = Vec::new();
        for v in 0..8 {
            remember(&mut history, &format!("v{v}"));
        }
        assert_eq!(history.len(), KEPT_VERSIONS);
        assert_eq!(history.last().unwrap(), "v7");
    }

    #[test]
    fn promote_skips_to_the_last_step_and_needs_a_canary() {
        let v2 = canary_of_v2(&[10, 50, 100]);
        let (promoted, from) = promote(&v2, 6).unwrap();
        assert_eq!(from, 10);
        assert!(matches!(
            promoted.rollout.unwrap().strategy,
            RolloutStrategy::Canary { step: 2, .. }
        ));
        assert!(promote(&app("v1"), 6).is_err());
    }

    #[test]
    fn a_version_is_judged_only_on_enough_failures_clearly_above_the_old() {
        let tally = |answered, failed| Tally {
            answered,
            succeeded: answered - failed,
            failed,
            reasons: BTreeMap::from([("status_500".to_string(), failed)]),
            last_unix_ms: 0,
        };
        assert_eq!(
            judge(&tally(4, 4), &tally(100, 0)),
            None,
            "too few to judge"
        );
        assert_eq!(
            judge(&tally(100, 8), &tally(100, 0)),
            None,
            "within 10 points"
        );
        assert_eq!(
            judge(&tally(100, 30), &tally(100, 25)),
            None,
            "as bad as before"
        );
        // A few unlucky requests on a small canary: not beyond chance.
        assert_eq!(judge(&tally(8, 5), &tally(74, 27)), None, "not significant");
        // Client errors neither prove nor dilute: 4xx answers are left out.
        let mut diluted = tally(20, 20);
        diluted.answered += 10_000;
        assert!(
            judge(&diluted, &tally(100, 0)).is_some(),
            "404s dilute nothing"
        );
        let why = judge(&tally(20, 20), &tally(100, 0)).expect("rolled back");
        assert!(
            why.starts_with("20 of 20 requests failed (100%: status_500 20)"),
            "{why}"
        );
    }

    #[test]
    fn a_canary_keeps_the_old_version_whole_and_a_rolling_update_surges() {
        let v2 = canary_of_v2(&[10, 100]);
        let t = targets(&v2, 10, 10, (1, 0));
        assert_eq!((t.new, t.keep_old), (1, Some(10)));
        let (rolling, _) = deploy(Some(&app("v1")), "shop", "v2", BTreeMap::new(), None, 5);
        let t = targets(&rolling, 3, 3, (1, 0));
        assert_eq!((t.new, t.keep_old, t.min_ready), (1, None, 3));
        let t = targets(&rolling, 3, 1, (1, 0));
        assert_eq!(t.new, 3);
    }

    #[test]
    fn the_split_follows_the_strategy_once_both_versions_serve() {
        let v2 = canary_of_v2(&[10, 100]);
        assert_eq!(
            split(&v2, ["v1", "v2"].into_iter()),
            Some(("v2".into(), 10))
        );
        assert_eq!(
            split(&v2, ["v1"].into_iter()),
            None,
            "the canary does not serve yet"
        );
        let (stopped, _) = rollback(&v2, 6).unwrap();
        assert_eq!(
            split(&stopped, ["v1", "v2"].into_iter()),
            Some(("v1".into(), 100))
        );
    }
}
