//! The control plane's durable state: its records (the apps declared with
//! their package digest and scale, the nodes that joined, where each
//! replica is assigned, the one-time join tokens) and the [`ClusterStore`]
//! that keeps them, one transaction per change, so a control plane killed
//! mid-write reopens to the state before or after that write, never
//! between. Applying the same declaration twice changes nothing.
//!
//! [`RedbStore`] keeps them in an embedded database file (the default);
//! [`EtcdStore`] in etcd, which several control planes can share.

#[cfg(test)]
mod tests;

mod embedded;
mod etcd;

pub use embedded::RedbStore;
pub use etcd::{EtcdStore, EtcdTarget, Leadership, REQUEST_TIMEOUT};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
pub use skiff_runtime::manifest::Replicas;
use std::collections::BTreeMap;

/// A damaged record moved out of its table by [`ClusterStore::set_aside_damaged`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    /// The table it was in: `apps`, `nodes` or `replicas`.
    pub table: &'static str,
    /// Its key there.
    pub key: String,
    /// Why it could not be decoded.
    pub message: String,
}

impl SetAside {
    /// What an operator does about it.
    pub fn remedy(&self) -> &'static str {
        match self.table {
            "apps" => "deploy the app again with `skiff deploy`",
            "nodes" => {
                "the node is recorded again at its next heartbeat; if it is refused, join it again with a new token from `skiff join-token`"
            }
            _ => "the controller recreates and places the replica",
        }
    }
}

/// A node that joined the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's name (also in its certificate).
    pub name: String,
    /// `key=value` labels.
    pub labels: BTreeMap<String, String>,
    /// Memory the node offers to replicas, bytes.
    pub memory: u64,
    /// Where its HTTP ingress listens.
    pub ingress: String,
    /// Where its mesh (mTLS) endpoint listens.
    pub mesh: String,
    /// Takes no new replicas.
    pub cordoned: bool,
    /// Cordoned, and its replicas are moved elsewhere.
    pub drained: bool,
    /// Random per join, also in the node's certificates: only those of
    /// this join are honoured. Empty for a node that joined before
    /// incarnations existed.
    #[serde(default)]
    pub incarnation: String,
}

/// One replica of a component, and the node it is assigned to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    /// Unique id, `app/component/N`.
    pub id: String,
    /// The app.
    pub app: String,
    /// The component.
    pub component: String,
    /// The node running it; `None` while pending.
    pub node: Option<String>,
    /// When it was created, Unix seconds.
    pub created_unix: u64,
    /// The version (package digest) it runs. Empty in a record stored
    /// before versions were recorded: it runs the app's package.
    #[serde(default)]
    pub package: String,
}

/// One change to the replica table, applied with others atomically.
#[derive(Debug, Clone)]
pub enum ReplicaChange {
    /// Insert or replace a replica.
    Put(ReplicaRecord),
    /// Remove the replica with this id.
    Remove(String),
}

/// One declared app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    /// The app's name.
    pub name: String,
    /// The digest of the package it runs.
    pub package: String,
    /// Desired replicas per component: a fixed count, or autoscaling
    /// bounds. A record stored before autoscaling holds plain counts,
    /// which read as fixed ones.
    pub scale: BTreeMap<String, Replicas>,
    /// Bumped on every change; 1 when first declared.
    pub generation: u64,
    /// The move from the version that served before to `package`, while
    /// it is under way or watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// Versions that served before, oldest first, at most
    /// [`KEPT_VERSIONS`]: where `skiff rollback` returns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<String>,
    /// The last version that was rolled back, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<FailedVersion>,
}

/// How many earlier versions of an app are kept for `skiff rollback`.
pub const KEPT_VERSIONS: usize = 5;

impl AppRecord {
    /// Every version the app needs kept: the one it runs, the one a
    /// rollout moves from, and the earlier ones.
    pub fn versions(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.package)
            .chain(self.rollout.as_ref().map(|r| &r.from))
            .chain(&self.history)
    }
}

