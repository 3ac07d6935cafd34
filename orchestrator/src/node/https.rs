//! HTTPS ingress: TLS terminated with the cluster's certificates, the one
//! for the name the client asks for (SNI) and no other, HTTP/2 or
//! HTTP/1.1 as the client offers (ALPN); the requests are then served as
//! plain ingress serves them. Also the TLS bundle the control plane sends
//! (certificates and ACME challenges), kept on disk so a node restarted
//! while the control plane is away serves HTTPS all the same.

use super::NodeShared;
use crate::api::TlsBundle;
use crate::mesh::admission::{Admission, Trust};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use skiff_runtime::server::{DRAIN_TIMEOUT, HEADER_READ_TIMEOUT, accept_until};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;

/// The file in the data directory the last TLS bundle is kept in.
const LAST_TLS: &str = "tls.json";

/// TLS handshakes in progress at once; more connections are closed at
/// once (a flood of client hellos costs nothing more).
pub const MAX_HANDSHAKES: usize = 1024;

/// Of those, from one address (an IPv6 /64).
pub const MAX_HANDSHAKES_PER_IP: usize = 64;

/// How long a client may take over its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 streams one connection may have open at once.
const MAX_STREAMS: u32 = 256;

/// The certificates this node serves and the ACME challenges it answers,
/// as last heard from the control plane.
#[derive(Debug, Default)]
pub(crate) struct ServedTls {
    current: RwLock<Arc<Held>>,
}

#[derive(Debug, Default)]
struct Held {
    /// The bundle's digest, told to the control plane.
    digest: String,
    /// By the name each is kept under (`shop.example.com`,
    /// `*.example.com`), with when it expires (Unix seconds).
    keys: HashMap<String, (Arc<CertifiedKey>, i64)>,
    /// Token to key authorization.
    challenges: BTreeMap<String, String>,
}

impl ServedTls {
    /// The bundle last kept in `data_dir`, if any.
    pub(crate) fn load(data_dir: &Path) -> ServedTls {
        let served = ServedTls::default();
        let path = data_dir.join(LAST_TLS);
        match std::fs::read(&path).map(|bytes| serde_json::from_slice::<TlsBundle>(&bytes)) {
            Ok(Ok(bundle)) => served.hold(&bundle),
            Ok(Err(e)) => tracing::warn!(
                "ignoring the saved certificates in {}: {e}; the control plane sends them again",
                path.display()
            ),
            Err(_) => {}
        }
        served
    }

    /// The digest of the bundle held; empty before the first.
    pub(crate) fn digest(&self) -> String {
        self.current.read().expect("tls lock").digest.clone()
    }

    /// Serves `bundle` from now on, and keeps it in `data_dir`. A
    /// certificate that does not read is left out (and logged).
    pub(crate) fn apply(&self, bundle: &TlsBundle, data_dir: &Path) {
        self.hold(bundle);
        let saved = serde_json::to_vec(bundle).expect("a bundle serializes");
        if let Err(e) = crate::home::write_private(&data_dir.join(LAST_TLS), &saved) {
            tracing::warn!("cannot save the cluster's certificates: {e:#}");
        }
    }

    fn hold(&self, bundle: &TlsBundle) {
        let mut keys = HashMap::new();
        for cert in &bundle.certificates {
            match crate::certs::read(&cert.chain_pem, &cert.key_pem) {
                Ok(read) => {
                    keys.insert(cert.domain.clone(), (read.key, read.info.not_after));
                }
                Err(e) => tracing::warn!(
                    domain = cert.domain,
                    "cannot serve the certificate for {}: {e}",
                    cert.domain
                ),
            }
        }
        *self.current.write().expect("tls lock") = Arc::new(Held {
            digest: bundle.digest.clone(),
            keys,
            challenges: bundle.challenges.clone(),
        });
    }

    /// The certificate for `host`: its own, else a wildcard one label up;
    /// never one that has expired (a client would refuse it, and a
    /// redirect to it would take the app down).
    pub(crate) fn key_for(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let held = self.current.read().expect("tls lock").clone();
        let now = crate::clock::unix_secs() as i64;
        let live =
            |(key, not_after): &(Arc<CertifiedKey>, i64)| (*not_after > now).then(|| key.clone());
        if let Some(key) = held.keys.get(host) {
            return live(key);
        }
        let (first, parent) = host.split_once('.')?;
        if first.is_empty() || first == "*" {
            return None;
        }
        held.keys.get(&format!("*.{parent}")).and_then(live)
    }

