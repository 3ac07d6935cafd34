//! The CLI's cluster settings, `$SKIFF_HOME/cluster.json`: which control
//! plane to talk to, its CA, and the admin token. `skiff server` and
//! `skiff up` write it; `--server` and `SKIFF_TOKEN` override it.

use crate::api_client::ApiClient;
use crate::home;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What the CLI needs to reach a cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// `https://host:port` of the control plane.
    pub server: String,
    /// The admin bearer token.
    pub token: String,
    /// The cluster CA certificate, PEM.
    pub ca_pem: String,
}

/// Where the settings live.
pub fn path() -> PathBuf {
    home::skiff_home().join("cluster.json")
}

impl ClusterConfig {
    /// Writes the settings, readable by the owner only.
    ///
    /// # Errors
    ///
    /// The file cannot be written.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("a config serializes");
        home::write_private(path, &json)
    }

    /// Reads the settings, applying `--server` and `SKIFF_TOKEN`.
    ///
    /// # Errors
    ///
    /// No settings and no override, or an unreadable file.
    pub fn load(server_override: Option<&str>) -> anyhow::Result<ClusterConfig> {
        let path = path();
        let mut config = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<ClusterConfig>(&bytes).with_context(|| {
                format!(
                    "{} is damaged; start the control plane again to rewrite it",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
                "no cluster configured: start one with `skiff up` or `skiff server` (they write {})",
                path.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        if let Some(server) = server_override {
            config.server = server.to_string();
        }
        if let Ok(token) = std::env::var("SKIFF_TOKEN")
            && !token.is_empty()
        {
            config.token = token;
        }
        Ok(config)
    }

    /// An API client with these settings.
    ///
    /// # Errors
    ///
    /// An unreadable CA certificate.
    pub fn client(&self) -> anyhow::Result<ApiClient> {
        let tls = crate::tls::client_trusting(&self.ca_pem)?;
        Ok(ApiClient::new(&self.server, tls, Some(self.token.clone())))
    }
}
