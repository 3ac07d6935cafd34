//! The instance stage, where guest code runs: a new `Store` with only the
//! component's grants, the `wasi:http/incoming-handler` call under the
//! wall-clock deadline and the CPU limits, the request body read within
//! its cap and the response body written within its own, and the mapping
//! of every failure to a status code. The instance is dropped (or handed
//! to the reaper when large) before its slot is given back.

use super::admission::Admitted;
use super::body_cap::request_too_large;
use super::{
    Answer, FailureReason, GuestBody, InstanceOutcome, ResponseBody, Stage, plain,
    strip_platform_headers,
};
use crate::body_limit::{LimitedBody, RequestBody, declared_length};
use crate::capability::logging::LogSink;
use crate::capability::outbound_http::OutboundContext;
use crate::component::LoadedComponent;
use crate::instance::{InstanceBuilder, InstanceLimits, InstanceState};
use crate::limits::InstanceSlot;
use crate::reaper::ReaperHandle;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use wasmtime::component::Resource;
use wasmtime::{Store, Trap};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::{IncomingRequest, ResponseOutparam, Scheme};

/// Runs each admitted request in a fresh instance of one component.
pub(super) struct Instance<'a> {
    component: &'a LoadedComponent,
    log_sink: &'a Arc<dyn LogSink>,
}

impl<'a> Instance<'a> {
    pub(super) fn new(
        component: &'a LoadedComponent,
        log_sink: &'a Arc<dyn LogSink>,
    ) -> Instance<'a> {
        Instance {
            component,
            log_sink,
        }
    }
}

impl Clone for Instance<'_> {
    fn clone(&self) -> Self {
        Instance {
            component: self.component,
            log_sink: self.log_sink,
        }
    }
}

impl<'a, B: GuestBody> tower::Service<Admitted<B>> for Instance<'a> {
    type Response = Answer;
    type Error = Infallible;
    type Future = Stage<'a>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, admitted: Admitted<B>) -> Stage<'a> {
        Box::pin(serve(self.component, self.log_sink, admitted))
    }
}

/// Serves one admitted request in a fresh instance.
async fn serve<B: GuestBody>(
    component: &LoadedComponent,
    log_sink: &Arc<dyn LogSink>,
    admitted: Admitted<B>,
) -> Result<Answer, Infallible> {
    let Admitted { call, permit, slot } = admitted;
    let name = component.name.as_str();
    let limits = &component.limits;
    let outcome = call.outcome;
    let outbound = OutboundContext {
        mesh: call.inbound.mesh.clone(),
        hops: call.inbound.hops,
        span: call.span,
        tracestate: call.tracestate,
        outcome: outcome.clone(),
        series: Some(component.series.clone()),
    };
    let mut store = match new_store(component, log_sink, outbound) {
        Ok(store) => store,
        Err(e) => {
            tracing::error!(component = name, "cannot prepare instance: {e}");
            return Ok(plain(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("component \"{name}\" could not be started\n"),
            ));
        }
    };

    let request_limit = limits.max_request_body.bytes();
    let request_overflow = Arc::new(AtomicBool::new(false));
    let request = call
        .request
        .map(|body| RequestBody::new(body, request_limit, request_overflow.clone()));
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
            return Ok(plain(
                http::StatusCode::BAD_REQUEST,
                format!("bad request: {e:#}\n"),
            ));
        }
    };

    let task = spawn_instance(component, store, req, out, permit, slot, outcome.clone());
    // A caller that goes away does not stop the instance: it runs to its
    // end or its own timeout, so a client cannot cut a guest's work short
    // at a moment of its choosing (the hop's span says 499).
    let answer = receiver.await;
    if request_overflow.load(Ordering::Acquire) {
        outcome.fail(FailureReason::RequestTooLarge);
        return Ok(request_too_large(name, request_limit));
    }
    Ok(match answer {
        Ok(Ok(mut response)) => {
            strip_platform_headers(response.headers_mut());
            let response =
                response.map(|body| CutOnFailure::new(body, outcome.clone()).boxed_unsync());
            limit_response(name, response, limits.max_response_body.bytes(), &outcome)
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
    })
}

/// How an instance's run ended, when it failed: why, and wasmtime's word.
type InstanceResult = Result<(), (FailureReason, wasmtime::Error)>;

/// Runs the instance on a task of its own, which owns the store and the
/// admission's places until the guest returns: that may be after the
/// response head was sent (streaming bodies). The task logs the instance's
/// failure, whether or not the head was sent.
fn spawn_instance(
    component: &LoadedComponent,
    store: Store<InstanceState>,
    req: Resource<IncomingRequest>,
    out: Resource<ResponseOutparam>,
    permit: crate::limits::GatePermit,
    slot: InstanceSlot,
    outcome: Arc<InstanceOutcome>,
) -> tokio::task::JoinHandle<InstanceResult> {
    let pre = component.pre.clone();
    let series = component.series.clone();
    let reaper = component.reaper.clone();
    let timeout = component.limits.timeout.as_duration();
    let task_name = component.name.to_string();
    let task_outcome = outcome;
    // One value, so that however the task ends (unwinding too) the store
    // drops before the slot: a tuple drops in field order, and the slot is
    // given back only once the instance has left the pool.
    let mut instance = (store, slot);
    tokio::spawn(async move {
        let _permit = permit;
        let _unwinding = FailOnUnwind(task_outcome.clone());
        let store = &mut instance.0;
        let run = async {
            let proxy = pre
                .instantiate_async(&mut *store)
                .await
                .map_err(|e| (FailureReason::Instantiate, e))?;
            series.record_instance();
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut *store, req, out)
                .await
                .map_err(|e| (classify_trap(&e, store), e))
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
        let (store, slot) = instance;
        release(store, slot, &reaper);
        result
    })
}

/// Refuses a response declaring more than `limit` bytes, and cuts off one
/// that streams past it.
fn limit_response(name: &str, response: Answer, limit: u64, outcome: &InstanceOutcome) -> Answer {
    if declared_length(response.headers()).is_some_and(|len| len > limit) {
        outcome.fail(FailureReason::ResponseTooLarge);
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
fn failure_response(name: &str, reason: FailureReason) -> Answer {
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
        FailureReason::Instantiate
        | FailureReason::Overloaded
        | FailureReason::MemoryPressure
        | FailureReason::CallerNotAllowed
        | FailureReason::HopLimit => (
            http::StatusCode::SERVICE_UNAVAILABLE,
            "could not be instantiated",
        ),
    };
    plain(status, format!("component \"{name}\" {what}\n"))
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
