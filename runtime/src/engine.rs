//! The process's wasmtime engines: pooling allocator with bounded memory
//! reservations, epoch interruption driven by a ticker thread, and the
//! linker that provides WASI 0.2 and `wasi:http` to every component; one
//! engine per Wasm stack size in use.

use crate::cpu_lane::CpuLane;
use crate::instance::InstanceState;
use crate::manifest::DEFAULT_STACK;
use crate::reaper::{Reaper, ReaperHandle};
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances; the granularity of CPU interruption.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Sizing of the engine's instance pool.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Component instances alive at once per stack class; default 1000.
    pub max_instances: u32,
    /// The largest memory any one instance may have, in bytes; each pool
    /// slot reserves this much virtual memory. Default 1 GiB.
    pub max_instance_memory: u64,
    /// The largest `limits.stack` a component may ask for; default 8 MiB.
    pub max_stack: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_instances: 1000,
            max_instance_memory: 1 << 30,
            max_stack: 8 << 20,
        }
    }
}

/// Host stack beyond the Wasm stack on each async fiber, for host calls.
const HOST_STACK: usize = 1536 << 10;

/// The Wasm engines of one process, one per stack class.
///
/// wasmtime fixes the Wasm stack limit per `Engine`, so components asking
/// for different `limits.stack` values run in different engines, created
/// on first use. Most nodes only ever have the default class. Every engine
/// shares the process's CPU lane and reaper.
pub struct SkiffEngine {
    config: EngineConfig,
    classes: Mutex<BTreeMap<usize, Arc<StackClass>>>,
    cpu_lane: CpuLane,
    reaper: Reaper,
}

/// One engine: its wasmtime `Engine`, linker and epoch ticker.
pub struct StackClass {
    engine: Engine,
    linker: Linker<InstanceState>,
    _ticker: EpochTicker,
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
        let engine = SkiffEngine {
            config,
            classes: Mutex::new(BTreeMap::new()),
            cpu_lane: CpuLane::for_this_machine(),
            reaper: Reaper::start(),
        };
        engine.for_stack(DEFAULT_STACK)?;
        Ok(engine)
    }

    /// The engine whose Wasm stack limit is `stack` bytes, created on first
    /// use.
    ///
    /// # Errors
    ///
    /// When wasmtime rejects the configuration.
    pub fn for_stack(&self, stack: usize) -> Result<Arc<StackClass>, EngineError> {
        let mut classes = self.classes.lock().expect("engine classes lock");
        if let Some(class) = classes.get(&stack) {
            return Ok(class.clone());
        }
        let class = Arc::new(self.build_class(stack)?);
        classes.insert(stack, class.clone());
        Ok(class)
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
            .async_stack_keep_resident(64 << 10);

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
            .map_err(|e| EngineError(format!("{e:#}")))?;

        let ticker = EpochTicker::start(engine.clone());
        Ok(StackClass {
            engine,
            linker,
            _ticker: ticker,
        })
    }

    /// The lane CPU-bound instances share.
    pub fn cpu_lane(&self) -> &CpuLane {
        &self.cpu_lane
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

/// Advances the engine's epoch every [`EPOCH_TICK`]; stops when dropped.
struct EpochTicker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> EpochTicker {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("skiff-epoch".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(EPOCH_TICK) {
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch ticker thread");
        EpochTicker {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
