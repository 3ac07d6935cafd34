//! The process's wasmtime engines: pooling allocator with bounded memory
//! reservations, epoch interruption driven by one ticker thread, and the
//! linker that provides WASI 0.2 and `wasi:http` to every component; one
//! engine per Wasm stack class in use, stack sizes rounded up to a power of
//! two, so a process never holds more than [`MAX_STACK_CLASSES`] engines.

use crate::cpu_lane::CpuLane;
use crate::instance::InstanceState;
use crate::limits::InstanceSlots;
use crate::manifest::DEFAULT_STACK;
use crate::metrics::RuntimeMetrics;
use crate::prepared::PreparedComponents;
use crate::pressure::{MemoryGuard, MemorySampler};
use crate::reaper::{Reaper, ReaperHandle};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::component::Linker;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances; the granularity of CPU interruption.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// How much of each pool table is reset with `memset` rather than
/// decommitted when its instance ends.
pub const TABLE_KEEP_RESIDENT: usize = 4 << 10;

/// The smallest stack class, and the smallest `limits.stack` allowed.
pub const MIN_STACK: usize = 64 << 10;

/// Engines one process may hold: one per power of two from [`MIN_STACK`]
/// to the default 8 MiB maximum stack.
pub const MAX_STACK_CLASSES: usize = 8;

/// Sizing of the engine's instance pool.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Component instances alive at once in the whole process, all stack
    /// classes together; default 1000.
    pub max_instances: u32,
    /// The largest memory any one instance may have, in bytes; each pool
    /// slot reserves this much virtual memory. Default 1 GiB.
    pub max_instance_memory: u64,
    /// The largest `limits.stack` a component may ask for; default 8 MiB.
    pub max_stack: u64,
    /// The memory this process offers, bytes (a node's `--capacity`): once
    /// its resident set reaches it, new instances are refused until it
    /// falls back (see [`crate::pressure`]). `None` (the default) refuses
    /// only when the machine itself runs short.
    pub memory_budget: Option<u64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_instances: 1000,
            max_instance_memory: 1 << 30,
            max_stack: 8 << 20,
            memory_budget: None,
        }
    }
}

/// Host stack beyond the Wasm stack on each async fiber, for host calls.
const HOST_STACK: usize = 1536 << 10;

/// The Wasm engines of one process, one per stack class.
///
/// wasmtime fixes the Wasm stack limit per `Engine`, so components asking
/// for different `limits.stack` values run in different engines, created
/// on first use. Each engine reserves address space for a whole instance
/// pool, so requested stacks are rounded up to a power of two (see
/// [`stack_class`]): at most [`MAX_STACK_CLASSES`] engines, whatever the
/// manifests ask. Most nodes only ever have the default class. Every engine
/// shares the process's epoch ticker, CPU lane, reaper and instance slots.
pub struct SkiffEngine {
    config: EngineConfig,
    classes: Mutex<BTreeMap<usize, Arc<StackClass>>>,
    cpu_lane: CpuLane,
    slots: InstanceSlots,
    reaper: Reaper,
    ticker: EpochTicker,
    memory: MemoryGuard,
    _memory_sampler: MemorySampler,
    metrics: Arc<RuntimeMetrics>,
}

/// One engine: its wasmtime `Engine`, linker and Wasm stack limit, and the
/// components prepared in it.
pub struct StackClass {
    engine: Engine,
    linker: Linker<InstanceState>,
    stack: usize,
    prepared: PreparedComponents,
}

impl StackClass {
    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker providing WASI 0.2 and `wasi:http`.
    pub fn linker(&self) -> &Linker<InstanceState> {
        &self.linker
    }

    /// The Wasm stack limit of this class, in bytes.
    pub fn stack(&self) -> usize {
        self.stack
    }

    /// The components compiled and linked in this engine, one per digest.
    pub(crate) fn prepared(&self) -> &PreparedComponents {
        &self.prepared
    }
}

/// The stack class serving a request for `stack` bytes: the next power of
/// two, at least [`MIN_STACK`], at most `max_stack` (so never less than
/// asked for while `stack <= max_stack`).
pub fn stack_class(stack: usize, max_stack: usize) -> usize {
    stack
        .max(MIN_STACK)
        .checked_next_power_of_two()
        .unwrap_or(usize::MAX)
        .min(max_stack.max(stack))
}

/// Why the engine could not be created.
#[derive(Debug, thiserror::Error)]
#[error("cannot create the Wasm engine: {0}")]
pub struct EngineError(String);

