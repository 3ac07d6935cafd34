//! The runtime's side of the service mesh: a guest calls another component
//! by name (`http://<component>.<app>.skiff.internal/...`, or
//! `http://<app>.skiff.internal/...` for the app's routes) through its
//! ordinary outbound HTTP; the host hands such calls to a [`MeshRouter`],
//! which finds a replica and invokes it with the caller's identity. Every
//! invocation then checks the callee's `allow_callers` (deny by default)
//! and the hop limit before any instance starts.

pub mod identity;
pub mod local;
pub mod policy;
pub mod trace;

pub use identity::{TRUST_DOMAIN, WorkloadId};
pub use local::LocalMesh;
pub use policy::{CallerPattern, CallerPolicy};
pub use trace::{Span, TRACEPARENT, TRACESTATE, tracestate_to_pass};

use crate::invoke::{ResponseBody, plain};
use crate::manifest::ComponentName;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use wasmtime_wasi_http::WasiBody;

/// The domain under which components are called by name.
pub const MESH_DOMAIN: &str = "skiff.internal";

/// The header that tells a callee which workload called it:
/// `spiffe://skiff/app/<app>/component/<component>`. Only the platform
/// sets it; whatever a client or a guest puts there is removed first.
pub const CALLER_HEADER: &str = "skiff-caller";

/// Mesh hops a request may take (A calls B calls C ... counts each call).
/// A call past it gets 508, so a loop A -> B -> A ends instead of holding
/// an instance per turn until every slot is taken.
pub const MAX_HOPS: u8 = 16;

/// What a mesh name addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshTarget {
    /// `<app>.skiff.internal`: the app's component whose route matches.
    App(ComponentName),
    /// `<component>.<app>.skiff.internal`: that component.
    Component(WorkloadId),
}

impl MeshTarget {
    /// The target a request's host names, `None` when it is not a mesh
    /// name at all (then ordinary outbound rules apply), `Some(Err)` when
    /// it is under the mesh domain but names nothing valid.
    pub fn from_host(host: &str) -> Option<Result<MeshTarget, String>> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let labels = host.strip_suffix(MESH_DOMAIN)?;
        if !labels.is_empty() && !labels.ends_with('.') {
            // `fooskiff.internal`: not ours.
            return None;
        }
        let labels = labels.strip_suffix('.').unwrap_or(labels);
        let name = |label: &str| ComponentName::try_from(label.to_string());
        let parsed = match labels.split('.').collect::<Vec<_>>()[..] {
            [app] if !app.is_empty() => name(app).map(MeshTarget::App),
            [component, app] => name(app).and_then(|app| {
                name(component)
                    .map(|component| MeshTarget::Component(WorkloadId::new(app, component)))
            }),
            _ => Err(format!(
                "{host} is not a mesh name: use <component>.<app>.{MESH_DOMAIN} or <app>.{MESH_DOMAIN}"
            )),
        };
        Some(parsed)
    }

    /// Why this target, in an app that exists, addresses nothing: the app
    /// has no route for `path`, or no such component.
    pub fn missing(&self, path: &str) -> String {
        match self {
            MeshTarget::App(app) => format!("app \"{app}\" has no route for {path}"),
            MeshTarget::Component(w) => {
                format!("app \"{}\" has no component \"{}\"", w.app, w.component)
            }
        }
    }

    /// The app the target belongs to.
    pub fn app(&self) -> &ComponentName {
        match self {
            MeshTarget::App(app) => app,
            MeshTarget::Component(workload) => &workload.app,
        }
    }
}

impl fmt::Display for MeshTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MeshTarget::App(app) => write!(f, "{app}.{MESH_DOMAIN}"),
            MeshTarget::Component(w) => write!(f, "{}.{}.{MESH_DOMAIN}", w.component, w.app),
        }
    }
}

/// One call over the mesh, as the caller's host hands it to the router.
#[derive(Debug, Clone)]
pub struct MeshCall {
    /// The calling workload.
    pub caller: WorkloadId,
    /// What the call addresses.
    pub target: MeshTarget,
    /// Mesh hops including this one.
    pub hops: u8,
}

/// The response a router produces.
pub type MeshResponse = Pin<Box<dyn Future<Output = hyper::Response<ResponseBody>> + Send>>;

