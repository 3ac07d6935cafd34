//! The on-disk cache of compiled components, so a second start of the same
//! app skips Cranelift.
//!
//! Entries are keyed by the sha256 of the component bytes and the engine's
//! precompile compatibility hash. Each entry (`NAME.cwasm`) has a seal
//! beside it (`NAME.seal`): a keyed BLAKE3 hash (a MAC) of its name and
//! bytes under a random key that only this Skiff home holds, so the one unsafe step,
//! deserializing native code, only ever runs on artifacts Skiff wrote
//! itself; anything else is discarded and recompiled. A verified entry is
//! mapped from its file, not copied: its code pages are the page cache's,
//! shared by every process that loads it, and its memory images are mapped
//! copy-on-write from the same file. The directory, the key, entries and
//! seals are used only when no other user can have written them (see
//! [`private_file`]). The cache keeps at most [`DEFAULT_LIMIT`] bytes of
//! entries: storing one past that removes the least recently used.

mod private_file;

use private_file::Refusal;
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The largest cache entry loaded; anything larger is not one Skiff wrote.
const MAX_ENTRY_BYTES: u64 = 4 << 30;

/// The most bytes of compiled entries the cache keeps: a node that ran
/// many versions of many apps does not fill its disk with code it no
/// longer loads. Small components compile to about a MiB, interpreters
/// (JavaScript, Python) to tens of MiB.
pub const DEFAULT_LIMIT: u64 = 4 << 30;

/// Where a loaded component's machine code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Already loaded in this process by another app or replica of the same
    /// bytes, and shared with it.
    Shared,
    /// Loaded from a sealed cache entry.
    Hit,
    /// Compiled, and stored for next time when possible.
    Compiled,
}

impl CacheOutcome {
    /// A one-word name for logs: `shared`, `cache` or `compiled`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Shared => "shared",
            CacheOutcome::Hit => "cache",
            CacheOutcome::Compiled => "compiled",
        }
    }
}

/// The compiled-component cache under `$SKIFF_HOME/cache`.
pub struct CompileCache {
    dir: PathBuf,
    key: [u8; 32],
    limit: u64,
}

/// Why the cache could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the compile cache at {}: {source}", dir.display())]
pub struct CacheError {
    dir: PathBuf,
    source: std::io::Error,
}

impl CompileCache {
    /// Opens (creating if needed) the cache in `dir`.
    ///
    /// # Errors
    ///
    /// When the directory or its key file cannot be created or read.
    pub fn open(dir: &Path) -> Result<CompileCache, CacheError> {
        let err = |source| CacheError {
            dir: dir.to_path_buf(),
            source,
        };
        // Every component loaded from here keeps its entry open.
        crate::fd_limit::raise_to_hard_limit();
        std::fs::create_dir_all(dir).map_err(err)?;
        let meta = std::fs::metadata(dir).map_err(err)?;
        private_file::check_directory(&meta).map_err(|reason| {
            err(std::io::Error::other(format!(
                "{reason}; native code is loaded from it, so no other user may write there \
                 (chmod go-w it, or set SKIFF_HOME to a directory of your own)"
            )))
        })?;
        let key = load_or_create_key(&dir.join("key")).map_err(err)?;
        Ok(CompileCache {
            dir: dir.to_path_buf(),
            key,
            limit: DEFAULT_LIMIT,
        })
    }

    /// This cache, keeping at most `limit` bytes of entries rather than
    /// [`DEFAULT_LIMIT`].
    pub fn with_limit(self, limit: u64) -> CompileCache {
        CompileCache { limit, ..self }
    }

