//! The mesh of `skiff run`: names resolve to the components of the one app
//! it serves, invoked in this process.

use super::{Inbound, MeshCall, MeshResponse, MeshRouter, MeshTarget, unknown_target};
use crate::app::LoadedApp;
use crate::capability::logging::LogSink;
use crate::invoke::invoke;
use std::sync::Arc;
use wasmtime_wasi_http::WasiBody;

/// Routes mesh calls to the components of one app.
pub struct LocalMesh {
    app: Arc<LoadedApp>,
    log_sink: Arc<dyn LogSink>,
}

impl LocalMesh {
    /// The mesh of `app`, whose guests log to `log_sink`.
    pub fn new(app: Arc<LoadedApp>, log_sink: Arc<dyn LogSink>) -> Arc<LocalMesh> {
        Arc::new(LocalMesh { app, log_sink })
    }
}

impl MeshRouter for LocalMesh {
    fn call(self: Arc<Self>, call: MeshCall, request: http::Request<WasiBody>) -> MeshResponse {
        Box::pin(async move {
            if call.target.app().as_str() != self.app.name {
                let why = format!(
                    "app \"{}\" is not served here (this process serves only \"{}\")",
                    call.target.app(),
                    self.app.name
                );
                return unknown_target(&call.target, &why);
            }
            let component = match &call.target {
                MeshTarget::App(_) => self.app.route(request.uri().path()),
                MeshTarget::Component(workload) => self
                    .app
                    .components
                    .iter()
                    .find(|c| c.name == workload.component),
            };
            let Some(component) = component else {
                let why = call.target.missing(request.uri().path());
                return unknown_target(&call.target, &why);
            };
            let inbound = Inbound::mesh_call(&call, self.clone());
            invoke(component, request, &self.log_sink, inbound).await
        })
    }
}
