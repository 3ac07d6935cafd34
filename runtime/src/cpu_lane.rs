//! Fair CPU sharing between instances. An instance still running after a
//! short burst is CPU-bound: from then on it yields to the executor at every
//! epoch tick and queues for a slot in a lane with fewer slots than the node
//! has cores. Short requests never enter the lane, so a few guests spinning
//! in loops cannot take every core from their neighbours.

use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::{StoreContextMut, UpdateDeadline};

/// Ticks (of [`crate::engine::EPOCH_TICK`]) an instance may run before it
/// counts as CPU-bound.
pub const BURST_TICKS: u32 = 2;

/// The shared lane of CPU-bound instances.
#[derive(Debug, Clone)]
pub struct CpuLane {
    slots: Arc<Semaphore>,
}

impl CpuLane {
    /// A lane where `slots` CPU-bound instances run at once.
    pub fn new(slots: usize) -> CpuLane {
        CpuLane {
            slots: Arc::new(Semaphore::new(slots.max(1))),
        }
    }

    /// A lane with half the machine's cores (at least one).
    pub fn for_this_machine() -> CpuLane {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        CpuLane::new(cores / 2)
    }

    /// The epoch-deadline callback for one new store: run through the
    /// burst; past it, give up the lane slot at each tick and queue for it
    /// again, so CPU-bound instances round-robin through the lane.
    pub fn epoch_callback<T>(
        &self,
    ) -> impl FnMut(StoreContextMut<'_, T>) -> wasmtime::Result<UpdateDeadline> + Send + Sync + 'static
    {
        let slots = self.slots.clone();
        let held: Arc<Mutex<Option<OwnedSemaphorePermit>>> = Arc::new(Mutex::new(None));
        let mut ticks = 0u32;
        move |_| {
            ticks = ticks.saturating_add(1);
            if ticks <= BURST_TICKS {
                // Short requests run to completion: yielding them would
                // only send them to the back of the run queue.
                return Ok(UpdateDeadline::Continue(1));
            }
            drop(held.lock().expect("lane slot lock").take());
            let slots = slots.clone();
            let held = held.clone();
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(async move {
                    if let Ok(permit) = slots.acquire_owned().await {
                        *held.lock().expect("lane slot lock") = Some(permit);
                    }
                }),
            ))
        }
    }
}
