//! The trace stage: each request is one span of its trace (`traceparent`,
//! continued or started), which the guest sees and its outbound calls
//! carry, and which is logged as one line when the response head is ready.

use super::{Answer, Around, Call, Stage};
use crate::component::LoadedComponent;
use crate::mesh::{Inbound, Span, TRACEPARENT};
use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

/// Wraps the stages inside it in the request's span.
pub(super) struct Traced;

impl<'a, B, S> tower::Service<Call<B>> for Around<'a, Traced, S>
where
    S: tower::Service<Call<B>, Response = Answer, Error = Infallible, Future = Stage<'a>>,
{
    type Response = Answer;
    type Error = Infallible;
    type Future = Stage<'a>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut call: Call<B>) -> Stage<'a> {
        let traceparent = call.span.traceparent();
        call.set_header(TRACEPARENT, &traceparent);
        let mut hop = Hop {
            component: self.component,
            inbound: call.inbound.clone(),
            span: call.span,
            outcome: call.outcome.clone(),
            exported: crate::otlp::enabled().then(|| {
                (
                    call.request.method().clone(),
                    call.request.uri().path().to_string(),
                )
            }),
            started: Instant::now(),
            logged: false,
        };
        let inner = self.inner.call(call);
        Box::pin(async move {
            let answer = inner.await?;
            hop.log(answer.status().as_u16());
            Ok(answer)
        })
    }
}

/// One hop's span, logged once: when its response head is ready, or, if
/// the request is dropped first (its caller went away), with status 499.
struct Hop<'a> {
    component: &'a LoadedComponent,
    inbound: Inbound,
    span: Span,
    outcome: std::sync::Arc<super::InstanceOutcome>,
    /// The request's method and path, kept only when spans are exported:
    /// no copy per request otherwise.
    exported: Option<(http::Method, String)>,
    started: Instant,
    logged: bool,
}

/// The status a span shows when its caller went away before the
/// response began (as nginx logs it).
const CALLER_GONE: u16 = 499;

impl Hop<'_> {
    fn log(&mut self, status: u16) {
        self.logged = true;
        let reason = self.outcome.failed.get().map(|reason| reason.as_str());
        self.component.outcomes.record(status, reason);
        let shown = reason.or((status == CALLER_GONE).then_some("caller_gone"));
        self.component
            .series
            .record_request(status, shown, self.started.elapsed());
        self.log_span(status);
    }

    fn log_span(&self, status: u16) {
        self.export(status);
        let mesh_hop = self.inbound.caller.is_some() || self.outcome.called_mesh();
        log_span(
            self.component,
            &self.inbound,
            &self.span,
            status,
            self.started,
            mesh_hop,
        );
    }
}

impl Hop<'_> {
    /// Queues the hop's span for OTLP, when spans are exported.
    fn export(&self, status: u16) {
        let Some((method, path)) = &self.exported else {
            return;
        };
        // The wall clock is read only for an exported span.
        let end = SystemTime::now();
        let (trace_id, span_id, parent_id, sampled) = self.span.ids();
        let workload = &self.component.workload;
        crate::otlp::export(crate::otlp::HopSpan {
            trace_id,
            span_id,
            parent_id,
            sampled,
            method,
            route: self.component.route.as_ref().map(ToString::to_string),
            path,
            app: workload.app.as_str(),
            component: workload.component.as_str(),
            caller: self
                .inbound
                .caller
                .as_ref()
                .map_or_else(|| "ingress".to_string(), |caller| caller.spiffe_id()),
            status,
            start: end - self.started.elapsed(),
            end,
        });
    }
}

impl Drop for Hop<'_> {
    fn drop(&mut self) {
        if self.logged {
            return;
        }
        if GIVEN_UP.get() {
            // The platform's `request_timeout`, not the caller: the caller
            // gets 504, and the version is charged with it.
            self.logged = true;
            self.component
                .outcomes
                .record(GATEWAY_TIMEOUT, Some("request_timeout"));
            self.component.series.record_request(
                GATEWAY_TIMEOUT,
                Some("request_timeout"),
                self.started.elapsed(),
            );
            self.log_span(GATEWAY_TIMEOUT);
        } else {
            self.log(CALLER_GONE);
        }
    }
}

/// The status a caller gets when its `request_timeout` passes.
const GATEWAY_TIMEOUT: u16 = 504;

thread_local! {
    /// Set while a request is dropped because its `request_timeout`
    /// passed (see [`give_up`]).
    static GIVEN_UP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Drops `request` (the future serving a request) because the platform
/// gives up on it (its `request_timeout` passed): the hop it was in is
/// charged with a 504 (`request_timeout`) rather than taken for a caller
/// that went away, so a version too slow for its timeout shows failing.
pub fn give_up<T>(request: T) {
    // Dropped here, on this thread: the hop's `drop` reads the flag.
    GIVEN_UP.set(true);
    drop(request);
    GIVEN_UP.set(false);
}

/// Logs the hop `span` (to its response head): at info when it is part of
/// a trace across the mesh (it was a mesh call, or made one), at debug for
/// a request served alone (`RUST_LOG=info,skiff::span=debug` shows those
/// too), so plain traffic does not flood the log.
fn log_span(
    component: &LoadedComponent,
    inbound: &Inbound,
    span: &Span,
    status: u16,
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
                status,
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
