//! Where a request for a component goes, once its app and component are
//! known (from ingress, or a guest's call by name): a replica on this node
//! serves it without the network, unless it is saturated and another node
//! runs one; else, when no node runs one, it is held until one is placed
//! (a component scaled to zero) or a replica loading here serves it once
//! ready; else it is forwarded over the mesh, presenting the caller
//! workload's certificate for a mesh call.

use super::NodeShared;
use super::replicas::Pick;
use super::routing::AppRoutes;
use crate::api::Endpoint;
use crate::mesh::forward::{Forwarded, Target};
use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;
use skiff_runtime::invoke::{Answer, invoke, retry_shortly};
use skiff_runtime::mesh::Inbound;
use std::sync::Arc;
use std::time::Duration;
use wasmtime_wasi_http::Error as HttpError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a request waits for a replica loading on this node when no
/// other node runs one (or another node sent it here).
pub(crate) const LOAD_WAIT: Duration = Duration::from_secs(10);

/// Serves a request for `app`'s `component` (see [`reach_replica`]),
/// within the component's `request_timeout` when it has one: past it the
/// caller gets 504 (a request already running goes on to its own end).
pub(crate) async fn reach<B>(
    node: &Arc<NodeShared>,
    app: &AppRoutes,
    component: &str,
    request: hyper::Request<B>,
    inbound: Inbound,
) -> Answer
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<HttpError> + Into<BoxError>,
{
    let Some(limit) = app.request_timeout(component) else {
        return unmarked(reach_replica(node, app, component, request, inbound).await);
    };
    let mut serving = Box::pin(reach_replica(node, app, component, request, inbound));
    match tokio::time::timeout(limit, &mut serving).await {
        Ok(answer) => unmarked(answer),
        Err(_) => {
            // The version serving it here is charged with the timeout.
            skiff_runtime::invoke::give_up(serving);
            tracing::warn!(
                app = app.name,
                component,
                reason = "request_timeout",
                "request given up: no answer within its request_timeout of {limit:?}"
            );
            skiff_runtime::invoke::plain(
                http::StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "app \"{}\" component \"{component}\" did not answer within its request_timeout ({})\n",
                    app.name,
                    humantime::format_duration(limit)
                ),
            )
        }
    }
}

/// `answer` without the platform's mark of a refusal, which only nodes
/// forwarding to each other read.
fn unmarked(mut answer: Answer) -> Answer {
    answer
        .headers_mut()
        .remove(skiff_runtime::invoke::REFUSED_HEADER);
    answer
}

/// Serves a request for `app`'s `component`, in this order: a replica
/// here; a replica loading here when no other node runs one; another
/// node, over the mesh.
async fn reach_replica<B>(
    node: &Arc<NodeShared>,
    app: &AppRoutes,
    component: &str,
    request: hyper::Request<B>,
    inbound: Inbound,
) -> Answer
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<HttpError> + Into<BoxError>,
{
    // A canary's share: the versions this request may go to; any, when
    // none of those runs anywhere yet.
    let pick = match app.version_pick(component) {
        Pick::Any => Pick::Any,
        pick if app
            .endpoints(component)
            .iter()
            .any(|e| pick.admits(&e.package))
            || node.replicas.holds(&app.name, component, pick) =>
        {
            pick
        }
        _ => Pick::Any,
    };
    let elsewhere: Vec<&Endpoint> = app
        .endpoints(component)
        .iter()
        .filter(|e| e.node != node.config.name && pick.admits(&e.package))
        .collect();
    // Here: no network, no TLS; unless every instance here is busy and
    // another node runs a replica (one the autoscaler added, say): then a
    // request without a body goes there rather than queue here. One with
    // a body goes only when this queue is full too (it would be refused
    // here): if that replica has just gone, it could not come back.
    // Nor when the replica here is clearly slower than one elsewhere
    // (peak-EWMA, as forwarding balances): then a request without a body
    // goes there.
    if let Some((local, sink)) = node.replicas.serving(&app.name, component, pick) {
        let bodiless = crate::mesh::forward::surely_bodiless(&request);
        let here = (app.name.as_str(), component, node.config.name.as_str());
        let hand_over = !elsewhere.is_empty()
            && ((local.is_saturated() && (local.is_full() || bodiless))
                || (bodiless
                    && node
                        .forwarder
                        .local_is_slower(here, &elsewhere, local.in_flight())));
        if !hand_over {
            // Timed only where a replica elsewhere could be chosen over it:
            // a node serving alone pays nothing per request.
            if elsewhere.is_empty() {
                return invoke(&local, request, &sink, inbound).await;
            }
            let started = std::time::Instant::now();
            let answer = invoke(&local, request, &sink, inbound).await;
            node.forwarder.observe_local(here, started.elapsed());
            return answer;
        }
    }
    // Scaled to zero: held until the replica it brings is ready.
    if elsewhere.is_empty()
        && app.scales_from_zero(component)
        && !node.replicas.holds(&app.name, component, Pick::Any)
    {
        return super::hold::until_ready(node, app, component, request, inbound).await;
    }
    // Loading here (just assigned, or the node just started) and nowhere
    // else: wait for it rather than refuse.
    if elsewhere.is_empty() {
        return match when_loaded(node, app, component, pick, request, inbound).await {
            Ok(answer) => answer,
            Err(_) => {
                tracing::warn!(
                    app = app.name,
                    component,
                    reason = "no_replica",
                    "request refused: no replica runs"
                );
                retry_shortly(format!(
                    "app \"{}\" component \"{component}\" has no running replica right now; see `skiff ps {}`\n",
                    app.name, app.name
                ))
            }
        };
    }
    // Identity: a mesh call presents its caller workload's certificate,
    // ingress traffic the node's.
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
    // Balance, retry where safe, forward: see `mesh::forward`.
    let target = Target {
        app: &app.name,
        component,
        answer_within: app.answer_deadline(component),
    };
    let seed = app.next_seed();
    let forwarded = node
        .forwarder
        .forward(target, &elsewhere, seed, request, &inbound, caller_client)
        .await;
    match forwarded {
        Forwarded::Answered(response) => response,
        // The endpoints were stale (this node restarted before it heard of
        // a change, say) and a replica loads here: it serves.
        Forwarded::Unanswered(failed, parts) => {
            let body = http_body_util::Empty::<Bytes>::new()
                .map_err(|never| -> HttpError { match never {} });
            let request = hyper::Request::from_parts(*parts, body);
            when_loaded(node, app, component, pick, request, inbound)
                .await
                .unwrap_or(failed)
        }
    }
}

/// Serves `request` by the replica of `component` loading on this node,
/// once it is ready; gives the request back when none is within
/// [`LOAD_WAIT`].
async fn when_loaded<B>(
    node: &NodeShared,
    app: &AppRoutes,
    component: &str,
    pick: Pick<'_>,
    request: hyper::Request<B>,
    inbound: Inbound,
) -> Result<Answer, hyper::Request<B>>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<HttpError>,
{
    match node
        .replicas
        .wait_serving(&app.name, component, pick, LOAD_WAIT)
        .await
    {
        Some((local, sink)) => Ok(invoke(&local, request, &sink, inbound).await),
        None => Err(request),
    }
}
