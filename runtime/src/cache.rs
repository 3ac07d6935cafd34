//! The on-disk cache of compiled components, so a second start of the same
//! app skips Cranelift.
//!
//! Entries are keyed by the sha256 of the component bytes and the engine's
//! precompile compatibility hash. Each entry is sealed with an HMAC-SHA256
//! under a random key that only this Skiff home holds, so the one unsafe
//! step, deserializing native code, only ever runs on artifacts Skiff wrote
//! itself; anything else is discarded and recompiled.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

type HmacSha256 = Hmac<Sha256>;

/// Length of the HMAC tag that precedes each artifact.
const TAG_LEN: usize = 32;

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
        std::fs::create_dir_all(dir).map_err(err)?;
        let key = load_or_create_key(&dir.join("key")).map_err(err)?;
        Ok(CompileCache {
            dir: dir.to_path_buf(),
            key,
        })
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
        if let Err(e) = self.store(&path, &artifact) {
            tracing::warn!(path = %path.display(), "cannot write compile cache entry: {e}");
        }
        // SAFETY: `artifact` was produced by `precompile_component` on this
        // very engine a moment ago.
        let component = unsafe { Component::deserialize(engine, &artifact)? };
        Ok((component, CacheOutcome::Compiled))
    }

    /// Reads and verifies a cache entry; `None` when absent or not sealed by
    /// this cache's key (such an entry is removed).
    fn load(&self, engine: &Engine, path: &Path) -> Option<Component> {
        let bytes = std::fs::read(path).ok()?;
        let sealed = bytes.len() > TAG_LEN && {
            let (tag, artifact) = bytes.split_at(TAG_LEN);
            self.mac(path, artifact).verify_slice(tag).is_ok()
        };
        if !sealed {
            tracing::warn!(path = %path.display(), "discarding compile cache entry not sealed by this Skiff home");
            let _ = std::fs::remove_file(path);
            return None;
        }
        // SAFETY: the HMAC proves these bytes were written by `store` with
        // this home's secret key, i.e. they are the output of
        // `Engine::precompile_component` for an engine with the same
        // compatibility hash (part of the file name, which the MAC covers).
        match unsafe { Component::deserialize(engine, &bytes[TAG_LEN..]) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), "discarding unusable compile cache entry: {e:#}");
                let _ = std::fs::remove_file(path);
                None
            }
        }
    }

    /// Writes a sealed entry atomically (temp file, then rename).
    fn store(&self, path: &Path, artifact: &[u8]) -> std::io::Result<()> {
        let tag = self.mac(path, artifact).finalize().into_bytes();
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(&tag)?;
        tmp.write_all(artifact)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }

    /// The MAC over an entry's file name and contents.
    fn mac(&self, path: &Path, artifact: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        let name = path
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or_default();
        mac.update(&(name.len() as u64).to_le_bytes());
        mac.update(name);
        mac.update(artifact);
        mac
    }
}

/// Reads the cache key, creating a fresh random one (mode 0600) if absent.
fn load_or_create_key(path: &Path) -> std::io::Result<[u8; 32]> {
    let damaged = match std::fs::read(path) {
        Ok(bytes) => match <[u8; 32]>::try_from(bytes.as_slice()) {
            Ok(key) => return Ok(key),
            Err(_) => true,
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
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
        // A key of the wrong length seals nothing; replace it. Entries sealed
        // with it are then discarded on their next load.
        tmp.persist(path).map_err(|e| e.error)?;
        return Ok(key);
    }
    // Two processes starting at once may both create a key; the first rename
    // wins and the loser re-reads it, so both use the same key.
    match tmp.persist_noclobber(path) {
        Ok(_) => Ok(key),
        Err(_) => {
            let bytes = std::fs::read(path)?;
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
