//! Loading one component: read its bytes, check they are a Wasm component,
//! compile (or take from the cache), link against what Skiff provides, and
//! prepare its capabilities. The result can be instantiated per request.

use crate::cache::{CacheOutcome, CompileCache};
use crate::capability::{self, Capability, PrepareContext};
use crate::cpu_lane::CpuLane;
use crate::engine::SkiffEngine;
use crate::instance::InstanceState;
use crate::limits::{ConcurrencyGate, ReplicaSlots};
use crate::manifest::{ComponentName, ComponentSpec, Limits};
use crate::mesh::{CallerPolicy, WorkloadId};
use crate::prepared::Prepared;
use crate::pressure::MemoryGuard;
use crate::reaper::ReaperHandle;
use crate::route::Route;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The `source` file does not exist or cannot be read.
    #[error("component \"{component}\": cannot read source {}: {reason}", path.display())]
    Source {
        /// The component.
        component: ComponentName,
        /// The resolved source path.
        path: PathBuf,
        /// What went wrong, with a hint.
        reason: String,
    },
    /// The bytes are not WebAssembly, or are a core module, or are damaged.
    #[error("component \"{component}\": {} {reason}", path.display())]
    NotAComponent {
        /// The component.
        component: ComponentName,
        /// The resolved source path.
        path: PathBuf,
        /// What the bytes are instead, with a hint.
        reason: String,
    },
    /// The component imports something Skiff does not provide; wasmtime's
    /// own words are in `detail` (logged at debug level).
    #[error(
        "component \"{component}\" imports {import}, which Skiff does not provide: components get WASI 0.2 (cli, clocks, filesystem, io, random, sockets) and wasi:http 0.2"
    )]
    UnsatisfiedImport {
        /// The component.
        component: ComponentName,
        /// The import, e.g. `wasi:keyvalue/store@0.2.0`.
        import: String,
        /// wasmtime's full message.
        detail: String,
    },
    /// The component does not export `wasi:http/incoming-handler`.
    #[error(
        "component \"{component}\" does not export wasi:http/incoming-handler@0.2.x, so it cannot serve HTTP ({detail})"
    )]
    NotHttp {
        /// The component.
        component: ComponentName,
        /// wasmtime's full message.
        detail: String,
    },
    /// The manifest asks for something this node refuses.
    #[error("{0}")]
    Invalid(String),
}

/// A component compiled, linked and ready to serve on this node.
pub struct LoadedComponent {
    /// Its name in the manifest.
    pub name: ComponentName,
    /// Its app and name: its identity on the mesh.
    pub workload: Arc<WorkloadId>,
    /// Who may call it over the mesh (`allow_callers`).
    pub callers: CallerPolicy,
    /// The route it serves, if any.
    pub route: Option<Route>,
    /// Its limits.
    pub limits: Limits,
    /// sha256 of its bytes, hex.
    pub digest: String,
    /// Whether it was shared, read from the compile cache, or compiled.
    pub cache: CacheOutcome,
    pub(crate) pre: Prepared,
    pub(crate) capabilities: Vec<Box<dyn Capability>>,
    pub(crate) gate: Arc<ConcurrencyGate>,
    pub(crate) slots: ReplicaSlots,
    pub(crate) wasm_stack: usize,
    pub(crate) cpu_lane: CpuLane,
    pub(crate) reaper: ReaperHandle,
    pub(crate) memory: MemoryGuard,
    /// What became of the requests it answered.
    pub outcomes: crate::outcomes::Outcomes,
    /// Its Prometheus series, shared with its other loaded versions.
    pub series: Arc<crate::metrics::ComponentSeries>,
}

impl LoadedComponent {
    /// Loads the component `workload` (an app's component) described by
    /// `spec`, resolving relative paths against `base_dir`.
    ///
    /// # Errors
    ///
    /// [`LoadError`] naming the component and what is wrong with it.
    pub fn load(
        engine: &SkiffEngine,
        cache: &CompileCache,
        workload: &WorkloadId,
        spec: &ComponentSpec,
        base_dir: &Path,
    ) -> Result<LoadedComponent, LoadError> {
        Self::load_inner(engine, cache, workload, spec, base_dir, None)
    }

