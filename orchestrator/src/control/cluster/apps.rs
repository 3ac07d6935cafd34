//! An admin's changes to apps: deploys (with their rollouts), scaling,
//! rollbacks and promotions, deletes; each written in one store
//! transaction under the state lock, then placed by the controller.

use super::Refused;
use crate::api::{DeployRequest, DeployResponse, RolloutResponse, ScaleRequest, ScaleResponse};
use crate::control::events::EventKind;
use crate::control::{Live, Shared, catalog, reconcile, rollout};
use crate::state::{AppRecord, Applied, Replicas, Rollout, StateError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `POST /v1/apps/APP/scale`: pins a component at a count, or sets the
/// bounds it is autoscaled within, in one store transaction; then waits
/// for the controller to place what changed, as a deploy does.
pub(crate) async fn scale(
    shared: &Shared,
    app: &str,
    request: ScaleRequest,
) -> Result<ScaleResponse, Refused> {
    let component = request.component.as_str();
    let (before, replicas, applied, passes_before) = {
        let mut live = shared.live();
        let record = live.apps.get(app).ok_or_else(|| Refused::no_app(app))?;
        let before = record.scale.get(component).copied().ok_or_else(|| {
            Refused::NotFound(format!(
                "app {app:?} has no component {component:?}; see `skiff apps`"
            ))
        })?;
        // What the manifest declares: its bounds are the ones a pinned
        // component goes back to when given only one.
        let declared = live
            .spec(app)
            .and_then(|spec| spec.components.get(component))
            .map(|plan| plan.replicas);
        let replicas = requested_replicas(&request, before, declared).map_err(Refused::Invalid)?;
        let (applied, record) = shared.store.scale(app, component, replicas)?;
        live.apps.insert(record.name.clone(), record);
        if applied != Applied::Unchanged {
            live.events.record(
                EventKind::ScaleSet,
                Some((app, component)),
                format!("{app}/{component} {replicas} by `skiff scale` (was {before})"),
            );
        }
        (before, replicas, applied, live.passes)
    };
    tracing::info!(
        app,
        component,
        "{app}/{component} set to {replicas} (was {before})"
    );
    if applied != Applied::Unchanged {
        // Nodes route by it (whether requests for it are held while it
        // runs no replica), even when no replica changes.
        shared.bump();
    }
    // Said again when nothing changed: a user running the same scale to
    // check must not be told all is well.
    let warnings = if applied == Applied::Unchanged || placed_after(shared, passes_before).await {
        unplaceable(shared, &format!("{app}/{component}/"))
    } else {
        vec![not_placed_yet(app)]
    };
    Ok(ScaleResponse {
        app: app.to_string(),
        component: component.to_string(),
        replicas,
        before,
        changed: applied != Applied::Unchanged,
        warnings,
    })
}

/// What a scale request asks for, given what the component runs now
/// (`before`) and what its manifest declares: a count pins it; `min` or
/// `max` autoscale it, the bound not given kept from before (or, when it
/// was pinned, from the manifest's bounds, else the defaults).
fn requested_replicas(
    request: &ScaleRequest,
    before: Replicas,
    declared: Option<Replicas>,
) -> Result<Replicas, String> {
    use skiff_runtime::manifest::{DEFAULT_MAX_REPLICAS, MAX_REPLICAS};
    let replicas = match (request.replicas, request.min, request.max) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err("give a replica count (pins the component) or --min/--max (autoscales it), not both".to_string());
        }
        (None, None, None) => {
            return Err(
                "nothing to change: give a replica count, or --min and/or --max".to_string(),
            );
        }
        (Some(n), None, None) => Replicas::Fixed(n),
        (None, min, max) => {
            let (was_min, was_max) = match (before, declared) {
                (Replicas::Auto { min, max }, _) | (_, Some(Replicas::Auto { min, max })) => {
                    (min, max)
                }
                _ => (1, DEFAULT_MAX_REPLICAS),
            };
            if let (Some(min), None) = (min, max)
                && min > was_max
            {
                return Err(format!(
                    "--min {min} is above the max of {was_max}: give --max too"
                ));
            }
            let min = min.unwrap_or(was_min);
            let max = max.unwrap_or(was_max);
            if max == 0 {
                return Err(
                    "--max must be at least 1 (--min 0 lets an idle component run no replica)"
                        .to_string(),
                );
            }
            if min > max {
                return Err(format!("--min {min} is above --max {max}"));
            }
            Replicas::Auto { min, max }
        }
    };
    let (_, most) = replicas.bounds();
    if most > MAX_REPLICAS {
        return Err(format!(
            "{most} replicas is over the limit of {MAX_REPLICAS} per component"
        ));
    }
    Ok(replicas)
}

