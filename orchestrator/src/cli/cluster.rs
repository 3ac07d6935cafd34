//! `skiff server`, `skiff node`, `skiff up` and `skiff join-token`:
//! starting the control plane and nodes.

use super::run::shutdown_signal;
use super::telemetry::Metrics;
use crate::cluster_config::{self, ClusterConfig};
use crate::control::{ControlPlane, ControlPlaneConfig, StoreChoice};
use crate::deploy;
use crate::home;
use crate::node::{Node, NodeConfig};
use anyhow::Context;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What `skiff up`'s node offers: no memory limit on placement.
pub use crate::node::UNLIMITED_MEMORY;

/// Arguments of `skiff server`.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Where the cluster state, CA and packages live; default
    /// `$SKIFF_HOME/server`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of the HTTPS API.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Another name or IP the API is reached by (repeatable); it goes into
    /// the API's certificate.
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// How often nodes heartbeat, e.g. `1s`.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// A node silent this long is down and its replicas move, e.g. `3s`.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    down_after: Duration,
    /// How long node certificates are valid, e.g. `24h`; nodes renew them
    /// at half their lifetime.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    node_cert_lifetime: Duration,
    /// How long workload certificates (a workload's identity on the mesh,
    /// issued to the nodes it runs on) are valid, e.g. `24h`; nodes renew
    /// them at half their lifetime.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    workload_cert_lifetime: Duration,
    /// API connections open at once; more are closed at once.
    #[arg(long, default_value_t = crate::control::MAX_CONNECTIONS)]
    max_connections: usize,
    /// API connections open at once from one IP address (nodes with a
    /// cluster certificate count only toward --max-connections).
    #[arg(long, default_value_t = crate::control::MAX_CONNECTIONS_PER_IP)]
    max_connections_per_ip: usize,
    /// How long a JSON request body may take to arrive (blob uploads get
    /// this plus their size at 64 KiB/s).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, hide = true)]
    body_timeout: Duration,
    /// How long after the last upload or deploy blobs no app uses are
    /// deleted.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration, hide = true)]
    package_grace: Duration,
    /// How far replicas on a node may reserve beyond the memory it offers,
    /// e.g. `1.5`; from 1.0 (none, the default) to 10. A node that does
    /// run short refuses new instances until it recovers.
    #[arg(long, default_value_t = 1.0)]
    overcommit: f64,
    /// How long a dashboard login lasts, e.g. `12h`.
    #[arg(long, default_value = "12h", value_parser = humantime::parse_duration, hide = true)]
    ui_session_lifetime: Duration,
    /// Where the cluster's state, CA and admin token are kept:
    /// `embedded` (a file in the data directory, the default) or
    /// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`. Uploaded packages stay
    /// in the data directory either way.
    // Read after clap, whose own error would repeat the value as given
    // (credentials and all).
    #[arg(long, default_value = "embedded")]
    store: String,
    /// An ACME server's directory URL: certificates for app domains no
    /// certificate was given for are ordered there (HTTP-01, answered by
    /// every node's ingress on port 80 of the domain) and renewed. Let's
    /// Encrypt: https://acme-v02.api.letsencrypt.org/directory
    #[arg(long)]
    acme_directory: Option<String>,
    /// A contact address for the ACME account (repeatable), e.g.
    /// `ops@example.com`.
    #[arg(long = "acme-email", requires = "acme_directory")]
    acme_emails: Vec<String>,
    /// A PEM file of roots to trust for the ACME server's own HTTPS,
    /// besides the usual ones (a private or test ACME server's).
    #[arg(long, requires = "acme_directory")]
    acme_ca_roots: Option<PathBuf>,
    /// Renew ACME certificates this long before they expire, e.g. `30d`;
    /// default when a third of their lifetime is left.
    #[arg(long, requires = "acme_directory", value_parser = humantime::parse_duration)]
    acme_renew_before: Option<Duration>,
    #[command(flatten)]
    metrics: super::telemetry::MetricsArgs,
}

