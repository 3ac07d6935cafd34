//! `skiff deploy`, `apps`, `ps`, `nodes`, `scale`, `delete`, `cordon`,
//! `uncordon`, `drain`, `label` and `logs`: the cluster from the user's
//! side, through the control plane's API. Every listing has `-o json` for
//! scripts. Text a guest, a package or a node controls (log lines, error
//! reasons, versions) is printed with control characters escaped.

use super::cluster::runtime;
use crate::api::{AppView, LabelRequest, LabelResponse, LogsResponse, NodeView, ReplicaView};
use crate::api_client::ApiClient;
use crate::cluster_config::ClusterConfig;
use crate::deploy;
use http::Method;
use serde::Serialize;
use skiff_runtime::printable::printable;
use std::time::{Duration, Instant};

/// Options every cluster command takes.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// The control plane's URL; default the one in cluster.json.
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// Output format: `table` or `json`.
    #[arg(long, short, default_value = "table", value_parser = ["table", "json"])]
    pub output: String,
}

impl ClusterArgs {
    /// Whether JSON output was asked for.
    pub fn json(&self) -> bool {
        self.output == "json"
    }

    pub(super) fn client(&self) -> anyhow::Result<ApiClient> {
        ClusterConfig::load(self.server.as_deref())?.client()
    }
}

/// Arguments of `skiff deploy`.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// A skiff.toml, a directory holding one, a .wasm component, or a
    /// package reference.
    #[arg(default_value = ".", value_hint = clap::ValueHint::AnyPath)]
    target: String,
    /// Run each component's build command first.
    #[arg(long)]
    build: bool,
    /// Wait until every replica runs this version.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, e.g. `2m`.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Send this share of requests (percent) to the new version first,
    /// then all of them; several (`10,50`) are steps in turn. Errors roll
    /// it back. Overrides the manifest's `[app] canary`; `100`: a rolling
    /// update.
    #[arg(long, value_delimiter = ',', value_name = "PERCENT", value_parser = parse_percent)]
    canary: Option<Vec<u32>>,
    /// How long each canary step lasts, e.g. `30s` (default: the
    /// manifest's `canary_interval`, else 1m).
    #[arg(long, value_parser = humantime::parse_duration)]
    canary_interval: Option<Duration>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// A canary step: `10` or `10%`.
fn parse_percent(text: &str) -> Result<u32, String> {
    let digits = text.trim().trim_end_matches('%');
    digits.parse().map_err(|_| {
        format!("{text:?} is not a percentage: give a number from 0 to 100, such as 10")
    })
}

/// Packs, uploads and declares an app.
pub fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let prepared = deploy::prepare(&args.target, args.build)?;
    let client = args.cluster.client()?;
    runtime()?.block_on(async {
        let choice = deploy::RolloutChoice {
            canary: args.canary.clone(),
            canary_interval: args.canary_interval,
        };
        let declared = deploy::upload_and_declare(&client, &prepared, &choice).await?;
        if !args.cluster.json() {
            warn_all(&declared.warnings);
            if let Some(rollout) = &declared.rollout {
                out!("{}", printable(rollout))?;
            }
        }
        let running = if args.wait {
            let package = prepared.descriptor.digest.to_string();
            Some(
                super::rollout::wait_until_rolled_out(
                    &client,
                    &declared.app,
                    &package,
                    args.timeout,
                )
                .await?,
            )
        } else {
            None
        };
        if args.cluster.json() {
            out!("{}", serde_json::to_string_pretty(&declared)?)?;
        } else {
            out!(
                "app \"{}\" {} (package {}, generation {})",
                declared.app,
                declared.outcome,
                prepared.descriptor.digest.short(),
                declared.generation
            )?;
            if let Some(note) = running.as_ref().and_then(idle_note) {
                out!("{note}")?;
            }
        }
        Ok(())
    })
}

/// Prints each warning on stderr.
pub fn warn_all(warnings: &[String]) {
    for warning in warnings {
        eprintln!("warning: {}", printable(warning));
    }
}

/// Says which components of `app` scale to zero when idle (their next
/// request then starts a replica), if any.
pub fn idle_note(app: &AppView) -> Option<String> {
    let idle: Vec<String> = app
        .components
        .iter()
        .filter_map(|c| {
            let auto = c.autoscale.as_ref().filter(|a| a.min == 0)?;
            let delay = humantime::format_duration(Duration::from_millis(auto.scale_down_delay_ms));
            Some(format!("{}/{} after {delay}", app.name, c.name))
        })
        .collect();
    (!idle.is_empty()).then(|| {
        format!(
            "scales to zero without requests: {}; a request then starts a replica",
            idle.join(", ")
        )
    })
}