    /// Returns the compiled form of `wasm` (whose sha256, hex, is `digest`),
    /// from the cache when a sealed entry exists, otherwise by compiling it
    /// (and storing the result).
    ///
    /// # Errors
    ///
    /// Compilation errors from wasmtime. Cache I/O failures are logged and
    /// fall back to compiling.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        digest: &str,
        wasm: &[u8],
    ) -> Result<(Component, CacheOutcome), wasmtime::Error> {
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_id = hex::encode(&hasher.0.finalize()[..8]);
        let path = self.dir.join(format!("{digest}-{engine_id}.cwasm"));
        if let Some(component) = self.load(engine, &path) {
            return Ok((component, CacheOutcome::Hit));
        }
        let artifact = engine.precompile_component(wasm)?;
        match self.store(&path, &artifact) {
            // Mapped from the entry just written, like any later start, so
            // its code and images are file-backed and shared from now on.
            Ok(()) => {
                self.trim(&path);
                if let Some(component) = self.load(engine, &path) {
                    return Ok((component, CacheOutcome::Compiled));
                }
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot write compile cache entry: {e}")
            }
        }
        // SAFETY: `artifact` was produced by `precompile_component` on this
        // very engine a moment ago.
        let component = unsafe { Component::deserialize(engine, &artifact)? };
        Ok((component, CacheOutcome::Compiled))
    }

    /// Opens and verifies a cache entry and maps it; `None` when absent,
    /// not this user's own private file, or not sealed by this cache's key
    /// (logged; the recompiled entry then replaces it).
    fn load(&self, engine: &Engine, path: &Path) -> Option<Component> {
        let file = match private_file::open(path, MAX_ENTRY_BYTES) {
            Ok(file) => file,
            Err(Refusal::Absent) => return None,
            Err(refusal) => {
                tracing::warn!(path = %path.display(), "not loading compile cache entry: {refusal}; compiling instead");
                return None;
            }
        };
        let seal = private_file::read(&path.with_extension("seal"), blake3::OUT_LEN as u64)
            .map_err(|refusal| format!("its seal cannot be used: {refusal}"));
        if let Err(reason) = seal.and_then(|tag| self.verify(path, &file, &tag)) {
            tracing::warn!(path = %path.display(), "not loading compile cache entry: {reason}; compiling instead");
            return None;
        }
        // The file verified is the file mapped: through the open
        // descriptor, so a rename over the entry in between changes
        // nothing, and only this user may change the file in place.
        let verified = PathBuf::from(format!("/proc/self/fd/{}", file_descriptor(&file)));
        // SAFETY: the MAC proves these bytes were written by `store` with
        // this home's secret key, i.e. they are the output of
        // `Engine::precompile_component` for an engine with the same
        // compatibility hash (part of the file name, which the MAC covers).
        let loaded = if verified.exists() {
            unsafe { Component::deserialize_file(engine, &verified) }
        } else {
            // No procfs: read the verified descriptor into memory instead.
            read_all(&file).and_then(|bytes| unsafe { Component::deserialize(engine, bytes) })
        };
        match loaded {
            Ok(component) => {
                // Its modification time is when it was last used: what
                // `trim` removes first is what no start needed longest.
                let _ = file.set_modified(std::time::SystemTime::now());
                Some(component)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "not loading unusable compile cache entry: {e:#}; compiling instead");
                None
            }
        }
    }

    /// Checks that `tag` is this cache's MAC over `path`'s name and the
    /// contents of `file`, which is mapped, not read, and hashed on every
    /// core.
    fn verify(&self, path: &Path, file: &std::fs::File, tag: &[u8]) -> Result<(), String> {
        let tag = <[u8; blake3::OUT_LEN]>::try_from(tag)
            .map_err(|_| format!("its seal is {} bytes, not {}", tag.len(), blake3::OUT_LEN))?;
        // SAFETY: the mapping is read while this function runs; only this
        // user may change the file (checked when it was opened), and
        // Skiff replaces entries by rename, never in place.
        let artifact =
            unsafe { memmap2::Mmap::map(file) }.map_err(|e| format!("it cannot be mapped: {e}"))?;
        let mut mac = self.mac(path);
        mac.update_rayon(&artifact);
        // `Hash`'s equality is constant-time.
        if mac.finalize() == blake3::Hash::from_bytes(tag) {
            Ok(())
        } else {
            Err("its seal does not match: not sealed by this Skiff home, or changed since".into())
        }
    }

    /// Writes an entry and then its seal, each atomically (temp file, then
    /// rename), both mode 0600, replacing whatever was there. A crash
    /// between the two leaves an entry whose seal is missing or stale: it
    /// is refused on its next load, recompiled and replaced.
    fn store(&self, path: &Path, artifact: &[u8]) -> std::io::Result<()> {
        let mut mac = self.mac(path);
        mac.update_rayon(artifact);
        let tag = mac.finalize();
        for (target, bytes) in [
            (path.to_path_buf(), artifact),
            (path.with_extension("seal"), tag.as_bytes()),
        ] {
            // NamedTempFile creates files readable by their owner only.
            let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
            tmp.write_all(bytes)?;
            tmp.as_file().sync_all()?;
            tmp.persist(&target).map_err(|e| e.error)?;
        }
        Ok(())
    }

    /// Removes the least recently used entries (and their seals) while
    /// the entries hold more than the limit, never `keep` (the one just
    /// stored). Entries mapped by a running component stay mapped: the
    /// file goes, its pages stay until the component is dropped.
    fn trim(&self, keep: &Path) {
        let Ok(listing) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = listing
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|e| e == "cwasm"))
            .filter_map(|path| {
                let meta = std::fs::symlink_metadata(&path).ok()?;
                Some((meta.modified().ok()?, meta.len(), path))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|(_, size, _)| size).sum();
        if total <= self.limit {
            return;
        }
        entries.sort();
        for (_, size, path) in entries {
            if total <= self.limit {
                break;
            }
            if path == keep {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                let _ = std::fs::remove_file(path.with_extension("seal"));
                total -= size;
                tracing::info!(path = %path.display(), "removed the least recently used compile cache entry");
            }
        }
    }

    /// A MAC keyed for this cache, fed the entry's file name; the caller
    /// feeds it the artifact.
    fn mac(&self, path: &Path) -> blake3::Hasher {
        let mut mac = blake3::Hasher::new_keyed(&self.key);
        let name = path
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or_default();
        mac.update(&(name.len() as u64).to_le_bytes());
        mac.update(name);
        mac
    }
}