    /// Whether this node serves a certificate for `host`.
    pub(crate) fn covers(&self, host: &str) -> bool {
        self.key_for(host).is_some()
    }

    /// The key authorization for ACME challenge `token`, if pending.
    pub(crate) fn challenge(&self, token: &str) -> Option<String> {
        self.current
            .read()
            .expect("tls lock")
            .challenges
            .get(token)
            .cloned()
    }
}

/// Picks the certificate by the name the client asked for. A client that
/// names no host, or one the cluster has no certificate for, gets none:
/// its handshake fails, and no other domain's certificate is shown.
#[derive(Debug)]
struct BySni(Arc<ServedTls>);

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello
            .server_name()?
            .trim_end_matches('.')
            .to_ascii_lowercase();
        self.0.key_for(&name)
    }
}

/// `request` on a connection whose handshake named `sni`, if this
/// connection may answer for the host it names: the certificate shown in
/// the handshake must be the one that host gets (a wildcard's may serve
/// several). Else 421 (RFC 9110, 7.4): a client cannot reach one app
/// under another's certificate. A request naming no host is for `sni`.
#[allow(clippy::result_large_err)]
fn misdirected(
    tls: &ServedTls,
    sni: &str,
    mut request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Request<hyper::body::Incoming>, skiff_runtime::invoke::Answer> {
    let header = match request.headers().get(http::header::HOST) {
        None => None,
        Some(value) => match value.to_str() {
            Ok(host) => Some(super::routing::host_name(host)),
            // Routing could not read it either, and would pick among
            // every app by path.
            Err(_) => {
                return Err(skiff_runtime::invoke::plain(
                    http::StatusCode::BAD_REQUEST,
                    "the Host header is not a host name\n".to_string(),
                ));
            }
        },
    };
    let authority = request
        .uri()
        .authority()
        .map(|a| super::routing::host_name(a.as_str()));
    // HTTP/2 names the host twice when a client sends `host` too: two
    // hosts make the request malformed (RFC 9113, 8.3.1).
    if let (Some(header), Some(authority)) = (&header, &authority)
        && header != authority
    {
        return Err(skiff_runtime::invoke::plain(
            http::StatusCode::BAD_REQUEST,
            format!("the request names two hosts, {authority} and {header}\n"),
        ));
    }
    let named = header.or(authority);
    let host = match named {
        Some(host) => host,
        None => {
            if let Ok(value) = http::HeaderValue::from_str(sni) {
                request.headers_mut().insert(http::header::HOST, value);
            }
            return Ok(request);
        }
    };
    let same = host == sni
        || matches!(
            (tls.key_for(sni), tls.key_for(&host)),
            (Some(shown), Some(theirs)) if Arc::ptr_eq(&shown, &theirs)
        );
    if same {
        return Ok(request);
    }
    Err(skiff_runtime::invoke::plain(
        http::StatusCode::MISDIRECTED_REQUEST,
        format!("this connection was opened for {sni}, not {host}: open one for {host}\n"),
    ))
}

/// HTTPS ingress's TLS: the certificates in `tls`, by SNI; HTTP/2 and
/// HTTP/1.1 by ALPN.
pub(crate) fn acceptor(tls: Arc<ServedTls>) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(BySni(tls)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves HTTPS ingress on `listener` with `acceptor` until `shutdown`,
/// then drains.
pub(crate) async fn serve(
    node: Arc<NodeShared>,
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shutdown: impl Future<Output = ()>,
) {
    let handshakes = Admission::new(
        "HTTPS ingress handshake",
        MAX_HANDSHAKES,
        MAX_HANDSHAKES_PER_IP,
        ["a fixed cap", "a fixed cap per address"],
        Trust::Both,
    );
    let connections = Admission::new(
        "HTTPS ingress",
        MAX_CONNECTIONS,
        MAX_CONNECTIONS_PER_IP,
        ["a fixed cap", "a fixed cap per address"],
        Trust::Address,
    );
    // HTTP/2 connections are closed gracefully (in-flight streams finish)
    // when ingress stops; HTTP/1.1 ones by the graceful watcher.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    accept_until(listener, shutdown, DRAIN_TIMEOUT, move |accepted| {
        // Over a limit, closed here, before the handshake costs anything.
        let Some(connection_slot) = connections.admit(accepted.peer.ip()) else {
            return;
        };
        let Some(mut handshake_slot) = handshakes.admit(accepted.peer.ip()) else {
            return;
        };
        let acceptor = acceptor.clone();
        let node = node.clone();
        let stopping = stopping.clone();
        tokio::spawn(async move {
            let count = |outcome| {
                crate::mesh::metrics::count_handshake(
                    "ingress",
                    crate::mesh::metrics::Side::Server,
                    outcome,
                )
            };
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(accepted.stream))
                    .await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        count("refused");
                        // Scanners and unknown names are the public
                        // internet's weather: not a warning.
                        tracing::debug!(peer = %accepted.peer, "HTTPS handshake refused: {e}");
                        return;
                    }
                    Err(_) => {
                        count("timeout");
                        return;
                    }
                };
            count("ok");
            // Handshaken: the connection no longer counts toward the caps
            // on handshakes, only toward those on connections.
            handshake_slot.trusted();
            drop(handshake_slot);
            let (_, connection) = stream.get_ref();
            // The handshake named a host (else it had no certificate).
            let sni: Arc<str> = connection
                .server_name()
                .unwrap_or_default()
                .trim_end_matches('.')
                .to_ascii_lowercase()
                .into();
            let h2 = connection.alpn_protocol() == Some(b"h2");
            let last_request = Arc::new(std::sync::Mutex::new(None::<tokio::time::Instant>));
            let seen = last_request.clone();
            let service = hyper::service::service_fn(move |request| {
                let node = node.clone();
                let sni = sni.clone();
                *seen.lock().expect("last request lock") = Some(tokio::time::Instant::now());
                async move {
                    let answer = match misdirected(&node.tls, &sni, request) {
                        Err(answer) => answer,
                        Ok(request) => {
                            super::ingress::dispatch(&node, request, super::ingress::Over::Https)
                                .await
                        }
                    };
                    Ok::<_, std::convert::Infallible>(answer)
                }
            });
            let io = TokioIo::new(stream);
            if h2 {
                serve_http2(io, service, last_request, stopping).await;
                drop(accepted.watcher);
            } else {
                // As plain HTTP/1.1 is served: keep-alive, and a client
                // slow to send a request head is cut off.
                skiff_runtime::server::serve_http1(accepted.watcher, io, service).await;
            }
            drop(connection_slot);
        });
    })
    .await;
}

