//! Outbound HTTP: requests a guest makes through `wasi:http/outgoing-handler`.
//! A mesh name (`*.skiff.internal`) goes to the host's mesh router, whose
//! callee decides by its `allow_callers`. Anything else is denied unless
//! the destination matches `allowed_outbound_hosts`; internal addresses
//! are refused even then unless an entry names them with the request's
//! exact scheme, host and port. Every call carries the request's trace
//! context, is bounded in time, and counts against the instance's
//! `max_outbound_requests`.

pub mod address;
pub mod client;
pub mod policy;

pub use address::is_internal;
pub use client::OutboundClient;
pub use policy::{OutboundHost, OutboundPolicy};

use super::{Capability, PrepareContext};
use crate::instance::InstanceBuilder;
use crate::invoke::{InstanceOutcome, strip_platform_headers};
use crate::manifest::ComponentSpec;
use crate::mesh::{MeshCall, MeshRouter, MeshTarget, Span, TRACEPARENT, TRACESTATE, WorkloadId};
use crate::metrics::{ComponentSeries, OutboundOutcome};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// Time to the response head (connect included) when the guest sets none.
const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest pause between response body frames when the guest sets none.
const DEFAULT_BETWEEN_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

/// The outbound HTTP capability of one component: its policy and client.
pub struct OutboundHttp {
    grant: Arc<OutboundGrant>,
}

/// What an instance may call, and through which client.
pub struct OutboundGrant {
    policy: Arc<OutboundPolicy>,
    /// Made on the first permitted call: most components never call out,
    /// and a node holding thousands of them keeps no client for those.
    client: OnceLock<OutboundClient>,
}

impl OutboundGrant {
    fn client(&self) -> Result<&OutboundClient, HttpError> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let client = OutboundClient::new(self.policy.clone()).map_err(|e| {
            tracing::error!(component = self.policy.component(), "{e}");
            HttpError::InternalError(Some(e))
        })?;
        // Two first calls at once may both build one; either will do.
        Ok(self.client.get_or_init(|| client))
    }
}

impl OutboundHttp {
    /// Builds the component's policy and client.
    ///
    /// # Errors
    ///
    /// When the TLS client cannot be configured.
    pub fn prepare(spec: &ComponentSpec, cx: &PrepareContext<'_>) -> Result<OutboundHttp, String> {
        let policy = Arc::new(OutboundPolicy::new(
            cx.component.as_str(),
            spec.allowed_outbound_hosts.clone(),
        ));
        client::check_tls()?;
        Ok(OutboundHttp {
            grant: Arc::new(OutboundGrant {
                policy,
                client: OnceLock::new(),
            }),
        })
    }
}

impl Capability for OutboundHttp {
    fn grant(&self, instance: &mut InstanceBuilder) -> Result<(), String> {
        instance.outbound = Some(self.grant.clone());
        Ok(())
    }
}

/// What an instance's outbound calls need to know of the request it
/// serves.
#[derive(Clone)]
pub struct OutboundContext {
    /// Where mesh calls go; `None` refuses them.
    pub mesh: Option<Arc<dyn MeshRouter>>,
    /// Mesh hops the request took to reach this instance.
    pub hops: u8,
    /// The request's span: the parent of every call the instance makes.
    pub span: Span,
    /// The request's `tracestate`, passed on with the span.
    pub tracestate: Option<http::HeaderValue>,
    /// Where the instance's mesh calls are noted.
    pub outcome: Arc<InstanceOutcome>,
    /// Where its calls' outcomes are counted, if anywhere.
    pub series: Option<Arc<ComponentSeries>>,
}

impl OutboundContext {
    /// The context of an instance serving no request in particular: no
    /// mesh, a trace of its own.
    pub fn without_mesh() -> OutboundContext {
        OutboundContext {
            mesh: None,
            hops: 0,
            span: Span::for_request(&http::HeaderMap::new()),
            tracestate: None,
            outcome: Arc::default(),
            series: None,
        }
    }
}

/// The `wasi:http` hooks of one instance: policy, address and count checks
/// in front of the component's client or the mesh.
pub struct OutboundHooks {
    /// `None`: no outbound HTTP at all.
    pub grant: Option<Arc<OutboundGrant>>,
    /// Outbound requests this instance may still attempt.
    pub remaining: u32,
    /// Whether running out of `remaining` was logged already.
    pub limit_logged: bool,
    /// The workload the instance serves: the caller of its mesh calls.
    pub workload: Arc<WorkloadId>,
    /// The request the instance serves.
    pub context: OutboundContext,
}