/// A change of an app's version under way: replicas of `from` are
/// replaced by replicas of the app's `package`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// The version being replaced: for a rollout, the one that served
    /// before and where a rollback returns; for a rollback, the version
    /// that failed.
    pub from: String,
    /// When it started, Unix milliseconds.
    pub started_unix_ms: u64,
    /// How requests move to the new version.
    pub strategy: RolloutStrategy,
    /// When every replica first ran the new version, Unix milliseconds:
    /// the new version is still watched for errors for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_unix_ms: Option<u64>,
}

/// How requests move from the old version to the new.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RolloutStrategy {
    /// Replica by replica, within the components' `rollout` bounds;
    /// requests go to every ready replica of either version.
    Rolling,
    /// The new version gets `steps[step]` percent of requests for
    /// `interval_ms`, then the next step; the last (100) is a rolling
    /// update.
    Canary {
        /// Shares of requests, percent, increasing to 100.
        steps: Vec<u32>,
        /// The step now.
        step: usize,
        /// How long each step lasts.
        interval_ms: u64,
        /// When this step began, Unix milliseconds.
        step_started_unix_ms: u64,
    },
    /// Back to the app's `package` from `from`, which failed or was
    /// rolled back by hand: requests go to `package` as soon as a replica
    /// of it serves.
    Rollback {
        /// Why.
        reason: String,
    },
}

/// A version that was rolled back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedVersion {
    /// Its package digest.
    pub package: String,
    /// Why it was rolled back, with the evidence.
    pub reason: String,
    /// When, Unix milliseconds.
    pub unix_ms: u64,
}

impl AppRecord {
    /// A new app named `name`, with no version yet.
    pub fn new(name: &str) -> AppRecord {
        AppRecord {
            name: name.to_string(),
            package: String::new(),
            scale: BTreeMap::new(),
            generation: 0,
            rollout: None,
            history: Vec::new(),
            failed: None,
        }
    }
}

/// What applying a declaration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The app is new.
    Created,
    /// The app changed; its new generation.
    Updated(u64),
    /// The declaration matched what was stored.
    Unchanged,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database could not be opened, read or written.
    #[error("cluster state store: {0}")]
    Store(String),
    /// The store cannot be reached, or cannot take writes now (etcd
    /// without quorum); nothing was changed, and trying later may work.
    #[error("cluster state store unavailable: {0}")]
    Unavailable(String),
    /// The write was refused because this control plane no longer leads
    /// the cluster: another took over.
    #[error("this control plane no longer leads the cluster; another took over")]
    NotLeader,
    /// A record could not be decoded.
    #[error("cluster state store: damaged record {key:?}: {message}")]
    Damaged {
        /// The record's key.
        key: String,
        /// What was wrong.
        message: String,
    },
    /// No such app.
    #[error("no app {0:?}; see `skiff apps`")]
    UnknownApp(String),
    /// No such component in the app.
    #[error("app {app:?} has no component {component:?}")]
    UnknownComponent {
        /// The app.
        app: String,
        /// The component asked for.
        component: String,
    },
}

/// What makes a cluster itself: its CA, which signs every node's and
/// workload's certificate, and the admin token the CLI presents. Every
/// control plane of a cluster has the same.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecrets {
    /// The CA certificate, PEM.
    pub ca_cert_pem: String,
    /// The CA's private key, PEM.
    pub ca_key_pem: String,
    /// The admin token.
    pub admin_token: String,
}

impl std::fmt::Debug for ClusterSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key or the token, wherever this is logged.
        f.debug_struct("ClusterSecrets").finish_non_exhaustive()
    }
}

/// A certificate the cluster serves over HTTPS for `domain`, with its key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRecord {
    /// The name it is kept under and served for: an app's domain, or a
    /// wildcard (`*.example.com`) serving every domain one label below.
    pub domain: String,
    /// The certificate and its chain, PEM, leaf first.
    pub chain_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// Where it came from.
    pub source: CertificateSource,
    /// When it was stored, Unix seconds.
    pub added_unix: u64,
}

impl std::fmt::Debug for CertificateRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key, wherever this is logged.
        f.debug_struct("CertificateRecord")
            .field("domain", &self.domain)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Where a certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertificateSource {
    /// Given with `skiff cert add`: never replaced by the cluster.
    Uploaded,
    /// Ordered by the control plane from an ACME server, and renewed by it.
    Acme,
}