    /// [`LoadedComponent::load`] for a source already verified to hash to
    /// `digest` (sha256, hex), such as a blob of the package store: when
    /// this engine already holds the component of that digest, the source
    /// is neither read nor hashed again, so a thousand apps of one
    /// component load as fast as one. The first load of a digest hashes
    /// what it reads and refuses bytes that do not match.
    ///
    /// # Errors
    ///
    /// As [`LoadedComponent::load`].
    pub fn load_verified(
        engine: &SkiffEngine,
        cache: &CompileCache,
        workload: &WorkloadId,
        spec: &ComponentSpec,
        base_dir: &Path,
        digest: &str,
    ) -> Result<LoadedComponent, LoadError> {
        Self::load_inner(engine, cache, workload, spec, base_dir, Some(digest))
    }

    fn load_inner(
        engine: &SkiffEngine,
        cache: &CompileCache,
        workload: &WorkloadId,
        spec: &ComponentSpec,
        base_dir: &Path,
        known_digest: Option<&str>,
    ) -> Result<LoadedComponent, LoadError> {
        let started = std::time::Instant::now();
        let name = &workload.component;
        let max_memory = engine.config().max_instance_memory;
        if spec.limits.memory.bytes() > max_memory {
            return Err(LoadError::Invalid(format!(
                "component \"{name}\": limits.memory \"{}\" is above this node's maximum of {} MiB",
                spec.limits.memory,
                max_memory >> 20
            )));
        }
        if spec.limits.stack.bytes() > engine.config().max_stack {
            return Err(LoadError::Invalid(format!(
                "component \"{name}\": limits.stack \"{}\" is above this node's maximum of {} MiB",
                spec.limits.stack,
                engine.config().max_stack >> 20
            )));
        }
        let capabilities = capability::prepare(
            spec,
            &PrepareContext {
                component: name,
                base_dir,
            },
        )
        .map_err(LoadError::Invalid)?;

        let path = base_dir.join(&spec.source);
        let (digest, wasm) = match known_digest {
            Some(digest) => (digest.to_string(), None),
            None => {
                let wasm = read_component(name, &path)?;
                let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&wasm));
                (digest, Some(wasm))
            }
        };

        let class = engine
            .for_stack(spec.limits.stack.bytes() as usize)
            .map_err(|e| LoadError::Invalid(format!("component \"{name}\": {e}")))?;
        // The first load of these bytes in this engine compiles (or reads
        // the compile cache) and links; every later one shares the result.
        let mut cache_outcome = CacheOutcome::Shared;
        let pre = class.prepared().get_or_prepare(&digest, || {
            let wasm = match wasm {
                Some(wasm) => wasm,
                // The first load of a digest reads the source anyway: it
                // must be the bytes vouched for, or a file swapped since
                // would be compiled, and cached, under another's digest.
                None => {
                    let wasm = read_component(name, &path)?;
                    let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&wasm));
                    if actual != digest {
                        return Err(LoadError::NotAComponent {
                            component: name.clone(),
                            path: path.clone(),
                            reason: format!(
                                "changed since it was verified: it hashes to sha256:{actual}, not sha256:{digest}"
                            ),
                        });
                    }
                    wasm
                }
            };
            let (component, outcome) = cache
                .load_or_compile(class.engine(), &digest, &wasm)
                .map_err(|e| LoadError::NotAComponent {
                    component: name.clone(),
                    path: path.clone(),
                    reason: format!("is not a valid Wasm component: {e:#}"),
                })?;
            cache_outcome = outcome;
            let instance_pre = class.linker().instantiate_pre(&component).map_err(|e| {
                let detail = format!("{e:#}");
                tracing::debug!(component = %name, "unsatisfied import: {detail}");
                LoadError::UnsatisfiedImport {
                    component: name.clone(),
                    import: first_backticked(&detail)
                        .unwrap_or("an interface")
                        .to_string(),
                    detail,
                }
            })?;
            ProxyPre::new(instance_pre).map_err(|e| LoadError::NotHttp {
                component: name.clone(),
                detail: format!("{e:#}"),
            })
        })?;

        engine
            .metrics()
            .record_load(cache_outcome, started.elapsed());
        let gate = Arc::new(ConcurrencyGate::new(
            spec.limits.max_concurrency,
            spec.limits.max_queued,
        ));
        Ok(LoadedComponent {
            series: engine.metrics().component(workload, &gate),
            name: name.clone(),
            workload: Arc::new(workload.clone()),
            callers: CallerPolicy::new(spec.allow_callers.clone()),
            route: spec.route.clone(),
            limits: spec.limits.clone(),
            digest,
            cache: cache_outcome,
            pre,
            capabilities,
            gate,
            slots: engine.slots().replica(),
            wasm_stack: class.stack(),
            cpu_lane: engine.cpu_lane().clone(),
            reaper: engine.reaper(),
            memory: engine.memory().clone(),
            outcomes: Default::default(),
        })
    }
}

