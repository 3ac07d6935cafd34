//! Registry credentials: `skiff login` saves them per registry in
//! `$SKIFF_HOME/credentials.json` (mode 0600); `SKIFF_REGISTRY_USERNAME` and
//! `SKIFF_REGISTRY_PASSWORD` override them for any registry.

use crate::home;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A username and password (or token) for one registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    /// The username.
    pub username: String,
    /// The password or token.
    pub password: String,
}

/// The credentials to use for `registry`, if any.
///
/// # Errors
///
/// A credentials file that exists but cannot be read or parsed.
pub fn for_registry(registry: &str) -> anyhow::Result<Option<Credentials>> {
    if let (Ok(username), Ok(password)) = (
        std::env::var("SKIFF_REGISTRY_USERNAME"),
        std::env::var("SKIFF_REGISTRY_PASSWORD"),
    ) {
        return Ok(Some(Credentials { username, password }));
    }
    Ok(load()?.remove(registry))
}

/// Saves `credentials` for `registry`.
///
/// # Errors
///
/// When the credentials file cannot be written.
pub fn save(registry: &str, credentials: Credentials) -> anyhow::Result<()> {
    let mut all = load()?;
    all.insert(registry.to_string(), credentials);
    home::write_private(&home::credentials_file(), &serde_json::to_vec_pretty(&all)?)
}

fn load() -> anyhow::Result<BTreeMap<String, Credentials>> {
    let path = home::credentials_file();
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is damaged; delete it and run skiff login again",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}
