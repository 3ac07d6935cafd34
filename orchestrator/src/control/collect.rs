//! Collection of uploaded packages: the control plane's package store
//! keeps exactly the packages that declared apps run, and deletes every
//! other blob, after a delete or an update, at start-up, and every little
//! while. A deploy uploads its blobs before it declares the app, so no
//! collection runs while a blob upload or a deploy is under way, nor within
//! the grace period after the last one (or after the CLI last asked
//! whether a blob is there): blobs of a deploy in progress are kept.

use super::Shared;
use skiff_runtime::package::Digest;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Default quiet time after the last upload or deploy before blobs no app
/// uses are deleted.
pub const GRACE: Duration = Duration::from_secs(600);

/// Tracks uploads and deploys, and wakes the collection.
#[derive(Default)]
pub(super) struct Collector {
    /// Held through a whole collection, so none starts half way.
    activity: Mutex<Activity>,
    wake: Notify,
}

struct Activity {
    /// Uploads and deploys under way.
    in_flight: usize,
    /// When the last one started or ended.
    last: Option<Instant>,
}

impl Default for Activity {
    /// A start counts as activity: blobs uploaded just before a restart
    /// wait out the grace period for the deploy that follows them.
    fn default() -> Activity {
        Activity {
            in_flight: 0,
            last: Some(Instant::now()),
        }
    }
}

/// An upload or deploy under way; no collection runs until it is dropped.
pub(super) struct Busy<'a> {
    collector: &'a Collector,
}

impl Collector {
    /// Marks an upload or deploy under way until the guard is dropped.
    pub(super) fn busy(&self) -> Busy<'_> {
        let mut activity = self.activity.lock().expect("collector lock");
        activity.in_flight += 1;
        activity.last = Some(Instant::now());
        Busy { collector: self }
    }

    /// Restarts the grace period (a blob was asked for by a deploy).
    pub(super) fn touch(&self) {
        self.activity.lock().expect("collector lock").last = Some(Instant::now());
    }

    /// Asks for a collection soon (an app was deleted or updated).
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut activity = self.collector.activity.lock().expect("collector lock");
        activity.in_flight -= 1;
        activity.last = Some(Instant::now());
    }
}

/// Collects at start-up, whenever woken, and every quarter of the grace
/// period (between 1 s and 1 min), until aborted.
pub(super) async fn run(shared: Arc<Shared>) {
    let period =
        (shared.config.package_grace / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        let pass = shared.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || collect(&pass)).await {
            tracing::error!("package collection failed: {e}");
        }
        tokio::select! {
            () = shared.collector.wake.notified() => {}
            () = tokio::time::sleep(period) => {}
        }
    }
}

/// One collection, unless an upload or deploy is under way or was within
/// the grace period: deletes every blob no declared app's package needs.
fn collect(shared: &Shared) {
    let activity = shared.collector.activity.lock().expect("collector lock");
    if activity.in_flight > 0
        || activity
            .last
            .is_some_and(|at| at.elapsed() < shared.config.package_grace)
    {
        return;
    }
    let in_use: Vec<Digest> = {
        let mut live = shared.live();
        let used: BTreeSet<String> = live
            .apps
            .values()
            .flat_map(crate::state::AppRecord::versions)
            .cloned()
            .collect();
        live.specs.retain(|package, _| used.contains(package));
        live.unreadable.retain(|package, _| used.contains(package));
        used.iter().filter_map(|p| p.parse().ok()).collect()
    };
    match shared.packages.keep_only(&in_use) {
        Ok(0) => {}
        Ok(removed) => tracing::info!(
            removed,
            "removed {removed} uploaded blob(s) that no app uses"
        ),
        Err(e) => tracing::warn!("cannot collect unused packages: {e}"),
    }
    drop(activity);
}
