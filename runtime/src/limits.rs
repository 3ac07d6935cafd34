//! Per-instance, per-component and per-process limits enforced on the
//! request path: the memory and table limiter wasmtime consults, the
//! concurrency gate with its bounded wait queue, and the instance slots
//! every replica of the process shares.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use wasmtime::ResourceLimiter;

/// Elements all of one instance's tables may hold together; bounds host
/// memory spent on tables.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// The `ResourceLimiter` of one instance. It caps the sum of the sizes of
/// all the instance's linear memories (a component may hold several), and
/// the sum of its tables' elements; it remembers whether it refused a
/// memory growth so a failed request can be attributed to the memory limit.
#[derive(Debug)]
pub struct InstanceLimiter {
    memory_bytes: usize,
    memory_in_use: usize,
    table_elements: usize,
    memory_refused: bool,
}

impl InstanceLimiter {
    /// A limiter capping the instance's linear memories, all together, at
    /// `memory_bytes`.
    pub fn new(memory_bytes: usize) -> InstanceLimiter {
        InstanceLimiter {
            memory_bytes,
            memory_in_use: 0,
            table_elements: 0,
            memory_refused: false,
        }
    }

    /// The most linear memory granted, all memories together, in bytes.
    /// Memories never shrink, so this is also what the instance holds now.
    pub fn peak_memory(&self) -> usize {
        self.memory_in_use
    }

    /// Whether a `memory.grow` past the cap was refused.
    pub fn memory_refused(&self) -> bool {
        self.memory_refused
    }
}

impl ResourceLimiter for InstanceLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            // Past the memory's own declared maximum: wasmtime refuses it
            // anyway, and it is not the manifest's limit that was hit.
            return Ok(false);
        }
        // Memories only grow; a growth approved here that wasmtime then
        // fails to map stays counted, which errs on the side of the cap.
        let total = self
            .memory_in_use
            .saturating_add(desired.saturating_sub(current));
        if total > self.memory_bytes {
            self.memory_refused = true;
            return Ok(false);
        }
        self.memory_in_use = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let total = self
            .table_elements
            .saturating_add(desired.saturating_sub(current));
        if total > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.table_elements = total;
        Ok(true)
    }
}

/// Admits at most `max_concurrency` requests into instances of one
/// component (times the replicas of it the node runs), with at most
/// `max_queued` more waiting; the rest are refused.
#[derive(Debug)]
pub struct ConcurrencyGate {
    permits: Arc<Semaphore>,
    per_replica: usize,
    /// Requests inside or queued, integrated over time, for the average
    /// demand (see [`ConcurrencyGate::take_average`]).
    demand: Arc<Mutex<DemandArea>>,
    /// The admitted-at-once limit now, and the permits to forget as they
    /// come back (the limit was lowered while they were in use).
    size: Arc<Mutex<GateSize>>,
    queued: AtomicUsize,
    max_queued: usize,
}

#[derive(Debug)]
struct GateSize {
    limit: usize,
    owed: usize,
}

/// Requests inside or queued now, and their count integrated over time
/// since the average was last taken: the exact time-weighted demand,
/// however short the requests.
#[derive(Debug)]
struct DemandArea {
    count: usize,
    /// When `count` last changed, or the area was last taken.
    since: Instant,
    /// Request-seconds since `taken`.
    area: f64,
    taken: Instant,
}

impl DemandArea {
    fn change(&mut self, up: bool) {
        let now = Instant::now();
        self.area += self.count as f64 * (now - self.since).as_secs_f64();
        self.since = now;
        if up {
            self.count += 1;
        } else {
            self.count = self.count.saturating_sub(1);
        }
    }
}

/// One request counted as demand (queued or inside) until dropped.
#[derive(Debug)]
struct Demand(Arc<Mutex<DemandArea>>);

impl Demand {
    fn new(area: &Arc<Mutex<DemandArea>>) -> Demand {
        area.lock().unwrap_or_else(|e| e.into_inner()).change(true);
        Demand(area.clone())
    }
}

impl Drop for Demand {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .change(false);
    }
}

/// A place in the gate, given back when dropped (or forgotten, when the
/// gate has shrunk since it was taken).
#[derive(Debug)]
pub struct GatePermit {
    permit: Option<OwnedSemaphorePermit>,
    size: Arc<Mutex<GateSize>>,
    _demand: Demand,
}

impl Drop for GatePermit {
    fn drop(&mut self) {
        let mut size = self.size.lock().unwrap_or_else(|e| e.into_inner());
        if size.owed > 0 {
            size.owed -= 1;
            if let Some(permit) = self.permit.take() {
                permit.forget();
            }
        }
    }
}