impl LoadedComponent {
    /// The pre-instantiated component, for callers that instantiate it
    /// themselves (benchmarks, job runners).
    pub fn proxy_pre(&self) -> &ProxyPre<InstanceState> {
        &self.pre
    }

    /// Admits `limits.max_concurrency` times `replicas` requests at once:
    /// the replicas of it this node runs (each reserved its memory).
    pub fn set_replicas(&self, replicas: u32) {
        self.gate.set_replicas(replicas);
    }

    /// Requests in its instances or queued for one, now.
    pub fn in_flight(&self) -> usize {
        self.gate.in_flight()
    }

    /// The average number of requests in its instances or queued for one
    /// since the last call (see
    /// [`crate::limits::ConcurrencyGate::take_average`]).
    pub fn take_average_demand(&self) -> f64 {
        self.gate.take_average()
    }

    /// Whether a request arriving now would be refused: every instance
    /// is busy and its queue is full.
    pub fn is_full(&self) -> bool {
        self.gate.queue_is_full()
    }

    /// Whether every instance it may run at once is busy, so a request
    /// arriving now would queue.
    pub fn is_saturated(&self) -> bool {
        self.gate.is_full()
    }

    /// Creates one instance (running the guest's start-up code, as every
    /// request will) and drops it: a component that cannot be
    /// instantiated within its limits (its memory limit below what it
    /// needs at start, say) is found before it is given traffic.
    ///
    /// # Errors
    ///
    /// Why no instance could be created, naming the limit at fault.
    pub async fn check_instantiates(
        &self,
        log_sink: &Arc<dyn crate::capability::logging::LogSink>,
    ) -> Result<(), String> {
        let name = &self.name;
        let mut store = crate::invoke::new_store(
            self,
            log_sink,
            crate::capability::outbound_http::OutboundContext::without_mesh(),
        )
        .map_err(|e| format!("component \"{name}\": cannot prepare an instance: {e}"))?;
        let timeout = self.limits.timeout.as_duration();
        let created = tokio::time::timeout(timeout, self.pre.instantiate_async(&mut store)).await;
        let memory_refused = store.data().limiter.memory_refused();
        drop(store);
        match created {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) if memory_refused => Err(format!(
                "component \"{name}\" cannot be instantiated: it needs more memory at start than its limits.memory ({})",
                self.limits.memory
            )),
            Ok(Err(e)) => Err(format!(
                "component \"{name}\" cannot be instantiated: {e:#}"
            )),
            Err(_) => Err(format!(
                "component \"{name}\" cannot be instantiated: its start-up took longer than limits.timeout ({})",
                self.limits.timeout
            )),
        }
    }

    /// The Wasm stack its instances get, in bytes: `limits.stack` rounded
    /// up to its stack class.
    pub fn wasm_stack(&self) -> usize {
        self.wasm_stack
    }
}