/// Where an admitted outbound request goes.
enum Admitted {
    /// Over the mesh, to a name under `skiff.internal`; `Err` says why
    /// the name addresses nothing.
    Mesh(Arc<dyn MeshRouter>, Result<MeshTarget, String>),
    /// Out through the component's client.
    Out(Arc<OutboundGrant>),
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl OutboundHooks {
    /// Decides whether `uri` may be requested now, and where it goes; on
    /// refusal logs why and returns the error code the guest sees.
    fn admit(&mut self, uri: &http::Uri) -> Result<Admitted, HttpError> {
        let component = self.workload.to_string();
        let component = component.as_str();
        // Every attempt counts, refused ones included, so a guest looping on
        // a forbidden call is cut off (and logged) a bounded number of times.
        if self.remaining == 0 {
            if !self.limit_logged {
                self.limit_logged = true;
                tracing::warn!(component, %uri, reason = "outbound_limit", "outbound request refused: limits.max_outbound_requests reached");
            }
            return Err(HttpError::ConnectionLimitReached);
        }
        self.remaining -= 1;
        if let Some(target) = uri.host().and_then(MeshTarget::from_host) {
            let Some(router) = self.context.mesh.clone() else {
                tracing::warn!(component, %uri, reason = "outbound_denied", "mesh call refused: this host has no mesh");
                return Err(HttpError::HttpRequestDenied);
            };
            self.context.outcome.note_mesh_call();
            return Ok(Admitted::Mesh(router, target));
        }
        let Some(grant) = self.grant.clone() else {
            return Err(HttpError::HttpRequestDenied);
        };
        if !grant.policy.allows(uri) {
            tracing::warn!(component, %uri, reason = "outbound_denied", "outbound request denied: not in allowed_outbound_hosts");
            return Err(HttpError::HttpRequestDenied);
        }
        // An IP literal is checked here; names are checked once resolved,
        // by the client's connector.
        let scheme = uri.scheme_str().unwrap_or("http");
        let port = uri
            .port_u16()
            .unwrap_or_else(|| policy::default_port(scheme));
        if let Some(host) = uri.host()
            && let Ok(ip) = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
            && !grant.policy.permits_address(scheme, host, port, ip)
        {
            tracing::warn!(component, %uri, reason = "outbound_internal_address", "outbound request refused: internal address not named with this scheme and port in allowed_outbound_hosts");
            return Err(HttpError::DestinationIpProhibited);
        }
        Ok(Admitted::Out(grant))
    }
}

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let series = self.context.series.clone();
        let count = move |outcome| {
            if let Some(series) = &series {
                series.record_outbound(outcome);
            }
        };
        let admitted = match self.admit(request.uri()) {
            Ok(admitted) => admitted,
            Err(code) => {
                count(match code {
                    HttpError::ConnectionLimitReached => OutboundOutcome::Limited,
                    _ => OutboundOutcome::Denied,
                });
                return Box::new(async move { Err(code) });
            }
        };
        // Every call continues the request's trace, unless the guest traces
        // itself and set its own span.
        if !request.headers().contains_key(TRACEPARENT)
            && let Ok(value) = http::HeaderValue::from_str(&self.context.span.traceparent())
        {
            request.headers_mut().insert(TRACEPARENT, value);
            match &self.context.tracestate {
                Some(state) => {
                    request.headers_mut().insert(TRACESTATE, state.clone());
                }
                None => {
                    request.headers_mut().remove(TRACESTATE);
                }
            }
        }
        let options = options.unwrap_or_default();
        let head_timeout = match (options.connect_timeout, options.first_byte_timeout) {
            (None, None) => DEFAULT_HEAD_TIMEOUT,
            (connect, first_byte) => {
                connect.unwrap_or(client::CONNECT_TIMEOUT)
                    + first_byte.unwrap_or(DEFAULT_HEAD_TIMEOUT)
            }
        };
        let grant = match admitted {
            Admitted::Out(grant) => grant,
            Admitted::Mesh(router, target) => {
                let call = target.map(|target| MeshCall {
                    caller: (*self.workload).clone(),
                    target,
                    hops: self.context.hops.saturating_add(1),
                });
                return Box::new(async move {
                    let result = call_mesh(router, call, request, head_timeout).await;
                    count(answered_or_failed(&result));
                    result
                });
            }
        };
        let between_bytes = options
            .between_bytes_timeout
            .unwrap_or(DEFAULT_BETWEEN_BYTES_TIMEOUT);
        Box::new(async move {
            let result = async {
                let response = grant
                    .client()?
                    .send(request, head_timeout, between_bytes)
                    .await?;
                Ok((response, finished()))
            }
            .await;
            count(answered_or_failed(&result));
            result
        })
    }
}

/// A sent call's outcome: answered when a response head came back.
fn answered_or_failed<T>(result: &Result<T, HttpError>) -> OutboundOutcome {
    match result {
        Ok(_) => OutboundOutcome::Answered,
        Err(_) => OutboundOutcome::Failed,
    }
}

/// A send's second future: nothing is left to do once the response came.
fn finished() -> Box<dyn Future<Output = Result<(), HttpError>> + Send> {
    Box::new(async { Ok(()) })
}

/// A guest's call to a mesh name: what the platform sets is its own, so
/// the guest's `skiff-*` headers go; the router answers within the head
/// timeout, a name that addresses nothing with 502.
async fn call_mesh(
    router: Arc<dyn MeshRouter>,
    call: Result<MeshCall, String>,
    mut request: http::Request<WasiBody>,
    head_timeout: Duration,
) -> Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ),
    HttpError,
> {
    let call = match call {
        Ok(call) => call,
        Err(why) => {
            let host = request.uri().host().unwrap_or_default().to_string();
            tracing::warn!(host, reason = "mesh_unknown", "mesh call failed: {why}");
            let response = crate::invoke::plain(
                http::StatusCode::BAD_GATEWAY,
                format!("mesh call failed: {why}\n"),
            );
            return Ok((response, finished()));
        }
    };
    strip_platform_headers(request.headers_mut());
    let caller = call.caller.clone();
    let target = call.target.clone();
    match tokio::time::timeout(head_timeout, router.call(call, request)).await {
        Ok(response) => Ok((response, finished())),
        Err(_) => {
            tracing::warn!(%caller, %target, reason = "mesh_timeout", "mesh call timed out before its response began");
            Err(HttpError::ConnectionReadTimeout)
        }
    }
}
