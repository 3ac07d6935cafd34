//! The mesh between nodes: an mTLS endpoint that serves forwarded requests
//! for replicas on this node, and the client that forwards to other nodes.
//! Both sides present their node certificate and accept only peers signed
//! by the cluster CA; plaintext is refused. A forwarded request names its
//! target in the `skiff-app` and `skiff-component` headers. A mesh call
//! goes with its caller workload's certificate (issued to the calling
//! node, see `workload_certs`) and its hop count (`skiff-hops`).

use super::NodeShared;
use crate::api::{AppRouting, Endpoint};
use crate::mesh::{Members, NodeCert, NodeIdentity, Peer, WorkloadCert};
use bytes::Bytes;
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioIo};
use skiff_runtime::invoke::{ResponseBody, invoke, plain, relayed};
use skiff_runtime::mesh::Inbound;
use skiff_runtime::server::{DRAIN_TIMEOUT, accept_until, serve_http1};
use std::collections::HashMap;
use std::future::Ready;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Header naming the app of a forwarded request.
pub const APP_HEADER: &str = "skiff-app";
/// Header naming the component of a forwarded request.
pub const COMPONENT_HEADER: &str = "skiff-component";
/// Set on a mesh answer when the node holds no such replica (the sender's
/// endpoints are stale), so the request was not run and may be retried.
/// Only the mesh endpoint sets it: `invoke` strips every `skiff-*` header
/// from guest responses, so a guest cannot make a request replayed.
pub const NOT_HERE_HEADER: &str = "skiff-not-here";
/// Header giving, on a forwarded mesh call, how many mesh hops it took.
pub const HOPS_HEADER: &str = "skiff-hops";
/// Connecting to a peer node (TCP) may take this long before the next is
/// tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Connecting and the TLS handshake together may take this long: a frozen
/// node's kernel still accepts TCP connections, but it never answers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

type ForwardBody = UnsyncBoxBody<Bytes, BoxError>;
/// A client of other nodes' mesh endpoints, presenting one certificate.
pub(crate) type MeshClient =
    Client<Bounded<HttpsConnector<HttpConnector<MeshResolver>>>, ForwardBody>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Forwards requests to other nodes, choosing by the power of two
/// choices: of two endpoints picked at random, the one with fewer requests
/// in flight from this node.
pub(crate) struct Forwarder {
    addresses: Arc<RwLock<HashMap<String, SocketAddr>>>,
    members: Members,
    client: RwLock<MeshClient>,
    in_flight: RwLock<HashMap<String, Arc<AtomicUsize>>>,
}

/// Counts a request in flight to one node until dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(counter: Arc<AtomicUsize>) -> InFlight {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A forwarded response body that keeps its request counted in flight
/// until it ends (or is dropped).
struct Counted<B> {
    body: Pin<Box<B>>,
    _in_flight: InFlight,
}

impl<B> Counted<B> {
    fn new(body: B, in_flight: InFlight) -> Counted<B> {
        Counted {
            body: Box::pin(body),
            _in_flight: in_flight,
        }
    }
}

impl<B: hyper::body::Body> hyper::body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        self.body.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Resolves node names (the DNS names in their certificates) to the mesh
/// addresses the control plane reported, so TLS verifies the peer's name.
#[derive(Clone)]
pub(crate) struct MeshResolver {
    addresses: Arc<RwLock<HashMap<String, SocketAddr>>>,
}

impl tower_service::Service<Name> for MeshResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Ready<Result<Self::Response, std::io::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let found = self
            .addresses
            .read()
            .expect("mesh address lock")
            .get(name.as_str())
            .copied();
        std::future::ready(found.map(|addr| vec![addr].into_iter()).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no mesh address known for node {}", name.as_str()),
            )
        }))
    }
}

/// A connector that gives up when connecting takes longer than `limit`;
/// the client then reports a connect error, so the request moves on.
#[derive(Clone)]
pub(crate) struct Bounded<C> {
    inner: C,
    limit: Duration,
}