/// Reads the `--acme-*` flags.
fn acme_config(args: &ServerArgs) -> anyhow::Result<Option<crate::control::AcmeConfig>> {
    let Some(directory) = &args.acme_directory else {
        return Ok(None);
    };
    if !directory
        .parse::<http::Uri>()
        .is_ok_and(|uri| uri.scheme_str() == Some("https") && uri.host().is_some())
    {
        anyhow::bail!(
            "--acme-directory {directory:?} is not an ACME directory URL: give https://HOST/PATH, such as https://acme-v02.api.letsencrypt.org/directory"
        );
    }
    let mut contact = Vec::new();
    for email in &args.acme_emails {
        let email = email.strip_prefix("mailto:").unwrap_or(email);
        if !email.contains('@') || email.contains(char::is_whitespace) {
            anyhow::bail!("--acme-email {email:?} is not an email address");
        }
        contact.push(format!("mailto:{email}"));
    }
    if let Some(roots) = &args.acme_ca_roots {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let pem = std::fs::read(roots)
            .with_context(|| format!("cannot read --acme-ca-roots {}", roots.display()))?;
        let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| {
                anyhow::anyhow!(
                    "--acme-ca-roots {}: {}",
                    roots.display(),
                    crate::certs::pem_problem(&e)
                )
            })?;
        if certs.is_empty() {
            anyhow::bail!(
                "--acme-ca-roots {} holds no PEM certificate: give the CA certificate the ACME server's own HTTPS certificate chains to",
                roots.display()
            );
        }
    }
    Ok(Some(crate::control::AcmeConfig {
        directory: directory.clone(),
        contact,
        ca_roots: args.acme_ca_roots.clone(),
        renew_before: args.acme_renew_before,
    }))
}

/// Reads `--store`.
fn parse_store(text: &str) -> Result<StoreChoice, String> {
    if text == "embedded" {
        return Ok(StoreChoice::Embedded);
    }
    crate::state::EtcdTarget::parse(text).map(StoreChoice::Etcd)
}

/// Runs the control plane until Ctrl-C or SIGTERM.
pub fn server(args: ServerArgs) -> anyhow::Result<()> {
    args.metrics.apart_from(args.listen, "--listen")?;
    let acme = acme_config(&args)?;
    let mut config = ControlPlaneConfig::new(
        args.data_dir
            .unwrap_or_else(|| home::skiff_home().join("server")),
        args.listen,
    );
    config.hosts = args.hosts;
    config.heartbeat = args.heartbeat;
    config.down_after = args.down_after;
    config.node_cert_lifetime = args.node_cert_lifetime;
    config.workload_cert_lifetime = args.workload_cert_lifetime;
    config.max_connections = args.max_connections;
    config.max_connections_per_ip = args.max_connections_per_ip;
    config.body_timeout = args.body_timeout;
    config.package_grace = args.package_grace;
    config.overcommit = crate::control::Overcommit::new(args.overcommit)?;
    config.ui_session_lifetime = args.ui_session_lifetime;
    config.store = parse_store(&args.store).map_err(|e| anyhow::anyhow!(e))?;
    config.acme = acme;

    runtime()?.block_on(async {
        let metrics = args.metrics.bind().await?;
        let control = ControlPlane::start(config).await?;
        let mut registry = Metrics::registry();
        control.register_metrics(&mut registry, true);
        crate::mesh::metrics::register_handshakes(&mut registry);
        metrics.serve(registry);
        let url = control.url();
        let previous = admin_config(&control).save(&cluster_config::path())?;
        let mut out = std::io::stdout().lock();
        let others: Vec<String> = control.servers().into_iter().skip(1).collect();
        if !others.is_empty() {
            writeln!(
                out,
                "Other control planes of this cluster: {} (one leads, the rest stand by)",
                others.join(", ")
            )?;
        }
        writeln!(out, "Control plane serving {url}")?;
        writeln!(
            out,
            "The CLI now talks to it (settings in {})",
            cluster_config::path().display()
        )?;
        if let Some(previous) = previous {
            writeln!(
                out,
                "  before, it talked to {previous}; `--server {previous}` still does"
            )?;
        }
        if control.first_start {
            let token = control.new_join_token()?;
            writeln!(out, "Join a node with:")?;
            writeln!(
                out,
                "  {} node --server {} --token {} --name <name> --listen <its ip>:3000",
                super::invocation(),
                control.servers().join(","),
                token.token
            )?;
        } else {
            writeln!(
                out,
                "Make a join token for a new node with `skiff join-token`"
            )?;
        }
        out.flush()?;
        drop(out);
        control.serve(shutdown_signal()).await
    })
}

