//! `skiff push`, `skiff pull`, `skiff login`: moving packages between the
//! local store and OCI registries.

use crate::credentials::{self, Credentials};
use crate::home;
use crate::registry::Registry;
use anyhow::{Context, bail};
use skiff_runtime::package::Store;
use std::io::BufRead;

/// Arguments of `skiff push`.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The package to push, tagged with its registry location, e.g.
    /// `127.0.0.1:5000/hello:0.1.0` (see `skiff tag`).
    reference: String,
}

/// Arguments of `skiff pull`.
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// The package to pull, e.g. `ghcr.io/acme/shop:1.2.0`.
    reference: String,
}

/// Arguments of `skiff login`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The registry host, e.g. `ghcr.io` or `127.0.0.1:5000`.
    registry: String,
    /// Username.
    #[arg(long, short)]
    username: String,
    /// Read the password (or token) from standard input.
    #[arg(long)]
    password_stdin: bool,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("failed to start the async runtime")
}

/// Pushes a package from the local store.
pub fn push(args: PushArgs) -> anyhow::Result<()> {
    let store = Store::open(&home::store_dir())?;
    let descriptor = store.resolve(&args.reference).with_context(|| {
        format!(
            "tag the package with its registry location first: skiff tag NAME:TAG {}",
            args.reference
        )
    })?;
    let registry = Registry::for_reference(&args.reference)?;
    let digest = runtime()?.block_on(registry.push(&store, &descriptor))?;
    out!("pushed {} as {digest}", args.reference)?;
    Ok(())
}

/// Pulls a package into the local store.
pub fn pull(args: PullArgs) -> anyhow::Result<()> {
    let store = Store::open(&home::store_dir())?;
    let registry = Registry::for_reference(&args.reference)?;
    let descriptor = runtime()?.block_on(registry.pull(&store))?;
    out!("pulled {} as {}", args.reference, descriptor.digest)?;
    Ok(())
}

/// Checks and saves registry credentials.
pub fn login(args: LoginArgs) -> anyhow::Result<()> {
    if !args.password_stdin {
        bail!(
            "pass the password on standard input with --password-stdin, so it stays out of shell history"
        );
    }
    let mut password = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut password)
        .context("cannot read the password from standard input")?;
    let password = password.trim_end_matches(['\r', '\n']).to_string();
    let credentials = Credentials {
        username: args.username,
        password,
    };
    // Check the credentials before saving them.
    let probe = format!("{}/skiff-login-check:latest", args.registry);
    let registry = Registry::with_credentials(&probe, Some(&credentials))?;
    runtime()?.block_on(registry.check_credentials())?;
    credentials::save(&args.registry, credentials)?;
    out!("login to {} saved", args.registry)?;
    Ok(())
}