/// The gate's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

impl ConcurrencyGate {
    /// A gate for `max_concurrency` running and `max_queued` waiting.
    pub fn new(max_concurrency: u32, max_queued: u32) -> ConcurrencyGate {
        ConcurrencyGate {
            permits: Arc::new(Semaphore::new(max_concurrency as usize)),
            per_replica: max_concurrency as usize,
            demand: Arc::new(Mutex::new(DemandArea {
                count: 0,
                since: Instant::now(),
                area: 0.0,
                taken: Instant::now(),
            })),
            size: Arc::new(Mutex::new(GateSize {
                limit: max_concurrency as usize,
                owed: 0,
            })),
            queued: AtomicUsize::new(0),
            max_queued: max_queued as usize,
        }
    }

    /// Admits `max_concurrency` times `replicas` at once from now on: a
    /// node running three replicas of a component reserved memory for
    /// three, so it admits three times as many. Requests inside past a
    /// lower limit finish; their places are not given back.
    pub fn set_replicas(&self, replicas: u32) {
        let wanted = self.per_replica.saturating_mul(replicas.max(1) as usize);
        let mut size = self.size.lock().unwrap_or_else(|e| e.into_inner());
        if wanted > size.limit {
            let mut more = wanted - size.limit;
            let repaid = more.min(size.owed);
            size.owed -= repaid;
            more -= repaid;
            self.permits.add_permits(more);
        } else {
            let fewer = size.limit - wanted;
            let forgotten = self.permits.forget_permits(fewer);
            size.owed += fewer - forgotten;
        }
        size.limit = wanted;
    }

    /// Requests inside (holding a place) or waiting in the queue now.
    pub fn in_flight(&self) -> usize {
        let size = self.size.lock().unwrap_or_else(|e| e.into_inner());
        let inside = (size.limit + size.owed).saturating_sub(self.permits.available_permits());
        inside + self.queued.load(Ordering::Acquire)
    }

    /// Requests waiting in the queue now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The average number of requests inside or queued since the last
    /// call (or since the gate was made), and starts the next average:
    /// every request counts for exactly its time here, so a stream of
    /// requests shorter than any sampling interval is seen too.
    pub fn take_average(&self) -> f64 {
        let mut demand = self.demand.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        demand.area += demand.count as f64 * (now - demand.since).as_secs_f64();
        demand.since = now;
        let span = (now - demand.taken).as_secs_f64();
        let average = if span > 0.0 { demand.area / span } else { 0.0 };
        demand.area = 0.0;
        demand.taken = now;
        average
    }

    /// Whether a request arriving now would be refused: every place is
    /// taken and the queue is full.
    pub fn queue_is_full(&self) -> bool {
        self.is_full() && self.queued.load(Ordering::Acquire) >= self.max_queued
    }

    /// Whether a request arriving now would wait: every place is taken.
    pub fn is_full(&self) -> bool {
        self.permits.available_permits() == 0
    }

    /// Waits for a place; the permit gives it back when dropped.
    ///
    /// # Errors
    ///
    /// [`Busy`] at once when every place is taken and the queue is full.
    pub async fn enter(&self) -> Result<GatePermit, Busy> {
        let (permit, demand) = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => (permit, Demand::new(&self.demand)),
            Err(_) => {
                if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queued {
                    self.queued.fetch_sub(1, Ordering::AcqRel);
                    return Err(Busy);
                }
                let _leave_queue = QueueSlot(&self.queued);
                // Queued is demand too, until it leaves (admitted or not).
                let demand = Demand::new(&self.demand);
                let permit = self
                    .permits
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| Busy)?;
                (permit, demand)
            }
        };
        Ok(GatePermit {
            permit: Some(permit),
            size: self.size.clone(),
            _demand: demand,
        })
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

/// The instance slots of one process: as many as its engines' instance
/// pools hold, shared by every replica, so instantiating never fails for
/// want of a pool slot.
///
/// One replica with a large `max_concurrency` could otherwise take every
/// slot and starve its neighbours. So the last `reserve` free slots (a
/// quarter of them) go only to replicas holding fewer than `min_share`
/// slots: a single replica holds at most `total - reserve` slots however
/// busy it is, and a replica arriving then still gets a slot at once. A
/// replica refused a slot waits until one is released.
#[derive(Debug, Clone)]
pub struct InstanceSlots {
    shared: Arc<SlotsShared>,
}