/// Where the cluster's durable records are kept. Every method is one
/// transaction: it happens whole or not at all.
pub trait ClusterStore: Send + Sync {
    /// Where the records are, for messages: a file, or etcd's members.
    fn describe(&self) -> String;

    /// The cluster's CA and admin token, if the cluster was created.
    ///
    /// # Errors
    ///
    /// Store failures, or secrets only partly there.
    fn secrets(&self) -> Result<Option<ClusterSecrets>, StateError>;

    /// Keeps `fresh` as the cluster's secrets unless some are kept
    /// already (another control plane created the cluster first); returns
    /// the ones kept.
    ///
    /// # Errors
    ///
    /// Store failures.
    fn create_secrets(&self, fresh: ClusterSecrets) -> Result<ClusterSecrets, StateError>;

    /// Moves every app, node and replica record that does not decode out
    /// of the way (kept as it was, under `table/key`, for an operator to
    /// look at), so one damaged record does not stop the control plane and
    /// the rest of the state loads. Returns what was set aside.
    ///
    /// # Errors
    ///
    /// Store failures; then nothing was moved.
    fn set_aside_damaged(&self) -> Result<Vec<SetAside>, StateError>;

    /// The records set aside so far, as `table/key`.
    ///
    /// # Errors
    ///
    /// Store failures.
    fn quarantined(&self) -> Result<Vec<String>, StateError>;

    /// Reads app `name`, asks `change` for the record to store, and
    /// stores it (bumping the generation) unless it is what was stored;
    /// returns what happened and the record as stored. `change` need not
    /// set the name or generation. A store that detects a concurrent
    /// write may call `change` again with the newer record.
    ///
    /// # Errors
    ///
    /// What `change` returns, or store failures; then nothing changed.
    fn update_app(
        &self,
        name: &str,
        change: &mut dyn FnMut(Option<&AppRecord>) -> Result<AppRecord, StateError>,
    ) -> Result<(Applied, AppRecord), StateError>;

    /// The app `name`, if declared.
    ///
    /// # Errors
    ///
    /// Store failures or a damaged record.
    fn app(&self, name: &str) -> Result<Option<AppRecord>, StateError>;

    /// Every declared app, by name.
    ///
    /// # Errors
    ///
    /// Store failures or a damaged record.
    fn apps(&self) -> Result<Vec<AppRecord>, StateError>;

    /// Removes app `name` and its replicas; whether it existed.
    ///
    /// # Errors
    ///
    /// Store failures.
    fn delete_app(&self, name: &str) -> Result<bool, StateError>;

    /// Records (or replaces) node `record`.
    ///
    /// # Errors
    ///
    /// Store failures.
    fn put_node(&self, record: &NodeRecord) -> Result<(), StateError>;

    /// Removes node `name`; whether it was there.
    ///
    /// # Errors
    ///
    /// Store failures.
    fn delete_node(&self, name: &str) -> Result<bool, StateError>;

    /// Uses up join `token` and records node `record`: true if the token
    /// was known and unexpired at `now_unix`; else false, and nothing is
    /// written.
    ///
    /// # Errors
    ///
    /// Store failures; then nothing was written.
    fn admit_node(
        &self,
        token: &str,
        record: &NodeRecord,
        now_unix: u64,
    ) -> Result<bool, StateError>;

    /// Every node that joined, by name.
    ///
    /// # Errors
    ///
    /// Store failures or a damaged record.
    fn nodes(&self) -> Result<Vec<NodeRecord>, StateError>;

    /// Every replica, by id.
    ///
    /// # Errors
    ///
    /// Store failures or a damaged record.
    fn replicas(&self) -> Result<Vec<ReplicaRecord>, StateError>;

    /// Applies `changes` to the replicas together.
    ///
    /// # Errors
    ///
    /// Store failures; then nothing was applied.
    fn change_replicas(&self, changes: &[ReplicaChange]) -> Result<(), StateError>;

    /// Records a join token (only its hash is kept), valid until
    /// `expires_unix` (seconds).
    ///
    /// # Errors
    ///
    /// Store failures.
    fn add_join_token(&self, token: &str, expires_unix: u64) -> Result<(), StateError>;

    /// Whether `token` is known and unexpired at `now_unix`, without using
    /// it up.
    ///
    /// # Errors
    ///
    /// Store failures.
    fn join_token_valid(&self, token: &str, now_unix: u64) -> Result<bool, StateError>;

