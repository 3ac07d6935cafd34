//! One HTTP request through one fresh, sandboxed instance, as a stack of
//! small stages built in [`stack`] and read top to bottom: the hop's span,
//! the mesh's authorization, the request body cap, admission (memory,
//! concurrency gate, instance slot), then the instance itself under its
//! deadline. Each stage may answer early; only the last runs guest code.
//!
//! Headers named `skiff-*` are the platform's own: none a client or guest
//! sets reaches a guest or leaves one; the platform sets `skiff-caller` for
//! mesh calls. An instance that fails after its response began streaming
//! cuts the response off (the client sees an aborted body, never a clean
//! end) and is logged like any other.

mod admission;
mod authorize;
mod body_cap;
mod instance;
mod responses;
mod trace;

use crate::capability::logging::LogSink;
use crate::component::LoadedComponent;
use crate::mesh::{Inbound, Span};
use bytes::Bytes;
use http_body::Body;
use std::convert::Infallible;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tower::{ServiceBuilder, ServiceExt};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

pub use instance::new_store;
pub use responses::{REFUSED_HEADER, plain, relayed, retry_shortly};
pub use trace::give_up;

/// The body of every response Skiff sends.
pub type ResponseBody = HyperOutgoingBody;

/// A response, as every stage answers.
pub type Answer = hyper::Response<ResponseBody>;

/// What a stage returns: the response, once the stages inside it (if it
/// called them) have answered. Stages never fail: a refusal is an answer.
type Stage<'a> = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send + 'a>>;

/// A request body a guest can read: any HTTP body of bytes whose errors
/// wasi-http can report (a client's, a forwarding node's, another guest's).
pub trait GuestBody:
    Body<Data = Bytes, Error: Into<wasmtime_wasi_http::Error>> + Send + Unpin + 'static
{
}

impl<B> GuestBody for B where
    B: Body<Data = Bytes, Error: Into<wasmtime_wasi_http::Error>> + Send + Unpin + 'static
{
}

/// Headers starting with this are the platform's signalling between its
/// own processes (`skiff-app`, `skiff-not-here`, ...), never a guest's.
pub const PLATFORM_HEADER_PREFIX: &str = "skiff-";

/// Serves `request` with a fresh instance of `component`; `inbound` says
/// how it arrived (from ingress, or over the mesh from which workload).
pub async fn invoke<B: GuestBody>(
    component: &LoadedComponent,
    request: hyper::Request<B>,
    log_sink: &Arc<dyn LogSink>,
    inbound: Inbound,
) -> Answer {
    let mut call = Call::new(request, inbound);
    call.set_path_params(component);
    match stack(component, log_sink).oneshot(call).await {
        Ok(answer) => answer,
        Err(never) => match never {},
    }
}

/// The stages of one request to `component`, outermost first.
fn stack<'a, B: GuestBody>(
    component: &'a LoadedComponent,
    log_sink: &'a Arc<dyn LogSink>,
) -> impl tower::Service<Call<B>, Response = Answer, Error = Infallible, Future = Stage<'a>> + 'a {
    ServiceBuilder::new()
        // One span per hop: the trace continues into the guest, and a span
        // line is logged when the response head is ready.
        .layer_fn(stage::<trace::Traced, _>(component))
        // Mesh calls only: the hop limit, then the callee's allow_callers;
        // a refused call never reaches admission, let alone an instance.
        .layer_fn(stage::<authorize::Authorized, _>(component))
        // A body declared larger than max_request_body: 413 at once.
        .layer_fn(stage::<body_cap::BodyCapped, _>(component))
        // Memory pressure, the component's concurrency gate, and one of the
        // process's instance slots (waited for, at most the timeout).
        .layer_fn(stage::<admission::Admission, _>(component))
        // A fresh instance under the wall-clock deadline, its request body
        // read and its response body written within their caps.
        .service(instance::Instance::new(component, log_sink))
}

