//! The HTTP client behind a component's outbound calls. Its connector
//! resolves names itself and keeps only the addresses the policy permits
//! for the request's scheme, host and port: an internal address (loopback,
//! private, link-local, ...) only where an entry names it exactly, so
//! neither a wildcard entry, nor another port of a named address, nor DNS
//! can steer a request to the host's own services or a cloud metadata
//! endpoint. It then connects to exactly the checked addresses, with TLS
//! for https (rustls, webpki roots), keeping a small connection pool per
//! component. The TLS roots and verifier (~150 root certificates) are built
//! once per process and shared by every component's client; each client
//! keeps its own TLS session cache.

use super::policy::{OutboundPolicy, default_port};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// Connect timeout for every outbound connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the connector refused every address of a host.
#[derive(Debug, thiserror::Error)]
#[error(
    "{host} resolves only to internal addresses that allowed_outbound_hosts does not name for this scheme and port"
)]
pub struct ProhibitedAddress {
    host: String,
}

/// Resolves a host to the addresses its request may connect to, then
/// connects to one of exactly those.
#[derive(Clone)]
struct CheckedConnector {
    policy: Arc<OutboundPolicy>,
}

/// The addresses the [`CheckedConnector`] checked, handed to the inner
/// `HttpConnector` as its resolver.
#[derive(Clone)]
struct Checked(Vec<SocketAddr>);

impl tower_service::Service<Name> for Checked {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = std::future::Ready<io::Result<Self::Response>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _name: Name) -> Self::Future {
        std::future::ready(Ok(self.0.clone().into_iter()))
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ConnectFuture = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send>>;

impl tower_service::Service<http::Uri> for CheckedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> ConnectFuture {
        let policy = self.policy.clone();
        Box::pin(async move {
            let scheme = uri.scheme_str().unwrap_or("http");
            let host = uri.host().unwrap_or_default();
            let port = uri.port_u16().unwrap_or_else(|| default_port(scheme));
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let candidates: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => tokio::net::lookup_host((bare, port)).await?.collect(),
            };
            let permitted: Vec<SocketAddr> = candidates
                .into_iter()
                .filter(|addr| policy.permits_address(scheme, host, port, addr.ip()))
                .collect();
            if permitted.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    ProhibitedAddress {
                        host: host.to_string(),
                    },
                )
                .into());
            }
            // A literal IP host is connected to as is, and was checked
            // above; a name goes to exactly the permitted addresses.
            let mut http = HttpConnector::new_with_resolver(Checked(permitted));
            http.enforce_http(false);
            http.set_connect_timeout(Some(CONNECT_TIMEOUT));
            http.set_nodelay(true);
            tower_service::Service::call(&mut http, uri)
                .await
                .map_err(Into::into)
        })
    }
}

/// The process's TLS client configuration: ring, the safe default protocol
/// versions, the webpki roots; built on first use.
fn tls_config() -> Result<rustls::ClientConfig, String> {
    static CONFIG: LazyLock<Result<rustls::ClientConfig, String>> = LazyLock::new(|| {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS for outbound HTTP: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
    });
    // Cloning shares the roots and verifier (both behind `Arc`s).
    CONFIG.clone()
}

/// Checks that outbound TLS can be set up in this process, so a component
/// that may call out fails at load rather than at its first call.
///
/// # Errors
///
/// When the TLS configuration cannot be built.
pub fn check_tls() -> Result<(), String> {
    tls_config().map(drop)
}

/// One component's outbound client.
pub struct OutboundClient {
    client: Client<HttpsConnector<CheckedConnector>, WasiBody>,
}

impl OutboundClient {
    /// A client that only connects where `policy` permits.
    ///
    /// # Errors
    ///
    /// When the TLS configuration cannot be built.
    pub fn new(policy: Arc<OutboundPolicy>) -> Result<OutboundClient, String> {
        let mut tls = tls_config()?;
        // Roots and verifier are shared; resumable sessions are not, so one
        // component's session tickets never identify another's calls.
        tls.resumption = rustls::client::Resumption::in_memory_sessions(32);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(CheckedConnector { policy });
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(8)
            .build(https);
        Ok(OutboundClient { client })
    }

    /// Sends `request`, waiting at most `head_timeout` for the response head
    /// and at most `between_bytes` between body frames.
    ///
    /// # Errors
    ///
    /// The `wasi:http` error code the guest sees.
    pub async fn send(
        &self,
        request: http::Request<WasiBody>,
        head_timeout: Duration,
        between_bytes: Duration,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let response = tokio::time::timeout(head_timeout, self.client.request(request))
            .await
            .map_err(|_| HttpError::ConnectionReadTimeout)?
            .map_err(|e| client_error(&e))?;
        Ok(response.map(|body| {
            BetweenBytesTimeout {
                body,
                limit: between_bytes,
                deadline: Box::pin(tokio::time::sleep(between_bytes)),
            }
            .boxed_unsync()
        }))
    }
}

/// Maps a client error to the closest `wasi:http` error code.
fn client_error(error: &hyper_util::client::legacy::Error) -> HttpError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.downcast_ref::<ProhibitedAddress>().is_some() {
            return HttpError::DestinationIpProhibited;
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<ProhibitedAddress>())
            {
                return HttpError::DestinationIpProhibited;
            }
            return match io.kind() {
                io::ErrorKind::ConnectionRefused => HttpError::ConnectionRefused,
                io::ErrorKind::TimedOut => HttpError::ConnectionTimeout,
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                    HttpError::ConnectionTerminated
                }
                _ if error.is_connect() => HttpError::DestinationUnavailable,
                _ => HttpError::HttpProtocolError,
            };
        }
        source = e.source();
    }
    if error.is_connect() {
        HttpError::DestinationUnavailable
    } else {
        HttpError::HttpProtocolError
    }
}

/// A response body that fails when the upstream pauses too long.
struct BetweenBytesTimeout {
    body: hyper::body::Incoming,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl Body for BetweenBytesTimeout {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.deadline.as_mut().reset(Instant::now() + this.limit);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(HttpError::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
