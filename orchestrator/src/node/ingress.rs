//! HTTP ingress: any node accepts a request for any app. The app is the
//! one a `Host: <app>.<domain>` names, else the one whose routes match the
//! path best; the component is the app's route for the path. A replica on
//! this node serves it; otherwise it is forwarded over the mesh to a node
//! that has one, chosen by the power of two choices on requests in flight.

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
            async move { Ok::<_, std::convert::Infallible>(dispatch(&node, request).await) }
        });
        tokio::spawn(serve_http1(
            accepted.watcher,
            TokioIo::new(accepted.stream),
            service,
        ));
    })
    .await;
}

async fn dispatch(node: &Arc<NodeShared>, mut request: hyper::Request<Incoming>) -> Answer {
    // The dashboard's session cookie is the platform's: it goes no
    // further than here, not even to the node a request is forwarded to.
    skiff_runtime::invoke::strip_platform_cookies(request.headers_mut());
    let routing = node.routing.read().expect("routing lock").clone();
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
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