/// The raw descriptor of `file`, for its `/proc/self/fd` path.
fn file_descriptor(file: &std::fs::File) -> i32 {
    use std::os::fd::AsRawFd;
    file.as_raw_fd()
}

/// Reads `file` from its start to its end.
fn read_all(file: &std::fs::File) -> wasmtime::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    let mut reader = file;
    let mut bytes = Vec::new();
    reader.seek(std::io::SeekFrom::Start(0))?;
    reader.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads the cache key, creating a fresh random one (mode 0600) if absent.
/// A key that is not this user's private file, or not 32 bytes, is
/// replaced: entries sealed with it are then refused and recompiled.
fn load_or_create_key(path: &Path) -> std::io::Result<[u8; 32]> {
    let damaged = match private_file::read(path, 32) {
        Ok(bytes) => match <[u8; 32]>::try_from(bytes.as_slice()) {
            Ok(key) => return Ok(key),
            Err(_) => true,
        },
        Err(Refusal::Absent) => false,
        Err(refusal) => {
            tracing::warn!(path = %path.display(), "replacing the compile cache key: {refusal}");
            true
        }
    };
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    tmp.write_all(&key)?;
    tmp.as_file().sync_all()?;
    if damaged {
        // Rename replaces the name itself, even when it is a link.
        tmp.persist(path).map_err(|e| e.error)?;
        return Ok(key);
    }
    // Two processes starting at once may both create a key; the first rename
    // wins and the loser re-reads it, so both use the same key.
    match tmp.persist_noclobber(path) {
        Ok(_) => Ok(key),
        Err(_) => {
            let bytes = private_file::read(path, 32)
                .map_err(|refusal| std::io::Error::other(format!("cache key: {refusal}")))?;
            <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| std::io::Error::other("cache key file has the wrong length"))
        }
    }
}

