//! Registry credentials, each for one registry only: `skiff login REGISTRY`
//! saves them per registry in `$SKIFF_HOME/credentials.json` (mode 0600);
//! `SKIFF_REGISTRY_USERNAME` and `SKIFF_REGISTRY_PASSWORD` override them for
//! the registry named by `SKIFF_REGISTRY` (`host[:port]`) and no other. A
//! registry named by a manifest, an `oci://` source or a dependency never
//! receives another registry's credentials.

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

/// The environment variable naming the registry that
/// `SKIFF_REGISTRY_USERNAME`/`SKIFF_REGISTRY_PASSWORD` are for.
pub const REGISTRY_VAR: &str = "SKIFF_REGISTRY";

/// The credentials to use for `registry`, if any: those of the
/// environment when `SKIFF_REGISTRY` names it, else those saved for it.
///
/// # Errors
///
/// A credentials file that exists but cannot be read or parsed, or
/// credentials in the environment without `SKIFF_REGISTRY`.
pub fn for_registry(registry: &str) -> anyhow::Result<Option<Credentials>> {
    let from_env = from_environment(
        registry,
        std::env::var("SKIFF_REGISTRY_USERNAME").ok(),
        std::env::var("SKIFF_REGISTRY_PASSWORD").ok(),
        std::env::var(REGISTRY_VAR).ok(),
    )?;
    if from_env.is_some() {
        return Ok(from_env);
    }
    let wanted = normalize(registry);
    Ok(load()?
        .into_iter()
        .find(|(saved, _)| normalize(saved) == wanted)
        .map(|(_, credentials)| credentials))
}

/// The environment's credentials, when they are for `registry`.
fn from_environment(
    registry: &str,
    username: Option<String>,
    password: Option<String>,
    scope: Option<String>,
) -> anyhow::Result<Option<Credentials>> {
    let (Some(username), Some(password)) = (username, password) else {
        return Ok(None);
    };
    let Some(scope) = scope.filter(|s| !s.trim().is_empty()) else {
        anyhow::bail!(
            "SKIFF_REGISTRY_USERNAME and SKIFF_REGISTRY_PASSWORD are set without {REGISTRY_VAR}: set {REGISTRY_VAR} to the registry they are for (host[:port], e.g. ghcr.io), or unset them and use `skiff login REGISTRY`; Skiff no longer sends them to every registry"
        );
    };
    Ok((normalize(&scope) == normalize(registry)).then_some(Credentials { username, password }))
}

/// A registry name as compared: lower case, without a scheme or trailing
/// slash, Docker Hub under one name.
fn normalize(registry: &str) -> String {
    let name = registry.trim().to_ascii_lowercase();
    let name = name
        .strip_prefix("https://")
        .or_else(|| name.strip_prefix("http://"))
        .unwrap_or(&name);
    let name = name.trim_end_matches('/');
    match name {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        other => other.to_string(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(scope: Option<&str>, registry: &str) -> anyhow::Result<Option<Credentials>> {
        from_environment(
            registry,
            Some("alice".to_string()),
            Some("s3cret".to_string()),
            scope.map(str::to_string),
        )
    }

    #[test]
    fn environment_credentials_go_only_to_the_registry_they_name() {
        let found = env(Some("127.0.0.1:5000"), "127.0.0.1:5000").unwrap();
        assert_eq!(found.map(|c| c.username).as_deref(), Some("alice"));
        assert!(
            env(Some("127.0.0.1:5000"), "127.0.0.1:5001")
                .unwrap()
                .is_none()
        );
        assert!(env(Some("ghcr.io"), "evil.example").unwrap().is_none());
        assert!(env(Some("https://GHCR.io/"), "ghcr.io").unwrap().is_some());
        assert!(env(Some("docker.io"), "index.docker.io").unwrap().is_some());
        let err = env(None, "ghcr.io").unwrap_err().to_string();
        assert!(err.contains("SKIFF_REGISTRY"), "{err}");
        assert!(env(Some(" "), "ghcr.io").is_err());
        // Nothing set: nothing found, no error.
        assert!(
            from_environment("ghcr.io", None, None, None)
                .unwrap()
                .is_none()
        );
    }
}