impl SkiffEngine {
    /// Builds the default engine and starts its epoch ticker.
    ///
    /// # Errors
    ///
    /// When wasmtime rejects the configuration, e.g. the pool cannot reserve
    /// its virtual memory.
    pub fn new(config: EngineConfig) -> Result<SkiffEngine, EngineError> {
        let (memory, memory_sampler) = MemoryGuard::start(config.memory_budget);
        let slots = InstanceSlots::new(config.max_instances as usize);
        let engine = SkiffEngine {
            config,
            memory,
            _memory_sampler: memory_sampler,
            classes: Mutex::new(BTreeMap::new()),
            cpu_lane: CpuLane::for_this_machine(),
            slots: slots.clone(),
            reaper: Reaper::start(),
            ticker: EpochTicker::start(slots),
            metrics: Arc::default(),
        };
        engine.for_stack(DEFAULT_STACK)?;
        Ok(engine)
    }

    /// The engine of the stack class holding `stack` bytes (at least that
    /// much Wasm stack, see [`stack_class`]), created on first use.
    ///
    /// # Errors
    ///
    /// When `stack` is above the configured maximum, when the process
    /// already holds [`MAX_STACK_CLASSES`] engines, or when wasmtime
    /// rejects the configuration.
    pub fn for_stack(&self, stack: usize) -> Result<Arc<StackClass>, EngineError> {
        let max_stack = self.config.max_stack as usize;
        if stack > max_stack {
            return Err(EngineError(format!(
                "a Wasm stack of {stack} bytes is above the maximum of {max_stack} bytes; lower limits.stack"
            )));
        }
        let class_stack = stack_class(stack, max_stack);
        let mut classes = self.classes.lock().expect("engine classes lock");
        if let Some(class) = classes.get(&class_stack) {
            return Ok(class.clone());
        }
        if classes.len() >= MAX_STACK_CLASSES {
            return Err(EngineError(format!(
                "no engine for a Wasm stack of {class_stack} bytes: this process already holds {} stack classes; use one of {:?} bytes for limits.stack",
                classes.len(),
                classes.keys().collect::<Vec<_>>()
            )));
        }
        let class = Arc::new(self.build_class(class_stack)?);
        self.ticker.tick(class.engine.clone());
        classes.insert(class_stack, class.clone());
        Ok(class)
    }

    /// How many distinct compiled components this process holds, all
    /// engines together: one per digest and stack class in use, however
    /// many apps and replicas share it.
    pub fn prepared_components(&self) -> usize {
        let classes = self.classes.lock().expect("engine classes lock");
        classes.values().map(|class| class.prepared.live()).sum()
    }

    /// How many engines (stack classes) this process holds.
    pub fn engine_count(&self) -> usize {
        self.classes.lock().expect("engine classes lock").len()
    }

    fn build_class(&self, stack: usize) -> Result<StackClass, EngineError> {
        let config = &self.config;
        let mut pool = PoolingAllocationConfig::new();
        // A Rust wasm32-wasip2 component holds a handful of core instances
        // (the program plus the shims wit-component adds); budget for more.
        const CORE_INSTANCES_PER_COMPONENT: u32 = 8;
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances * CORE_INSTANCES_PER_COMPONENT)
            .total_memories(config.max_instances * 2)
            .total_tables(config.max_instances * CORE_INSTANCES_PER_COMPONENT)
            .total_stacks(config.max_instances)
            .max_memory_size(config.max_instance_memory as usize)
            .max_memories_per_component(2)
            .max_tables_per_component(CORE_INSTANCES_PER_COMPONENT)
            // A deep recursion touches a fiber stack's pages; decommit all
            // but the first 64 KiB on reuse so they do not stay resident.
            .async_stack_keep_resident(64 << 10)
            // A table is a few KiB of function references: zeroing it with
            // `memset` is cheaper than `madvise`, whose TLB shootdown
            // interrupts every core running this process. Per request this
            // saves two of hello's four shootdowns (about 20% more
            // requests/s), for at most a page resident per pool table.
            .table_keep_resident(TABLE_KEEP_RESIDENT)
            // Linear memories are not kept resident. Without the scan below,
            // keeping them resident means rewriting a fixed range on every
            // request and leaving it resident in every pool slot a burst
            // touched (a whole small memory each: a MiB and more), against
            // an idle app costing kilobytes. With `pagemap_scan` only the
            // pages a request wrote are reset, in place, which measured
            // twice the requests/s; but wasmtime 48's scan skips written
            // pages that are swapped out or being migrated at that moment,
            // and those would reach the next instance in the slot, possibly
            // another tenant's. Keep the scan off (also wasmtime's default)
            // until it resets non-present pages too.
            .pagemap_scan(Enabled::No);