impl<C> tower_service::Service<http::Uri> for Bounded<C>
where
    C: tower_service::Service<http::Uri>,
    C::Response: Send + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(ConnectTimeout(limit).into()),
            }
        })
    }
}

/// Connecting and the TLS handshake together took longer than this.
#[derive(Debug)]
struct ConnectTimeout(Duration);

impl std::fmt::Display for ConnectTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no TLS connection within {:?}", self.0)
    }
}

impl std::error::Error for ConnectTimeout {}

impl Forwarder {
    /// Forwards as `identity`, to peers that `members` holds current.
    pub(crate) fn new(identity: &NodeIdentity, members: &Members) -> anyhow::Result<Forwarder> {
        let addresses = Arc::new(RwLock::new(HashMap::new()));
        let client = RwLock::new(client(identity, members, &addresses)?);
        Ok(Forwarder {
            addresses,
            members: members.clone(),
            client,
            in_flight: RwLock::new(HashMap::new()),
        })
    }

    /// A client presenting `identity` (a workload's certificate) to
    /// peers that `members` holds current.
    pub(crate) fn client_presenting(&self, identity: &NodeIdentity) -> anyhow::Result<MeshClient> {
        client(identity, &self.members, &self.addresses)
    }

    /// Switches to a renewed certificate.
    pub(crate) fn use_identity(&self, identity: &NodeIdentity) -> anyhow::Result<()> {
        *self.client.write().expect("mesh client lock") =
            client(identity, &self.members, &self.addresses)?;
        Ok(())
    }

    /// Records where every node with a replica listens.
    pub(crate) fn learn(&self, apps: &[AppRouting]) {
        let mut addresses = self.addresses.write().expect("mesh address lock");
        for endpoint in apps.iter().flat_map(|a| a.endpoints.values().flatten()) {
            if let Ok(addr) = endpoint.mesh.parse() {
                addresses.insert(endpoint.node.clone(), addr);
            }
        }
    }

    /// The requests in flight to `node` from here.
    fn in_flight(&self, node: &str) -> Arc<AtomicUsize> {
        if let Some(counter) = self.in_flight.read().expect("in-flight lock").get(node) {
            return counter.clone();
        }
        self.in_flight
            .write()
            .expect("in-flight lock")
            .entry(node.to_string())
            .or_default()
            .clone()
    }

    /// The index to try first among `endpoints`: the less busy of two
    /// picked from `seed` (a counter, spread by a multiplicative hash).
    fn first_choice(&self, endpoints: &[&Endpoint], seed: usize) -> usize {
        let n = endpoints.len();
        if n < 2 {
            return 0;
        }
        let spread = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        let a = (spread % n as u64) as usize;
        let b = (a + 1 + ((spread >> 16) % (n as u64 - 1)) as usize) % n;
        let load = |i: usize| self.in_flight(&endpoints[i].node).load(Ordering::Relaxed);
        if load(b) < load(a) { b } else { a }
    }

