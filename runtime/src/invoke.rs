//! One HTTP request through one fresh, sandboxed instance: admission by the
//! concurrency gate and the process's instance slots, a new `Store` with
//! only the component's grants, the `wasi:http/incoming-handler` call under
//! the wall-clock and CPU limits, and the mapping of every failure to a
//! status code. A mesh call is checked first against the callee's
//! `allow_callers` and the hop limit. Headers named `skiff-*` are the
//! platform's own: none a client or guest sets reaches a guest or leaves
//! one; the platform sets `skiff-caller` for mesh calls. Each request is one
//! span of its trace (`traceparent`), logged when its response begins. An instance that fails
//! after its response began streaming cuts the response off (the client
//! sees an aborted body, never a clean end) and is logged like any other.

use crate::body_limit::{LimitedBody, RequestBody, declared_length, drain};
use crate::capability::logging::LogSink;
use crate::capability::outbound_http::OutboundContext;
use crate::component::LoadedComponent;
use crate::instance::{InstanceBuilder, InstanceLimits, InstanceState};
use crate::limits::InstanceSlot;
use crate::mesh::{self, CALLER_HEADER, Inbound, Span, TRACEPARENT};
use crate::reaper::ReaperHandle;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;
use wasmtime::{Store, Trap};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// The body of every response Skiff sends.
pub type ResponseBody = HyperOutgoingBody;

/// Headers starting with this are the platform's signalling between its
/// own processes (`skiff-app`, `skiff-not-here`, ...), never a guest's.
pub const PLATFORM_HEADER_PREFIX: &str = "skiff-";

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
}

impl FailureReason {
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
        }
    }
}

/// Serves `request` with a fresh instance of `component`; `inbound` says
/// how it arrived (from ingress, or over the mesh from which workload).
pub async fn invoke<B>(
    component: &LoadedComponent,
    mut request: hyper::Request<B>,
    log_sink: &Arc<dyn LogSink>,
    inbound: Inbound,
) -> hyper::Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let started = Instant::now();
    strip_platform_headers(request.headers_mut());
    let span = Span::for_request(request.headers());
    let outcome = Arc::new(InstanceOutcome::default());
    let response = serve(component, request, log_sink, &inbound, &span, &outcome).await;
    let mesh_hop = inbound.caller.is_some() || outcome.called_mesh.load(Ordering::Relaxed);
    log_span(
        component,
        &inbound,
        &span,
        response.status(),
        started,
        mesh_hop,
    );
    response
}

/// Logs the hop `span` (to its response head): at info when it is part of
/// a trace across the mesh (it was a mesh call, or made one), at debug for
/// a request served alone (`RUST_LOG=info,skiff::span=debug` shows those
/// too), so plain traffic does not flood the log.
fn log_span(
    component: &LoadedComponent,
    inbound: &Inbound,
    span: &Span,
    status: http::StatusCode,
    started: Instant,
    mesh_hop: bool,
) {
    let level_enabled = if mesh_hop {
        tracing::enabled!(target: "skiff::span", tracing::Level::INFO)
    } else {
        tracing::enabled!(target: "skiff::span", tracing::Level::DEBUG)
    };
    if !level_enabled {
        return;
    }
    let caller = inbound
        .caller
        .as_ref()
        .map_or_else(|| "ingress".to_string(), ToString::to_string);
    let callee = component.workload.to_string();
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    macro_rules! span_line {
        ($level:ident) => {
            tracing::$level!(
                target: "skiff::span",
                trace_id = %span.trace_id(),
                span_id = %span.span_id(),
                parent_id = %span.parent_id(),
                caller,
                callee,
                status = status.as_u16(),
                duration_ms = format_args!("{duration_ms:.3}"),
                "span"
            )
        };
    }
    if mesh_hop {
        span_line!(info);
    } else {
        span_line!(debug);
    }
}

