//! `skiff top`: the cluster's components and nodes, refreshed in place
//! (requests a second, errors, p50/p99, requests in flight, replicas;
//! each node's share and memory) until Ctrl-C; `-o json` prints one
//! snapshot.

use super::apps::{ClusterArgs, print_json, render_table};
use super::cluster::runtime;
use crate::api::TopView;
use crate::api_client::ApiClient;
use skiff_runtime::printable::printable;
use std::io::{IsTerminal, Write};
use std::time::Duration;

/// Arguments of `skiff top`.
#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// How often the view refreshes, e.g. `2s` (at least 500ms).
    #[arg(long, default_value = "2s", value_parser = parse_interval)]
    interval: Duration,
    #[command(flatten)]
    cluster: ClusterArgs,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration such as \"2s\": {e}"))?;
    if interval < Duration::from_millis(500) {
        return Err(format!("{text:?}: the interval must be at least 500ms"));
    }
    Ok(interval)
}

/// Switches a terminal to its alternate screen (hiding the cursor), and
/// back when dropped, so the shell's screen is as it was when `top` ends.
struct AlternateScreen;

impl AlternateScreen {
    fn enter() -> AlternateScreen {
        print!("\x1b[?1049h\x1b[?25l");
        let _ = std::io::stdout().flush();
        AlternateScreen
    }
}

impl Drop for AlternateScreen {
    fn drop(&mut self) {
        print!("\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
    }
}

/// Runs `skiff top`.
pub fn top(args: TopArgs) -> anyhow::Result<()> {
    let client = args.cluster.client()?;
    let runtime = runtime()?;
    // The first view must come: a wrong server or token is an error.
    let first: TopView = runtime.block_on(client.get("/v1/top"))?;
    if args.cluster.json() {
        return print_json(&first);
    }
    let terminal = std::io::stdout().is_terminal();
    let _screen = terminal.then(AlternateScreen::enter);
    runtime.block_on(refresh(&client, first, args.interval, terminal))
}

/// Shows `view`, then a new one every `interval`, until Ctrl-C or
/// SIGTERM; a failed refresh says why and tries again.
async fn refresh(
    client: &ApiClient,
    mut view: TopView,
    interval: Duration,
    terminal: bool,
) -> anyhow::Result<()> {
    let mut problem: Option<String> = None;
    let mut stop = std::pin::pin!(stop_signal());
    loop {
        let mut screen = render(&view, interval, problem.as_deref());
        if terminal {
            // Home, draw, clear what the last draw left below.
            screen = format!("\x1b[H{}\x1b[J", screen.replace('\n', "\x1b[K\n"));
        } else {
            screen.push('\n');
        }
        let mut out = std::io::stdout().lock();
        out.write_all(screen.as_bytes())?;
        out.flush()?;
        drop(out);
        tokio::select! {
            () = &mut stop => return Ok(()),
            () = tokio::time::sleep(interval) => {}
        }
        match client.get::<TopView>("/v1/top").await {
            Ok(next) => {
                view = next;
                problem = None;
            }
            Err(e) => problem = Some(format!("{e:#}")),
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// One screen of `view`.
fn render(view: &TopView, interval: Duration, problem: Option<&str>) -> String {
    let now = time::OffsetDateTime::now_utc();
    let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let mut text = format!(
        "skiff top: {}, {}; rates over the last {:.0}s  ({:02}:{:02}:{:02} UTC, every {}; Ctrl-C to stop)\n",
        count(view.nodes.len(), "node"),
        count(view.components.len(), "component"),
        view.window_secs,
        now.hour(),
        now.minute(),
        now.second(),
        humantime::format_duration(interval)
    );
    if let Some(problem) = problem {
        text.push_str(&format!(
            "refresh failed, showing the last view: {}\n",
            printable(problem)
        ));
    }
    text.push('\n');
    let ms = |value: Option<f64>| value.map_or_else(|| "-".to_string(), |ms| format!("{ms:.2}ms"));
    let rows: Vec<Vec<String>> = view
        .components
        .iter()
        .map(|c| {
            vec![
                printable(&c.app).into_owned(),
                printable(&c.component).into_owned(),
                format!("{:.1}", c.rps),
                format!("{:.1}", c.errors_per_sec),
                format!("{:.1}%", c.error_rate * 100.0),
                ms(c.p50_ms),
                ms(c.p99_ms),
                c.in_flight.to_string(),
                format!("{}/{}", c.running, c.replicas),
            ]
        })
        .collect();
    text.push_str(&render_table(
        &[
            "APP",
            "COMPONENT",
            "RPS",
            "ERR/S",
            "ERR%",
            "P50",
            "P99",
            "IN-FLIGHT",
            "RUNNING",
        ],
        &rows,
    ));
    text.push('\n');
    let size = super::apps::memory;
    let rows: Vec<Vec<String>> = view
        .nodes
        .iter()
        .map(|n| {
            vec![
                printable(&n.name).into_owned(),
                printable(&n.state).into_owned(),
                format!("{:.1}", n.rps),
                n.in_flight.to_string(),
                n.replicas.to_string(),
                size(n.used),
                size(n.reserved),
                size(n.memory),
            ]
        })
        .collect();
    text.push_str(&render_table(
        &[
            "NODE",
            "STATE",
            "RPS",
            "IN-FLIGHT",
            "REPLICAS",
            "USED",
            "RESERVED",
            "OFFERED",
        ],
        &rows,
    ));
    text
}
