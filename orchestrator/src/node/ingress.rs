//! HTTP ingress: any node accepts a request for any app. The app is the
//! one a `Host: <app>.<domain>` names, else the one whose routes match the
//! path best; the component is the app's route for the path. A replica on
//! this node serves it; otherwise it is forwarded over the mesh to a node
//! that has one, chosen by the power of two choices on requests in flight.

use super::NodeShared;
use super::mesh::Forwarded;
use crate::api::{AppRouting, Endpoint};
use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use skiff_runtime::invoke::{ResponseBody, invoke, plain, retry_shortly};
use skiff_runtime::mesh::Inbound;
use skiff_runtime::route::Route;
use skiff_runtime::server::{DRAIN_TIMEOUT, accept_until, serve_http1};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use wasmtime_wasi_http::Error as HttpError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a request waits for a replica loading on this node when no
/// other node runs one.
const LOAD_WAIT: Duration = Duration::from_secs(10);

/// Every app's routes and endpoints, as last heard from the control plane.
#[derive(Default)]
pub(crate) struct Routing {
    /// Sorted by name. Shared with the routing this one was made from, so
    /// a change to one app rebuilds only that app.
    apps: Vec<Arc<AppRoutes>>,
}

pub(crate) struct AppRoutes {
    pub(crate) name: String,
    routes: Vec<(Route, String)>,
    /// Every component of the app, sorted.
    components: Vec<String>,
    endpoints: HashMap<String, Vec<Endpoint>>,
    next: AtomicUsize,
}