async fn serve<B>(
    component: &LoadedComponent,
    mut request: hyper::Request<B>,
    log_sink: &Arc<dyn LogSink>,
    inbound: &Inbound,
    span: &Span,
    outcome: &Arc<InstanceOutcome>,
) -> hyper::Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    if let Some(caller) = &inbound.caller {
        let callee = &component.workload;
        if inbound.hops > mesh::MAX_HOPS {
            tokio::spawn(drain(request.into_body()));
            return mesh::too_many_hops(callee, inbound.hops);
        }
        if !component.callers.allows(caller) {
            tokio::spawn(drain(request.into_body()));
            return mesh::denied(caller, callee);
        }
        if let Ok(value) = http::HeaderValue::from_str(&caller.spiffe_id()) {
            request.headers_mut().insert(CALLER_HEADER, value);
        }
    }
    if let Ok(value) = http::HeaderValue::from_str(&span.traceparent()) {
        request.headers_mut().insert(TRACEPARENT, value);
    }
    let name = component.name.as_str();
    let limits = &component.limits;
    let request_limit = limits.max_request_body.bytes();
    if declared_length(request.headers()).is_some_and(|len| len > request_limit) {
        tokio::spawn(drain(request.into_body()));
        return request_too_large(name, request_limit);
    }
    if component.memory.under_pressure() {
        return refuse_under_pressure(name);
    }
    let Ok(permit) = component.gate.enter().await else {
        tracing::warn!(
            component = name,
            reason = FailureReason::Overloaded.as_str(),
            "request refused"
        );
        return retry_shortly(format!(
            "component \"{name}\" is at its concurrency limit; retry shortly\n"
        ));
    };
    // Every replica of the process shares the instance pool; waiting here
    // (not failing to instantiate) when it is full, at most the timeout.
    let slot = match component.slots.try_take() {
        Some(slot) => slot,
        None => {
            match tokio::time::timeout(limits.timeout.as_duration(), component.slots.take()).await {
                Ok(slot) => slot,
                Err(_) => {
                    tracing::warn!(
                        component = name,
                        reason = FailureReason::Overloaded.as_str(),
                        "request refused: no free instance slot on this node"
                    );
                    return retry_shortly(format!(
                        "component \"{name}\": this node has no free instance slot; retry shortly\n"
                    ));
                }
            }
        }
    };

    // A request that waited for its place may find the node short of
    // memory by now: still, no new instance.
    if component.memory.under_pressure() {
        return refuse_under_pressure(name);
    }
    let outbound = OutboundContext {
        mesh: inbound.mesh.clone(),
        hops: inbound.hops,
        span: *span,
        outcome: outcome.clone(),
    };
    let mut store = match new_store(component, log_sink, outbound) {
        Ok(store) => store,
        Err(e) => {
            tracing::error!(component = name, "cannot prepare instance: {e}");
            return plain(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("component \"{name}\" could not be started\n"),
            );
        }
    };

    let request_overflow = Arc::new(AtomicBool::new(false));
    let request =
        request.map(|body| RequestBody::new(body, request_limit, request_overflow.clone()));
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let prepared = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request)
        .and_then(|req| {
            let out = store.data_mut().http().new_response_outparam(sender)?;
            Ok((req, out))
        });
    let (req, out) = match prepared {
        Ok(pair) => pair,
        Err(e) => {
            return plain(
                http::StatusCode::BAD_REQUEST,
                format!("bad request: {e:#}\n"),
            );
        }
    };

    let pre = component.pre.clone();
    let reaper = component.reaper.clone();
    let timeout = component.limits.timeout.as_duration();
    let task_name = name.to_string();
    let task_outcome = outcome.clone();
    // The task owns the store and the permit until the guest returns, which
    // may be after the response head is sent (streaming bodies). It logs
    // the instance's failure, whether or not the head was sent.
    let task = tokio::spawn(async move {
        let _permit = permit;
        let _unwinding = FailOnUnwind(task_outcome.clone());
        let run = async {
            let proxy = pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| (FailureReason::Instantiate, e))?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await
                .map_err(|e| (classify_trap(&e, &store), e))
        };
        let result = match tokio::time::timeout(timeout, run).await {
            Ok(result) => result,
            Err(_) => Err((
                FailureReason::Timeout,
                wasmtime::Error::msg(format!("exceeded its {timeout:?} timeout")),
            )),
        };
        if let Err((reason, error)) = &result {
            let _ = task_outcome.failed.set(*reason);
            tracing::warn!(
                component = task_name.as_str(),
                reason = reason.as_str(),
                "request failed: {error:#}"
            );
        }
        release(store, slot, &reaper);
        result
    });

    let answer = receiver.await;
    if request_overflow.load(Ordering::Acquire) {
        return request_too_large(name, request_limit);
    }
    match answer {
        Ok(Ok(mut response)) => {
            strip_platform_headers(response.headers_mut());
            let response =
                response.map(|body| CutOnFailure::new(body, outcome.clone()).boxed_unsync());
            limit_response(name, response, limits.max_response_body.bytes())
        }
        Ok(Err(code)) => {
            tracing::warn!(component = name, "guest answered with error {code:?}");
            plain(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("component \"{name}\" failed: {code:?}\n"),
            )
        }
        Err(_) => {
            let reason = match task.await {
                // The task logged it.
                Ok(Err((reason, _))) => reason,
                Ok(Ok(())) => {
                    tracing::warn!(
                        component = name,
                        reason = FailureReason::NoResponse.as_str(),
                        "request failed: returned without setting a response"
                    );
                    FailureReason::NoResponse
                }
                Err(join) => {
                    tracing::warn!(
                        component = name,
                        reason = FailureReason::Trap.as_str(),
                        "request failed: {join}"
                    );
                    FailureReason::Trap
                }
            };
            failure_response(name, reason)
        }
    }
}

