//! `skiff events`: the control plane's recent scheduling and scaling
//! decisions (where each replica went and why, autoscaling changes and
//! their reasons, replicas that cannot be placed, nodes down and back).

use super::apps::{ClusterArgs, checked, print_json, table};
use super::cluster::runtime;
use crate::api::EventView;
use skiff_runtime::printable::printable;
use std::time::{Duration, UNIX_EPOCH};

/// Arguments of `skiff events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Only this app's events.
    app: Option<String>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Prints the recent events, oldest first.
pub fn events(args: EventsArgs) -> anyhow::Result<()> {
    let client = args.cluster.client()?;
    let path = match &args.app {
        Some(app) => format!("/v1/events?app={}", checked("app", app)?),
        None => "/v1/events".to_string(),
    };
    let events: Vec<EventView> = runtime()?.block_on(client.get(&path))?;
    if args.cluster.json() {
        return print_json(&events);
    }
    let rows = events
        .iter()
        .map(|e| {
            let when = UNIX_EPOCH + Duration::from_millis(e.unix_ms);
            vec![
                humantime::format_rfc3339_seconds(when).to_string(),
                e.kind.clone(),
                match (&e.app, &e.component) {
                    (Some(app), Some(component)) => {
                        printable(&format!("{app}/{component}")).into_owned()
                    }
                    // An event of the app as a whole (its rollout).
                    (Some(app), None) => printable(app).into_owned(),
                    _ => "-".to_string(),
                },
                printable(&e.message).into_owned(),
            ]
        })
        .collect();
    table(&["TIME", "KIND", "WORKLOAD", "MESSAGE"], rows)?;
    Ok(())
}
