//! Values stamped with the version they last changed at, and removals
//! with the version they went at, indexed by version: what changed after
//! a version is found without a walk over every value.

use std::collections::{BTreeMap, BTreeSet};

/// Removals remembered before the oldest are forgotten; a node whose
/// version is older than a forgotten removal gets the whole state.
pub(super) const MAX_TOMBSTONES: usize = 20_000;

/// Values by key, each with the version it last changed at, and the keys
/// removed with the version they went at; both indexed by version, so
/// what changed after a version is found without a walk over every value.
pub(super) struct Stamped<K, V> {
    pub(super) values: BTreeMap<K, (V, u64)>,
    /// The keys of `values`, by the version they last changed at.
    changed: BTreeMap<u64, BTreeSet<K>>,
    removed: BTreeMap<K, u64>,
    /// The keys of `removed`, by the version they went at.
    removals: BTreeMap<u64, BTreeSet<K>>,
}

impl<K, V> Default for Stamped<K, V> {
    fn default() -> Self {
        Stamped {
            values: BTreeMap::new(),
            changed: BTreeMap::new(),
            removed: BTreeMap::new(),
            removals: BTreeMap::new(),
        }
    }
}

/// Files `key` under `version` in `index`, taking it from under `was`.
fn restamp<K: Ord + Clone>(
    index: &mut BTreeMap<u64, BTreeSet<K>>,
    key: &K,
    was: Option<u64>,
    version: Option<u64>,
) {
    if let Some(was) = was
        && let Some(keys) = index.get_mut(&was)
    {
        keys.remove(key);
        if keys.is_empty() {
            index.remove(&was);
        }
    }
    if let Some(version) = version {
        index.entry(version).or_default().insert(key.clone());
    }
}

impl<K: Ord + Clone, V: PartialEq> Stamped<K, V> {
    /// Takes `now` as the values at `version` of the keys `in_scope`
    /// (others stay as they are); returns the newest version whose
    /// removals were forgotten (0 when none were).
    pub(super) fn update_where(
        &mut self,
        now: BTreeMap<K, V>,
        in_scope: impl Fn(&K) -> bool,
        version: u64,
    ) -> u64 {
        let gone: Vec<K> = self
            .values
            .keys()
            .filter(|k| in_scope(k) && !now.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.set(&key, None, version);
        }
        for (key, value) in now {
            self.set(&key, Some(value), version);
        }
        self.forget_oldest_removals()
    }

    /// Takes `value` as the value of `key` at `version` (`None`: it is
    /// gone); call [`Stamped::forget_oldest_removals`] after.
    pub(super) fn set(&mut self, key: &K, value: Option<V>, version: u64) {
        let Some(value) = value else {
            if let Some((_, at)) = self.values.remove(key) {
                restamp(&mut self.changed, key, Some(at), None);
                let was = self.removed.insert(key.clone(), version);
                restamp(&mut self.removals, key, was, Some(version));
            }
            return;
        };
        let was = match self.values.get_mut(key) {
            Some((old, _)) if *old == value => return,
            Some(entry) => Some(std::mem::replace(entry, (value, version)).1),
            None => {
                if let Some(at) = self.removed.remove(key) {
                    restamp(&mut self.removals, key, Some(at), None);
                }
                self.values.insert(key.clone(), (value, version));
                None
            }
        };
        restamp(&mut self.changed, key, was, Some(version));
    }

    /// Keeps at most [`MAX_TOMBSTONES`] removals, forgetting the oldest
    /// half when there are more; returns the newest version forgotten.
    pub(super) fn forget_oldest_removals(&mut self) -> u64 {
        if self.removed.len() <= MAX_TOMBSTONES {
            return 0;
        }
        let mut forgotten = 0;
        while self.removed.len() > MAX_TOMBSTONES / 2
            && let Some((at, keys)) = self.removals.pop_first()
        {
            for key in keys {
                self.removed.remove(&key);
            }
            forgotten = at;
        }
        forgotten
    }

    /// The values changed after `version` (all of them after 0).
    pub(super) fn changed_after(&self, version: u64) -> Box<dyn Iterator<Item = &V> + '_> {
        if version == 0 {
            return Box::new(self.values.values().map(|(value, _)| value));
        }
        Box::new(
            self.changed
                .range(version + 1..)
                .flat_map(|(_, keys)| keys)
                .filter_map(|key| self.values.get(key).map(|(value, _)| value)),
        )
    }

    /// The keys removed after `version`.
    pub(super) fn removed_after(&self, version: u64) -> impl Iterator<Item = &K> {
        self.removals
            .range(version + 1..)
            .flat_map(|(_, keys)| keys)
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_TOMBSTONES, Stamped};
    use std::collections::{BTreeMap, BTreeSet};

    /// What changed and went after each earlier version, read off the
    /// version index, is what a walk over every stamp finds, through
    /// values changing, going, coming back and removals being forgotten.
    #[test]
    fn the_version_index_finds_what_a_walk_over_every_stamp_finds() {
        let mut stamped: Stamped<u32, u32> = Stamped::default();
        let mut seed = 7u64;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let mut horizon = 0;
        for version in 1..=300u64 {
            // Up to 30,000 keys, so removals are forgotten on the way.
            // Now and then everything goes at once.
            let mut now = BTreeMap::new();
            for key in 0..30_000u32 {
                if version % 50 != 0 && next(10) < 6 {
                    now.insert(key, u32::from(next(3) == 0));
                }
            }
            horizon = horizon.max(stamped.update_where(now.clone(), |_| true, version));
            assert!(stamped.removed.len() <= MAX_TOMBSTONES);
            let values: BTreeMap<u32, u32> =
                stamped.values.iter().map(|(k, (v, _))| (*k, *v)).collect();
            assert_eq!(values, now);
            for since in [
                0,
                horizon + 1,
                version.saturating_sub(1),
                version - version / 3,
            ] {
                let since = if since <= horizon { 0 } else { since };
                let changed: BTreeSet<*const u32> = stamped
                    .changed_after(since)
                    .map(|v| v as *const u32)
                    .collect();
                let walked: BTreeSet<*const u32> = stamped
                    .values
                    .values()
                    .filter(|(_, at)| *at > since)
                    .map(|(v, _)| v as *const u32)
                    .collect();
                assert_eq!(changed, walked, "changed after {since} at {version}");
                let removed: BTreeSet<u32> = stamped.removed_after(since).copied().collect();
                let walked: BTreeSet<u32> = stamped
                    .removed
                    .iter()
                    .filter(|(_, at)| **at > since)
                    .map(|(k, _)| *k)
                    .collect();
                assert_eq!(removed, walked, "removed after {since} at {version}");
            }
        }
        assert!(horizon > 0, "removals were forgotten on the way");
    }
}
