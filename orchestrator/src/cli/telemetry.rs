//! What a process tells operators: `--metrics-listen` (its Prometheus
//! metrics on an address of their own, for `skiff run`, `node`, `server`
//! and `up`) and `--otlp-endpoint` (request spans over OTLP, for `skiff
//! run`, `node` and `up`).

use prometheus_client::registry::Registry;
use skiff_runtime::metrics::MetricsEndpoint;
use std::net::SocketAddr;
use std::sync::Arc;

/// The `--metrics-listen` option.
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics (off by default;
    /// bind a private address: the metrics name every app).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
}

/// A bound metrics endpoint, waiting for what it reports.
pub struct Metrics {
    endpoint: Option<MetricsEndpoint>,
}

impl MetricsArgs {
    /// Refuses a metrics address that is `other`, the address `flag`
    /// gives.
    ///
    /// # Errors
    ///
    /// The two are the same.
    pub fn apart_from(&self, other: SocketAddr, flag: &str) -> anyhow::Result<()> {
        if self.metrics_listen == Some(other) && other.port() != 0 {
            anyhow::bail!(
                "--metrics-listen {other} is also {flag}: give the metrics an address of their own"
            );
        }
        Ok(())
    }

    /// Binds the address, if one was given, before anything else starts.
    ///
    /// # Errors
    ///
    /// The address cannot be bound.
    pub async fn bind(&self) -> anyhow::Result<Metrics> {
        let endpoint = match self.metrics_listen {
            Some(addr) => Some(
                MetricsEndpoint::bind(addr)
                    .await
                    .map_err(anyhow::Error::msg)?,
            ),
            None => None,
        };
        Ok(Metrics { endpoint })
    }
}

impl Metrics {
    /// A registry for what this process reports, prefixed `skiff`.
    pub fn registry() -> Registry {
        Registry::with_prefix("skiff")
    }

    /// Serves `registry` in the background for the rest of the process,
    /// and says where; nothing without `--metrics-listen`.
    pub fn serve(self, registry: Registry) {
        let Some(endpoint) = self.endpoint else {
            return;
        };
        // The process's own figures first, under their usual names.
        let mut process = Registry::default();
        process.register_collector(Box::new(skiff_runtime::metrics::ProcessCollector::default()));
        eprintln!("Metrics at http://{}/metrics", endpoint.local_addr());
        let registries: Arc<[Registry]> = Arc::from(vec![process, registry]);
        tokio::spawn(endpoint.run(registries, std::future::pending()));
    }
}

/// The `--otlp-endpoint` option.
#[derive(Debug, Clone, clap::Args)]
pub struct OtlpArgs {
    /// Export request spans over OTLP/HTTP to this collector, e.g.
    /// `http://127.0.0.1:4318` (`/v1/traces` is added when no path is
    /// given); off by default. Span log lines are written either way.
    #[arg(long, value_name = "URL", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

impl OtlpArgs {
    /// Starts exporting as `instance` (the node's name), if asked; inside
    /// the process's tokio runtime.
    ///
    /// # Errors
    ///
    /// The endpoint is not an http(s) URL.
    pub fn start(&self, instance: &str) -> anyhow::Result<()> {
        if let Some(endpoint) = &self.otlp_endpoint {
            skiff_runtime::otlp::start(endpoint, instance).map_err(anyhow::Error::msg)?;
            // The host only: a query or credentials may hold a secret.
            let host = endpoint
                .parse::<http::Uri>()
                .ok()
                .and_then(|url| url.host().map(str::to_string))
                .unwrap_or_default();
            eprintln!("Exporting request spans to the collector at {host}");
        }
        Ok(())
    }
}
