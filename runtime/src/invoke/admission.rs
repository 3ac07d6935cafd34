//! The admission stage: no new instance while the process is short of
//! memory; one place in the component's concurrency gate (its queue
//! included); one of the process's instance slots, waited for at most the
//! component's timeout. A request refused here is answered 503 with
//! `Retry-After`: nothing ran, so trying again shortly is safe.

use super::{Answer, Around, Call, FailureReason, Stage, answered, retry_shortly};
use crate::limits::InstanceSlot;
use std::convert::Infallible;
use std::task::{Context, Poll};

/// A request admitted to run an instance, holding its places until the
/// instance is gone.
pub(super) struct Admitted<B> {
    pub(super) call: Call<B>,
    pub(super) permit: crate::limits::GatePermit,
    pub(super) slot: InstanceSlot,
}

/// Admits requests while the node has room for one more instance.
pub(super) struct Admission;

impl<'a, B: Send + 'a, S> tower::Service<Call<B>> for Around<'a, Admission, S>
where
    S: tower::Service<Admitted<B>, Response = Answer, Error = Infallible, Future = Stage<'a>>
        + Clone
        + Send
        + 'a,
{
    type Response = Answer;
    type Error = Infallible;
    type Future = Stage<'a>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call<B>) -> Stage<'a> {
        let component = self.component;
        let name = component.name.as_str();
        if component.memory.under_pressure() {
            call.outcome.fail(FailureReason::MemoryPressure);
            return answered(refuse_under_pressure(name));
        }
        // The inner service was made ready for this call: take it, leave a
        // clone for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let Ok(permit) = component.gate.enter().await else {
                call.outcome.fail(FailureReason::Overloaded);
                tracing::warn!(
                    component = name,
                    reason = FailureReason::Overloaded.as_str(),
                    "request refused"
                );
                return Ok(retry_shortly(format!(
                    "component \"{name}\" is at its concurrency limit; retry shortly\n"
                )));
            };
            // Every replica of the process shares the instance pool; waiting
            // here (not failing to instantiate) when it is full, at most the
            // timeout.
            let timeout = component.limits.timeout.as_duration();
            let slot = match component.slots.try_take() {
                Some(slot) => slot,
                None => match tokio::time::timeout(timeout, component.slots.take()).await {
                    Ok(slot) => slot,
                    Err(_) => {
                        call.outcome.fail(FailureReason::Overloaded);
                        tracing::warn!(
                            component = name,
                            reason = FailureReason::Overloaded.as_str(),
                            "request refused: no free instance slot on this node"
                        );
                        return Ok(retry_shortly(format!(
                            "component \"{name}\": this node has no free instance slot; retry shortly\n"
                        )));
                    }
                },
            };
            // A request that waited for its place may find the node short
            // of memory by now: still, no new instance.
            if component.memory.under_pressure() {
                call.outcome.fail(FailureReason::MemoryPressure);
                return Ok(refuse_under_pressure(name));
            }
            inner.call(Admitted { call, permit, slot }).await
        })
    }
}

/// Logs and answers a request refused because the process is short of
/// memory.
fn refuse_under_pressure(name: &str) -> Answer {
    tracing::warn!(
        component = name,
        reason = FailureReason::MemoryPressure.as_str(),
        "request refused: this node is short of memory"
    );
    retry_shortly(format!(
        "this node is short of memory and starts no new instances until it recovers (component \"{name}\"); retry shortly\n"
    ))
}