    /// Sends `request` to one of `endpoints`, the first chosen by the power
    /// of two choices from `seed`. A request without a body moves on to
    /// the next endpoint when one cannot be connected to or no longer runs
    /// the component; one with a body is sent once (it cannot be replayed).
    /// A mesh call goes with `caller_client`, which presents the calling
    /// workload's certificate; a request from ingress with the node's.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn forward<B>(
        &self,
        app: &str,
        component: &str,
        endpoints: &[&Endpoint],
        seed: usize,
        request: hyper::Request<B>,
        inbound: &Inbound,
        caller_client: Option<MeshClient>,
    ) -> Forwarded
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let client =
            caller_client.unwrap_or_else(|| self.client.read().expect("mesh client lock").clone());
        let replayable = !has_body(request.headers());
        let (parts, body) = request.into_parts();
        let mut body = Some(body.map_err(Into::into).boxed_unsync());
        let mut last_error = String::new();
        let start = self.first_choice(endpoints, seed);
        // Endpoints are per replica: a node holding several is tried once.
        let mut tried: Vec<&str> = Vec::new();
        for i in 0..endpoints.len() {
            let endpoint = endpoints[(start + i) % endpoints.len()];
            if tried.contains(&endpoint.node.as_str()) {
                continue;
            }
            tried.push(&endpoint.node);
            let body = match body.take() {
                Some(body) => body,
                None if replayable => Empty::new().map_err(|never| match never {}).boxed_unsync(),
                None => break,
            };
            let Ok(mesh) = endpoint.mesh.parse::<SocketAddr>() else {
                last_error = format!("node {} has no valid mesh address", endpoint.node);
                continue;
            };
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let forwarded = hyper::Request::builder()
                .method(parts.method.clone())
                .uri(format!("https://{}:{}{path}", endpoint.node, mesh.port()))
                .body(body);
            let Ok(mut forwarded) = forwarded else {
                last_error = format!("node {} cannot be addressed", endpoint.node);
                continue;
            };
            *forwarded.headers_mut() = parts.headers.clone();
            let headers = forwarded.headers_mut();
            headers.insert(APP_HEADER, header_value(app));
            headers.insert(COMPONENT_HEADER, header_value(component));
            if inbound.caller.is_some() {
                // Who calls is in the certificate; how far it came, here.
                headers.insert(
                    HOPS_HEADER,
                    http::HeaderValue::from(u16::from(inbound.hops)),
                );
            }
            // A guest's request names its target in its URI only.
            if let Some(authority) = parts.uri.authority()
                && !parts.headers.contains_key(http::header::HOST)
                && let Ok(host) = http::HeaderValue::from_str(authority.as_str())
            {
                headers.insert(http::header::HOST, host);
            }
            let counted = InFlight::enter(self.in_flight(&endpoint.node));
            match client.request(forwarded).await {
                // The platform's own signal never reaches the client: a
                // request with a body cannot move on, so it gets the 502.
                Ok(response) if not_here(&response) => {
                    last_error = format!("node {} no longer runs it", endpoint.node);
                    if !replayable {
                        break;
                    }
                }
                // Counted until the whole body has gone through.
                Ok(response) => {
                    return Forwarded::Answered(
                        response.map(|body| relayed(Counted::new(body, counted))),
                    );
                }
                Err(e) => {
                    // The whole chain goes to the log; the client, who may
                    // be anyone, learns only what kind of failure it was
                    // (certificate names, cluster names and validity times
                    // in TLS errors are the operator's business).
                    let error = with_sources(&e);
                    tracing::warn!(
                        app,
                        component,
                        node = endpoint.node,
                        "forwarding failed: {error}"
                    );
                    last_error = format!("node {}: {}", endpoint.node, failure_kind(&e));
                    if !e.is_connect() {
                        break;
                    }
                }
            }
        }
        let failed = plain(
            http::StatusCode::BAD_GATEWAY,
            format!(
                "app \"{app}\" component \"{component}\": no replica could be reached ({last_error})\n"
            ),
        );
        if replayable {
            Forwarded::Unanswered(failed, Box::new(parts))
        } else {
            Forwarded::Answered(failed)
        }
    }
}

/// What became of a forwarded request.
pub(crate) enum Forwarded {
    /// A response to relay (a node's answer, or the 502 when none was had).
    Answered(hyper::Response<ResponseBody>),
    /// No node served it, and it has no body, so it can still be served
    /// here: its head, and the 502 otherwise.
    Unanswered(hyper::Response<ResponseBody>, Box<http::request::Parts>),
}

/// `error` and each of its sources, joined by ": " (the client's own
/// message alone, "client error (Connect)", does not say what failed).
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What kind of failure `error` was, in words safe to show any client.
fn failure_kind(error: &hyper_util::client::legacy::Error) -> String {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(timeout) = current.downcast_ref::<ConnectTimeout>() {
            return timeout.to_string();
        }
        if current.downcast_ref::<rustls::Error>().is_some() {
            return "TLS handshake failed".to_string();
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            // An io::Error hides the error it wraps from `source()`.
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return "TLS handshake failed".to_string();
            }
            // The operating system's own words ("Connection refused (os
            // error 111)") carry no secrets; a wrapped error might.
            return match io.get_ref() {
                None => io.to_string(),
                Some(inner) if inner.is::<ConnectTimeout>() => io.to_string(),
                Some(_) => io.kind().to_string(),
            };
        }
        cause = current.source();
    }
    if error.is_connect() {
        "cannot connect".to_string()
    } else {
        "connection lost".to_string()
    }
}