/// The longest a deploy or scale waits for the controller to place its
/// replicas before it answers (without saying which cannot be placed).
const PLACE_WAIT: Duration = Duration::from_secs(10);

/// `POST /v1/apps`: declares an app to run an uploaded package (verified
/// first), starting a rollout or canary from the version it ran; then
/// waits for the controller to place it, and warns of what cannot be.
pub(crate) async fn deploy(
    shared: &Shared,
    request: DeployRequest,
) -> Result<DeployResponse, Refused> {
    // No collection between verifying the package and declaring it.
    let _deploying = shared.collector.busy();
    let spec = catalog::read(&shared.packages, &request.package)
        .map_err(|e| Refused::Invalid(format!("package refused: {e}")))?;
    let scale: BTreeMap<String, Replicas> = spec
        .components
        .iter()
        .map(|(name, plan)| (name.clone(), plan.replicas))
        .collect();
    let canary = requested_canary(&request, &spec).map_err(Refused::Invalid)?;
    // Standbys get the package before the app names it: whichever takes
    // over can serve it.
    let copy_warnings = crate::control::mirror::push(shared, &spec.blobs).await;
    let (applied, generation, passes_before, rollout_note) = {
        let mut live = shared.live();
        claimed_elsewhere(&live, &spec).map_err(Refused::Conflict)?;
        let now_ms = crate::clock::unix_ms();
        let mut notes = Vec::new();
        let (applied, record) = shared.store.update_app(&spec.name, &mut |current| {
            let (record, why) = rollout::deploy(
                current,
                &spec.name,
                &request.package,
                scale.clone(),
                canary.clone(),
                now_ms,
            );
            notes = why;
            Ok(record)
        })?;
        let generation = record.generation;
        if applied != Applied::Unchanged {
            reconcile::start_new_version(&mut live, &record, &spec, Instant::now());
        }
        live.specs
            .insert(request.package.clone(), Arc::new(spec.clone()));
        live.unreadable.remove(&request.package);
        let started = record
            .rollout
            .as_ref()
            .filter(|r| r.started_unix_ms == now_ms && applied != Applied::Unchanged);
        let rollout_note = started.map(|rollout| {
            // A new rollout is judged on its own requests.
            live.tallies.retain(|(app, _), _| app != &spec.name);
            let message = describe_start(&live, &record, rollout, &notes);
            tracing::info!(app = spec.name, "{message}");
            live.events
                .record_app(EventKind::RolloutStarted, &spec.name, message.clone());
            message
        });
        live.apps.insert(record.name.clone(), record);
        (applied, generation, live.passes, rollout_note)
    };
    let outcome = match applied {
        Applied::Created => "created",
        Applied::Updated(_) => "updated",
        Applied::Unchanged => "unchanged",
    };
    tracing::info!(
        app = spec.name,
        package = request.package,
        outcome,
        "deploy"
    );
    let mut response = DeployResponse {
        app: spec.name.clone(),
        outcome: outcome.to_string(),
        generation,
        rollout: rollout_note,
        warnings: route_overlaps(shared, &spec),
    };
    response.warnings.extend(spec.reachability_warnings());
    response.warnings.extend(copy_warnings);
    if applied != Applied::Unchanged {
        if !placed_after(shared, passes_before).await {
            response.warnings.push(not_placed_yet(&spec.name));
        }
        shared.bump();
    }
    if matches!(applied, Applied::Updated(_)) {
        shared.collector.wake();
    }
    // The controller has just tried to place the replicas: say at once
    // which ones cannot be, and why; and which autoscaled components
    // could not grow to their max.
    response
        .warnings
        .extend(unplaceable(shared, &format!("{}/", spec.name)));
    response
        .warnings
        .extend(reconcile::headroom_warnings(&shared.live(), &spec.name));
    Ok(response)
}

/// Refuses a deploy of `spec` whose `[app] domains` another app claims
/// (with any version it runs): one host name picks one app.
fn claimed_elsewhere(live: &Live, spec: &catalog::AppSpec) -> Result<(), String> {
    for (name, record) in &live.apps {
        if *name == spec.name {
            continue;
        }
        let theirs = record
            .versions()
            .filter_map(|package| live.specs.get(package))
            .flat_map(|other| other.domains.iter());
        for domain in theirs {
            if spec.domains.contains(domain) {
                return Err(format!(
                    "domain \"{domain}\" is claimed by app \"{name}\"; app \"{}\" cannot claim it too: remove it from one of the two manifests (deploy app \"{name}\" without it first to move it)",
                    spec.name
                ));
            }
        }
    }
    Ok(())
}

