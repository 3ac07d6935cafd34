//! What one replica of a component reserves on its node for placement,
//! like a Kubernetes memory request: what it is expected to use, not the
//! most its limits allow. `limits` stay hard caps enforced at run time.
//!
//! An idle replica holds no instance (each request gets a fresh one), so
//! what a replica uses is its instances in flight: each starts with the
//! linear memory the component declares, plus the instance's own state.
//! Without `placement.memory`, a replica reserves
//! [`EXPECTED_INSTANCES`] such instances; a burst beyond that is what
//! node overcommit and the node's memory-pressure guard are for.

use crate::manifest::ComponentSpec;

/// How deep components and modules may nest inside a component read here:
/// real ones nest two or three levels; a crafted one nesting millions would
/// make the parser keep a state per level.
pub const MAX_NESTING: usize = 32;

/// Instances of one replica expected in flight at once, for its default
/// reservation. Requests to a Wasm component take milliseconds, so a
/// replica serving a few hundred requests a second seldom has more than
/// two instances alive at one time.
pub const EXPECTED_INSTANCES: u64 = 2;

/// An instance's memory beyond its linear memory: the store, tables, the
/// touched part of its fiber stack, WASI state and buffers.
pub const INSTANCE_OVERHEAD: u64 = 512 << 10;

/// The linear memory a component's instance starts with, bytes: the
/// declared initial size of every memory its core modules define.
///
/// # Errors
///
/// Bytes that do not parse as WebAssembly, with the parser's reason, or
/// that nest deeper than [`MAX_NESTING`].
pub fn initial_memory(wasm: &[u8]) -> Result<u64, String> {
    use wasmparser::Payload;
    let mut total: u64 = 0;
    // The top level opens with its header and closes with its `End`, as
    // does each nested module or component.
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload.map_err(|e| format!("cannot read the component: {e}"))? {
            Payload::Version { .. } => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(format!(
                        "cannot read the component: it nests modules and components more than {MAX_NESTING} deep"
                    ));
                }
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::MemorySection(memories) => {
                for memory in memories {
                    let memory = memory.map_err(|e| format!("cannot read the component: {e}"))?;
                    let page = 1u64 << memory.page_size_log2.unwrap_or(16);
                    total = total.saturating_add(memory.initial.saturating_mul(page));
                }
            }
            _ => {}
        }
    }
    Ok(total)
}

/// Bytes one replica of `spec` reserves: `placement.memory` when the
/// manifest sets it; otherwise [`EXPECTED_INSTANCES`] instances (at most
/// `limits.max_concurrency`) each of `initial_memory` plus
/// [`INSTANCE_OVERHEAD`], and never more than its limits allow in all.
pub fn replica_reservation(spec: &ComponentSpec, initial_memory: u64) -> u64 {
    if let Some(memory) = spec.placement.memory {
        return memory.bytes();
    }
    let most = spec
        .limits
        .memory
        .bytes()
        .saturating_mul(u64::from(spec.limits.max_concurrency.max(1)));
    let instances = EXPECTED_INSTANCES.min(u64::from(spec.limits.max_concurrency.max(1)));
    let per_instance = initial_memory
        .min(spec.limits.memory.bytes())
        .saturating_add(INSTANCE_OVERHEAD);
    instances.saturating_mul(per_instance).min(most)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    fn spec(extra: &str) -> ComponentSpec {
        let text = format!("[app]\nname = \"a\"\n[component.web]\nsource = \"w.wasm\"\n{extra}");
        let manifest = Manifest::parse(&text, std::path::Path::new("skiff.toml")).unwrap();
        manifest.component.into_values().next().unwrap()
    }

    #[test]
    fn initial_memory_sums_every_defined_memory_of_nested_modules() {
        let component = wat::parse_str(
            r#"(component
                 (core module $a (memory 17) (memory 2))
                 (core module $b (memory 1))
                 (core module $c (import "x" "m" (memory 100))))"#,
        )
        .unwrap();
        assert_eq!(initial_memory(&component).unwrap(), 20 * 65536);
        let err = initial_memory(b"\0asm\x0d\0\x01\0garbage").unwrap_err();
        assert!(err.starts_with("cannot read the component"), "{err}");
    }

    #[test]
    fn components_nested_past_the_limit_are_refused_before_the_parser_piles_up_state() {
        let nested = |levels: usize| {
            let mut text = String::new();
            for _ in 0..levels {
                text.push_str("(component ");
            }
            text.push_str("(core module (memory 1))");
            text.push_str(&")".repeat(levels));
            wat::parse_str(&text).unwrap()
        };
        assert_eq!(initial_memory(&nested(MAX_NESTING - 1)).unwrap(), 65536);
        let err = initial_memory(&nested(MAX_NESTING + 5)).unwrap_err();
        assert!(err.contains("more than 32 deep"), "{err}");
    }

    #[test]
    fn the_default_reservation_is_a_few_instances_not_the_limits() {
        let mib = 1u64 << 20;
        // Defaults: 128 MiB per instance, 100 at once: 12.5 GiB at most.
        assert_eq!(
            replica_reservation(&spec(""), 2 * mib),
            EXPECTED_INSTANCES * (2 * mib + INSTANCE_OVERHEAD)
        );
        // A declared reservation wins, whatever the component.
        let declared = spec("[component.web.placement]\nmemory = \"300MiB\"\n");
        assert_eq!(replica_reservation(&declared, 2 * mib), 300 * mib);
        // Never more than the limits allow: one instance of at most 1 MiB.
        let small = spec("[component.web.limits]\nmemory = \"1MiB\"\nmax_concurrency = 1\n");
        assert_eq!(replica_reservation(&small, 64 * mib), mib);
    }
}