impl AppRoutes {
    fn new(app: &AppRouting) -> AppRoutes {
        AppRoutes {
            name: app.name.clone(),
            routes: app
                .routes
                .iter()
                .filter_map(|(route, component)| {
                    Some((Route::try_from(route.clone()).ok()?, component.clone()))
                })
                .collect(),
            components: {
                let mut components = app.components.clone();
                components.sort();
                components
            },
            endpoints: app.endpoints.clone().into_iter().collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The component whose route serves `path` best.
    pub(crate) fn route_for(&self, path: &str) -> Option<&str> {
        self.routes
            .iter()
            .filter(|(route, _)| route.matches(path))
            .max_by_key(|(route, _)| route_rank(route))
            .map(|(_, component)| component.as_str())
    }

    /// Whether `component` has a route, so ingress may reach it.
    pub(crate) fn is_routed(&self, component: &str) -> bool {
        self.routes.iter().any(|(_, c)| c == component)
    }

    /// Whether the app has a component named `component`.
    pub(crate) fn has_component(&self, component: &str) -> bool {
        self.components
            .binary_search_by(|c| c.as_str().cmp(component))
            .is_ok()
    }

    /// Whether `node` runs a replica of `component`, as last heard.
    pub(crate) fn runs_on(&self, component: &str, node: &str) -> bool {
        self.endpoints
            .get(component)
            .is_some_and(|eps| eps.iter().any(|e| e.node == node))
    }
}

/// How well a route matches: exact before prefix, then the longer.
fn route_rank(route: &Route) -> (bool, usize) {
    match route {
        Route::Exact(p) => (true, p.len()),
        Route::Prefix(p) => (false, p.len()),
    }
}

impl Routing {
    /// This routing with `changed` apps (new or updated) and without the
    /// `removed` ones; `whole` replaces every app instead.
    pub(crate) fn changed(
        &self,
        whole: bool,
        changed: &[AppRouting],
        removed: &[String],
    ) -> Routing {
        let replaced: std::collections::HashSet<&str> = changed
            .iter()
            .map(|a| a.name.as_str())
            .chain(removed.iter().map(String::as_str))
            .collect();
        let kept = self
            .apps
            .iter()
            .filter(|a| !whole && !replaced.contains(a.name.as_str()))
            .cloned();
        let mut apps: Vec<Arc<AppRoutes>> = kept
            .chain(changed.iter().map(|a| Arc::new(AppRoutes::new(a))))
            .collect();
        apps.sort_by(|a, b| a.name.cmp(&b.name));
        Routing { apps }
    }

    /// The app named `name` (app names are lower case; host names are
    /// compared case-insensitively).
    pub(crate) fn named(&self, name: &str) -> Option<&AppRoutes> {
        let name = name.to_ascii_lowercase();
        let i = self
            .apps
            .binary_search_by(|a| a.name.as_str().cmp(&name))
            .ok()?;
        Some(&self.apps[i])
    }

    /// The app and component for a request.
    fn pick(&self, host: Option<&str>, path: &str) -> Option<(&AppRoutes, &str)> {
        // `Host: shop.example.com`, or just `Host: shop`; host names are
        // case-insensitive, app names lower case.
        let named = host
            .map(|h| h.split(':').next().unwrap_or(h))
            .map(|h| h.split_once('.').map_or(h, |(first, _)| first))
            .and_then(|first| self.named(first));
        let candidates: Vec<&AppRoutes> = match named {
            Some(app) => vec![app],
            None => self.apps.iter().map(|a| &**a).collect(),
        };
        let mut best: Option<((bool, usize), &AppRoutes, &str)> = None;
        for app in candidates {
            for (route, component) in &app.routes {
                if !route.matches(path) {
                    continue;
                }
                let rank = route_rank(route);
                if best.as_ref().is_none_or(|(r, _, _)| rank > *r) {
                    best = Some((rank, app, component));
                }
            }
        }
        best.map(|(_, app, component)| (app, component))
    }
}

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

async fn dispatch(
    node: &Arc<NodeShared>,
    mut request: hyper::Request<Incoming>,
) -> hyper::Response<ResponseBody> {
    let routing = node.routing.read().expect("routing lock").clone();
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let Some((app, component)) = routing.pick(host.as_deref(), request.uri().path()) else {
        return plain(
            http::StatusCode::NOT_FOUND,
            format!("no app serves {}\n", request.uri().path()),
        );
    };
    if host.is_none()
        && let Ok(value) = http::HeaderValue::from_str(&node.ingress_addr.to_string())
    {
        request.headers_mut().insert(http::header::HOST, value);
    }
    let inbound = Inbound::ingress(Some(node.mesh_router()));
    reach(node, app, component, request, inbound).await
}

/// Serves a request for `app`'s `component`: by a replica on this node,
/// else by one still loading here when no other node runs one, else
/// forwarded over the mesh to a node that does.
pub(crate) async fn reach<B>(
    node: &Arc<NodeShared>,
    app: &AppRoutes,
    component: &str,
    request: hyper::Request<B>,
    inbound: Inbound,
) -> hyper::Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<HttpError> + Into<BoxError>,
{
    if let Some((local, sink)) = node.replicas.serving(&app.name, component) {
        return invoke(&local, request, &sink, inbound).await;
    }
    let endpoints: Vec<&Endpoint> = app
        .endpoints
        .get(component)
        .map(|eps| eps.iter().filter(|e| e.node != node.config.name).collect())
        .unwrap_or_default();
    if endpoints.is_empty() {
        // Loading here (just assigned, or the node just started): wait for
        // it rather than refuse.
        if let Some((local, sink)) = node
            .replicas
            .wait_serving(&app.name, component, LOAD_WAIT)
            .await
        {
            return invoke(&local, request, &sink, inbound).await;
        }
        return retry_shortly(format!(
            "app \"{}\" component \"{component}\" has no running replica right now; see `skiff ps {}`\n",
            app.name, app.name
        ));
    }
    // A mesh call presents its caller's certificate.
    let caller_client = match &inbound.caller {
        None => None,
        Some(caller) => match node.workload_identities.client(node, caller).await {
            Ok(client) => Some(client),
            Err(why) => {
                tracing::warn!(%caller, reason = "mesh_no_identity", "mesh call not sent: {why}");
                return retry_shortly(format!(
                    "mesh call from {caller} not sent: this node holds no valid certificate for it and the control plane issued none (see this node's log)\n"
                ));
            }
        },
    };
    let seed = app.next.fetch_add(1, Ordering::Relaxed);
    let forwarded = node
        .forwarder
        .forward(
            &app.name,
            component,
            &endpoints,
            seed,
            request,
            &inbound,
            caller_client,
        )
        .await;
    match forwarded {
        Forwarded::Answered(response) => response,
        // The endpoints were stale (this node restarted before it heard
        // of a change, say) and a replica loads here: it serves.
        Forwarded::Unanswered(failed, parts) => {
            match node
                .replicas
                .wait_serving(&app.name, component, LOAD_WAIT)
                .await
            {
                Some((local, sink)) => {
                    let body = http_body_util::Empty::<Bytes>::new()
                        .map_err(|never| -> HttpError { match never {} });
                    let request = hyper::Request::from_parts(*parts, body);
                    invoke(&local, request, &sink, inbound).await
                }
                None => failed,
            }
        }
    }
}