#[derive(Debug)]
struct SlotsShared {
    total: usize,
    reserve: usize,
    min_share: usize,
    free: Mutex<usize>,
    released: Notify,
    /// Signalled (under `free`) when the first slot is taken while a
    /// thread waits for that, and when a waiter is asked to stop waiting.
    taken: Condvar,
    /// A thread waits on `taken`; changed only under `free`.
    waiting: AtomicBool,
}

impl InstanceSlots {
    /// `total` slots, a quarter of them held back for replicas that hold
    /// few; each such replica may take up to a sixteenth of that reserve
    /// (at least one slot).
    pub fn new(total: usize) -> InstanceSlots {
        let reserve = total / 4;
        InstanceSlots {
            shared: Arc::new(SlotsShared {
                total,
                reserve,
                min_share: (reserve / 16).max(1),
                free: Mutex::new(total),
                released: Notify::new(),
                taken: Condvar::new(),
                waiting: AtomicBool::new(false),
            }),
        }
    }

    /// The slots in all.
    pub fn total(&self) -> usize {
        self.shared.total
    }

    /// The most slots one replica can hold while others are held back
    /// from the reserve: `total - reserve`.
    pub fn max_per_replica(&self) -> usize {
        self.shared.total - self.shared.reserve
    }

    /// Blocks the calling thread while no slot is taken (no instance
    /// runs), until one is or `stop` is set and [`InstanceSlots::wake`]
    /// called.
    pub(crate) fn wait_until_taken(&self, stop: &AtomicBool) {
        let shared = &self.shared;
        let mut free = shared.free.lock().expect("instance slots lock");
        while *free == shared.total && !stop.load(Ordering::SeqCst) {
            shared.waiting.store(true, Ordering::Relaxed);
            free = shared.taken.wait(free).expect("instance slots lock");
        }
        shared.waiting.store(false, Ordering::Relaxed);
    }

    /// Whether any slot is taken (any instance runs) now.
    pub(crate) fn any_taken(&self) -> bool {
        *self.shared.free.lock().expect("instance slots lock") < self.shared.total
    }

    /// Wakes every thread in [`InstanceSlots::wait_until_taken`], so it
    /// can see its `stop`.
    pub(crate) fn wake(&self) {
        let _free = self.shared.free.lock().expect("instance slots lock");
        self.shared.taken.notify_all();
    }