/// Waits until every replica of `app` runs its current package; returns
/// the app as it is then.
///
/// # Errors
///
/// A replica that failed to load (at once, with its error), or not
/// running within `limit` (with each replica's state and reason).
pub async fn wait_until_running(
    client: &ApiClient,
    app: &str,
    limit: Duration,
) -> anyhow::Result<AppView> {
    let deadline = Instant::now() + limit;
    loop {
        let apps: Vec<AppView> = client.get("/v1/apps").await?;
        let ready = apps
            .into_iter()
            .find(|a| a.name == app)
            .filter(|a| a.components.iter().all(|c| c.running >= c.desired));
        if let Some(ready) = ready {
            return Ok(ready);
        }
        let replicas: Vec<ReplicaView> = client.get(&format!("/v1/replicas?app={app}")).await?;
        let describe = |r: &ReplicaView| {
            format!(
                "{}: {}{}",
                r.id,
                r.state,
                r.reason
                    .as_ref()
                    .map(|w| format!(" ({})", printable(w)))
                    .unwrap_or_default()
            )
        };
        if let Some(failed) = replicas.iter().find(|r| r.state == "failed") {
            anyhow::bail!(
                "app \"{app}\" failed to start: {}; it stays deployed and is retried with backoff: fix it and deploy again, or remove it with `skiff delete {app}`",
                describe(failed)
            );
        }
        if Instant::now() > deadline {
            let states: Vec<String> = replicas.iter().map(describe).collect();
            anyhow::bail!(
                "app \"{app}\" is not running after {limit:?}: {}",
                states.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Arguments of a listing command.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Lists apps.
pub fn apps(args: ListArgs) -> anyhow::Result<()> {
    let client = args.cluster.client()?;
    let apps: Vec<AppView> = runtime()?.block_on(client.get("/v1/apps"))?;
    if args.cluster.json() {
        return print_json(&apps);
    }
    let rows = apps
        .iter()
        .flat_map(|app| {
            // An app whose package cannot be read has no components to
            // show: it still gets a row, and its error follows the table.
            let unknown = app.components.is_empty().then(|| {
                vec![
                    app.name.clone(),
                    "-".to_string(),
                    "-".to_string(),
                    "-".to_string(),
                    "-".to_string(),
                    "-".to_string(),
                    app.package.chars().take(19).collect(),
                ]
            });
            app.components
                .iter()
                .map(move |c| {
                    vec![
                        app.name.clone(),
                        printable(&app.version).into_owned(),
                        c.name.clone(),
                        c.route.clone().unwrap_or_else(|| "-".to_string()),
                        format!("{}/{}", c.running, c.desired),
                        scale_column(c),
                        app.package.chars().take(19).collect(),
                    ]
                })
                .chain(unknown)
        })
        .collect();
    table(
        &[
            "APP",
            "VERSION",
            "COMPONENT",
            "ROUTE",
            "RUNNING",
            "SCALE",
            "PACKAGE",
        ],
        rows,
    )?;
    for app in &apps {
        if let Some(error) = &app.error {
            println!("app {:?}: {}", app.name, printable(error));
        }
        if let Some(rollout) = &app.rollout {
            println!("{}", super::rollout::rollout_line(&app.name, rollout));
        }
        if let Some(failed) = &app.rolled_back {
            println!(
                "{}: version {} was rolled back: {}",
                app.name,
                printable(&failed.version),
                printable(&failed.reason)
            );
        }
    }
    Ok(())
}

/// How a component is scaled, for `skiff apps`: `fixed`, or the
/// autoscaler's bounds, target and the demand it sees
/// (`auto 0-6, target 7, load 12.5`).
fn scale_column(component: &crate::api::ComponentView) -> String {
    match &component.autoscale {
        None => "fixed".to_string(),
        Some(auto) => format!(
            "auto {}-{}, target {}, load {:.1}",
            auto.min, auto.max, auto.target_concurrency, auto.concurrency
        ),
    }
}

/// What a scale did, in words: pinned or autoscaled, and what it was.
fn scale_outcome(app: &str, component: &str, answer: &crate::api::ScaleResponse) -> String {
    use skiff_runtime::manifest::Replicas;
    let now = match answer.replicas {
        fixed @ Replicas::Fixed(_) if matches!(answer.before, Replicas::Auto { .. }) => {
            format!(
                "pinned at {fixed}; autoscaling is off until `skiff scale --min/--max` or the next deploy"
            )
        }
        fixed @ Replicas::Fixed(_) => format!("pinned at {fixed}"),
        auto => auto.to_string(),
    };
    if !answer.changed {
        return match answer.replicas {
            fixed @ Replicas::Fixed(_) => format!("{app}/{component} already has {fixed}"),
            auto => format!("{app}/{component} is already {auto}"),
        };
    }
    format!("{app}/{component} {now} (was {})", answer.before)
}

/// Arguments of `skiff ps`.
#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// Only this app's replicas.
    app: Option<String>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Lists replicas.
pub fn ps(args: PsArgs) -> anyhow::Result<()> {
    let client = args.cluster.client()?;
    let path = match &args.app {
        Some(app) => format!("/v1/replicas?app={}", checked("app", app)?),
        None => "/v1/replicas".to_string(),
    };
    let replicas: Vec<ReplicaView> = runtime()?.block_on(client.get(&path))?;
    if args.cluster.json() {
        return print_json(&replicas);
    }
    let rows = replicas
        .into_iter()
        .map(|r| {
            vec![
                r.id,
                r.component,
                printable(&r.version).into_owned(),
                r.node.unwrap_or_else(|| "-".to_string()),
                r.state,
                age(r.age_secs),
                printable(&r.reason.unwrap_or_default()).into_owned(),
            ]
        })
        .collect();
    table(
        &[
            "REPLICA",
            "COMPONENT",
            "VERSION",
            "NODE",
            "STATE",
            "AGE",
            "REASON",
        ],
        rows,
    )?;
    Ok(())
}

/// Lists nodes.
pub fn nodes(args: ListArgs) -> anyhow::Result<()> {
    let client = args.cluster.client()?;
    let nodes: Vec<NodeView> = runtime()?.block_on(client.get("/v1/nodes"))?;
    if args.cluster.json() {
        return print_json(&nodes);
    }
    let rows = nodes
        .into_iter()
        .map(|n| {
            let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let size = memory;
            vec![
                n.name,
                if n.pressure {
                    format!("{} (memory pressure)", n.state)
                } else {
                    n.state
                },
                n.replicas.to_string(),
                format!("{}/{}", size(n.reserved), size(n.placeable)),
                size(n.used),
                size(n.memory),
                match &n.https {
                    Some(https) => printable(&format!("{} https {https}", n.ingress)).into_owned(),
                    None => printable(&n.ingress).into_owned(),
                },
                if labels.is_empty() {
                    "-".to_string()
                } else {
                    printable(&labels.join(",")).into_owned()
                },
            ]
        })
        .collect();
    table(
        &[
            "NODE", "STATE", "REPLICAS", "RESERVED", "USED", "OFFERED", "INGRESS", "LABELS",
        ],
        rows,
    )?;
    Ok(())
}

/// Arguments of `skiff scale`.
#[derive(Debug, clap::Args)]
#[command(
    override_usage = "skiff scale APP[/COMPONENT] REPLICAS\n       skiff scale APP[/COMPONENT] [--min N] [--max N]"
)]
pub struct ScaleArgs {
    /// `APP/COMPONENT`, or `APP` when it has one component.
    target: String,
    /// Replicas to pin the component at, whatever its traffic (autoscaling
    /// off until `--min`/`--max` or the next deploy).
    #[arg(required_unless_present_any = ["min", "max"], conflicts_with_all = ["min", "max"])]
    replicas: Option<u32>,
    /// Autoscale it with at least this many replicas (0: none while idle,
    /// the next request held until one is ready).
    #[arg(long)]
    min: Option<u32>,
    /// Autoscale it with at most this many replicas.
    #[arg(long)]
    max: Option<u32>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Sets a component's replica count.
pub fn scale(args: ScaleArgs) -> anyhow::Result<()> {
    let client = args.cluster.client()?;
    runtime()?.block_on(async {
        let (app, component) = match args.target.split_once('/') {
            Some((app, component)) => (
                checked("app", app)?.to_string(),
                checked("component", component)?.to_string(),
            ),
            None => {
                let apps: Vec<AppView> = client.get("/v1/apps").await?;
                let app = apps
                    .into_iter()
                    .find(|a| a.name == args.target)
                    .ok_or_else(|| anyhow::anyhow!("no app {:?}; see `skiff apps`", args.target))?;
                match app.components.as_slice() {
                    [only] => (app.name.clone(), only.name.clone()),
                    _ => anyhow::bail!(
                        "app \"{}\" has several components; write APP/COMPONENT",
                        app.name
                    ),
                }
            }
        };
        let answer: crate::api::ScaleResponse = client
            .post(
                &format!("/v1/apps/{app}/scale"),
                &crate::api::ScaleRequest {
                    component: component.clone(),
                    replicas: args.replicas,
                    min: args.min,
                    max: args.max,
                },
            )
            .await?;
        if args.cluster.json() {
            return print_json(&answer);
        }
        out!("{}", scale_outcome(&app, &component, &answer))?;
        warn_all(&answer.warnings);
        Ok(())
    })
}

/// Arguments of a command naming one thing.
#[derive(Debug, clap::Args)]
pub struct NameArgs {
    /// The app or node.
    name: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Deletes an app and its replicas.
pub fn delete(args: NameArgs) -> anyhow::Result<()> {
    let name = checked("app", &args.name)?.to_string();
    delete_and_report(
        &args.cluster,
        &format!("/v1/apps/{name}"),
        &format!("app \"{name}\" deleted"),
    )
}

/// Removes a down node from the cluster.
pub fn forget(args: NameArgs) -> anyhow::Result<()> {
    let name = checked("node", &args.name)?.to_string();
    delete_and_report(
        &args.cluster,
        &format!("/v1/nodes/{name}"),
        &format!("node \"{name}\" forgotten; its replicas are placed elsewhere"),
    )
}

/// `DELETE path`; the answer.
pub(super) fn send_delete(cluster: &ClusterArgs, path: &str) -> anyhow::Result<serde_json::Value> {
    let client = cluster.client()?;
    runtime()?.block_on(async {
        let bytes = client
            .send(
                Method::DELETE,
                path,
                None,
                crate::api_client::DEFAULT_TIMEOUT,
            )
            .await?;
        Ok::<_, anyhow::Error>(serde_json::from_slice(&bytes)?)
    })
}

/// `DELETE path`; prints the answer with `-o json`, else `done`.
fn delete_and_report(cluster: &ClusterArgs, path: &str, done: &str) -> anyhow::Result<()> {
    let answer = send_delete(cluster, path)?;
    if cluster.json() {
        return print_json(&answer);
    }
    out!("{done}")?;
    Ok(())
}

/// Cordons, uncordons or drains a node.
pub fn node_action(args: NameArgs, action: &str) -> anyhow::Result<()> {
    let client = args.cluster.client()?;
    let answer: serde_json::Value = runtime()?.block_on(client.post(
        &format!("/v1/nodes/{}/{action}", checked("node", &args.name)?),
        &serde_json::json!({}),
    ))?;
    if args.cluster.json() {
        return print_json(&answer);
    }
    let done = match action {
        "cordon" => "cordoned: it keeps its replicas and takes no new ones",
        "drain" => "draining: each replica moves once another node can take it (see `skiff ps`)",
        _ => "uncordoned: it takes new replicas again",
    };
    out!("node \"{}\" {done}", args.name)?;
    Ok(())
}

/// Arguments of `skiff label`.
#[derive(Debug, clap::Args)]
pub struct LabelArgs {
    /// The node.
    name: String,
    /// Labels to set, `key=value`, separated by spaces or commas (as
    /// `skiff node --labels` takes them).
    #[arg(value_delimiter = ',')]
    labels: Vec<String>,
    /// A label key to remove; may be repeated.
    #[arg(long, value_name = "KEY")]
    remove: Vec<String>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Sets and removes placement labels of a node.
pub fn label(args: LabelArgs) -> anyhow::Result<()> {
    let name = checked("node", &args.name)?;
    let mut change = LabelRequest::default();
    for label in &args.labels {
        let (key, value) = crate::labels::parse(label)?;
        change.set.insert(key, value);
    }
    for key in &args.remove {
        crate::labels::check_key(key)?;
        if change.set.contains_key(key) {
            anyhow::bail!("label {key:?} is both set and removed: give it once");
        }
        change.remove.push(key.clone());
    }
    if change.set.is_empty() && change.remove.is_empty() {
        anyhow::bail!("nothing to change: give labels as key=value, or --remove KEY");
    }
    let client = args.cluster.client()?;
    let answer: LabelResponse =
        runtime()?.block_on(client.post(&format!("/v1/nodes/{name}/labels"), &change))?;
    if args.cluster.json() {
        return print_json(&answer);
    }
    let labels: Vec<String> = answer
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let labels = if labels.is_empty() {
        "none".to_string()
    } else {
        labels.join(",")
    };
    if answer.changed {
        out!(
            "node \"{name}\" labelled: {labels}; replicas already placed stay where they are (drain to move them)"
        )?;
    } else {
        out!("node \"{name}\" unchanged: {labels}")?;
    }
    Ok(())
}

/// Arguments of `skiff logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// `APP` or `APP/COMPONENT`.
    target: String,
    /// Keep printing new lines.
    #[arg(long, short)]
    follow: bool,
    /// Only the lines written while serving requests of this trace (the
    /// `trace_id` of the span log lines, 32 hex digits).
    #[arg(long, value_name = "TRACE_ID")]
    trace: Option<String>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Prints guest output of an app's replicas.
pub fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let client = args.cluster.client()?;
    let (app, component) = match args.target.split_once('/') {
        Some((app, component)) => (
            checked("app", app)?.to_string(),
            Some(checked("component", component)?.to_string()),
        ),
        None => (checked("app", &args.target)?.to_string(), None),
    };
    if let Some(trace) = &args.trace
        && !(trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        anyhow::bail!(
            "--trace {trace:?} is not a trace id: 32 hex digits, as in the span log lines' trace_id"
        );
    }
    let trace = args.trace.as_deref().map(str::to_ascii_lowercase);
    runtime()?.block_on(async {
        let mut after = 0;
        loop {
            let mut path = format!("/v1/apps/{app}/logs?after={after}");
            if let Some(component) = &component {
                path.push_str(&format!("&component={component}"));
            }
            if let Some(trace) = &trace {
                path.push_str(&format!("&trace={trace}"));
            }
            if args.follow {
                path.push_str("&wait_ms=25000");
            }
            let logs: LogsResponse = client.get(&path).await?;
            for entry in &logs.lines {
                if args.cluster.json() {
                    out!("{}", serde_json::to_string(entry)?)?;
                } else {
                    out!(
                        "{} {}/{} | {}",
                        printable(&entry.node),
                        printable(&entry.line.app),
                        printable(&entry.line.component),
                        printable(&entry.line.line)
                    )?;
                }
            }
            after = logs.next;
            if !args.follow {
                return Ok(());
            }
        }
    })
}

/// `name` checked to be a plain name (letters, digits, `.`, `_`, `-`),
/// safe to put in an API path.
pub(super) fn checked<'a>(kind: &str, name: &'a str) -> anyhow::Result<&'a str> {
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !plain {
        anyhow::bail!("invalid {kind} name {name:?}: use letters, digits, '.', '_' and '-'");
    }
    Ok(name)
}

pub(super) fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    out!("{}", serde_json::to_string_pretty(value)?)?;
    Ok(())
}

/// Prints rows under headers, columns padded to their widest cell.
pub(super) fn table(headers: &[&str], rows: Vec<Vec<String>>) -> std::io::Result<()> {
    use std::io::Write as _;
    std::io::stdout().write_all(render_table(headers, &rows).as_bytes())
}

/// Rows under headers, columns padded to their widest cell, one line each.
pub(super) fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let mut line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(padded.join("  ").trim_end());
        text.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    text
}