fn header_value(text: &str) -> http::HeaderValue {
    http::HeaderValue::from_str(text)
        .expect("app and component names and SPIFFE IDs are valid header values")
}

/// Whether a mesh answer is the endpoint's own "no such replica here".
fn not_here<B>(response: &hyper::Response<B>) -> bool {
    response.status() == http::StatusCode::SERVICE_UNAVAILABLE
        && response.headers().contains_key(NOT_HERE_HEADER)
}

fn has_body(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

fn client(
    identity: &NodeIdentity,
    members: &Members,
    addresses: &Arc<RwLock<HashMap<String, SocketAddr>>>,
) -> anyhow::Result<MeshClient> {
    let mut http = HttpConnector::new_with_resolver(MeshResolver {
        addresses: addresses.clone(),
    });
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*identity.client_config(members)?).clone())
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(Bounded {
            inner: https,
            limit: HANDSHAKE_TIMEOUT,
        }))
}

/// Serves forwarded requests on `listener` until `shutdown`.
pub(crate) async fn serve(
    node: Arc<NodeShared>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    accept_until(listener, shutdown, DRAIN_TIMEOUT, move |accepted| {
        let tls = node
            .identity
            .read()
            .expect("identity lock")
            .mesh_server
            .clone();
        let node = node.clone();
        tokio::spawn(async move {
            let acceptor = TlsAcceptor::from(tls);
            let Some(stream) = crate::tls::accept(&acceptor, accepted.stream, accepted.peer).await
            else {
                return;
            };
            // The handshake admitted a current member (or a workload of
            // one); a node forgotten since then is refused from its next
            // request on.
            let peer = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|cert| match NodeCert::of(cert, crate::mesh::CLUSTER) {
                    Some(node) => Some(Peer::Node(node)),
                    None => WorkloadCert::of(cert).map(Peer::Workload),
                });
            let service = hyper::service::service_fn(move |request| {
                let node = node.clone();
                let peer = peer.clone().filter(|p| node.members.admits(p.node()));
                async move {
                    let Some(peer) = peer else {
                        return Ok::<_, std::convert::Infallible>(not_a_member());
                    };
                    Ok::<_, std::convert::Infallible>(serve_forwarded(&node, &peer, request).await)
                }
            });
            serve_http1(accepted.watcher, TokioIo::new(stream), service).await;
        });
    })
    .await;
}

/// The answer to a peer whose node is no longer a member.
fn not_a_member() -> hyper::Response<ResponseBody> {
    let mut response = plain(
        http::StatusCode::FORBIDDEN,
        "this node is not a member of the cluster any more: it was forgotten\n".to_string(),
    );
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}