/// The canary a deploy asks for: its own `canary` steps, else the
/// manifest's; each step lasts the deploy's interval, else the
/// manifest's, else the default. `[100]` asks for a rolling update.
fn requested_canary(
    request: &DeployRequest,
    spec: &catalog::AppSpec,
) -> Result<Option<rollout::Canary>, String> {
    use skiff_runtime::manifest::rollout as bounds;
    let interval = match request.canary_interval_ms {
        Some(ms) => bounds::check_canary_interval(Duration::from_millis(ms))
            .map_err(|e| e.replace("canary_interval", "--canary-interval"))?,
        None => spec
            .canary
            .as_ref()
            .map_or(bounds::DEFAULT_CANARY_INTERVAL, |(_, interval)| *interval),
    };
    let steps = match &request.canary {
        Some(steps) => bounds::canary_steps(steps)?,
        None => match &spec.canary {
            Some((steps, _)) => steps.clone(),
            None => return Ok(None),
        },
    };
    if steps == [100] {
        return Ok(None);
    }
    Ok(Some(rollout::Canary { steps, interval }))
}

/// What a deploy that started `rollout` of `record` tells the user.
fn describe_start(live: &Live, record: &AppRecord, rollout: &Rollout, notes: &[String]) -> String {
    use crate::state::RolloutStrategy;
    let (to, from) = (
        crate::control::views::version_of(live, &record.package),
        crate::control::views::version_of(live, &rollout.from),
    );
    let app = &record.name;
    let how = match &rollout.strategy {
        RolloutStrategy::Rolling => format!(
            "rolling out {to} replica by replica, replacing {from}; errors roll it back; `skiff rollback {app}` stops it"
        ),
        RolloutStrategy::Canary {
            steps, interval_ms, ..
        } => {
            let steps: Vec<String> = steps.iter().map(|s| format!("{s}%")).collect();
            format!(
                "canary of {to}: its share of requests goes {} ({} each) unless it fails more than {from}; `skiff promote {app}` skips ahead, `skiff rollback {app}` stops it",
                steps.join(" -> "),
                humantime::format_duration(Duration::from_millis(*interval_ms))
            )
        }
        RolloutStrategy::Rollback { reason } => {
            format!("rolling back to {to} from {from}: {reason}")
        }
    };
    let mut message = format!("{app}: {how}");
    for note in notes {
        message.push_str("; ");
        message.push_str(note);
    }
    message
}

/// `POST /v1/apps/APP/rollback`: returns the app to the version it ran
/// before, at once.
pub(crate) fn rollback(shared: &Shared, app: &str) -> Result<RolloutResponse, Refused> {
    change_rollout(shared, app, EventKind::RolledBack, rollout::rollback)
}

/// `POST /v1/apps/APP/promote`: ends a canary early; the new version then
/// replaces the old replica by replica.
pub(crate) fn promote(shared: &Shared, app: &str) -> Result<RolloutResponse, Refused> {
    change_rollout(shared, app, EventKind::RolloutStep, |record, now_ms| {
        let (record, from) = rollout::promote(record, now_ms)?;
        let message = format!(
            "{} canary {} promoted from {from}%: it now replaces the old version replica by replica",
            record.name,
            crate::node::replicas::short(&record.package)
        );
        Ok((record, message))
    })
}

/// Changes `app`'s rollout by `change` in one store transaction, records
/// `kind` of event, and has nodes hear of it at once.
fn change_rollout(
    shared: &Shared,
    app: &str,
    kind: EventKind,
    change: impl Fn(&AppRecord, u64) -> Result<(AppRecord, String), String>,
) -> Result<RolloutResponse, Refused> {
    let message = {
        let mut live = shared.live();
        let now_ms = crate::clock::unix_ms();
        let mut message = String::new();
        let mut refused = None;
        let (_, record) = shared.store.update_app(app, &mut |current| {
            let Some(current) = current else {
                return Err(StateError::UnknownApp(app.to_string()));
            };
            match change(current, now_ms) {
                Ok((record, said)) => {
                    message = said;
                    refused = None;
                    Ok(record)
                }
                Err(why) => {
                    refused = Some(why);
                    Ok(current.clone())
                }
            }
        })?;
        if let Some(why) = refused {
            return Err(Refused::Invalid(why));
        }
        tracing::info!(app, "{message}");
        live.events.record_app(kind, app, message.clone());
        live.apps.insert(app.to_string(), record);
        message
    };
    shared.bump();
    shared.wake.notify_one();
    Ok(RolloutResponse {
        app: app.to_string(),
        message,
    })
}

