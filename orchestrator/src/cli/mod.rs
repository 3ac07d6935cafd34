//! The `skiff` command line: argument parsing and dispatch to one module per
//! subcommand.

/// `println!` that returns the write error instead of panicking, so a
/// closed pipe (`skiff ps | head -1`) ends the command quietly.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)
    }};
}

mod apps;
mod certs;
mod cluster;
mod events;
mod new;
mod package;
mod registry;
mod rollout;
mod run;
mod telemetry;
mod top;

use clap::{Parser, Subcommand};
use std::path::Path;
use std::process::ExitCode;

/// Skiff runs WebAssembly components: each request in a fresh, sandboxed
/// instance, one app on a laptop (`skiff run`) or many across a cluster
/// with autoscaling, rollouts and an mTLS service mesh (`skiff up`,
/// `skiff server`, `skiff node`). Start with `skiff new NAME`.
#[derive(Debug, Parser)]
#[command(name = "skiff", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make a new app to start from (Rust or JavaScript).
    New(new::NewArgs),
    /// Serve an app locally: a skiff.toml, a directory holding one, or a
    /// bare .wasm component.
    Run(run::RunArgs),
    /// Run each component's build command.
    Build(package::BuildArgs),
    /// Pack an app into a content-addressed package in the local store.
    Pack(package::PackArgs),
    /// List the packages in the local store.
    #[command(alias = "packages")]
    Images,
    /// Remove a package (by tag or digest) from the local store.
    Rmi(package::RmiArgs),
    /// Give a package another tag, e.g. its registry location.
    Tag(package::TagArgs),
    /// Push a package to an OCI registry.
    Push(registry::PushArgs),
    /// Pull a package from an OCI registry.
    Pull(registry::PullArgs),
    /// Save credentials for an OCI registry.
    Login(registry::LoginArgs),
    /// A one-machine cluster: control plane, a node and ingress in one
    /// process, with PATH deployed.
    Up(cluster::UpArgs),
    /// Run the control plane.
    Server(cluster::ServerArgs),
    /// Run a node that joins a control plane.
    Node(cluster::NodeArgs),
    /// Make a one-time token for a node to join.
    JoinToken(cluster::JoinTokenArgs),
    /// Deploy an app to the cluster (packs it first if given a path).
    Deploy(apps::DeployArgs),
    /// List the cluster's apps.
    Apps(apps::ListArgs),
    /// List replicas: where each runs, its state, and why a pending one waits.
    Ps(apps::PsArgs),
    /// List the cluster's nodes.
    Nodes(apps::ListArgs),
    /// Pin a component at a replica count, or autoscale it within
    /// --min/--max.
    Scale(apps::ScaleArgs),
    /// A live view of the cluster: each component's requests a second,
    /// errors, p50/p99 and requests in flight, and each node's load and
    /// memory; `-o json` prints one snapshot.
    Top(top::TopArgs),
    /// Print a one-time link that logs a browser in to the web dashboard
    /// (`/ui` on the control plane).
    Dashboard(apps::DashboardArgs),
    /// Recent scheduling and scaling decisions, and why.
    Events(events::EventsArgs),
    /// Stop a rollout under way, or return an app to its previous version.
    Rollback(rollout::RolloutArgs),
    /// Give a canary all requests now, replacing the old version.
    Promote(rollout::RolloutArgs),
    /// Delete an app and its replicas.
    Delete(apps::NameArgs),
    /// Stop placing new replicas on a node.
    Cordon(apps::NameArgs),
    /// Let a cordoned or drained node take replicas again.
    Uncordon(apps::NameArgs),
    /// Move every replica off a node (each once another node can take it)
    /// and cordon it.
    Drain(apps::NameArgs),
    /// Remove a node that is down from the cluster.
    Forget(apps::NameArgs),
    /// Set or remove a node's placement labels.
    Label(apps::LabelArgs),
    /// Give the cluster a certificate for a domain, or remove one.
    Cert(certs::CertArgs),
    /// List the cluster's certificates (domain, status, issuer, expiry),
    /// and app domains without one.
    Certs(certs::CertsArgs),
    /// Print (and with -f follow) the guest output of an app's replicas.
    Logs(apps::LogsArgs),
    /// Print a shell completion script, e.g. `source <(skiff completions
    /// bash)`.
    Completions(CompletionsArgs),
}