    /// A new replica's account, holding no slot.
    pub fn replica(&self) -> ReplicaSlots {
        ReplicaSlots {
            slots: self.clone(),
            held: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// The slots one replica holds.
#[derive(Debug, Clone)]
pub struct ReplicaSlots {
    slots: InstanceSlots,
    // Changed only under the `free` lock, so the two always agree.
    held: Arc<AtomicUsize>,
}

impl ReplicaSlots {
    /// Takes a slot, waiting until one this replica may take is released.
    pub async fn take(&self) -> InstanceSlot {
        loop {
            let released = self.slots.shared.released.notified();
            tokio::pin!(released);
            // Registered before trying, so a release in between is not lost.
            released.as_mut().enable();
            if let Some(slot) = self.try_take() {
                return slot;
            }
            released.await;
        }
    }

    /// Takes a slot if this replica may have one now.
    pub fn try_take(&self) -> Option<InstanceSlot> {
        let shared = &self.slots.shared;
        let mut free = shared.free.lock().expect("instance slots lock");
        let held = self.held.load(Ordering::Relaxed);
        let allowed = *free > shared.reserve || (*free > 0 && held < shared.min_share);
        if !allowed {
            return None;
        }
        if *free == shared.total && shared.waiting.load(Ordering::Relaxed) {
            shared.taken.notify_all();
        }
        *free -= 1;
        self.held.store(held + 1, Ordering::Relaxed);
        Some(InstanceSlot {
            replica: self.clone(),
        })
    }

    /// Slots this replica holds now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// One instance slot; released when dropped, after the instance is gone.
#[derive(Debug)]
pub struct InstanceSlot {
    replica: ReplicaSlots,
}

impl Drop for InstanceSlot {
    fn drop(&mut self) {
        let shared = &self.replica.slots.shared;
        {
            let mut free = shared.free.lock().expect("instance slots lock");
            *free += 1;
            self.replica.held.fetch_sub(1, Ordering::Relaxed);
        }
        shared.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineConfig, SkiffEngine};
    use crate::manifest::DEFAULT_STACK;
    use std::time::Duration;
    use wasmtime::Store;
    use wasmtime::component::{Component, Linker};

    /// A component holding two linear memories (two instances of one core
    /// module), each one page to start; `grow-a` and `grow-b` grow one of
    /// them by N pages and return the old size in pages, or -1 if refused.
    const TWO_MEMORIES: &str = r#"
        (component
          (core module $m
            (memory 1)
            (func (export "grow") (param i32) (result i32)
              local.get 0
              memory.grow))
          (core instance $a (instantiate $m))
          (core instance $b (instantiate $m))
          (func (export "grow-a") (param "pages" u32) (result s32)
            (canon lift (core func $a "grow")))
          (func (export "grow-b") (param "pages" u32) (result s32)
            (canon lift (core func $b "grow"))))
    "#;

    const PAGE: usize = 64 << 10;

    #[tokio::test]
    async fn two_memories_share_one_cap() {
        let engine = SkiffEngine::new(EngineConfig {
            max_instances: 4,
            max_instance_memory: 16 << 20,
            ..EngineConfig::default()
        })
        .unwrap();
        let class = engine.for_stack(DEFAULT_STACK).unwrap();
        let wasm = wat::parse_str(TWO_MEMORIES).unwrap();
        let component = Component::new(class.engine(), &wasm).unwrap();
        // Four pages for the whole instance; each memory starts with one.
        let mut store = Store::new(class.engine(), InstanceLimiter::new(4 * PAGE));
        store.limiter(|limiter| limiter);
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = Linker::new(class.engine())
            .instantiate_async(&mut store, &component)
            .await
            .unwrap();
        assert_eq!(store.data().peak_memory(), 2 * PAGE);
        let grow_a = instance
            .get_typed_func::<(u32,), (i32,)>(&mut store, "grow-a")
            .unwrap();
        let grow_b = instance
            .get_typed_func::<(u32,), (i32,)>(&mut store, "grow-b")
            .unwrap();
        let mut call = async |func: wasmtime::component::TypedFunc<(u32,), (i32,)>, pages| {
            func.call_async(&mut store, (pages,)).await.unwrap().0
        };
        assert_eq!(
            call(grow_a, 1).await,
            1,
            "the first memory grows to 2 pages"
        );
        assert_eq!(call(grow_b, 1).await, 1, "the second grows to 2: 4 in all");
        assert_eq!(
            call(grow_b, 1).await,
            -1,
            "the second memory alone is under the cap, but both together would pass it"
        );
        assert_eq!(call(grow_a, 1).await, -1);
        assert!(store.data().memory_refused());
        assert_eq!(store.data().peak_memory(), 4 * PAGE);
    }

    #[test]
    fn memory_and_tables_are_counted_across_the_instance() {
        let mut limiter = InstanceLimiter::new(4 * PAGE);
        assert!(limiter.memory_growing(0, 3 * PAGE, None).unwrap());
        assert!(!limiter.memory_growing(0, 2 * PAGE, None).unwrap());
        assert!(limiter.memory_growing(0, PAGE, None).unwrap());
        assert!(limiter.memory_refused());
        // A growth past a memory's own maximum is not the cap's doing.
        let mut limiter = InstanceLimiter::new(4 * PAGE);
        assert!(!limiter.memory_growing(PAGE, 2 * PAGE, Some(PAGE)).unwrap());
        assert!(!limiter.memory_refused());
        assert!(
            limiter
                .table_growing(0, MAX_TABLE_ELEMENTS - 10, None)
                .unwrap()
        );
        assert!(!limiter.table_growing(0, 11, None).unwrap());
        assert!(limiter.table_growing(0, 10, None).unwrap());
    }

    #[tokio::test]
    async fn one_replica_cannot_take_the_reserve() {
        let slots = InstanceSlots::new(8);
        let hostile = slots.replica();
        let mut held = Vec::new();
        while let Some(slot) = hostile.try_take() {
            held.push(slot);
        }
        assert_eq!(held.len(), slots.max_per_replica());
        assert_eq!(held.len(), 6);

        // A neighbour still gets a slot at once; the hostile replica waits.
        let neighbour = slots.replica();
        let neighbours_slot = neighbour.try_take().expect("a neighbour gets a slot");
        let waiting = {
            let hostile = hostile.clone();
            tokio::spawn(async move { hostile.take().await })
        };
        // Releasing one of its own does not let it back into the reserve.
        drop(held.pop());
        tokio::task::yield_now().await;
        assert!(hostile.try_take().is_none());
        assert!(!waiting.is_finished());
        drop(neighbours_slot);
        let slot = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("a released slot wakes the waiting replica")
            .unwrap();
        assert_eq!(hostile.held(), 6);
        drop(slot);
        drop(held);
        assert_eq!(hostile.held(), 0);
        assert_eq!(neighbour.held(), 0);
        assert_eq!(*slots.shared.free.lock().unwrap(), 8);
    }

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
        // One inside and one waiting: both are demand.
        assert_eq!(gate.in_flight(), 2);
        assert!(gate.is_full());
        drop(running);
        assert!(waiter.await.unwrap().is_ok());
        assert_eq!(gate.queued.load(Ordering::Acquire), 0);
        assert_eq!(gate.in_flight(), 0);
        assert!(!gate.is_full());
    }

    #[tokio::test]
    async fn a_gate_grows_and_shrinks_with_the_replicas_its_node_runs() {
        let gate = ConcurrencyGate::new(2, 0);
        gate.set_replicas(3);
        let inside: Vec<_> = (0..6).map(|_| gate.enter()).collect();
        let mut inside: Vec<_> = futures_join(inside).await;
        assert_eq!(gate.in_flight(), 6);
        assert!(gate.enter().await.is_err(), "six places for three replicas");
        // Down to one replica while six are inside: they finish, and
        // their places are not given back until only two remain.
        gate.set_replicas(1);
        assert_eq!(gate.in_flight(), 6);
        inside.truncate(2);
        assert_eq!(gate.in_flight(), 2);
        assert!(gate.enter().await.is_err(), "two places for one replica");
        inside.clear();
        assert_eq!(gate.in_flight(), 0);
        let two = (gate.enter().await.unwrap(), gate.enter().await.unwrap());
        assert!(gate.enter().await.is_err());
        drop(two);
        // Up again while places are owed: the debt is cancelled first.
        let held = gate.enter().await.unwrap();
        gate.set_replicas(3);
        gate.set_replicas(2);
        let more: Vec<_> = futures_join((0..3).map(|_| gate.enter()).collect()).await;
        assert!(gate.enter().await.is_err(), "four places for two replicas");
        drop((held, more));
        assert_eq!(gate.in_flight(), 0);
    }

    #[tokio::test]
    async fn the_average_demand_counts_each_request_for_its_time_inside_or_queued() {
        let gate = ConcurrencyGate::new(1, 4);
        let _ = gate.take_average();
        let started = std::time::Instant::now();
        // One inside for the whole span, one queued for half of it.
        let inside = gate.enter().await.unwrap();
        let queued = {
            let gate = &gate;
            async move {
                let waiting = gate.enter();
                tokio::pin!(waiting);
                tokio::select! {
                    _ = &mut waiting => panic!("admitted past the limit"),
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        queued.await;
        let average = gate.take_average();
        let span = started.elapsed().as_secs_f64();
        // 1 x span + 1 x ~0.1 s over the span.
        let expected = (span + 0.1) / span;
        assert!((average - expected).abs() < 0.15, "{average} vs {expected}");
        drop(inside);
        // A burst of short requests between two takes is seen.
        let _ = gate.take_average();
        for _ in 0..20 {
            let permit = gate.enter().await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
            drop(permit);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let average = gate.take_average();
        assert!((0.2..0.8).contains(&average), "{average}");
        assert_eq!(gate.in_flight(), 0);
    }

    /// Awaits each of `entries` in turn, expecting every one admitted.
    async fn futures_join<F: Future<Output = Result<GatePermit, Busy>>>(
        entries: Vec<F>,
    ) -> Vec<GatePermit> {
        let mut permits = Vec::new();
        for entry in entries {
            permits.push(entry.await.expect("admitted"));
        }
        permits
    }

    #[test]
    fn a_thread_waiting_for_an_instance_wakes_when_one_starts_or_when_stopped() {
        let slots = InstanceSlots::new(4);
        let replica = slots.replica();
        let stop = Arc::new(AtomicBool::new(false));
        let waiter = |slots: &InstanceSlots, stop: &Arc<AtomicBool>| {
            let (slots, stop) = (slots.clone(), stop.clone());
            std::thread::spawn(move || slots.wait_until_taken(&stop))
        };

        // Nothing runs: it waits, until an instance takes a slot.
        let waiting = waiter(&slots, &stop);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiting.is_finished(), "waited while no instance runs");
        assert!(!slots.any_taken());
        let slot = replica.try_take().unwrap();
        assert!(slots.any_taken());
        waiting.join().unwrap();
        // While one runs, there is no wait at all.
        waiter(&slots, &stop).join().unwrap();
        drop(slot);
        assert!(!slots.any_taken());

        // Asked to stop, it stops waiting.
        let waiting = waiter(&slots, &stop);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiting.is_finished());
        stop.store(true, Ordering::SeqCst);
        slots.wake();
        waiting.join().unwrap();
    }
}