/// Reads the bytes of component `name` from `path` and checks they are a
/// component.
fn read_component(name: &ComponentName, path: &Path) -> Result<Vec<u8>, LoadError> {
    let wasm = std::fs::read(path).map_err(|e| LoadError::Source {
        component: name.clone(),
        path: path.to_path_buf(),
        reason: if e.kind() == std::io::ErrorKind::NotFound {
            "no such file; build it first (skiff run --build) or fix `source`".to_string()
        } else {
            e.to_string()
        },
    })?;
    check_component_header(&wasm).map_err(|reason| LoadError::NotAComponent {
        component: name.clone(),
        path: path.to_path_buf(),
        reason,
    })?;
    Ok(wasm)
}

/// Checks the 8-byte preamble: `\0asm`, then the component-model version
/// and layer. Core modules and non-Wasm files get a message saying what
/// they are and what to do.
fn check_component_header(wasm: &[u8]) -> Result<(), String> {
    const MAGIC: &[u8] = b"\0asm";
    if wasm.len() < 8 || &wasm[..4] != MAGIC {
        return Err("is not a WebAssembly file (no \\0asm header)".to_string());
    }
    // Bytes 4..6 are the version, 6..8 the layer: 1 for components.
    match (wasm[6], wasm[7]) {
        (1, 0) => Ok(()),
        (0, 0) => Err(
            "is a core Wasm module, not a component; build for wasm32-wasip2 or wrap it with `wasm-tools component new`"
                .to_string(),
        ),
        _ => Err("has an unknown WebAssembly layer".to_string()),
    }
}

/// The first `quoted` name in a wasmtime error, which names the import.
fn first_backticked(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_tells_components_from_modules_and_junk() {
        assert!(check_component_header(b"\0asm\x0d\0\x01\0rest").is_ok());
        let core = check_component_header(b"\0asm\x01\0\0\0").unwrap_err();
        assert!(core.contains("core Wasm module"), "{core}");
        let junk = check_component_header(b"hello world").unwrap_err();
        assert!(junk.contains("not a WebAssembly file"), "{junk}");
        assert!(check_component_header(b"\0as").is_err());
    }

    #[test]
    fn a_verified_load_refuses_bytes_that_are_not_the_digest_vouched_for() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = wat::parse_str("(component)").unwrap();
        std::fs::write(dir.path().join("w.wasm"), &wasm).unwrap();
        let text = "[app]\nname = \"a\"\n[component.web]\nsource = \"w.wasm\"\n";
        let manifest = crate::manifest::Manifest::parse(text, Path::new("skiff.toml")).unwrap();
        let (name, spec) = manifest.component.into_iter().next().unwrap();
        let workload = WorkloadId::new(manifest.app.name.clone(), name);
        let engine = SkiffEngine::new(crate::engine::EngineConfig {
            max_instances: 2,
            ..Default::default()
        })
        .unwrap();
        let cache = CompileCache::open(&dir.path().join("cache")).unwrap();
        let claimed = "0".repeat(64);
        let refused =
            LoadedComponent::load_verified(&engine, &cache, &workload, &spec, dir.path(), &claimed)
                .err()
                .expect("bytes of another digest are refused");
        assert!(
            refused
                .to_string()
                .contains("changed since it was verified"),
            "{refused}"
        );
        // Nothing was compiled, or cached, under the digest claimed.
        assert_eq!(engine.prepared_components(), 0);
    }

    #[test]
    fn import_name_is_taken_from_the_message() {
        let msg = "component imports instance `wasi:keyvalue/store@0.2.0`, but a matching implementation was not found in the linker";
        assert_eq!(first_backticked(msg), Some("wasi:keyvalue/store@0.2.0"));
        assert_eq!(first_backticked("no quotes"), None);
    }
}
