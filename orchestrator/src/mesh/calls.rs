//! Mesh calls by name on a node: a guest's call to
//! `<component>.<app>.skiff.internal` (or `<app>.skiff.internal`) resolves
//! through the routing the node last heard, and is served like ingress is:
//! by a replica here without the network, else over mTLS by a node that
//! runs one.

use crate::node::NodeShared;
use crate::node::reach::reach;
use skiff_runtime::body_limit::drain;
use skiff_runtime::invoke::{Answer, plain};
use skiff_runtime::mesh::{
    Inbound, MeshCall, MeshResponse, MeshRouter, MeshTarget, WorkloadId, denied, unknown_target,
};
use std::sync::{Arc, Weak};
use wasmtime_wasi_http::WasiBody;

/// The node's [`MeshRouter`]. It holds the node weakly: the node holds it.
pub(crate) struct NodeMesh {
    node: Weak<NodeShared>,
}

impl NodeMesh {
    /// The router of `node`.
    pub(crate) fn new(node: Weak<NodeShared>) -> NodeMesh {
        NodeMesh { node }
    }
}

impl MeshRouter for NodeMesh {
    fn call(self: Arc<Self>, call: MeshCall, request: http::Request<WasiBody>) -> MeshResponse {
        Box::pin(async move {
            let Some(node) = self.node.upgrade() else {
                return shutting_down();
            };
            let routing = node.routing.read().expect("routing lock").clone();
            let Some(app) = routing.named(call.target.app().as_str()) else {
                let why = format!("the cluster runs no app \"{}\"", call.target.app());
                return unknown_target(&call.target, &why);
            };
            let component = match &call.target {
                MeshTarget::App(_) => app.route_for(request.uri().path()),
                MeshTarget::Component(w) => {
                    Some(w.component.as_str()).filter(|component| app.has_component(component))
                }
            };
            let Some(component) = component else {
                let why = call.target.missing(request.uri().path());
                return unknown_target(&call.target, &why);
            };
            // Refused here when the callee would refuse it: the call goes
            // nowhere, and the caller learns nothing of the callee's
            // replicas. The callee's node checks again.
            if app.refuses(component, &call.caller)
                && let Ok(name) = component.to_string().try_into()
            {
                tokio::spawn(drain(request.into_body()));
                let callee = WorkloadId::new(call.target.app().clone(), name);
                return denied(&call.caller, &callee);
            }
            let inbound = Inbound::mesh_call(&call, self.clone());
            reach(&node, app, component, request, inbound).await
        })
    }
}

fn shutting_down() -> Answer {
    plain(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "this node is shutting down\n".to_string(),
    )
}
