//! The Skiff home directory: `$SKIFF_HOME`, default `~/.skiff`. It holds
//! the compile cache and, later, the package store and cluster config.

use std::path::PathBuf;

/// The Skiff home directory.
pub fn skiff_home() -> PathBuf {
    if let Some(home) = std::env::var_os("SKIFF_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".skiff"),
        None => PathBuf::from(".skiff"),
    }
}

/// Where compiled components are cached.
pub fn cache_dir() -> PathBuf {
    skiff_home().join("cache")
}

/// The local package store.
pub fn store_dir() -> PathBuf {
    skiff_home().join("store")
}

/// Saved registry credentials (`skiff login`).
pub fn credentials_file() -> PathBuf {
    skiff_home().join("credentials.json")
}