/// One stage (`Kind`) of the requests to `component`, around the stages
/// inside it (`inner`).
struct Around<'a, Kind, S> {
    inner: S,
    component: &'a LoadedComponent,
    kind: PhantomData<Kind>,
}

/// Makes the stage `Kind` for `component` around the stages given.
fn stage<'a, Kind, S>(component: &'a LoadedComponent) -> impl Fn(S) -> Around<'a, Kind, S> {
    move |inner| Around {
        inner,
        component,
        kind: PhantomData,
    }
}

/// One request on its way through the stages, with what the platform
/// knows of it.
pub(crate) struct Call<B> {
    /// The request, without any `skiff-*` header a client or guest set.
    request: hyper::Request<B>,
    /// How it arrived.
    inbound: Inbound,
    /// Its span: of the trace its `traceparent` continues, or a new one.
    span: Span,
    /// The `tracestate` its calls pass on with the span.
    tracestate: Option<http::HeaderValue>,
    /// What its instance does, learned while it runs.
    outcome: Arc<InstanceOutcome>,
}

impl<B> Call<B> {
    fn new(mut request: hyper::Request<B>, inbound: Inbound) -> Call<B> {
        strip_platform_headers(request.headers_mut());
        strip_platform_cookies(request.headers_mut());
        let span = Span::for_request(request.headers());
        let tracestate = crate::mesh::tracestate_to_pass(&span, request.headers());
        Call {
            request,
            inbound,
            span,
            tracestate,
            outcome: Arc::default(),
        }
    }

    /// Tells the guest what its route's `:name` segments matched, in
    /// `skiff-path-param-NAME` headers.
    fn set_path_params(&mut self, component: &LoadedComponent) {
        let Some(route) = component.route.as_ref().filter(|r| r.has_params()) else {
            return;
        };
        let path = self.request.uri().path().to_string();
        for (name, value) in route.params(&path) {
            let name = format!("{}{name}", crate::route::PATH_PARAM_HEADER_PREFIX);
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::try_from(name),
                http::HeaderValue::from_str(value),
            ) {
                self.request.headers_mut().insert(name, value);
            }
        }
    }

    /// Sets `name` on the request the guest sees; a value that is not a
    /// valid header is left out.
    fn set_header(&mut self, name: &'static str, value: &str) {
        if let Ok(value) = http::HeaderValue::from_str(value) {
            self.request.headers_mut().insert(name, value);
        }
    }
}

/// Why a request failed on the host side, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// Every instance slot and queue place was taken.
    Overloaded,
    /// The process was short of memory, so no instance was started.
    MemoryPressure,
    /// The wall-clock timeout elapsed.
    Timeout,
    /// A `memory.grow` past the memory limit was refused and the guest died.
    MemoryLimit,
    /// The guest overflowed its stack.
    StackOverflow,
    /// Any other trap (panic, unreachable, bad memory access...).
    Trap,
    /// The guest returned without setting a response.
    NoResponse,
    /// The instance could not be created.
    Instantiate,
    /// The request body exceeded `max_request_body`.
    RequestTooLarge,
    /// The response body exceeded `max_response_body`.
    ResponseTooLarge,
    /// A mesh caller the callee's `allow_callers` does not list.
    CallerNotAllowed,
    /// A mesh call past the hop limit.
    HopLimit,
}

impl FailureReason {
    /// Every reason.
    pub const ALL: [FailureReason; 12] = [
        FailureReason::Overloaded,
        FailureReason::MemoryPressure,
        FailureReason::Timeout,
        FailureReason::MemoryLimit,
        FailureReason::StackOverflow,
        FailureReason::Trap,
        FailureReason::NoResponse,
        FailureReason::Instantiate,
        FailureReason::RequestTooLarge,
        FailureReason::ResponseTooLarge,
        FailureReason::CallerNotAllowed,
        FailureReason::HopLimit,
    ];

