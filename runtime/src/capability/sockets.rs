//! Sockets: never granted. `wasi:sockets` stays in the linker, so that
//! components importing it (many toolchains' do) still load, but creating a
//! TCP or UDP socket and looking up a name are refused with `access-denied`
//! before anything reaches the host's network stack, and the first refusal
//! of each instance is logged with `reason="socket_denied"`. A guest reaches
//! the network only through outbound HTTP.

use super::{Capability, PrepareContext};
use crate::instance::InstanceBuilder;
use crate::manifest::ComponentSpec;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddress, IpAddressFamily};
use wasmtime_wasi::p2::bindings::sockets::{
    ip_name_lookup, network, tcp_create_socket, udp_create_socket,
};
use wasmtime_wasi::p2::{DynPollable, Network, SocketError, SocketResult, TcpSocket, UdpSocket};
use wasmtime_wasi::sockets::WasiSocketsCtxView;

/// The reason logged when a guest is refused a socket or a name lookup.
pub const REASON: &str = "socket_denied";

/// The socket capability of one component: only its name, for the log.
pub struct Sockets {
    component: Arc<str>,
}

impl Sockets {
    /// Sockets take no configuration: there is nothing to grant.
    ///
    /// # Errors
    ///
    /// None today; the signature matches the other capabilities.
    pub fn prepare(_spec: &ComponentSpec, cx: &PrepareContext<'_>) -> Result<Sockets, String> {
        Ok(Sockets {
            component: Arc::from(cx.component.as_str()),
        })
    }
}

impl Capability for Sockets {
    fn grant(&self, instance: &mut InstanceBuilder) -> Result<(), String> {
        instance.sockets = SocketDenials {
            component: self.component.clone(),
            logged: false,
        };
        Ok(())
    }
}

/// One instance's record of refused socket calls.
#[derive(Debug, Default)]
pub struct SocketDenials {
    component: Arc<str>,
    /// Whether a refusal was logged already: a guest retrying in a loop
    /// gets one line per instance.
    logged: bool,
}

impl SocketDenials {
    /// Refuses `what`, logging it if it is the instance's first refusal.
    fn deny(&mut self, what: &str) -> ErrorCode {
        if !self.logged {
            self.logged = true;
            tracing::warn!(
                component = &*self.component,
                reason = REASON,
                "{what} refused: a guest gets no sockets (outbound HTTP to allowed_outbound_hosts is its only network access)"
            );
        }
        ErrorCode::AccessDenied
    }
}

/// What the socket functions need of an instance's state.
pub struct DeniedSocketsView<'a> {
    /// The instance's refusals.
    pub denials: &'a mut SocketDenials,
    /// wasmtime's socket state, which serves what is not refused here
    /// (error conversions, dropping handles).
    pub sockets: WasiSocketsCtxView<'a>,
}

/// Store state that can lend a [`DeniedSocketsView`].
pub trait DeniedSocketsState: Send + 'static {
    /// The view of this instance's socket state.
    fn denied_sockets(&mut self) -> DeniedSocketsView<'_>;
}

struct DeniedSockets;

impl HasData for DeniedSockets {
    type Data<'a> = DeniedSocketsView<'a>;
}

/// Replaces the functions of `wasi:sockets` that could open a socket or
/// resolve a name (already in `linker` from `wasmtime_wasi`) with ones
/// that refuse and log.
///
/// # Errors
///
/// When the linker refuses the definitions.
pub fn add_to_linker<T: DeniedSocketsState>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added = tcp_create_socket::add_to_linker::<T, DeniedSockets>(linker, T::denied_sockets)
        .and_then(|()| {
            udp_create_socket::add_to_linker::<T, DeniedSockets>(linker, T::denied_sockets)
        })
        .and_then(|()| {
            ip_name_lookup::add_to_linker::<T, DeniedSockets>(linker, T::denied_sockets)
        });
    linker.allow_shadowing(false);
    added
}

// === impl DeniedSocketsView ===

// Error conversions and the network handle: wasmtime's.
impl network::Host for DeniedSocketsView<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        self.sockets.convert_error_code(error)
    }

    fn network_error_code(
        &mut self,
        error: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        self.sockets.network_error_code(error)
    }
}

impl network::HostNetwork for DeniedSocketsView<'_> {
    fn drop(&mut self, network: Resource<Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.sockets, network)
    }
}

impl tcp_create_socket::Host for DeniedSocketsView<'_> {
    fn create_tcp_socket(&mut self, _family: IpAddressFamily) -> SocketResult<Resource<TcpSocket>> {
        Err(self.denials.deny("tcp socket").into())
    }
}

impl udp_create_socket::Host for DeniedSocketsView<'_> {
    async fn create_udp_socket(
        &mut self,
        _family: IpAddressFamily,
    ) -> SocketResult<Resource<UdpSocket>> {
        Err(self.denials.deny("udp socket").into())
    }
}

impl ip_name_lookup::Host for DeniedSocketsView<'_> {
    fn resolve_addresses(
        &mut self,
        _network: Resource<Network>,
        _name: String,
    ) -> SocketResult<Resource<ip_name_lookup::ResolveAddressStream>> {
        Err(self.denials.deny("name lookup").into())
    }
}

// No resolve-address-stream is ever created here (every lookup is
// refused); a handle the guest forges is wasmtime's to refuse.
impl ip_name_lookup::HostResolveAddressStream for DeniedSocketsView<'_> {
    fn resolve_next_address(
        &mut self,
        stream: Resource<ip_name_lookup::ResolveAddressStream>,
    ) -> SocketResult<Option<IpAddress>> {
        self.sockets.resolve_next_address(stream)
    }

    fn subscribe(
        &mut self,
        stream: Resource<ip_name_lookup::ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        self.sockets.subscribe(stream)
    }

    fn drop(
        &mut self,
        stream: Resource<ip_name_lookup::ResolveAddressStream>,
    ) -> wasmtime::Result<()> {
        ip_name_lookup::HostResolveAddressStream::drop(&mut self.sockets, stream)
    }
}
