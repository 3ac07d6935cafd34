//! `skiff rollback` and `skiff promote`, the rollout lines of `skiff
//! apps`, and `skiff deploy --wait` following a rollout to its end: how a
//! user steers and watches an app moving to a new version.

use super::apps::{ClusterArgs, checked, print_json};
use super::cluster::runtime;
use crate::api::{AppView, RolloutResponse, RolloutView};
use crate::api_client::ApiClient;
use skiff_runtime::printable::printable;
use std::time::{Duration, Instant};

/// Arguments of `skiff rollback` and `skiff promote`.
#[derive(Debug, clap::Args)]
pub struct RolloutArgs {
    /// The app.
    app: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// `skiff rollback APP`: stops a rollout under way (back to the version
/// before it), or returns the app to its previous version.
pub fn rollback(args: RolloutArgs) -> anyhow::Result<()> {
    post(args, "rollback")
}

/// `skiff promote APP`: a canary under way takes all requests now,
/// replacing the old version replica by replica.
pub fn promote(args: RolloutArgs) -> anyhow::Result<()> {
    post(args, "promote")
}

fn post(args: RolloutArgs, action: &str) -> anyhow::Result<()> {
    let app = checked("app", &args.app)?.to_string();
    let client = args.cluster.client()?;
    let answer: RolloutResponse = runtime()?
        .block_on(client.post(&format!("/v1/apps/{app}/{action}"), &serde_json::json!({})))?;
    if args.cluster.json() {
        return print_json(&answer);
    }
    out!("{}", printable(&answer.message))?;
    Ok(())
}

/// One line on `app`'s rollout for `skiff apps`: `shop: canary 1.1.0
/// 3fa9c1d2e4b7 at 10%, 1/3 ready; new 2 of 40 failed, old 0 of 380`.
pub fn rollout_line(app: &str, rollout: &RolloutView) -> String {
    if rollout.strategy == "rollback" {
        return format!(
            "{app}: rolling back from {} to {}, {}/{} ready",
            printable(&rollout.from),
            printable(&rollout.to),
            rollout.ready,
            rollout.desired,
        );
    }
    let share = rollout
        .share
        .map(|share| format!(" at {share}%"))
        .unwrap_or_default();
    let (new_all, new_failed) = rollout.new_requests;
    let (old_all, old_failed) = rollout.old_requests;
    format!(
        "{app}: {} {} ({}){share} from {}, {}/{} ready; requests failed: new {new_failed} of {new_all}, old {old_failed} of {old_all}",
        rollout.state,
        printable(&rollout.to),
        rollout.strategy,
        printable(&rollout.from),
        rollout.ready,
        rollout.desired,
    )
}

/// Waits until `package` is `app`'s version and every replica runs it,
/// any rollout to it over, its watch for errors included; returns the app
/// as it is then.
///
/// # Errors
///
/// The version was rolled back (with the reason), or was not in place
/// within `limit`.
pub async fn wait_until_rolled_out(
    client: &ApiClient,
    app: &str,
    package: &str,
    limit: Duration,
) -> anyhow::Result<AppView> {
    let deadline = Instant::now() + limit;
    loop {
        let apps: Vec<AppView> = client.get("/v1/apps").await?;
        let Some(view) = apps.into_iter().find(|a| a.name == app) else {
            anyhow::bail!("app \"{app}\" was deleted while waiting for it");
        };
        if let Some(failed) = view.rolled_back.as_ref().filter(|f| f.package == package) {
            anyhow::bail!(
                "app \"{app}\" version {} was rolled back: {}",
                printable(&failed.version),
                printable(&failed.reason)
            );
        }
        if view.package != package {
            anyhow::bail!(
                "app \"{app}\" now runs another version ({}): a later deploy or rollback replaced this one",
                printable(&view.version)
            );
        }
        // Not moving: every replica must run it, as for a first deploy
        // (which stops at a replica that fails to start).
        if view.rollout.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            return super::apps::wait_until_running(client, app, left).await;
        }
        // Under way, or watched for errors: not done until the watch ends
        // (the version may still be rolled back).
        if Instant::now() > deadline {
            let state = view
                .rollout
                .as_ref()
                .map_or_else(String::new, |r| format!(": {}", rollout_line(app, r)));
            anyhow::bail!(
                "app \"{app}\" did not finish moving to this version within {limit:?}{state}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