/// Serves a request another node forwarded; never forwards it again, so a
/// stale endpoint cannot make a loop. A node's certificate brings what
/// came through its ingress, which may reach only a routed component; a
/// workload's certificate brings that workload's mesh calls. Who calls is
/// what the certificate says, never a header.
async fn serve_forwarded(
    node: &Arc<NodeShared>,
    peer: &Peer,
    mut request: hyper::Request<Incoming>,
) -> hyper::Response<ResponseBody> {
    let headers = request.headers_mut();
    let text = |h: Option<http::HeaderValue>| h.and_then(|v| v.to_str().ok().map(str::to_string));
    let (Some(app), Some(component)) = (
        text(headers.remove(APP_HEADER)),
        text(headers.remove(COMPONENT_HEADER)),
    ) else {
        return plain(
            http::StatusCode::BAD_REQUEST,
            format!("a mesh request names its target with {APP_HEADER} and {COMPONENT_HEADER}\n"),
        );
    };
    let hops = text(headers.remove(HOPS_HEADER));
    let routing = node.routing.read().expect("routing lock").clone();
    let inbound = match peer {
        Peer::Node(sender) => {
            // Unknown here counts as unrouted: fail closed.
            if !routing.named(&app).is_some_and(|a| a.is_routed(&component)) {
                tracing::warn!(
                    peer = sender.name,
                    app,
                    component,
                    reason = "mesh_denied",
                    "forwarded ingress request refused: the component has no route"
                );
                return plain(
                    http::StatusCode::FORBIDDEN,
                    format!(
                        "app \"{app}\" component \"{component}\" has no route: only mesh calls reach it\n"
                    ),
                );
            }
            Inbound::ingress(Some(node.mesh_router()))
        }
        Peer::Workload(caller) => match admit_caller(&routing, caller, hops.as_deref()) {
            Ok(hops) => Inbound {
                caller: Some(caller.workload.clone()),
                hops,
                mesh: Some(node.mesh_router()),
            },
            Err(why) => {
                tracing::warn!(peer = caller.node.name, caller = %caller.workload, reason = "mesh_bad_caller", "forwarded mesh call refused: {why}");
                return plain(
                    http::StatusCode::FORBIDDEN,
                    format!("mesh call refused: {why}\n"),
                );
            }
        },
    };
    match node.replicas.serving(&app, &component) {
        Some((local, sink)) => invoke(&local, request, &sink, inbound).await,
        None => {
            let mut response = plain(
                http::StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "node {} runs no replica of app \"{app}\" component \"{component}\"\n",
                    node.config.name
                ),
            );
            response
                .headers_mut()
                .insert(NOT_HERE_HEADER, http::HeaderValue::from_static("1"));
            response
        }
    }
}

/// How long a workload certificate is honoured before the routing this
/// node last heard shows its node running the workload: the routing
/// reaches every node a heartbeat or so after the replica starts.
const NEW_PLACEMENT_GRACE_SECS: i64 = 10;

