//! The HTTP client behind a component's outbound calls. It resolves names
//! itself and drops internal addresses (loopback, private, link-local, ...)
//! that the policy does not name, so neither a wildcard entry nor DNS can
//! steer a request to the host's own services or a cloud metadata endpoint.
//! It then connects to exactly the checked addresses, with TLS for https
//! (rustls, webpki roots), keeping a small connection pool per component.

use super::policy::OutboundPolicy;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// Connect timeout for every outbound connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `ip` belongs to a range a guest must not reach unless the
/// manifest names it: loopback, private (RFC 1918, unique local), link-local
/// (which holds cloud metadata at 169.254.169.254), shared (CGNAT),
/// unspecified, broadcast, multicast and documentation ranges.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || (a == 100 && (64..128).contains(&b))
                || a == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Why the resolver refused every address of a name.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to internal addresses that allowed_outbound_hosts does not name")]
pub struct ProhibitedAddress {
    host: String,
}

/// Resolves through the system resolver, keeping only permitted addresses.
#[derive(Clone)]
struct CheckedResolver {
    policy: Arc<OutboundPolicy>,
}

type ResolveFuture =
    Pin<Box<dyn Future<Output = io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl tower_service::Service<Name> for CheckedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = ResolveFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> ResolveFuture {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|addr| !is_internal(addr.ip()) || policy.names_internal_address(addr.ip()))
                .collect();
            if resolved.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    ProhibitedAddress { host },
                ));
            }
            Ok(resolved.into_iter())
        })
    }
}

/// One component's outbound client.
pub struct OutboundClient {
    client: Client<HttpsConnector<HttpConnector<CheckedResolver>>, WasiBody>,
}

impl OutboundClient {
    /// A client that only connects where `policy` permits.
    ///
    /// # Errors
    ///
    /// When the TLS configuration cannot be built.
    pub fn new(policy: Arc<OutboundPolicy>) -> Result<OutboundClient, String> {
        let mut http = HttpConnector::new_with_resolver(CheckedResolver { policy });
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))
            .map_err(|e| format!("cannot set up TLS for outbound HTTP: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_ranges() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in ["93.184.215.14", "1.1.1.1", "2606:4700::1111", "172.32.0.1"] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }
}