/// The CLI's settings for `control`: its URL, admin token and CA.
fn admin_config(control: &ControlPlane) -> ClusterConfig {
    ClusterConfig {
        server: control.url(),
        token: control.admin_token().to_string(),
        ca_pem: control.ca_pem().to_string(),
        also: control
            .servers()
            .into_iter()
            .filter(|s| *s != control.url())
            .collect(),
    }
}

/// Arguments of `skiff node`.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// The control plane's URL, e.g. `https://10.0.0.1:7070`; several,
    /// separated by commas, when the cluster has several (on etcd): the
    /// node turns to the next when one does not answer, and learns of
    /// others from its heartbeats.
    #[arg(long)]
    server: String,
    /// A join token (needed only the first time this node starts).
    #[arg(long, env = "SKIFF_JOIN_TOKEN")]
    token: Option<String>,
    /// The node's name: one lower-case DNS label (letters, digits, '-'),
    /// not all digits, not `localhost`, not a name of the control plane;
    /// default the host name's first label, in lower case.
    #[arg(long)]
    name: Option<String>,
    /// Placement labels, e.g. `zone=eu-1,disk=ssd`; declared when the node
    /// joins, changed afterwards only with `skiff label`.
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Memory offered to replicas, e.g. `4GiB` or `memory=4GiB`; default
    /// the machine's memory. The node is never given more than it declared
    /// when it joined.
    #[arg(long)]
    capacity: Option<String>,
    /// HTTP ingress address.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// HTTPS ingress address, e.g. `0.0.0.0:443`: apps' domains served
    /// with the cluster's certificates (`skiff certs`), HTTP/2 and
    /// HTTP/1.1.
    #[arg(long)]
    https_listen: Option<SocketAddr>,
    /// Mesh (mTLS) address; default the ingress IP with a free port.
    #[arg(long)]
    mesh_listen: Option<SocketAddr>,
    /// Where the node's identity and packages live; default
    /// `$SKIFF_HOME/node-<name>`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The longest a request for a component scaled to zero waits for a
    /// replica before it gets 503, e.g. `30s`.
    #[arg(long, default_value = "30s", value_parser = parse_hold_limit)]
    hold_limit: Duration,
    /// How requests forwarded to other nodes choose a replica: `ewma`
    /// (latency times requests in flight, so a slow replica gets less) or
    /// `in-flight` (requests in flight only).
    #[arg(long, value_enum, default_value = "ewma")]
    balancer: crate::mesh::Balancer,
    #[command(flatten)]
    metrics: super::telemetry::MetricsArgs,
    #[command(flatten)]
    otlp: super::telemetry::OtlpArgs,
}

/// A `--hold-limit`: from 100ms to 10 minutes.
fn parse_hold_limit(text: &str) -> Result<Duration, String> {
    let limit = humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration such as \"30s\": {e}"))?;
    if !(Duration::from_millis(100)..=Duration::from_secs(600)).contains(&limit) {
        return Err(format!(
            "{text:?}: the hold limit must be from 100ms to 10m"
        ));
    }
    Ok(limit)
}