/// HTTPS connections open at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 8192;

/// Of those, from one address (an IPv6 /64).
pub const MAX_CONNECTIONS_PER_IP: usize = 256;

/// An HTTP/2 connection with no new request this long is closed
/// (gracefully: streams in flight finish).
const HTTP2_IDLE: Duration = Duration::from_secs(60);

/// Serves HTTP/2 on `io` with `service` (which stamps `last_request`):
/// at most [`MAX_STREAMS`] streams at once, peers that stop answering
/// pings dropped, a connection that sends no request within
/// [`HEADER_READ_TIMEOUT`] of opening, or none for [`HTTP2_IDLE`], closed
/// gracefully, as is every connection once `stopping`.
async fn serve_http2<S>(
    io: TokioIo<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    service: S,
    last_request: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) where
    S: hyper::service::HttpService<
            hyper::body::Incoming,
            ResBody = skiff_runtime::invoke::ResponseBody,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let opened = tokio::time::Instant::now();
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20))
        .serve_connection(io, service);
    let mut connection = std::pin::pin!(connection);
    let mut closing = false;
    let idle_until = || match *last_request.lock().expect("last request lock") {
        None => opened + HEADER_READ_TIMEOUT,
        Some(at) => at + HTTP2_IDLE,
    };
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!("HTTP/2 connection ended with error: {e}");
                }
                return;
            }
            () = tokio::time::sleep_until(idle_until()), if !closing => {
                // No request ever (not even the preface, perhaps, which
                // a graceful close would wait for): nothing to finish.
                if last_request.lock().expect("last request lock").is_none() {
                    return;
                }
                // A request may have come while asleep.
                if idle_until() <= tokio::time::Instant::now() {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            _ = stopping.wait_for(|stop| *stop), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}
