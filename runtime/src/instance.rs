//! The per-instance host state kept in each wasmtime `Store`: the WASI
//! context, the `wasi:http` context and hooks, the resource table and the
//! memory limiter.

use crate::capability::logging::LogSink;
use crate::capability::outbound_http::{OutboundContext, OutboundGrant, OutboundHooks};
use crate::capability::sockets::{DeniedSocketsState, DeniedSocketsView, SocketGrant};
use crate::limits::InstanceLimiter;
use crate::mesh::WorkloadId;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::sockets::WasiSocketsCtxView;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Collects the grants of every capability for one instance.
pub struct InstanceBuilder {
    /// WASI context under construction; capabilities add env, preopens, stdio.
    pub wasi: WasiCtxBuilder,
    /// Outbound HTTP grant; `None` denies every outbound request.
    pub outbound: Option<Arc<OutboundGrant>>,
    /// Where guest stdout/stderr lines go.
    pub log_sink: Arc<dyn LogSink>,
    /// What the instance may do with sockets, and its refusals.
    pub sockets: SocketGrant,
    /// The workload the instance serves: the caller of its mesh calls.
    workload: Arc<WorkloadId>,
    /// The request's trace and hops, and where mesh calls go.
    context: OutboundContext,
}

/// Sizes that bound one instance's host-side resources.
#[derive(Debug, Clone, Copy)]
pub struct InstanceLimits {
    /// Cap in bytes on the instance's linear memories, all together.
    pub memory_bytes: usize,
    /// Outbound HTTP requests the instance may make.
    pub outbound_requests: u32,
    /// Entries the instance's resource table may hold at once.
    pub resources: usize,
}

impl InstanceBuilder {
    /// An instance with nothing granted: no env, files, network or outbound
    /// HTTP; stdio discarded until the logging capability sets it.
    /// `workload` is the component the instance serves, `context` the
    /// request it serves as far as its own outbound calls need to know.
    pub fn new(
        log_sink: Arc<dyn LogSink>,
        workload: Arc<WorkloadId>,
        context: OutboundContext,
    ) -> InstanceBuilder {
        InstanceBuilder {
            wasi: WasiCtx::builder(),
            outbound: None,
            log_sink,
            sockets: SocketGrant::default(),
            workload,
            context,
        }
    }

    /// The span of the request the instance serves.
    pub fn span(&self) -> crate::mesh::Span {
        self.context.span
    }

    /// Finishes the state for a new `Store`.
    pub fn build(mut self, limits: InstanceLimits) -> InstanceState {
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.resources);
        InstanceState {
            wasi: self.wasi.build(),
            http: WasiHttpCtx::new(),
            table,
            hooks: OutboundHooks {
                grant: self.outbound,
                remaining: limits.outbound_requests,
                limit_logged: false,
                workload: self.workload,
                context: self.context,
            },
            limiter: InstanceLimiter::new(limits.memory_bytes),
            sockets: self.sockets,
        }
    }
}

/// The `T` of every `Store<T>` Skiff creates.
pub struct InstanceState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: OutboundHooks,
    /// The limiter wasmtime consults on every `memory.grow` and `table.grow`.
    pub limiter: InstanceLimiter,
    sockets: SocketGrant,
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl DeniedSocketsState for InstanceState {
    fn denied_sockets(&mut self) -> DeniedSocketsView<'_> {
        DeniedSocketsView {
            denials: &mut self.sockets,
            sockets: WasiSocketsCtxView {
                ctx: self.wasi.sockets(),
                table: &mut self.table,
            },
        }
    }
}