/// Refuses a `--server` that is not one or more `https://HOST:PORT`
/// separated by commas.
fn check_servers(servers: &str) -> anyhow::Result<()> {
    for server in servers.split(',') {
        let usable = server
            .trim()
            .parse::<http::Uri>()
            .is_ok_and(|uri| uri.scheme_str() == Some("https") && uri.host().is_some());
        if !usable {
            anyhow::bail!(
                "--server {server:?} is not a control plane's URL: give https://HOST:PORT, or several separated by commas (https://10.0.0.1:7070,https://10.0.0.2:7070)"
            );
        }
    }
    Ok(())
}

/// Runs a node until Ctrl-C or SIGTERM.
pub fn node(args: NodeArgs) -> anyhow::Result<()> {
    args.metrics.apart_from(args.listen, "--listen")?;
    check_servers(&args.server)?;
    let name = args.name.unwrap_or_else(host_name);
    crate::mesh::ca::check_node_name(&name)?;
    let mut labels = BTreeMap::new();
    for label in &args.labels {
        let (key, value) = crate::labels::parse(label)?;
        labels.insert(key, value);
    }
    crate::labels::check(&labels)?;
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| home::skiff_home().join(format!("node-{name}")));
    // Declared once, at join: a restart without --capacity offers what
    // the node declared then.
    let memory = match &args.capacity {
        Some(capacity) => parse_capacity(capacity)?,
        None => crate::node::declared_capacity(&data_dir).unwrap_or_else(machine_memory),
    };
    let config = NodeConfig {
        server: args.server,
        token: args.token,
        data_dir,
        name,
        labels,
        memory,
        listen: args.listen,
        https_listen: args.https_listen,
        mesh_listen: args
            .mesh_listen
            .unwrap_or_else(|| SocketAddr::new(args.listen.ip(), 0)),
        hold_limit: args.hold_limit,
        balancer: args.balancer,
    };
    if config.mesh_listen.ip().is_unspecified() {
        anyhow::bail!(
            "the mesh address {} is not one other nodes can reach: pass --mesh-listen IP:PORT with this node's address",
            config.mesh_listen
        );
    }
    runtime()?.block_on(async {
        let metrics = args.metrics.bind().await?;
        args.otlp.start(&config.name)?;
        let node = Node::start(config.clone()).await?;
        let mut registry = Metrics::registry();
        node.register_metrics(&mut registry);
        crate::mesh::metrics::register_handshakes(&mut registry);
        metrics.serve(registry);
        let https = node
            .https_addr()
            .map(|addr| format!(" and https://{addr}"))
            .unwrap_or_default();
        out!(
            "Node {} serving ingress on http://{}{https} (mesh {}), control plane {}",
            config.name,
            node.ingress_addr(),
            node.mesh_addr(),
            config.server
        )?;
        node.run(shutdown_signal()).await?;
        Ok(())
    })
}

/// Arguments of `skiff up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// An app to deploy: a skiff.toml, a directory holding one, a .wasm
    /// component, or a package reference.
    #[arg(value_hint = clap::ValueHint::AnyPath)]
    path: Option<String>,
    /// HTTP ingress address.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// HTTPS ingress address, e.g. `127.0.0.1:3443`: apps' domains served
    /// with the certificates given by `skiff cert add`.
    #[arg(long)]
    https_listen: Option<SocketAddr>,
    /// Address of the control plane's HTTPS API.
    #[arg(long, default_value = "127.0.0.1:7070")]
    api: SocketAddr,
    /// Run each component's build command first.
    #[arg(long)]
    build: bool,
    /// The longest a request for a component scaled to zero waits for a
    /// replica before it gets 503, e.g. `30s`.
    #[arg(long, default_value = "30s", value_parser = parse_hold_limit)]
    hold_limit: Duration,
    #[command(flatten)]
    metrics: super::telemetry::MetricsArgs,
    #[command(flatten)]
    otlp: super::telemetry::OtlpArgs,
}

