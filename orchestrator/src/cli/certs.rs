//! `skiff cert add`, `skiff cert rm` and `skiff certs`: the certificates
//! the cluster serves apps' domains with over HTTPS. A key is sent once,
//! to the control plane, and never shown again.

use super::apps::{ClusterArgs, print_json, table, warn_all};
use super::cluster::runtime;
use crate::api::{CertAddRequest, CertAddResponse, CertificateView};
use skiff_runtime::printable::printable;
use std::path::PathBuf;

/// Arguments of `skiff cert`.
#[derive(Debug, clap::Args)]
pub struct CertArgs {
    #[command(subcommand)]
    command: CertCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CertCommand {
    /// Give the cluster a certificate and key for a domain (or
    /// `*.example.com`); every node serves it over HTTPS from its next
    /// heartbeat. It replaces the domain's certificate, ACME's included.
    Add(AddArgs),
    /// Remove a domain's certificate (with ACME, the domain is ordered
    /// anew).
    Rm(RmArgs),
}

#[derive(Debug, clap::Args)]
struct AddArgs {
    /// The domain it serves: an app's domain, or `*.example.com` for
    /// every domain one label below.
    domain: String,
    /// The certificate chain, PEM, leaf first.
    #[arg(long, value_hint = clap::ValueHint::FilePath)]
    cert: PathBuf,
    /// Its private key, PEM.
    #[arg(long, value_hint = clap::ValueHint::FilePath)]
    key: PathBuf,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Debug, clap::Args)]
struct RmArgs {
    /// The domain whose certificate goes.
    domain: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Runs `skiff cert add` or `skiff cert rm`.
pub fn cert(args: CertArgs) -> anyhow::Result<()> {
    match args.command {
        CertCommand::Add(args) => add(args),
        CertCommand::Rm(args) => remove(args),
    }
}

fn remove(args: RmArgs) -> anyhow::Result<()> {
    skiff_runtime::domain::check_certificate_name(&args.domain).map_err(|e| anyhow::anyhow!(e))?;
    let answer = super::apps::send_delete(&args.cluster, &format!("/v1/certs/{}", args.domain))?;
    if args.cluster.json() {
        return print_json(&answer);
    }
    match answer["served_by"].as_str() {
        Some(wildcard) => out!(
            "certificate for {} removed; {wildcard} serves it from now on",
            args.domain
        )?,
        None => out!(
            "certificate for {} removed; nodes stop serving it from their next heartbeat",
            args.domain
        )?,
    }
    Ok(())
}

fn add(args: AddArgs) -> anyhow::Result<()> {
    let read = |path: &PathBuf, what: &str| -> anyhow::Result<String> {
        let size = std::fs::metadata(path)
            .map_err(|e| anyhow::anyhow!("cannot read the {what} {}: {e}", path.display()))?
            .len();
        if size > crate::certs::MAX_PEM_BYTES as u64 {
            anyhow::bail!(
                "the {what} {} is {size} bytes; a PEM {what} is a few KiB (at most {} KiB here)",
                path.display(),
                crate::certs::MAX_PEM_BYTES >> 10
            );
        }
        std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the {what} {}: {e}", path.display()))
    };
    let request = CertAddRequest {
        domain: args.domain.clone(),
        chain_pem: read(&args.cert, "certificate")?,
        key_pem: read(&args.key, "key")?,
    };
    let client = args.cluster.client()?;
    let answer: CertAddResponse = runtime()?.block_on(client.post("/v1/certs", &request))?;
    warn_all(&answer.warnings);
    if args.cluster.json() {
        return print_json(&answer);
    }
    let cert = &answer.certificate;
    out!(
        "certificate for {} {} (issued by {}, expires {}); nodes serve it from their next heartbeat",
        cert.domain,
        if answer.replaced { "replaced" } else { "added" },
        printable(&cert.issuer),
        crate::certs::date(cert.not_after_unix)
    )?;
    Ok(())
}

/// Arguments of `skiff certs`.
#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Lists the cluster's certificates, and app domains without one.
pub fn certs(args: CertsArgs) -> anyhow::Result<()> {
    let client = args.cluster.client()?;
    let certs: Vec<CertificateView> = runtime()?.block_on(client.get("/v1/certs"))?;
    if args.cluster.json() {
        return print_json(&certs);
    }
    let dash = |text: String| {
        if text.is_empty() {
            "-".to_string()
        } else {
            text
        }
    };
    let rows = certs
        .iter()
        .map(|c| {
            vec![
                c.domain.clone(),
                c.status.clone(),
                c.source.clone(),
                dash(printable(&c.issuer).into_owned()),
                if c.not_after_unix == 0 {
                    "-".to_string()
                } else {
                    crate::certs::date(c.not_after_unix)
                },
                dash(c.apps.join(",")),
            ]
        })
        .collect();
    table(
        &["DOMAIN", "STATUS", "SOURCE", "ISSUER", "EXPIRES", "APPS"],
        rows,
    )?;
    let nodes: Vec<crate::api::NodeView> = runtime()?.block_on(client.get("/v1/nodes"))?;
    if !certs.is_empty() && nodes.iter().all(|n| n.https.is_none()) {
        out!("no node serves HTTPS: start nodes with --https-listen (skiff up --https-listen)")?;
    }
    for c in &certs {
        if let Some(error) = &c.error {
            let now = crate::clock::unix_secs() as i64;
            let retry = c
                .next_try_unix
                .map(|at| match at - now {
                    wait if wait > 0 => format!(" (next try in {wait}s)"),
                    _ => " (next try now)".to_string(),
                })
                .unwrap_or_default();
            out!("{}: {}{retry}", c.domain, printable(error))?;
        }
    }
    Ok(())
}