    /// A short stable name, as used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Overloaded => "overloaded",
            FailureReason::MemoryPressure => "memory_pressure",
            FailureReason::Timeout => "timeout",
            FailureReason::MemoryLimit => "memory_limit",
            FailureReason::StackOverflow => "stack_overflow",
            FailureReason::Trap => "trap",
            FailureReason::NoResponse => "no_response",
            FailureReason::Instantiate => "instantiate",
            FailureReason::RequestTooLarge => "request_too_large",
            FailureReason::ResponseTooLarge => "response_too_large",
            FailureReason::CallerNotAllowed => "caller_not_allowed",
            FailureReason::HopLimit => "hop_limit",
        }
    }
}

/// What the host learns of one request while it runs, shared between the
/// stages, the instance's task and its response body.
#[derive(Default)]
pub struct InstanceOutcome {
    /// Why the platform answered the request itself: a stage refused it,
    /// or its instance failed (set before the instance is dropped, so a
    /// response body still streaming then is cut off rather than ended).
    failed: OnceLock<FailureReason>,
    /// The instance called another component over the mesh.
    called_mesh: AtomicBool,
}

impl InstanceOutcome {
    /// Records that the instance made a mesh call.
    pub fn note_mesh_call(&self) {
        self.called_mesh.store(true, Ordering::Relaxed);
    }

    /// Records why the platform answered the request itself; the first
    /// reason stands.
    fn fail(&self, reason: FailureReason) {
        let _ = self.failed.set(reason);
    }

    fn called_mesh(&self) -> bool {
        self.called_mesh.load(Ordering::Relaxed)
    }
}

/// Removes every `skiff-*` header: what a client or a guest writes there
/// must not pass for the platform's own signalling.
pub fn strip_platform_headers(headers: &mut http::HeaderMap) {
    let platform: Vec<http::HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(PLATFORM_HEADER_PREFIX))
        .cloned()
        .collect();
    for name in platform {
        headers.remove(name);
    }
}

/// Cookies named `skiff_*` are the platform's own (the dashboard's
/// session): a browser sends them to every port of the control plane's
/// host, an app's ingress included, so they are removed before a guest
/// sees the request.
pub const PLATFORM_COOKIE_PREFIX: &str = "skiff_";

/// Removes every `skiff_*` cookie from `headers`' `Cookie` headers (and a
/// header left empty).
pub fn strip_platform_cookies(headers: &mut http::HeaderMap) {
    if !headers.contains_key(http::header::COOKIE) {
        return;
    }
    let kept: Vec<http::HeaderValue> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| {
            // A value that is not text cannot be read for names: dropped.
            let text = value.to_str().ok()?;
            let pairs: Vec<&str> = text
                .split(';')
                .map(str::trim)
                .filter(|pair| !pair.is_empty())
                .filter(|pair| {
                    let name = pair.split_once('=').map_or(*pair, |(name, _)| name);
                    !name.trim().starts_with(PLATFORM_COOKIE_PREFIX)
                })
                .collect();
            if pairs.is_empty() {
                return None;
            }
            http::HeaderValue::from_str(&pairs.join("; ")).ok()
        })
        .collect();
    headers.remove(http::header::COOKIE);
    for value in kept {
        headers.append(http::header::COOKIE, value);
    }
}

/// An early answer from a stage that did not call the stages inside it.
fn answered<'a>(answer: Answer) -> Stage<'a> {
    Box::pin(std::future::ready(Ok(answer)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_cookies_never_reach_a_guest() {
        let mut headers = http::HeaderMap::new();
        headers.append(
            http::header::COOKIE,
            http::HeaderValue::from_static("theme=dark; skiff_session=abc; lang=en"),
        );
        headers.append(
            http::header::COOKIE,
            http::HeaderValue::from_static("skiff_session=def"),
        );
        strip_platform_cookies(&mut headers);
        let left: Vec<&str> = headers
            .get_all(http::header::COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(left, vec!["theme=dark; lang=en"]);
    }
}
