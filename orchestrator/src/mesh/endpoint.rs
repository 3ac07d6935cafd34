//! The mesh endpoint of a node: serves requests other nodes forward, over
//! mTLS, for the replicas on this node. A peer presents its node's
//! certificate (ingress traffic forwarded, which may reach routed
//! components only) or a workload's (that workload's mesh calls, honoured
//! while its node runs it). Who calls is what the certificate says, never
//! a header; a node that was forgotten is refused from its next request.
//! A forwarded request is never forwarded again, so stale endpoints cannot
//! make a loop.

use super::admission::{Admission, MESH_MAX_UNPROVEN, MESH_MAX_UNPROVEN_PER_IP, Trust};
use super::{APP_HEADER, COMPONENT_HEADER, HOPS_HEADER, NOT_HERE_HEADER, VERSION_HEADER};
use super::{NodeCert, Peer, WorkloadCert};
use crate::node::NodeShared;
use crate::node::routing::Routing;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use skiff_runtime::invoke::{Answer, invoke, plain};
use skiff_runtime::mesh::Inbound;
use skiff_runtime::server::{DRAIN_TIMEOUT, accept_until, serve_http1};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Serves forwarded requests on `listener` until `shutdown`.
pub(crate) async fn serve(
    node: Arc<NodeShared>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let admission = Admission::new(
        "mesh",
        MESH_MAX_UNPROVEN,
        MESH_MAX_UNPROVEN_PER_IP,
        ["a fixed cap", "a fixed cap per address"],
        Trust::Both,
    );
    accept_until(listener, shutdown, DRAIN_TIMEOUT, move |accepted| {
        // Over a limit, closed here, before the handshake costs anything.
        let Some(mut slot) = admission.admit(accepted.peer.ip()) else {
            return;
        };
        let tls = node
            .identity
            .read()
            .expect("identity lock")
            .mesh_server
            .clone();
        let node = node.clone();
        tokio::spawn(async move {
            let acceptor = TlsAcceptor::from(tls);
            let Some(stream) =
                super::tls::accept("mesh", &acceptor, accepted.stream, accepted.peer).await
            else {
                return;
            };
            // The handshake admitted a current member (or a workload of
            // one); a node forgotten since then is refused from its next
            // request on.
            let expires = super::tls::peer_expiry(stream.get_ref().1);
            let peer = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|cert| match NodeCert::of(cert, super::CLUSTER) {
                    Some(node) => Some(Peer::Node(node)),
                    None => WorkloadCert::of(cert).map(Peer::Workload),
                });
            // A member node's connections count toward no cap: strangers
            // cannot crowd them out.
            if peer.as_ref().is_some_and(|p| node.members.admits(p.node())) {
                slot.trusted();
            }
            let service = hyper::service::service_fn(move |request| {
                let node = node.clone();
                let peer = peer.clone().filter(|p| node.members.admits(p.node()));
                let expired = expires.is_none_or(|at| crate::clock::unix_secs() as i64 >= at);
                async move {
                    if expired {
                        return Ok::<_, std::convert::Infallible>(certificate_expired());
                    }
                    let Some(peer) = peer else {
                        return Ok::<_, std::convert::Infallible>(not_a_member());
                    };
                    Ok::<_, std::convert::Infallible>(serve_forwarded(&node, &peer, request).await)
                }
            });
            serve_http1(accepted.watcher, TokioIo::new(stream), service).await;
            drop(slot);
        });
    })
    .await;
}

/// The answer to a peer whose certificate expired since its handshake.
fn certificate_expired() -> Answer {
    tracing::warn!(
        reason = "mesh_bad_caller",
        "mesh request refused: the peer's certificate has expired"
    );
    let mut response = plain(
        http::StatusCode::FORBIDDEN,
        "the certificate this connection was opened with has expired\n".to_string(),
    );
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}

/// The answer to a peer whose node is no longer a member.
fn not_a_member() -> Answer {
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
) -> Answer {
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
    // The version the sender chose; only a node (a mesh peer) sets it.
    let version = text(headers.remove(VERSION_HEADER));
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
    // A replica loading here (the node just restarted, say) serves once
    // loaded: the sender's endpoints are right, only early.
    let pick = version.as_deref().map_or(
        crate::node::replicas::Pick::Any,
        crate::node::replicas::Pick::Only,
    );
    let here = node
        .replicas
        .wait_serving(&app, &component, pick, crate::node::reach::LOAD_WAIT)
        .await;
    match here {
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
    routing: &Routing,
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
    use crate::api::{AppRouting, Endpoint};

    fn endpoint(node: &str) -> Endpoint {
        Endpoint {
            node: node.to_string(),
            mesh: "127.0.0.1:1".to_string(),
            package: String::new(),
        }
    }

    #[test]
    fn a_workload_certificate_speaks_only_while_its_node_runs_the_workload() {
        let routing = Routing::default().changed(
            true,
            &[AppRouting {
                name: "shop".to_string(),
                routes: Vec::new(),
                components: vec!["frontend".to_string()],
                endpoints: [("frontend".to_string(), vec![endpoint("node-1")])].into(),
                callers: None,
                scale_from_zero: Vec::new(),
                timeouts_ms: Default::default(),
                split: Default::default(),
                request_timeouts_ms: Default::default(),
                domains: Vec::new(),
                https_redirect: false,
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
}
