//! The trace stage: each request is one span of its trace (`traceparent`,
//! continued or started), which the guest sees and its outbound calls
//! carry, and which is logged as one line when the response head is ready.

use super::{Answer, Around, Call, Stage};
use crate::component::LoadedComponent;
use crate::mesh::{Inbound, Span, TRACEPARENT};
use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Instant;

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
        let started = Instant::now();
        let traceparent = call.span.traceparent();
        call.set_header(TRACEPARENT, &traceparent);
        let span = call.span;
        let inbound = call.inbound.clone();
        let outcome = call.outcome.clone();
        let component = self.component;
        let inner = self.inner.call(call);
        Box::pin(async move {
            let answer = inner.await?;
            let mesh_hop = inbound.caller.is_some() || outcome.called_mesh();
            log_span(
                component,
                &inbound,
                &span,
                answer.status(),
                started,
                mesh_hop,
            );
            Ok(answer)
        })
    }
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