/// Arguments of `skiff completions`.
#[derive(Debug, clap::Args)]
struct CompletionsArgs {
    /// The shell to complete in.
    shell: clap_complete::Shell,
}

/// Prints the completion script for `shell`.
fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut command = <Cli as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "skiff", &mut script);
    // A closed pipe (`skiff completions bash | head`) ends quietly.
    std::io::Write::write_all(&mut std::io::stdout(), &script)?;
    Ok(())
}

/// How to run this `skiff` from the current directory: `skiff` when that
/// is what PATH finds, else its path (relative when under the current
/// directory), so printed hints work as shown.
pub(crate) fn invocation() -> String {
    let Ok(this) = std::env::current_exe().and_then(std::fs::canonicalize) else {
        return "skiff".to_string();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .filter_map(|dir| std::fs::canonicalize(dir.join("skiff")).ok())
            .next()
            .is_some_and(|found| found == this)
    });
    if on_path {
        return "skiff".to_string();
    }
    let relative = std::env::current_dir()
        .ok()
        .and_then(|cwd| this.strip_prefix(cwd).ok().map(Path::to_path_buf));
    match relative {
        Some(relative) => relative.display().to_string(),
        None => this.display().to_string(),
    }
}

/// Parses the command line, runs the command, and turns errors into a
/// message on stderr and a non-zero exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_writer = init_logging();
    let result = match cli.command {
        Command::New(args) => new::new(args),
        Command::Run(args) => run::run(args),
        Command::Build(args) => package::build(args),
        Command::Pack(args) => package::pack(args),
        Command::Images => package::images(),
        Command::Rmi(args) => package::rmi(args),
        Command::Tag(args) => package::tag(args),
        Command::Push(args) => registry::push(args),
        Command::Pull(args) => registry::pull(args),
        Command::Login(args) => registry::login(args),
        Command::Up(args) => cluster::up(args),
        Command::Server(args) => cluster::server(args),
        Command::Node(args) => cluster::node(args),
        Command::JoinToken(args) => cluster::join_token(args),
        Command::Deploy(args) => apps::deploy(args),
        Command::Apps(args) => apps::apps(args),
        Command::Ps(args) => apps::ps(args),
        Command::Nodes(args) => apps::nodes(args),
        Command::Cert(args) => certs::cert(args),
        Command::Certs(args) => certs::certs(args),
        Command::Scale(args) => apps::scale(args),
        Command::Top(args) => top::top(args),
        Command::Dashboard(args) => apps::dashboard(args),
        Command::Events(args) => events::events(args),
        Command::Rollback(args) => rollout::rollback(args),
        Command::Promote(args) => rollout::promote(args),
        Command::Delete(args) => apps::delete(args),
        Command::Cordon(args) => apps::node_action(args, "cordon"),
        Command::Uncordon(args) => apps::node_action(args, "uncordon"),
        Command::Drain(args) => apps::node_action(args, "drain"),
        Command::Forget(args) => apps::forget(args),
        Command::Label(args) => apps::label(args),
        Command::Logs(args) => apps::logs(args),
        Command::Completions(args) => completions(args),
    };
    // What was logged is written before the last word below.
    drop(log_writer);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`skiff ps | head`): nothing left to say.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Log lines queued for the writer thread at most; past this, new lines
/// are dropped rather than wait.
const LOG_QUEUE_LINES: usize = 100_000;

/// Structured logs to stderr; `RUST_LOG` overrides the default level.
/// Lines go through a queue to a thread of their own, so a request path
/// that logs (a span line per mesh hop, a refusal) never waits on a slow
/// reader of stderr; the returned guard writes what is queued when dropped.
fn init_logging() -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .lossy(true)
        .thread_name("skiff-log")
        .finish(std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    guard
}