/// The 413 for a request body over the component's limit.
fn request_too_large(name: &str, limit: u64) -> hyper::Response<ResponseBody> {
    tracing::warn!(
        component = name,
        reason = FailureReason::RequestTooLarge.as_str(),
        "request refused"
    );
    let mut response = plain(
        http::StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "request body exceeds the {limit} bytes component \"{name}\" accepts (limits.max_request_body)\n"
        ),
    );
    // The rest of the body is drained, not read: do not reuse the connection.
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}

/// Refuses a response declaring more than `limit` bytes, and cuts off one
/// that streams past it.
fn limit_response(
    name: &str,
    response: hyper::Response<ResponseBody>,
    limit: u64,
) -> hyper::Response<ResponseBody> {
    if declared_length(response.headers()).is_some_and(|len| len > limit) {
        tracing::warn!(
            component = name,
            reason = FailureReason::ResponseTooLarge.as_str(),
            "response refused: declared length over limits.max_response_body"
        );
        return plain(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("component \"{name}\" produced a response larger than its limit\n"),
        );
    }
    let overflow = Arc::new(AtomicBool::new(false));
    let component = name.to_string();
    response.map(move |body| {
        let limited = LimitedBody::response(body, limit, overflow);
        limited
            .map_err(move |e| {
                if matches!(e, wasmtime_wasi_http::Error::HttpResponseBodySize(_)) {
                    tracing::warn!(
                        component,
                        reason = FailureReason::ResponseTooLarge.as_str(),
                        "response cut off at limits.max_response_body"
                    );
                }
                e
            })
            .boxed_unsync()
    })
}

/// A fresh `Store` for one instance of `component`: its capabilities
/// granted, its memory limiter installed, and epoch yielding enabled.
///
/// # Errors
///
/// A message when a capability cannot be granted (e.g. a mount vanished).
pub fn new_store(
    component: &LoadedComponent,
    log_sink: &Arc<dyn LogSink>,
    outbound: OutboundContext,
) -> Result<Store<InstanceState>, String> {
    let mut builder = InstanceBuilder::new(log_sink.clone(), component.workload.clone(), outbound);
    for capability in &component.capabilities {
        capability.grant(&mut builder)?;
    }
    let limits = &component.limits;
    let state = builder.build(InstanceLimits {
        memory_bytes: limits.memory.bytes() as usize,
        outbound_requests: limits.max_outbound_requests,
        resources: limits.max_resources as usize,
    });
    let mut store = Store::new(component.pre.engine(), state);
    store.limiter(|state| &mut state.limiter);
    // Yield to the executor every epoch tick: a busy guest shares its
    // thread, the request timeout gets a chance to fire, and CPU-bound
    // guests take turns in the CPU lane.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(component.cpu_lane.epoch_callback());
    Ok(store)
}

/// Instances whose memory grew past this are torn down by the reaper,
/// off the async workers.
const LARGE_INSTANCE_MEMORY: usize = 8 << 20;