/// Feeds `Hash` output into sha256, for a hash that is stable across runs
/// (unlike `DefaultHasher`'s random keys).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty component, with a custom section carrying `tag` so each
    /// tag gives different bytes.
    fn component(tag: &str) -> Vec<u8> {
        let mut wasm = b"\0asm\x0d\0\x01\0".to_vec();
        let name = b"skiff-test";
        let payload = [&[name.len() as u8][..], name, tag.as_bytes()].concat();
        wasm.push(0);
        wasm.push(payload.len() as u8);
        wasm.extend_from_slice(&payload);
        wasm
    }

    fn entries(dir: &Path, extension: &str) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == extension))
            .collect();
        found.sort();
        found
    }

    #[test]
    fn an_entry_is_compiled_once_then_mapped_from_its_sealed_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::open(dir.path()).unwrap();
        let engine = Engine::default();
        let wasm = component("a");
        let (_, first) = cache.load_or_compile(&engine, "aa", &wasm).unwrap();
        assert_eq!(first, CacheOutcome::Compiled);
        let (_, second) = cache.load_or_compile(&engine, "aa", &wasm).unwrap();
        assert_eq!(second, CacheOutcome::Hit);
        for file in entries(dir.path(), "cwasm")
            .into_iter()
            .chain(entries(dir.path(), "seal"))
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", file.display());
        }
    }

    #[test]
    fn past_its_limit_the_least_recently_used_entries_go() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let probe = CompileCache::open(dir.path()).unwrap();
        probe
            .load_or_compile(&engine, "probe", &component("probe"))
            .unwrap();
        let entry = std::fs::metadata(&entries(dir.path(), "cwasm")[0])
            .unwrap()
            .len();
        std::fs::remove_dir_all(dir.path()).unwrap();
        // Room for two entries, not three.
        let cache = CompileCache::open(dir.path())
            .unwrap()
            .with_limit(entry * 5 / 2);
        let outcome = |digest: &str| {
            cache
                .load_or_compile(&engine, digest, &component(digest))
                .unwrap()
                .1
        };
        // Far enough apart for file times to differ.
        let later = || std::thread::sleep(std::time::Duration::from_millis(30));
        assert_eq!(outcome("aa"), CacheOutcome::Compiled);
        later();
        assert_eq!(outcome("bb"), CacheOutcome::Compiled);
        later();
        // A start from the cache makes aa the most recently used...
        assert_eq!(outcome("aa"), CacheOutcome::Hit);
        later();
        // ...so the third entry pushes bb out, with its seal.
        assert_eq!(outcome("cc"), CacheOutcome::Compiled);
        let names: Vec<String> = entries(dir.path(), "cwasm")
            .iter()
            .chain(&entries(dir.path(), "seal"))
            .map(|p| p.file_name().unwrap().to_string_lossy()[..2].to_string())
            .collect();
        assert_eq!(names, ["aa", "cc", "aa", "cc"]);
        assert_eq!(outcome("aa"), CacheOutcome::Hit);
        assert_eq!(outcome("bb"), CacheOutcome::Compiled);
    }

    #[test]
    fn entries_with_a_missing_altered_or_borrowed_seal_are_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::open(dir.path()).unwrap();
        let engine = Engine::default();
        let (a, b) = (component("a"), component("b"));
        cache.load_or_compile(&engine, "aa", &a).unwrap();
        cache.load_or_compile(&engine, "bb", &b).unwrap();
        let seals = entries(dir.path(), "seal");
        assert_eq!(seals.len(), 2);

        // Entry "aa" presented with "bb"'s (valid) seal.
        std::fs::copy(&seals[1], &seals[0]).unwrap();
        let (_, outcome) = cache.load_or_compile(&engine, "aa", &a).unwrap();
        assert_eq!(outcome, CacheOutcome::Compiled, "a borrowed seal");

        // One altered byte in the artifact.
        let artifact = seals[1].with_extension("cwasm");
        let mut bytes = std::fs::read(&artifact).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&artifact, bytes).unwrap();
        let (_, outcome) = cache.load_or_compile(&engine, "bb", &b).unwrap();
        assert_eq!(outcome, CacheOutcome::Compiled, "an altered artifact");

        // No seal at all.
        std::fs::remove_file(&seals[1]).unwrap();
        let (_, outcome) = cache.load_or_compile(&engine, "bb", &b).unwrap();
        assert_eq!(outcome, CacheOutcome::Compiled, "a missing seal");
        let (_, outcome) = cache.load_or_compile(&engine, "bb", &b).unwrap();
        assert_eq!(outcome, CacheOutcome::Hit, "sealed again after recompiling");
    }

    #[test]
    fn a_key_or_entry_others_could_have_written_is_not_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let wasm = component("a");
        let cache = CompileCache::open(dir.path()).unwrap();
        cache.load_or_compile(&engine, "aa", &wasm).unwrap();
        let entry = entries(dir.path(), "cwasm").remove(0);

        // An entry others may write, or one with a second name, is
        // recompiled, never loaded, and the fresh entry replaces it.
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666)).unwrap();
        let (_, outcome) = cache.load_or_compile(&engine, "aa", &wasm).unwrap();
        assert_eq!(outcome, CacheOutcome::Compiled, "a world-writable entry");
        let other_name = dir.path().join("elsewhere");
        std::fs::hard_link(&entry, &other_name).unwrap();
        let (_, outcome) = cache.load_or_compile(&engine, "aa", &wasm).unwrap();
        assert_eq!(outcome, CacheOutcome::Compiled, "an entry with two links");
        std::fs::remove_file(&other_name).unwrap();
        assert_eq!(
            cache.load_or_compile(&engine, "aa", &wasm).unwrap().1,
            CacheOutcome::Hit
        );

        // A seal that is a link to an endless file is refused at once.
        let seal = entry.with_extension("seal");
        std::fs::remove_file(&seal).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &seal).unwrap();
        let (_, outcome) = cache.load_or_compile(&engine, "aa", &wasm).unwrap();
        assert_eq!(
            outcome,
            CacheOutcome::Compiled,
            "a seal linked to /dev/zero"
        );

        // A key someone else could have chosen is replaced, so entries
        // sealed with it are recompiled.
        let key = dir.path().join("key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let reopened = CompileCache::open(dir.path()).unwrap();
        assert_ne!(reopened.key, cache.key, "the exposed key was kept");
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (_, outcome) = reopened.load_or_compile(&engine, "aa", &wasm).unwrap();
        assert_eq!(outcome, CacheOutcome::Compiled, "sealed under the old key");

        // A cache directory others may write in is refused with a reason.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = CompileCache::open(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("mode 777") && err.contains("chmod go-w"),
            "{err}"
        );
    }
}