/// The hops of a mesh call from `caller`, honoured while the routing this
/// node last heard has the certificate's node running that workload (or
/// the certificate is new), so a certificate kept after its workload left
/// a node speaks for it no more.
fn admit_caller(
    routing: &super::ingress::Routing,
    caller: &WorkloadCert,
    hops: Option<&str>,
) -> Result<u8, String> {
    let Some(hops) = hops.and_then(|h| h.parse::<u8>().ok()) else {
        return Err(format!("{HOPS_HEADER} is missing or not a number"));
    };
    let runs = routing
        .named(caller.workload.app.as_str())
        .is_some_and(|app| app.runs_on(caller.workload.component.as_str(), &caller.node.name));
    let new = crate::clock::unix_secs() as i64 - caller.issued_unix <= NEW_PLACEMENT_GRACE_SECS;
    if !runs && !new {
        return Err(format!(
            "node {} runs {} no more, so its certificate no longer speaks for it",
            caller.node.name, caller.workload
        ));
    }
    Ok(hops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::ClusterCa;

    fn forwarder() -> Forwarder {
        let ca = ClusterCa::create("skiff").unwrap();
        let (key, csr) = NodeIdentity::request().unwrap();
        let cert = ca.sign_node("node-a", "1", &csr).unwrap();
        let members = Members::new("skiff");
        Forwarder::new(
            &NodeIdentity::new(key, cert, ca.cert_pem().to_string()),
            &members,
        )
        .unwrap()
    }

    fn endpoint(node: &str) -> Endpoint {
        Endpoint {
            node: node.to_string(),
            mesh: "127.0.0.1:1".to_string(),
        }
    }

    #[test]
    fn a_workload_certificate_speaks_only_while_its_node_runs_the_workload() {
        let routing = super::super::ingress::Routing::default().changed(
            true,
            &[AppRouting {
                name: "shop".to_string(),
                routes: Vec::new(),
                components: vec!["frontend".to_string()],
                endpoints: [("frontend".to_string(), vec![endpoint("node-1")])].into(),
            }],
            &[],
        );
        let now = crate::clock::unix_secs() as i64;
        let cert = |node: &str, issued_unix: i64| WorkloadCert {
            workload: skiff_runtime::mesh::WorkloadId::new(
                "shop".to_string().try_into().unwrap(),
                "frontend".to_string().try_into().unwrap(),
            ),
            node: NodeCert {
                name: node.to_string(),
                incarnation: "1".to_string(),
            },
            issued_unix,
        };
        assert_eq!(
            admit_caller(&routing, &cert("node-1", now - 3600), Some("2")),
            Ok(2)
        );
        // Kept after the workload left node-2: refused.
        let kept = admit_caller(&routing, &cert("node-2", now - 3600), Some("2")).unwrap_err();
        assert!(
            kept.contains("node node-2 runs shop/frontend no more"),
            "{kept}"
        );
        // Just issued, before the routing shows the new replica: honoured.
        assert_eq!(
            admit_caller(&routing, &cert("node-2", now - 1), Some("1")),
            Ok(1)
        );
        let no_hops = admit_caller(&routing, &cert("node-1", now), None).unwrap_err();
        assert!(no_hops.contains("skiff-hops"), "{no_hops}");
    }

    #[test]
    fn the_busiest_endpoint_is_never_tried_first_and_the_rest_share_the_load() {
        let forwarder = forwarder();
        let nodes = [endpoint("x"), endpoint("y"), endpoint("z")];
        let endpoints: Vec<&Endpoint> = nodes.iter().collect();
        forwarder.in_flight("y").store(5, Ordering::Relaxed);
        let mut picked = [0usize; 3];
        for seed in 0..1000 {
            picked[forwarder.first_choice(&endpoints, seed)] += 1;
        }
        assert_eq!(picked[1], 0, "{picked:?}");
        assert!(picked[0] > 300 && picked[2] > 300, "{picked:?}");

        // An in-flight count ends with its request.
        let counted = InFlight::enter(forwarder.in_flight("x"));
        assert_eq!(forwarder.in_flight("x").load(Ordering::Relaxed), 1);
        drop(counted);
        assert_eq!(forwarder.in_flight("x").load(Ordering::Relaxed), 0);
        assert_eq!(forwarder.first_choice(&endpoints[..1], 7), 0);
    }

    /// A connector that fails each connection with `error`, or never
    /// finishes when it gives none.
    #[derive(Clone)]
    struct Failing(Arc<dyn Fn() -> Option<std::io::Error> + Send + Sync>);

    impl tower_service::Service<http::Uri> for Failing {
        type Response = TokioIo<tokio::net::TcpStream>;
        type Error = std::io::Error;
        type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Uri) -> Self::Future {
            match (self.0)() {
                Some(error) => Box::pin(async move { Err(error) }),
                None => Box::pin(std::future::pending()),
            }
        }
    }

    /// What a client is told when connecting fails with `error`.
    async fn told(error: impl Fn() -> Option<std::io::Error> + Send + Sync + 'static) -> String {
        let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(Bounded {
            inner: Failing(Arc::new(error)),
            limit: Duration::from_millis(20),
        });
        let failed = client
            .request(
                hyper::Request::get("http://node-b/")
                    .body(Empty::new())
                    .unwrap(),
            )
            .await
            .expect_err("connecting fails");
        failure_kind(&failed)
    }

    #[tokio::test]
    async fn a_client_learns_the_kind_of_failure_but_not_the_certificates_details() {
        let tls = told(|| {
            Some(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::General(
                    "the peer's certificate names node \"node-c\" of cluster \"prod\"".into(),
                ),
            ))
        })
        .await;
        assert_eq!(tls, "TLS handshake failed");
        assert_eq!(
            told(|| Some(std::io::Error::from_raw_os_error(111))).await,
            "Connection refused (os error 111)"
        );
        assert_eq!(told(|| None).await, "no TLS connection within 20ms");
        let wrapped = told(|| {
            Some(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "peer 10.0.0.7 said something",
            ))
        })
        .await;
        assert_eq!(wrapped, "connection reset");
    }
}
