//! The CLI's cluster settings, `$SKIFF_HOME/cluster.json`: for each control
//! plane it knows (by URL), its CA and admin token, and which one is
//! current. `skiff server` and `skiff up` add themselves and become current;
//! `--server URL` picks another known one; `SKIFF_TOKEN` overrides the token.

use crate::api_client::ApiClient;
use crate::home;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What the CLI needs to reach one cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// `https://host:port` of the control plane.
    pub server: String,
    /// The admin bearer token.
    pub token: String,
    /// The cluster CA certificate, PEM.
    pub ca_pem: String,
    /// The cluster's other control planes (standing by on one etcd), which
    /// the CLI turns to when `server` does not answer.
    pub also: Vec<String>,
}

/// The file: every known cluster, and the current one.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Settings {
    current: String,
    clusters: BTreeMap<String, Credentials>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Credentials {
    token: String,
    ca_pem: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    also: Vec<String>,
}

/// Where the settings live.
pub fn path() -> PathBuf {
    home::skiff_home().join("cluster.json")
}

fn read(path: &Path) -> anyhow::Result<Option<Settings>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).with_context(|| {
            format!(
                "{} is damaged; start the control plane again to rewrite it",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write(path: &Path, settings: &Settings) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(settings).expect("settings serialize");
    home::write_private(path, &json)
}

impl ClusterConfig {
    /// Records these settings in `path` and makes them current; returns
    /// the cluster that was current before, if it was another.
    ///
    /// # Errors
    ///
    /// The file cannot be read or written.
    pub fn save(&self, path: &Path) -> anyhow::Result<Option<String>> {
        let mut settings = read(path)?.unwrap_or_default();
        let previous = std::mem::replace(&mut settings.current, self.server.clone());
        settings.clusters.insert(
            self.server.clone(),
            Credentials {
                token: self.token.clone(),
                ca_pem: self.ca_pem.clone(),
                also: self.also.clone(),
            },
        );
        write(path, &settings)?;
        Ok((!previous.is_empty() && previous != self.server).then_some(previous))
    }

    /// Reads the settings of `server` (default the current cluster),
    /// applying `SKIFF_TOKEN`.
    ///
    /// # Errors
    ///
    /// No settings at all, or a `server` that is not an https URL.
    pub fn load(server: Option<&str>) -> anyhow::Result<ClusterConfig> {
        let path = path();
        let settings = read(&path)?.ok_or_else(|| {
            anyhow::anyhow!(
                "no cluster configured: start one with `skiff up` or `skiff server` (they write {})",
                path.display()
            )
        })?;
        let server = server
            .map(|s| s.trim_end_matches('/').to_string())
            .unwrap_or_else(|| settings.current.clone());
        if !server.starts_with("https://") || server.len() <= "https://".len() {
            anyhow::bail!(
                "--server must be the control plane's https URL, e.g. https://10.0.0.1:7070 (got {server:?})"
            );
        }
        // A server known by another URL gets the current cluster's CA and
        // token: it may be the same control plane reached by another name.
        let credentials = settings
            .clusters
            .get(&server)
            .or_else(|| settings.clusters.get(&settings.current))
            .cloned()
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{} names no current cluster; start `skiff up` or `skiff server` to set one",
                    path.display()
                )
            })?;
        let token = std::env::var("SKIFF_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .unwrap_or(credentials.token);
        Ok(ClusterConfig {
            server,
            token,
            ca_pem: credentials.ca_pem,
            also: credentials.also,
        })
    }

    /// An API client with these settings.
    ///
    /// # Errors
    ///
    /// An unreadable CA certificate.
    pub fn client(&self) -> anyhow::Result<ApiClient> {
        let tls = crate::mesh::tls::client_trusting(&self.ca_pem)?;
        let servers: Vec<&str> = std::iter::once(self.server.as_str())
            .chain(self.also.iter().map(String::as_str))
            .collect();
        Ok(ApiClient::new(
            &servers.join(","),
            tls,
            Some(self.token.clone()),
        ))
    }
}

/// Makes `previous` current again if `leaving` still is (a `skiff up`
/// that stops hands the CLI back to the cluster it found).
///
/// # Errors
///
/// The file cannot be read or written.
pub fn hand_back(path: &Path, leaving: &str, previous: &str) -> anyhow::Result<()> {
    let Some(mut settings) = read(path)? else {
        return Ok(());
    };
    if settings.current == leaving && settings.clusters.contains_key(previous) {
        settings.current = previous.to_string();
        write(path, &settings)?;
    }
    Ok(())
}
