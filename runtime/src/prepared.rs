//! One compiled and linked component per digest per engine, shared by every
//! app and replica that loads the same bytes, so a thousand apps made from
//! one component hold its machine code, memory images and type information
//! once.

use crate::instance::InstanceState;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// A prepared component: compiled, linked, ready to instantiate.
pub(crate) type Prepared = Arc<ProxyPre<InstanceState>>;

/// The slot of one digest: the component while anything holds it. Its lock
/// is held while the component is prepared, so loads of the same bytes
/// wait for one compilation instead of each running their own.
type Slot = Arc<Mutex<Weak<ProxyPre<InstanceState>>>>;

/// Slots pruned no more often than this many new digests.
const MIN_PRUNE_AT: usize = 64;

/// The components one engine has prepared, by sha256 digest (hex).
///
/// Entries are weak: a component no app or replica uses any more is
/// dropped with its last user, and its slot is pruned later.
pub(crate) struct PreparedComponents {
    slots: Mutex<Slots>,
}

struct Slots {
    by_digest: HashMap<String, Slot>,
    /// Dead slots are pruned when the map reaches this size, which then
    /// doubles over what is left, so pruning stays linear overall.
    prune_at: usize,
}

impl PreparedComponents {
    pub(crate) fn new() -> PreparedComponents {
        PreparedComponents {
            slots: Mutex::new(Slots {
                by_digest: HashMap::new(),
                prune_at: MIN_PRUNE_AT,
            }),
        }
    }

    /// The live component of `digest`, or the one `prepare` makes when none
    /// is alive. Calls for the same digest wait for each other, so `prepare`
    /// runs once however many loads of the same bytes arrive together;
    /// calls for other digests go on in parallel.
    ///
    /// # Errors
    ///
    /// `prepare`'s error; nothing is kept, and the next call tries again.
    pub(crate) fn get_or_prepare<E>(
        &self,
        digest: &str,
        prepare: impl FnOnce() -> Result<ProxyPre<InstanceState>, E>,
    ) -> Result<Prepared, E> {
        let slot = self.slot(digest);
        // A load that panicked while preparing left nothing behind: the
        // slot is still usable.
        let mut live = slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(prepared) = live.upgrade() {
            return Ok(prepared);
        }
        let prepared = Arc::new(prepare()?);
        *live = Arc::downgrade(&prepared);
        Ok(prepared)
    }

    /// How many prepared components are alive.
    pub(crate) fn live(&self) -> usize {
        let slots = self.slots.lock().expect("prepared components lock");
        slots
            .by_digest
            .values()
            // A slot being prepared right now is not counted, and not
            // waited for.
            .filter(|slot| slot.try_lock().is_ok_and(|w| w.strong_count() > 0))
            .count()
    }

    fn slot(&self, digest: &str) -> Slot {
        let mut slots = self.slots.lock().expect("prepared components lock");
        if let Some(slot) = slots.by_digest.get(digest) {
            return slot.clone();
        }
        if slots.by_digest.len() >= slots.prune_at {
            // A slot another load holds (its lock taken, or a clone out) is
            // kept; so is one whose component is alive.
            slots.by_digest.retain(|_, slot| {
                Arc::strong_count(slot) > 1
                    || slot.try_lock().map_or(true, |live| live.strong_count() > 0)
            });
            slots.prune_at = (slots.by_digest.len() * 2).max(MIN_PRUNE_AT);
        }
        slots
            .by_digest
            .entry(digest.to_string())
            .or_default()
            .clone()
    }
}
