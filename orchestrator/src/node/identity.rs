//! The node's identity: its key and CA-signed certificate, obtained by
//! joining with a one-time token, kept in the data directory (`node.pem`,
//! certificate then key) so restarts need no token, and renewed over mTLS
//! at half its lifetime.

use super::{NodeConfig, NodeShared};
use crate::api::{JoinRequest, JoinResponse, RenewRequest};
use crate::api_client::ApiClient;
use crate::mesh::{Members, NodeIdentity};
use anyhow::Context;
use std::path::Path;
use std::sync::Arc;

/// The identity in use and everything built from it.
pub(crate) struct Current {
    /// Key, certificate and CA.
    pub identity: NodeIdentity,
    /// The control plane client, presenting the certificate.
    pub api: ApiClient,
    /// The mesh endpoint's TLS settings.
    pub mesh_server: Arc<rustls::ServerConfig>,
    /// Renew from this time on, Unix seconds: half way from when the
    /// certificate was obtained to its expiry.
    renew_at: i64,
}

impl Current {
    /// `obtained` is when the certificate was issued to this node, Unix
    /// seconds (its `not_before` is backdated for clock skew, so it does
    /// not say).
    fn new(
        identity: NodeIdentity,
        server: &str,
        obtained: i64,
        members: &Members,
    ) -> anyhow::Result<Current> {
        let api = ApiClient::new(server, identity.control_plane_client_config()?, None);
        let mesh_server = identity.server_config(members)?;
        let not_after = identity.expires()?;
        Ok(Current {
            identity,
            api,
            mesh_server,
            renew_at: obtained + (not_after - obtained) / 2,
        })
    }
}

/// The saved identity, or a new one from joining with `config.token`;
/// its mesh endpoint honours the peers in `members`.
///
/// # Errors
///
/// No saved identity and no token, a malformed or refused token, an
/// unreachable control plane, or a data directory of another node.
pub(crate) async fn load_or_join(
    config: &NodeConfig,
    members: &Members,
) -> anyhow::Result<Current> {
    let dir = &config.data_dir;
    if dir.join("node.pem").exists() {
        let saved_name = std::fs::read_to_string(dir.join("name")).unwrap_or_default();
        if saved_name.trim() != config.name {
            anyhow::bail!(
                "{} holds the identity of node {:?}, not {:?}; use another --data-dir or the same --name",
                dir.display(),
                saved_name.trim(),
                config.name
            );
        }
        let read = |file: &str| {
            std::fs::read_to_string(dir.join(file))
                .with_context(|| format!("cannot read {}", dir.join(file).display()))
        };
        // node.pem holds the certificate and its key together, so a
        // renewal replaces both at once.
        if config.token.is_some() {
            tracing::warn!(
                "--token is not used: {} already holds this node's identity (remove it to join afresh)",
                dir.display()
            );
        }
        let both = read("node.pem")?;
        let identity = NodeIdentity::new(both.clone(), both, read("ca.pem")?);
        // The certificate file is written when the certificate arrives.
        let obtained = std::fs::metadata(dir.join("node.pem"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or_else(now, |d| d.as_secs() as i64);
        return Current::new(identity, &config.server, obtained, members);
    }
    let Some(token) = &config.token else {
        anyhow::bail!(
            "this node has not joined a cluster yet: pass --token with a join token (printed by `skiff server`, or made with `skiff join-token`)"
        );
    };
    let pin = match token.split('.').collect::<Vec<_>>().as_slice() {
        ["skt1", pin, secret] if pin.len() == 32 && !secret.is_empty() => pin.to_string(),
        _ => anyhow::bail!(
            "malformed join token: expected skt1.<ca-pin>.<secret>, as printed by `skiff join-token`"
        ),
    };
    let client = ApiClient::new(&config.server, crate::mesh::tls::client_pinned(&pin)?, None);
    let (key_pem, csr_pem) = NodeIdentity::request()?;
    let joined: JoinResponse = client
        .post(
            "/v1/join",
            &JoinRequest {
                token: token.clone(),
                name: config.name.clone(),
                csr_pem,
                labels: config.labels.clone(),
                memory: config.memory,
            },
        )
        .await
        .with_context(|| format!("cannot join the cluster at {}", config.server))?;
    save(dir, &config.name, &key_pem, &joined)?;
    crate::home::write_private(
        &dir.join(super::DECLARED_CAPACITY),
        config.memory.to_string().as_bytes(),
    )?;
    tracing::info!(
        node = config.name,
        "joined the cluster at {}",
        client.server()
    );
    Current::new(
        NodeIdentity::new(key_pem, joined.cert_pem, joined.ca_pem),
        &config.server,
        now(),
        members,
    )
}

fn save(dir: &Path, name: &str, key_pem: &str, issued: &JoinResponse) -> anyhow::Result<()> {
    crate::home::write_private(&dir.join("ca.pem"), issued.ca_pem.as_bytes())?;
    crate::home::write_private(&dir.join("name"), name.as_bytes())?;
    // Certificate and key in one file written atomically, last: its
    // presence means the identity is complete, and a renewal interrupted
    // by a crash leaves the old pair or the new one, never a mix.
    let both = format!("{}{key_pem}", issued.cert_pem);
    crate::home::write_private(&dir.join("node.pem"), both.as_bytes())
}

/// Renews the certificate once half its lifetime has passed; on failure
/// keeps the current one and tries again at the next heartbeat.
pub(crate) async fn renew_if_due(shared: &Arc<NodeShared>) {
    let due = now() >= shared.identity.read().expect("identity lock").renew_at;
    if !due {
        return;
    }
    let renewed = async {
        let (key_pem, csr_pem) = NodeIdentity::request()?;
        let issued: JoinResponse = shared
            .api()
            .post("/v1/node/renew", &RenewRequest { csr_pem })
            .await?;
        save(
            &shared.config.data_dir,
            &shared.config.name,
            &key_pem,
            &issued,
        )?;
        let identity = NodeIdentity::new(key_pem, issued.cert_pem, issued.ca_pem);
        shared.forwarder.use_identity(&identity)?;
        // The control planes it knows now, not only the one it was given.
        Current::new(identity, &shared.api().servers(), now(), &shared.members)
    };
    match renewed.await {
        Ok(current) => {
            *shared.identity.write().expect("identity lock") = current;
            tracing::info!("node certificate renewed");
        }
        Err(e) => tracing::warn!("cannot renew the node certificate yet: {e:#}"),
    }
}

fn now() -> i64 {
    crate::clock::unix_secs() as i64
}