        let mut wasm = Config::new();
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .epoch_interruption(true)
            .max_wasm_stack(stack)
            .async_stack_size(stack + HOST_STACK)
            // Reserve only what the largest allowed memory needs, not the
            // default 4 GiB per slot, so the pool's address space stays sane.
            .memory_reservation(config.max_instance_memory)
            .memory_guard_size(64 << 10)
            .memory_reservation_for_growth(0)
            // Zeroed stacks are also what lets the pool decommit them.
            .async_stack_zeroing(true);
        let engine = Engine::new(&wasm).map_err(|e| EngineError(format!("{e:#}")))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .and_then(|()| wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker))
            // Last: it replaces the socket functions added above.
            .and_then(|()| crate::capability::sockets::add_to_linker(&mut linker))
            .map_err(|e| EngineError(format!("{e:#}")))?;

        Ok(StackClass {
            engine,
            linker,
            stack,
            prepared: PreparedComponents::new(),
        })
    }

    /// The lane CPU-bound instances share.
    pub fn cpu_lane(&self) -> &CpuLane {
        &self.cpu_lane
    }

    /// The runtime's metrics, for a process's `/metrics`.
    pub fn metrics(&self) -> &Arc<RuntimeMetrics> {
        &self.metrics
    }

    /// The instance slots every replica of this process draws from.
    pub fn slots(&self) -> &InstanceSlots {
        &self.slots
    }

    /// Whether this process may start new instances, and what it uses.
    pub fn memory(&self) -> &MemoryGuard {
        &self.memory
    }

    /// Where large finished instances are torn down.
    pub fn reaper(&self) -> ReaperHandle {
        self.reaper.handle()
    }

    /// The pool sizing this engine was built with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }
}

/// Ticks in a row with no instance running after which the ticker parks.
const TICKS_BEFORE_PARKING: u32 = 100;

/// Advances the epoch of every engine of the process every
/// [`EPOCH_TICK`], from one thread, while any instance runs (holds one of
/// `slots`); while none does, the thread sleeps, so an idle node does not
/// wake a thousand times a second. Instances measure their time from the
/// epoch when they start, so a pause loses them nothing. Stops when
/// dropped.
struct EpochTicker {
    engines: Arc<RwLock<Vec<Engine>>>,
    slots: InstanceSlots,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(slots: InstanceSlots) -> EpochTicker {
        let engines: Arc<RwLock<Vec<Engine>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (ticked, running, stopped) = (engines.clone(), slots.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("skiff-epoch".into())
            .spawn(move || {
                let mut idle_ticks = 0;
                loop {
                    // Parked only after a while idle: a client sending one
                    // request after another does not wake it every time.
                    if idle_ticks >= TICKS_BEFORE_PARKING {
                        running.wait_until_taken(&stopped);
                        idle_ticks = 0;
                    }
                    std::thread::sleep(EPOCH_TICK);
                    if stopped.load(Ordering::SeqCst) {
                        return;
                    }
                    for engine in ticked.read().expect("epoch engines lock").iter() {
                        engine.increment_epoch();
                    }
                    idle_ticks = if running.any_taken() {
                        0
                    } else {
                        idle_ticks + 1
                    };
                }
            })
            .expect("spawning the epoch ticker thread");
        EpochTicker {
            engines,
            slots,
            stop,
            thread: Some(thread),
        }
    }

    /// Advances `engine`'s epoch from now on.
    fn tick(&self, engine: Engine) {
        self.engines
            .write()
            .expect("epoch engines lock")
            .push(engine);
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.slots.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> EngineConfig {
        EngineConfig {
            max_instances: 2,
            max_instance_memory: 1 << 20,
            ..EngineConfig::default()
        }
    }

    #[test]
    fn stacks_round_up_to_a_few_classes() {
        let max = EngineConfig::default().max_stack as usize;
        let mut classes = std::collections::BTreeSet::new();
        for requested in (MIN_STACK..=max).step_by(4099) {
            let class = stack_class(requested, max);
            assert!(class >= requested, "{requested} got {class}");
            assert!(class.is_power_of_two() && class <= max, "{class}");
            classes.insert(class);
        }
        assert_eq!(classes.len(), MAX_STACK_CLASSES, "{classes:?}");
        assert_eq!(stack_class(DEFAULT_STACK, max), DEFAULT_STACK);
        assert_eq!(stack_class(1, max), MIN_STACK);
        assert_eq!(stack_class(600 << 10, max), 1 << 20);
        // A maximum that is not a power of two is still a class of its own.
        assert_eq!(stack_class(5 << 20, 6 << 20), 6 << 20);
    }

    #[test]
    fn sixty_four_distinct_stacks_share_at_most_eight_engines() {
        let engine = SkiffEngine::new(small()).unwrap();
        assert_eq!(engine.engine_count(), 1, "the default class");
        let max = engine.config().max_stack as usize;
        let step = (max - MIN_STACK) / 63;
        for i in 0..64 {
            let requested = MIN_STACK + i * step + i;
            let requested = requested.min(max);
            let class = engine.for_stack(requested).unwrap();
            assert!(class.stack() >= requested);
        }
        assert!(engine.engine_count() <= MAX_STACK_CLASSES);
        let err = engine.for_stack(max + 1).err().unwrap().to_string();
        assert!(err.contains("lower limits.stack"), "{err}");
    }
}
