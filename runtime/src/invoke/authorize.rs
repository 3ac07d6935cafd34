//! The authorization stage: a mesh call reaches the callee only within the
//! hop limit and from a caller its `allow_callers` lists, and the guest is
//! told who calls in `skiff-caller`; a refused call's body is drained and
//! no instance starts. Requests from ingress pass untouched (ingress
//! reaches only routed components, which the node checks before this).

use super::{Answer, Around, Call, FailureReason, GuestBody, Stage, answered};
use crate::body_limit::drain;
use crate::mesh::{self, CALLER_HEADER};
use std::convert::Infallible;
use std::task::{Context, Poll};

/// Refuses mesh calls the callee does not accept.
pub(super) struct Authorized;

impl<'a, B: GuestBody, S> tower::Service<Call<B>> for Around<'a, Authorized, S>
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
        let Some(caller) = call.inbound.caller.clone() else {
            return self.inner.call(call);
        };
        let callee = &self.component.workload;
        let refusal = if call.inbound.hops > mesh::MAX_HOPS {
            Some((
                FailureReason::HopLimit,
                mesh::too_many_hops(callee, call.inbound.hops),
            ))
        } else if !self.component.callers.allows(&caller) {
            Some((
                FailureReason::CallerNotAllowed,
                mesh::denied(&caller, callee),
            ))
        } else {
            None
        };
        if let Some((reason, refusal)) = refusal {
            call.outcome.fail(reason);
            tokio::spawn(drain(call.request.into_body()));
            return answered(refusal);
        }
        call.set_header(CALLER_HEADER, &caller.spiffe_id());
        self.inner.call(call)
    }
}