/// `42s`, `5m`, `3h`, `2d`.
fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Arguments of `skiff dashboard`.
#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Prints a one-time link that logs a browser in to the dashboard.
pub fn dashboard(args: DashboardArgs) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Link {
        once: String,
        expires_secs: u64,
        #[serde(default)]
        api_certificate_sha256: String,
    }
    let config = ClusterConfig::load(args.cluster.server.as_deref())?;
    let client = config.client()?;
    let link: Link = runtime()?.block_on(client.call(
        Method::POST,
        "/v1/ui/links",
        &serde_json::json!({}),
        std::time::Duration::from_secs(30),
    ))?;
    // The control plane that made the link (the leader, when the one
    // configured stands by): the fingerprint is its certificate's.
    let url = format!(
        "{}/ui/login?once={}",
        client.server().trim_end_matches('/'),
        link.once
    );
    if args.cluster.json() {
        return print_json(&serde_json::json!({
            "url": url,
            "expires_secs": link.expires_secs,
            "api_certificate_sha256": link.api_certificate_sha256,
        }));
    }
    out!(
        "Open this link to log in to the dashboard (once, within {} minutes):",
        link.expires_secs / 60
    )?;
    out!("  {url}")?;
    out!(
        "The browser does not know the cluster's CA, so it warns: go on only if the certificate it shows has this SHA-256 fingerprint:"
    )?;
    out!("  {}", link.api_certificate_sha256)?;
    out!(
        "(Do not install the cluster CA in a browser: it also signs node certificates, which would then pass for web sites.)"
    )?;
    Ok(())
}

/// Memory as `skiff nodes` shows it: `1.0 GiB`, or `unlimited`.
pub(super) fn memory(bytes: u64) -> String {
    if bytes >= super::cluster::UNLIMITED_MEMORY {
        "unlimited".to_string()
    } else {
        bytesize::ByteSize::b(bytes).display().iec().to_string()
    }
}