/// Finds a replica for a mesh call and has it served: on this host without
/// the network, or on another node over mTLS.
pub trait MeshRouter: Send + Sync {
    /// Serves `request` (its `traceparent` already set to the caller's
    /// span) from `call.caller` to `call.target`. Failures to find or
    /// reach a replica come back as responses (502, 503), as a proxy's do.
    fn call(self: Arc<Self>, call: MeshCall, request: http::Request<WasiBody>) -> MeshResponse;
}

/// How a request reached the component serving it.
#[derive(Clone, Default)]
pub struct Inbound {
    /// The calling workload, for a mesh call; `None` from ingress.
    pub caller: Option<WorkloadId>,
    /// Mesh hops the request has taken (0 from ingress).
    pub hops: u8,
    /// Where the instance's own mesh calls go; `None` refuses them.
    pub mesh: Option<Arc<dyn MeshRouter>>,
}

impl Inbound {
    /// A request from outside, through ingress.
    pub fn ingress(mesh: Option<Arc<dyn MeshRouter>>) -> Inbound {
        Inbound {
            caller: None,
            hops: 0,
            mesh,
        }
    }

    /// The mesh call `call`, whose callee calls on through `mesh`.
    pub fn mesh_call(call: &MeshCall, mesh: Arc<dyn MeshRouter>) -> Inbound {
        Inbound {
            caller: Some(call.caller.clone()),
            hops: call.hops,
            mesh: Some(mesh),
        }
    }
}

/// The 502 for a mesh name that no component answers to.
pub fn unknown_target(target: &MeshTarget, why: &str) -> hyper::Response<ResponseBody> {
    tracing::warn!(%target, reason = "mesh_unknown", "mesh call failed: {why}");
    plain(
        http::StatusCode::BAD_GATEWAY,
        format!("mesh call to {target} failed: {why}\n"),
    )
}

/// The 403 for a caller the callee's `allow_callers` does not list.
pub fn denied(caller: &WorkloadId, callee: &WorkloadId) -> hyper::Response<ResponseBody> {
    tracing::warn!(%caller, %callee, reason = "mesh_denied", "mesh call denied: caller not in allow_callers");
    plain(
        http::StatusCode::FORBIDDEN,
        format!(
            "mesh call denied: {callee} does not allow calls from {caller} (its allow_callers does not list it)\n"
        ),
    )
}

/// The 508 for a request past [`MAX_HOPS`].
pub fn too_many_hops(callee: &WorkloadId, hops: u8) -> hyper::Response<ResponseBody> {
    tracing::warn!(%callee, hops, reason = "mesh_loop", "mesh call refused: too many hops");
    plain(
        http::StatusCode::LOOP_DETECTED,
        format!(
            "mesh call to {callee} refused: the request has taken {hops} mesh hops, more than {MAX_HOPS} (a call loop?)\n"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str) -> Option<Result<MeshTarget, String>> {
        MeshTarget::from_host(host)
    }

    #[test]
    fn mesh_names_address_an_app_or_a_component() {
        let catalog = target("catalog.shop.skiff.internal").unwrap().unwrap();
        assert_eq!(catalog.to_string(), "catalog.shop.skiff.internal");
        assert!(matches!(&catalog, MeshTarget::Component(w) if w.to_string() == "shop/catalog"));
        let shop = target("Shop.Skiff.Internal.").unwrap().unwrap();
        assert_eq!(
            shop,
            MeshTarget::App(ComponentName::try_from("shop".to_string()).unwrap())
        );
    }

    #[test]
    fn other_hosts_are_not_mesh_names_and_bad_mesh_names_say_why() {
        for other in [
            "example.com",
            "fooskiff.internal",
            "skiff.internal.example.com",
        ] {
            assert!(target(other).is_none(), "{other}");
        }
        for bad in [
            "skiff.internal",
            ".skiff.internal",
            "a.b.c.skiff.internal",
            "UP_.skiff.internal",
            "x..skiff.internal",
        ] {
            let err = target(bad).unwrap().unwrap_err();
            assert!(
                err.contains("skiff.internal") || err.contains("invalid name"),
                "{bad}: {err}"
            );
        }
    }
}