    /// Every certificate the cluster serves, by domain.
    ///
    /// # Errors
    ///
    /// Store failures or a damaged record.
    fn certificates(&self) -> Result<Vec<CertificateRecord>, StateError>;

    /// Keeps `record`, replacing the one for its domain.
    ///
    /// # Errors
    ///
    /// Store failures.
    fn put_certificate(&self, record: &CertificateRecord) -> Result<(), StateError>;

    /// Removes the certificate for `domain`; whether there was one.
    ///
    /// # Errors
    ///
    /// Store failures.
    fn delete_certificate(&self, domain: &str) -> Result<bool, StateError>;

    /// The cluster's account at the ACME server `directory`, as its
    /// client saved it (it holds the account's private key).
    ///
    /// # Errors
    ///
    /// Store failures.
    fn acme_account(&self, directory: &str) -> Result<Option<String>, StateError>;

    /// Keeps the cluster's account at the ACME server `directory`.
    ///
    /// # Errors
    ///
    /// Store failures.
    fn put_acme_account(&self, directory: &str, account: &str) -> Result<(), StateError>;

    /// Declares `name` to run `package` at `scale`; idempotent.
    ///
    /// # Errors
    ///
    /// Store failures.
    fn apply_app(
        &self,
        name: &str,
        package: &str,
        scale: BTreeMap<String, Replicas>,
    ) -> Result<Applied, StateError> {
        let (applied, _) = self.update_app(name, &mut |current| {
            let mut record = current.cloned().unwrap_or_else(|| AppRecord::new(name));
            record.package = package.to_string();
            record.scale = scale.clone();
            Ok(record)
        })?;
        Ok(applied)
    }

    /// Sets the desired replicas of one component, reading and writing the
    /// app together so a concurrent deploy is not undone; returns what
    /// happened and the app as stored.
    ///
    /// # Errors
    ///
    /// An unknown app or component, or store failures.
    fn scale(
        &self,
        app: &str,
        component: &str,
        replicas: Replicas,
    ) -> Result<(Applied, AppRecord), StateError> {
        self.update_app(app, &mut |current| {
            let record = current.ok_or_else(|| StateError::UnknownApp(app.to_string()))?;
            if !record.scale.contains_key(component) {
                return Err(StateError::UnknownComponent {
                    app: app.to_string(),
                    component: component.to_string(),
                });
            }
            let mut record = record.clone();
            record.scale.insert(component.to_string(), replicas);
            Ok(record)
        })
    }
}

/// What storing `record` over `current` (the stored app, if any) does:
/// whether it changes anything, and the record to keep (with its name and
/// generation set).
fn next_generation(
    name: &str,
    current: Option<&AppRecord>,
    mut record: AppRecord,
) -> (Applied, AppRecord) {
    record.name = name.to_string();
    match current {
        Some(app)
            if AppRecord {
                generation: app.generation,
                ..record.clone()
            } == *app =>
        {
            (Applied::Unchanged, app.clone())
        }
        current => {
            let generation = current.map_or(1, |app| app.generation + 1);
            record.generation = generation;
            let applied = if generation == 1 {
                Applied::Created
            } else {
                Applied::Updated(generation)
            };
            (applied, record)
        }
    }
}

fn store_err(e: impl std::fmt::Display) -> StateError {
    StateError::Store(e.to_string())
}
/// How long store transactions took to commit (to disk), seconds.
pub static WRITE_DURATIONS: std::sync::LazyLock<prometheus_client::metrics::histogram::Histogram> =
    std::sync::LazyLock::new(|| {
        prometheus_client::metrics::histogram::Histogram::new([
            0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
        ])
    });

/// Whether `bytes` decode as a `T`, and why not.
fn check<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<(), String> {
    serde_json::from_slice::<T>(bytes)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StateError> {
    serde_json::from_slice(bytes).map_err(|e| StateError::Damaged {
        key: key.to_string(),
        message: e.to_string(),
    })
}

/// Tokens are stored hashed, so a copy of the store does not reveal them.
/// The key an ACME directory's account is kept under: its URL's hash
/// (a URL is no key for every store).
fn acme_key(directory: &str) -> String {
    token_hash(directory)
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}
