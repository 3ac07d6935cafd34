//! Per-instance and per-component limits enforced on the request path: the
//! memory and table limiter wasmtime consults, and the concurrency gate with
//! its bounded wait queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::ResourceLimiter;

/// Elements any one table may hold; bounds host memory spent on tables.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// The `ResourceLimiter` of one instance; remembers whether it refused a
/// memory growth so a failed request can be attributed to the memory limit.
#[derive(Debug)]
pub struct InstanceLimiter {
    memory_bytes: usize,
    memory_refused: bool,
    peak_memory: usize,
}

impl InstanceLimiter {
    /// A limiter capping each linear memory at `memory_bytes`.
    pub fn new(memory_bytes: usize) -> InstanceLimiter {
        InstanceLimiter {
            memory_bytes,
            memory_refused: false,
            peak_memory: 0,
        }
    }

    /// The largest linear memory size granted, in bytes.
    pub fn peak_memory(&self) -> usize {
        self.peak_memory
    }

    /// Whether a `memory.grow` past the cap was refused.
    pub fn memory_refused(&self) -> bool {
        self.memory_refused
    }
}

impl ResourceLimiter for InstanceLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_refused = true;
            return Ok(false);
        }
        self.peak_memory = self.peak_memory.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Admits at most `max_concurrency` requests into instances of one
/// component, with at most `max_queued` more waiting; the rest are refused.
#[derive(Debug)]
pub struct ConcurrencyGate {
    permits: Arc<Semaphore>,
    queued: AtomicUsize,
    max_queued: usize,
}

/// The gate's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

impl ConcurrencyGate {
    /// A gate for `max_concurrency` running and `max_queued` waiting.
    pub fn new(max_concurrency: u32, max_queued: u32) -> ConcurrencyGate {
        ConcurrencyGate {
            permits: Arc::new(Semaphore::new(max_concurrency as usize)),
            queued: AtomicUsize::new(0),
            max_queued: max_queued as usize,
        }
    }

    /// Waits for a slot; the permit frees it when dropped.
    ///
    /// # Errors
    ///
    /// [`Busy`] at once when every slot is taken and the queue is full.
    pub async fn enter(&self) -> Result<OwnedSemaphorePermit, Busy> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Busy);
        }
        let _leave_queue = QueueSlot(&self.queued);
        self.permits.clone().acquire_owned().await.map_err(|_| Busy)
    }
}

/// Leaves the wait queue when dropped, also when the waiting request is
/// cancelled.
struct QueueSlot<'a>(&'a AtomicUsize);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_gate_refuses_past_its_queue() {
        let gate = Arc::new(ConcurrencyGate::new(1, 1));
        let running = gate.enter().await.unwrap();
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.enter().await.map(drop) })
        };
        tokio::task::yield_now().await;
        while gate.queued.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(gate.enter().await.unwrap_err(), Busy);
        drop(running);
        assert!(waiter.await.unwrap().is_ok());
        assert_eq!(gate.queued.load(Ordering::Acquire), 0);
    }
}
