//! `skiff run`: build (optionally), load and serve one app on this machine.

use crate::app_source::{self, AppSource};
use crate::home;
use anyhow::Context;
use skiff_runtime::capability::logging::{LogSink, StderrSink};
use skiff_runtime::{CacheOutcome, CompileCache, EngineConfig, LoadedApp, Server, SkiffEngine};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Arguments of `skiff run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A skiff.toml, a directory holding one, a .wasm component, or a
    /// package reference (`name:tag`, `sha256:...`, `registry/repo:tag`).
    #[arg(default_value = ".", value_hint = clap::ValueHint::AnyPath)]
    path: String,
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:3000", value_hint = clap::ValueHint::Other)]
    listen: SocketAddr,
    /// Run each component's build command first.
    #[arg(long)]
    build: bool,
    /// Instances alive at once in this process, all components together
    /// (each slot reserves address space for the largest memory allowed).
    #[arg(long, default_value_t = EngineConfig::default().max_instances, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_instances: u32,
    #[command(flatten)]
    metrics: super::telemetry::MetricsArgs,
    #[command(flatten)]
    otlp: super::telemetry::OtlpArgs,
}

/// Runs `skiff run`.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    args.metrics.apart_from(args.listen, "--listen")?;
    let source = if app_source::is_path(&args.path) {
        let mut source = AppSource::open(&PathBuf::from(&args.path))?;
        if args.build {
            source.build()?;
        }
        source.resolve()?;
        source
    } else {
        AppSource::from_package(&args.path)?
    };
    let runtime = tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
    let engine = EngineConfig {
        max_instances: args.max_instances,
        ..EngineConfig::default()
    };
    runtime.block_on(async {
        args.otlp.start(&super::cluster::host_name())?;
        serve(source, args.listen, engine, args.metrics).await
    })
}

async fn serve(
    source: AppSource,
    listen: SocketAddr,
    engine: EngineConfig,
    metrics: super::telemetry::MetricsArgs,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let metrics = metrics.bind().await?;
    let engine = SkiffEngine::new(engine)?;
    let runtime_metrics = engine.metrics().clone();
    let cache = CompileCache::open(&home::cache_dir())?;
    let app = LoadedApp::load(&engine, &cache, &source.manifest, &source.base_dir)?;
    let log_sink: Arc<dyn LogSink> = Arc::new(StderrSink);
    let server = Server::bind(listen, Arc::new(app), log_sink).await?;
    let app = server.app();

    let url = format!("http://{}", server.local_addr());
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "App \"{}\" {} loaded in {:.0?}",
        app.name,
        app.version,
        started.elapsed()
    )?;
    for component in &app.components {
        let route = component
            .route
            .as_ref()
            .map_or_else(|| "(no route)".to_string(), |r| r.to_string());
        let origin = match component.cache {
            CacheOutcome::Shared => "shared with a component already loaded",
            CacheOutcome::Hit => "from compile cache",
            CacheOutcome::Compiled => "compiled",
        };
        writeln!(out, "  {route} -> {} ({origin})", component.name)?;
    }
    writeln!(out, "Serving {url} (Ctrl-C to stop)")?;
    out.flush()?;
    drop(out);
    let mut registry = super::telemetry::Metrics::registry();
    runtime_metrics.register(&mut registry);
    metrics.serve(registry);

    server.run(shutdown_signal()).await;
    eprintln!("stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    eprintln!("shutting down: finishing in-flight requests");
}