/// A one-machine cluster: control plane, one node and ingress in one
/// process, with an app deployed.
pub fn up(args: UpArgs) -> anyhow::Result<()> {
    args.metrics.apart_from(args.listen, "--listen")?;
    args.metrics.apart_from(args.api, "--api")?;
    let started = Instant::now();
    let prepared = match &args.path {
        Some(path) => Some(deploy::prepare(path, args.build)?),
        None => None,
    };
    // Find out now, not after starting a control plane and joining a node.
    std::net::TcpListener::bind(args.listen).map_err(|e| {
        anyhow::anyhow!(
            "cannot serve ingress on {}: {e}; pick another address with --listen",
            args.listen
        )
    })?;
    let dir = home::skiff_home().join("up");
    runtime()?.block_on(async {
        let metrics = args.metrics.bind().await?;
        args.otlp.start("local")?;
        let control =
            ControlPlane::start(ControlPlaneConfig::new(dir.join("server"), args.api)).await?;
        let mut registry = Metrics::registry();
        control.register_metrics(&mut registry, false);
        crate::mesh::metrics::register_handshakes(&mut registry);
        let admin = admin_config(&control);
        let previous = admin.save(&cluster_config::path())?;
        // However `up` ends, the CLI goes back to the cluster it found.
        let _hand_back = HandBack {
            leaving: admin.server.clone(),
            previous: previous.clone(),
        };
        // Handle Ctrl-C and SIGTERM from here on: stop cleanly even while
        // deploying.
        let mut signalled = tokio::spawn(shutdown_signal());
        let node_dir = dir.join("node");
        // A node identity from an earlier cluster (its server data was
        // removed) cannot talk to this one: join afresh.
        if std::fs::read_to_string(node_dir.join("ca.pem")).is_ok_and(|ca| ca != control.ca_pem()) {
            std::fs::remove_dir_all(&node_dir)
                .with_context(|| format!("cannot reset {}", node_dir.display()))?;
        }
        let token = if node_dir.join("node.pem").exists() {
            None
        } else {
            // Its identity is gone (removed, or lost to a crash mid-join):
            // the record of the old one would hold the name for ever.
            if control.forget_node("local")? {
                tracing::info!("the local node lost its identity; it joins again");
            }
            Some(control.new_join_token()?.token)
        };
        let url = control.url();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let wait = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let control_task = tokio::spawn(control.serve(wait(stopped.clone())));
        let node = Node::start(NodeConfig {
            server: url.clone(),
            token,
            name: "local".to_string(),
            labels: BTreeMap::new(),
            // One node has no other place to put a replica: it takes
            // whatever is deployed, however much it reserves.
            memory: UNLIMITED_MEMORY,
            listen: args.listen,
            https_listen: args.https_listen,
            // The mesh of a one-node cluster has no peers: loopback when
            // ingress listens on every address, so the address reported
            // is one a node could dial.
            mesh_listen: SocketAddr::new(
                if args.listen.ip().is_unspecified() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    args.listen.ip()
                },
                0,
            ),
            data_dir: node_dir,
            hold_limit: args.hold_limit,
            balancer: Default::default(),
        })
        .await?;
        let ingress = node.ingress_addr();
        let node_https = node.https_addr();
        node.register_metrics(&mut registry);
        metrics.serve(registry);
        let node_task = tokio::spawn(node.run(wait(stopped)));
        // This cluster's own credentials, whatever SKIFF_TOKEN or
        // cluster.json say.
        let client = admin.client()?;
        if let Some(prepared) = &prepared {
            let deployed = async {
                let declared =
                    deploy::upload_and_declare(&client, prepared, &Default::default()).await?;
                super::apps::warn_all(&declared.warnings);
                let running = super::apps::wait_until_running(
                    &client,
                    &declared.app,
                    Duration::from_secs(60),
                )
                .await?;
                Ok::<_, anyhow::Error>((declared, running))
            };
            let declared = tokio::select! {
                declared = deployed => declared,
                _ = &mut signalled => Err(anyhow::anyhow!("stopped before the app was running")),
            };
            let (declared, running) = match declared {
                Ok(declared) => declared,
                Err(e) => {
                    let _ = stop.send(true);
                    let _ = node_task.await;
                    let _ = control_task.await;
                    return Err(e);
                }
            };
            out!(
                "App \"{}\" ({}) running in {:.0?}",
                declared.app,
                prepared.descriptor.digest.short(),
                started.elapsed()
            )?;
            if let Some(note) = super::apps::idle_note(&running) {
                out!("{note}")?;
            }
        }
        match node_https {
            Some(https) => out!(
                "Serving http://{ingress} and https://{https} (control plane {url}; Ctrl-C to stop)"
            )?,
            None => out!("Serving http://{ingress} (control plane {url}; Ctrl-C to stop)")?,
        }
        if let Some(previous) = &previous {
            out!("The CLI talks to this cluster until it stops, then to {previous} again")?;
        }
        let skiff = super::invocation();
        out!("Try: {skiff} ps, {skiff} apps, {skiff} logs <app>, {skiff} top, {skiff} dashboard")?;
        let mut control_task = control_task;
        let stopped_early = tokio::select! {
            _ = &mut signalled => None,
            result = &mut control_task => Some(result),
        };
        let _ = stop.send(true);
        let _ = node_task.await;
        match stopped_early {
            Some(result) => result?,
            None => control_task.await?,
        }?;
        out!("Stopped; the apps deployed here serve again at the next `skiff up`")?;
        Ok(())
    })
}