/// `DELETE /v1/apps/APP`: removes the app and its replicas; nodes stop
/// them when they hear of it.
pub(crate) fn delete(shared: &Shared, app: &str) -> Result<(), Refused> {
    // Store and memory change under one lock, so a controller pass
    // cannot slip between them.
    {
        let mut live = shared.live();
        if !shared.store.delete_app(app)? {
            return Err(Refused::no_app(app));
        }
        live.apps.remove(app);
        live.replicas.retain(|_, r| r.app != app);
    }
    tracing::info!(app, "app deleted");
    shared.bump();
    shared.collector.wake();
    Ok(())
}

/// Wakes the controller and waits (at most [`PLACE_WAIT`]) for a pass
/// that started after pass number `passes_before`, so it has tried to
/// place what changed. Changes arriving together share one pass over the
/// cluster rather than one each.
/// Returns whether it did.
async fn placed_after(shared: &Shared, passes_before: u64) -> bool {
    let mut passed = shared.passed.subscribe();
    shared.wake.notify_one();
    let placed = passed.wait_for(|pass| *pass > passes_before);
    matches!(tokio::time::timeout(PLACE_WAIT, placed).await, Ok(Ok(_)))
}

/// The warning when the controller did not try to place replicas in time.
fn not_placed_yet(app: &str) -> String {
    format!(
        "the controller has not placed the replicas of {app:?} yet (it is busy); `skiff ps {app}` shows where they go, or why they cannot"
    )
}

/// Why the replicas whose ids start with `prefix` (`app/` or
/// `app/component/`) cannot be placed, as warnings: one per reason, naming
/// the replicas (a few, and how many more).
fn unplaceable(shared: &Shared, prefix: &str) -> Vec<String> {
    /// Replicas named in one warning; the rest are counted.
    const NAMED: usize = 3;
    let live = shared.live();
    let mut by_reason: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for replica in live.replicas_under(prefix) {
        if let Some(reason) = live.pending.get(&replica.id) {
            by_reason.entry(reason).or_default().push(&replica.id);
        }
    }
    by_reason
        .into_iter()
        .map(|(reason, ids)| match ids.as_slice() {
            [one] => format!("{one} cannot be placed: {reason}"),
            _ => {
                let more = ids.len().saturating_sub(NAMED);
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                format!(
                    "{} replicas ({}{more}) cannot be placed: {reason}",
                    ids.len(),
                    ids[..ids.len().min(NAMED)].join(", ")
                )
            }
        })
        .collect()
}

/// Routes of `spec` that other apps serve too, as warnings (one per
/// route, naming a few of the others): ingress tells them apart only by
/// `Host`.
fn route_overlaps(shared: &Shared, spec: &catalog::AppSpec) -> Vec<String> {
    /// Other apps named in one warning; the rest are counted.
    const NAMED: usize = 3;
    let live = shared.live();
    let mut warnings = Vec::new();
    for (component, plan) in &spec.components {
        let Some(route) = &plan.route else { continue };
        // `/orders/:id` and `/orders/:order` serve the same paths.
        let same = |other: &String| match (
            skiff_runtime::route::Route::try_from(route.clone()),
            skiff_runtime::route::Route::try_from(other.clone()),
        ) {
            (Ok(mine), Ok(theirs)) => mine.same_paths(&theirs),
            _ => other == route,
        };
        let others: Vec<&str> = live
            .apps
            .iter()
            .filter(|(name, _)| **name != spec.name)
            .filter(|(_, other)| {
                live.specs.get(&other.package).is_some_and(|o| {
                    o.components
                        .values()
                        .any(|c| c.route.as_ref().is_some_and(same))
                })
            })
            .map(|(name, _)| name.as_str())
            .collect();
        let Some(first) = others.iter().copied().chain([spec.name.as_str()]).min() else {
            continue;
        };
        let served_by = match others.as_slice() {
            [] => continue,
            [other] => format!("app \"{other}\""),
            _ => {
                let named: Vec<String> = others
                    .iter()
                    .take(NAMED)
                    .map(|o| format!("\"{o}\""))
                    .collect();
                let more = others.len().saturating_sub(NAMED);
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                format!("{} other apps ({}{more})", others.len(), named.join(", "))
            }
        };
        warnings.push(format!(
            "route \"{route}\" of {}/{component} is also served by {served_by}: ingress picks the app named by the Host header (<app>.<domain> or <app>), else \"{first}\"",
            spec.name
        ));
    }
    warnings
}