/// Drops a finished instance: here when small, on the reaper when large;
/// its slot is released only once the instance has left the pool.
fn release(store: Store<InstanceState>, slot: InstanceSlot, reaper: &ReaperHandle) {
    if store.data().limiter.peak_memory() > LARGE_INSTANCE_MEMORY {
        // A tuple drops in field order: the store, then the slot.
        reaper.reap((store, slot));
    } else {
        drop(store);
        drop(slot);
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

/// Attributes a failed call to a limit where the store's state shows one
/// was hit.
fn classify_trap(error: &wasmtime::Error, store: &Store<InstanceState>) -> FailureReason {
    if store.data().limiter.memory_refused() {
        return FailureReason::MemoryLimit;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::StackOverflow) => FailureReason::StackOverflow,
        _ => FailureReason::Trap,
    }
}

/// The response for a request whose instance failed (and was logged)
/// before answering.
fn failure_response(name: &str, reason: FailureReason) -> hyper::Response<ResponseBody> {
    let (status, what) = match reason {
        FailureReason::Timeout => (http::StatusCode::GATEWAY_TIMEOUT, "timed out"),
        FailureReason::MemoryLimit => (
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "exceeded its memory limit",
        ),
        FailureReason::StackOverflow => (
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "overflowed its stack",
        ),
        FailureReason::Trap => (http::StatusCode::INTERNAL_SERVER_ERROR, "trapped"),
        FailureReason::NoResponse => (
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "returned without a response",
        ),
        FailureReason::RequestTooLarge => (
            http::StatusCode::PAYLOAD_TOO_LARGE,
            "refused an oversized request body",
        ),
        FailureReason::ResponseTooLarge => (
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "produced an oversized response",
        ),
        FailureReason::Instantiate | FailureReason::Overloaded | FailureReason::MemoryPressure => (
            http::StatusCode::SERVICE_UNAVAILABLE,
            "could not be instantiated",
        ),
    };
    plain(status, format!("component \"{name}\" {what}\n"))
}

/// What the host learns of one instance while it runs, shared between the
/// request path, the instance's task and its response body.
#[derive(Default)]
pub struct InstanceOutcome {
    /// Set, before the instance is dropped, when it failed: a response
    /// body still streaming then is cut off rather than ended.
    failed: OnceLock<FailureReason>,
    /// The instance called another component over the mesh.
    called_mesh: AtomicBool,
}

impl InstanceOutcome {
    /// Records that the instance made a mesh call.
    pub fn note_mesh_call(&self) {
        self.called_mesh.store(true, Ordering::Relaxed);
    }
}

/// A guest's response body that fails, instead of ending, when its instance
/// failed (timeout, trap) before finishing it. Dropping the instance ends
/// the body's stream just as the guest's `finish` does, so without this a
/// client would take a cut-off response for a whole one; with it, the
/// server aborts the response (no final chunk, or short of its
/// content-length). A body the guest finished before failing ends as
/// usual, unless the end is first read after the failure.
struct CutOnFailure {
    inner: ResponseBody,
    outcome: Arc<InstanceOutcome>,
}

/// Marks the instance failed if its task unwinds (a host bug reached by a
/// guest): dropping the store on the way out must not end a half-sent
/// response body as if it were whole.
struct FailOnUnwind(Arc<InstanceOutcome>);

impl Drop for FailOnUnwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.0.failed.set(FailureReason::Trap);
        }
    }
}

impl CutOnFailure {
    fn new(inner: ResponseBody, outcome: Arc<InstanceOutcome>) -> CutOnFailure {
        CutOnFailure { inner, outcome }
    }
}

impl Body for CutOnFailure {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => match self.outcome.failed.get() {
                // The instance sets `failed` before it is dropped, so an end
                // caused by dropping it is always seen here as a failure.
                Some(reason) => Poll::Ready(Some(Err(wasmtime_wasi_http::Error::InternalError(
                    Some(format!(
                        "response cut off: the component failed ({})",
                        reason.as_str()
                    )),
                )))),
                None => Poll::Ready(None),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body relayed from another HTTP peer (a response forwarded from
/// another node), its transport errors surfaced as internal errors.
pub fn relayed<B>(body: B) -> ResponseBody
where
    B: http_body::Body<Data = Bytes, Error = hyper::Error> + Send + 'static,
{
    body.map_err(wasmtime_wasi_http::Error::from).boxed_unsync()
}

/// Logs and answers a request refused because the process is short of
/// memory.
fn refuse_under_pressure(name: &str) -> hyper::Response<ResponseBody> {
    tracing::warn!(
        component = name,
        reason = FailureReason::MemoryPressure.as_str(),
        "request refused: this node is short of memory"
    );
    retry_shortly(format!(
        "this node is short of memory and starts no new instances until it recovers (component \"{name}\"); retry shortly\n"
    ))
}

/// A 503 with `Retry-After: 1`: the request was refused before any
/// instance ran, and may well succeed a moment later.
pub fn retry_shortly(text: String) -> hyper::Response<ResponseBody> {
    let mut response = plain(http::StatusCode::SERVICE_UNAVAILABLE, text);
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    response
}

/// A plain-text response generated by Skiff itself.
pub fn plain(status: http::StatusCode, text: String) -> hyper::Response<ResponseBody> {
    let mut response = hyper::Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_marks_its_instance_failed_and_one_that_returns_does_not() {
        let panicked = Arc::new(InstanceOutcome::default());
        let guard = FailOnUnwind(panicked.clone());
        let task = tokio::spawn(async move {
            let _unwinding = guard;
            tokio::task::yield_now().await;
            panic!("a host bug reached by a guest");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert_eq!(panicked.failed.get(), Some(&FailureReason::Trap));

        let returned = Arc::new(InstanceOutcome::default());
        let guard = FailOnUnwind(returned.clone());
        tokio::spawn(async move {
            let _unwinding = guard;
            tokio::task::yield_now().await;
        })
        .await
        .unwrap();
        assert_eq!(returned.failed.get(), None);
    }
}
