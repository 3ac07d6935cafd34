//! HTTP ingress: any node accepts a request for any app. The app is the
//! one a `Host: <app>.<domain>` names, else the one whose routes match the
//! path best; the component is the app's route for the path. A replica on
//! this node serves it; otherwise it is forwarded over the mesh to a node
//! that has one, chosen by the power of two choices on requests in flight.
//! Plain HTTP also answers the cluster's ACME challenges, and redirects an
//! app's domains to HTTPS where the app asks for it.

use super::NodeShared;
use super::reach::reach;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use skiff_runtime::invoke::{Answer, plain};
use skiff_runtime::mesh::Inbound;
use skiff_runtime::server::{DRAIN_TIMEOUT, accept_until, serve_http1};
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serves ingress on `listener` until `shutdown`, then drains.
pub(crate) async fn serve(
    node: Arc<NodeShared>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    accept_until(listener, shutdown, DRAIN_TIMEOUT, move |accepted| {
        let node = node.clone();
        let service = hyper::service::service_fn(move |request| {
            let node = node.clone();
            async move { Ok::<_, std::convert::Infallible>(dispatch(&node, request, Over::Http).await) }
        });
        tokio::spawn(serve_http1(
            accepted.watcher,
            TokioIo::new(accepted.stream),
            service,
        ));
    })
    .await;
}

/// What a request arrived over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Over {
    /// Plain HTTP.
    Http,
    /// TLS (HTTP/1.1 or HTTP/2).
    Https,
}

/// The path under which ACME servers fetch HTTP-01 challenges.
const ACME_CHALLENGES: &str = "/.well-known/acme-challenge/";

/// Serves one ingress request that arrived `over` plain HTTP or TLS.
pub(crate) async fn dispatch(
    node: &Arc<NodeShared>,
    mut request: hyper::Request<Incoming>,
    over: Over,
) -> Answer {
    // The dashboard's session cookie is the platform's: it goes no
    // further than here, not even to the node a request is forwarded to.
    skiff_runtime::invoke::strip_platform_cookies(request.headers_mut());
    as_http1(&mut request);
    // Said by the node that took the request, whatever a client claims:
    // this node is the edge, so no proxy before it speaks of the scheme.
    for claim in CLIENT_PROXY_HEADERS {
        request.headers_mut().remove(claim);
    }
    request.headers_mut().insert(
        FORWARDED_PROTO,
        http::HeaderValue::from_static(match over {
            Over::Http => "http",
            Over::Https => "https",
        }),
    );
    let routing = node.routing.read().expect("routing lock").clone();
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    if over == Over::Http {
        if let Some(answer) = acme_challenge(node, request.uri().path()) {
            return answer;
        }
        if let Some(answer) = to_https(node, &routing, host.as_deref(), request.uri()) {
            return answer;
        }
    }
    let Some((app, component)) = routing.pick(host.as_deref(), request.uri().path()) else {
        node.ingress_metrics
            .record("", "", http::StatusCode::NOT_FOUND);
        let path = request.uri().path();
        // Only an app ingress can reach anyway is named: one without
        // routes is not revealed to a client guessing names.
        let text = match routing.named_by_host(host.as_deref()) {
            Some(app) if app.has_routes() => {
                format!("app \"{}\" has no route for {path}\n", app.name)
            }
            _ => format!("no app serves {path}\n"),
        };
        return plain(http::StatusCode::NOT_FOUND, text);
    };
    if host.is_none()
        && let Ok(value) = http::HeaderValue::from_str(&node.ingress_addr.to_string())
    {
        request.headers_mut().insert(http::header::HOST, value);
    }
    let inbound = Inbound::ingress(Some(node.mesh_router()));
    let answer = reach(node, app, component, request, inbound).await;
    node.ingress_metrics
        .record(&app.name, component, answer.status());
    answer
}

/// Headers by which a proxy before this one would speak of the client,
/// the scheme or the host: the node is the edge, so a client's own are
/// claims, and go (apps read them to build links, or to trust a scheme).
const CLIENT_PROXY_HEADERS: [&str; 9] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-protocol",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-url-scheme",
    "front-end-https",
];

/// The header telling a guest whether the client came over HTTPS.
const FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");

/// Makes an HTTP/2 request look as it would over HTTP/1.1: `Host` from
/// its authority, a path-only target. Guests see the same request either
/// way, and a request forwarded to another node goes over HTTP/1.1.
fn as_http1(request: &mut hyper::Request<Incoming>) {
    if request.version() != http::Version::HTTP_2 {
        return;
    }
    *request.version_mut() = http::Version::HTTP_11;
    if let Some(authority) = request.uri().authority().cloned()
        && !request.headers().contains_key(http::header::HOST)
        && let Ok(host) = http::HeaderValue::from_str(authority.as_str())
    {
        request.headers_mut().insert(http::header::HOST, host);
    }
    if let Some(path) = request.uri().path_and_query().cloned() {
        *request.uri_mut() = http::Uri::from(path);
    }
}

/// The answer to an ACME server fetching a challenge this node holds for
/// the cluster; `None` for any other path (an app may answer its own).
fn acme_challenge(node: &NodeShared, path: &str) -> Option<Answer> {
    let token = path.strip_prefix(ACME_CHALLENGES)?;
    let key_authorization = node.tls.challenge(token)?;
    Some(plain(http::StatusCode::OK, key_authorization))
}

/// A redirect to HTTPS for a request to one of an app's domains, when the
/// app asks for it and this node serves HTTPS with a certificate for that
/// domain (else the request is served: a redirect to a handshake that
/// must fail would take the app down).
fn to_https(
    node: &NodeShared,
    routing: &super::routing::Routing,
    host: Option<&str>,
    uri: &http::Uri,
) -> Option<Answer> {
    let https = node.https_addr?;
    // `OPTIONS *` names no resource to send elsewhere.
    if uri.path() == "*" {
        return None;
    }
    let name = super::routing::host_name(host?);
    if !routing.by_domain(&name)?.https_redirect || !node.tls.covers(&name) {
        return None;
    }
    let target = match https.port() {
        443 => format!("https://{name}"),
        port => format!("https://{name}:{port}"),
    };
    let location = format!(
        "{target}{}",
        uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut answer = plain(
        http::StatusCode::PERMANENT_REDIRECT,
        format!("this app is served over HTTPS: {location}\n"),
    );
    let value = http::HeaderValue::from_str(&location).ok()?;
    answer.headers_mut().insert(http::header::LOCATION, value);
    Some(answer)
}

/// Requests this node's ingress answered, by app, component and status
/// class: whatever served them (a replica here, one on another node, or
/// the node itself refusing: no replica, a hold or forward that failed).
#[derive(Debug, Clone, Default)]
pub(crate) struct IngressMetrics {
    answered: prometheus_client::metrics::family::Family<
        IngressLabels,
        prometheus_client::metrics::counter::Counter,
    >,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct IngressLabels {
    app: String,
    component: String,
    class: &'static str,
}

impl IngressMetrics {
    /// Counts one answer with `status` for `app`'s `component` (empty for
    /// a request no route took).
    fn record(&self, app: &str, component: &str, status: http::StatusCode) {
        let class = match status.as_u16() / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        };
        self.answered
            .get_or_create(&IngressLabels {
                app: app.to_string(),
                component: component.to_string(),
                class,
            })
            .inc();
    }

    /// Adds these to `registry`.
    pub(crate) fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "ingress_requests",
            "Requests this node's ingress answered, by app, component and status class, wherever they were served (app and component empty: no route took it)",
            self.answered.clone(),
        );
    }
}
