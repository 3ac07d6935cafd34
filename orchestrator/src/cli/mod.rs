//! The `skiff` command line: argument parsing and dispatch to one module per
//! subcommand.

mod package;
mod registry;
mod run;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Skiff: run WebAssembly components, from one laptop to a cluster.
#[derive(Debug, Parser)]
#[command(name = "skiff", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
}

/// Parses the command line, runs the command, and turns errors into a
/// message on stderr and a non-zero exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Build(args) => package::build(args),
        Command::Pack(args) => package::pack(args),
        Command::Images => package::images(),
        Command::Rmi(args) => package::rmi(args),
        Command::Tag(args) => package::tag(args),
        Command::Push(args) => registry::push(args),
        Command::Pull(args) => registry::pull(args),
        Command::Login(args) => registry::login(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Structured logs to stderr; `RUST_LOG` overrides the default level.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
