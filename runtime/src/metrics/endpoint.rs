//! `GET /metrics` on an address of its own (`--metrics-listen`), off the
//! ingress port: a process's registry in the OpenMetrics text format that
//! Prometheus scrapes.

use crate::invoke::{ResponseBody, plain};
use crate::server::{DRAIN_TIMEOUT, accept_until, serve_http1};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Scrapes served at once; a connection past them is closed at once, so a
/// flood of scrapes cannot pile up encoding work.
pub const MAX_SCRAPE_CONNECTIONS: usize = 16;

/// The media type of the OpenMetrics text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A bound metrics listener.
pub struct MetricsEndpoint {
    listener: TcpListener,
}

impl MetricsEndpoint {
    /// Binds `addr`.
    ///
    /// # Errors
    ///
    /// A message naming the address and the option to change it.
    pub async fn bind(addr: SocketAddr) -> Result<MetricsEndpoint, String> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            format!(
                "cannot serve metrics on {addr}: {e}; pick another address with --metrics-listen"
            )
        })?;
        Ok(MetricsEndpoint { listener })
    }

    /// The address bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves `registries`, one after the other in each scrape, until
    /// `shutdown` completes.
    pub async fn run(self, registries: Arc<[Registry]>, shutdown: impl Future<Output = ()>) {
        let open = Arc::new(Semaphore::new(MAX_SCRAPE_CONNECTIONS));
        accept_until(self.listener, shutdown, DRAIN_TIMEOUT, |accepted| {
            let Ok(permit) = open.clone().try_acquire_owned() else {
                tracing::warn!(peer = %accepted.peer, "metrics connection refused: {MAX_SCRAPE_CONNECTIONS} already open");
                return;
            };
            let registries = registries.clone();
            let service = hyper::service::service_fn(move |request| {
                let registries = registries.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&registries, &request)) }
            });
            tokio::spawn(async move {
                let _permit = permit;
                serve_http1(accepted.watcher, TokioIo::new(accepted.stream), service).await;
            });
        })
        .await;
    }
}

/// The answer to one request: the metrics for `GET /metrics`, else why not.
fn answer(
    registries: &[Registry],
    request: &hyper::Request<Incoming>,
) -> hyper::Response<ResponseBody> {
    if request.uri().path() != "/metrics" {
        return plain(
            http::StatusCode::NOT_FOUND,
            "only /metrics is served here\n".to_string(),
        );
    }
    if request.method() != http::Method::GET && request.method() != http::Method::HEAD {
        return plain(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "/metrics answers GET only\n".to_string(),
        );
    }
    let mut text = String::with_capacity(64 << 10);
    let encoded = registries
        .iter()
        .try_for_each(|registry| {
            prometheus_client::encoding::text::encode_registry(&mut text, registry)
        })
        .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut text));
    if let Err(e) = encoded {
        tracing::error!("cannot encode metrics: {e}");
        return plain(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded\n".to_string(),
        );
    }
    let mut response = plain(http::StatusCode::OK, text);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(OPENMETRICS),
    );
    response
}