/// Makes `previous` the CLI's current cluster again when dropped, if
/// `leaving` still is.
struct HandBack {
    leaving: String,
    previous: Option<String>,
}

impl Drop for HandBack {
    fn drop(&mut self) {
        if let Some(previous) = &self.previous
            && let Err(e) =
                cluster_config::hand_back(&cluster_config::path(), &self.leaving, previous)
        {
            eprintln!("warning: the CLI still points at {}: {e:#}", self.leaving);
        }
    }
}

/// Arguments of `skiff join-token`.
#[derive(Debug, clap::Args)]
pub struct JoinTokenArgs {
    #[command(flatten)]
    cluster: super::apps::ClusterArgs,
}

/// Prints a new one-time join token.
pub fn join_token(args: JoinTokenArgs) -> anyhow::Result<()> {
    let config = ClusterConfig::load(args.cluster.server.as_deref())?;
    let client = config.client()?;
    let token: crate::api::JoinTokenResponse =
        runtime()?.block_on(client.post("/v1/join-tokens", &serde_json::json!({})))?;
    if args.cluster.json() {
        out!("{}", serde_json::to_string_pretty(&token)?)?;
    } else {
        out!("{}", token.token)?;
        eprintln!(
            "valid once, for 24 h: skiff node --server {} --token {}",
            client.servers(),
            token.token
        );
    }
    Ok(())
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("failed to start the async runtime")
}

pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .and_then(|h| Some(h.trim().split('.').next()?.to_ascii_lowercase()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_string())
}

/// `4GiB` or `memory=4GiB`: at least 16 MiB, with a unit.
fn parse_capacity(text: &str) -> anyhow::Result<u64> {
    let size = match text.split_once('=') {
        Some(("memory", size)) => size,
        Some((other, _)) => anyhow::bail!(
            "invalid --capacity {text:?}: only memory is placed by, e.g. memory=4GiB (not {other:?})"
        ),
        None => text,
    };
    let bytes = size
        .trim()
        .parse::<bytesize::ByteSize>()
        .map(|s| s.as_u64())
        .ok()
        .filter(|_| size.trim().ends_with(|c: char| c.is_ascii_alphabetic()))
        .ok_or_else(|| {
            anyhow::anyhow!("invalid --capacity {text:?}: write a size with a unit, e.g. 4GiB")
        })?;
    if bytes < 16 << 20 {
        anyhow::bail!("--capacity {text:?} is too small for any replica: offer at least 16MiB");
    }
    Ok(bytes)
}

/// Total memory of this machine, from /proc/meminfo; 4 GiB if unknown.
fn machine_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(4 << 30)
}
