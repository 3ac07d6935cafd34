//! The control plane's durable state, in an embedded transactional store
//! (redb): the apps declared with their package digest and scale, the nodes
//! that joined, where each replica is assigned, and the one-time join
//! tokens. Every change is one ACID transaction, so a control
//! plane killed mid-write reopens to the state before or after that write,
//! never between. Applying the same declaration twice changes nothing.

#[cfg(test)]
mod tests;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
pub use skiff_runtime::manifest::Replicas;
use std::collections::BTreeMap;
use std::path::Path;

const APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("apps");
const JOIN_TOKENS: TableDefinition<&str, u64> = TableDefinition::new("join_tokens");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const REPLICAS: TableDefinition<&str, &[u8]> = TableDefinition::new("replicas");
/// Records that could not be decoded, keyed `table/key`, kept as they
/// were so an operator can look at them; nothing reads them back.
const QUARANTINE: TableDefinition<&str, &[u8]> = TableDefinition::new("quarantine");

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

fn store_err(e: impl std::fmt::Display) -> StateError {
    StateError::Store(e.to_string())
}

/// The desired-state store.
pub struct ClusterStore {
    db: Database,
}

impl ClusterStore {
    /// Opens (creating if needed) the store at `path`.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened or is not a redb database.
    pub fn open(path: &Path) -> Result<ClusterStore, StateError> {
        let db = Database::create(path).map_err(|e| match e {
            // redb locks the file: another control plane has it open.
            redb::DatabaseError::DatabaseAlreadyOpen => StateError::Store(format!(
                "{} is in use by another control plane (a `skiff server` or `skiff up` with the same data directory or SKIFF_HOME); stop it, or give this one another --data-dir or SKIFF_HOME",
                path.display()
            )),
            e => StateError::Store(format!("{}: {e}", path.display())),
        })?;
        let tx = db.begin_write().map_err(store_err)?;
        tx.open_table(APPS).map_err(store_err)?;
        tx.open_table(JOIN_TOKENS).map_err(store_err)?;
        tx.open_table(NODES).map_err(store_err)?;
        tx.open_table(REPLICAS).map_err(store_err)?;
        tx.open_table(QUARANTINE).map_err(store_err)?;
        commit(tx)?;
        Ok(ClusterStore { db })
    }

    /// Moves every app, node and replica record that does not decode into
    /// the `quarantine` table (key `table/key`, bytes unchanged), in one
    /// transaction, so one damaged record does not stop the control plane
    /// and the rest of the state loads. Returns what was set aside.
    ///
    /// # Errors
    ///
    /// Store failures; then nothing was moved.
    pub fn set_aside_damaged(&self) -> Result<Vec<SetAside>, StateError> {
        let tx = self.db.begin_write().map_err(store_err)?;
        let mut set_aside = Vec::new();
        {
            let mut quarantine = tx.open_table(QUARANTINE).map_err(store_err)?;
            for (name, definition, check) in [
                (
                    "apps",
                    APPS,
                    check::<AppRecord> as fn(&[u8]) -> Result<(), String>,
                ),
                ("nodes", NODES, check::<NodeRecord>),
                ("replicas", REPLICAS, check::<ReplicaRecord>),
            ] {
                let mut table = tx.open_table(definition).map_err(store_err)?;
                let mut damaged = Vec::new();
                for entry in table.iter().map_err(store_err)? {
                    let (key, value) = entry.map_err(store_err)?;
                    if let Err(message) = check(value.value()) {
                        damaged.push((key.value().to_string(), value.value().to_vec(), message));
                    }
                }
                for (key, bytes, message) in damaged {
                    quarantine
                        .insert(format!("{name}/{key}").as_str(), bytes.as_slice())
                        .map_err(store_err)?;
                    table.remove(key.as_str()).map_err(store_err)?;
                    set_aside.push(SetAside {
                        table: name,
                        key,
                        message,
                    });
                }
            }
        }
        commit(tx)?;
        Ok(set_aside)
    }

    /// The records set aside so far, as `table/key`.
    ///
    /// # Errors
    ///
    /// Store failures.
    pub fn quarantined(&self) -> Result<Vec<String>, StateError> {
        let tx = self.db.begin_read().map_err(store_err)?;
        let table = tx.open_table(QUARANTINE).map_err(store_err)?;
        let mut keys = Vec::new();
        for entry in table.iter().map_err(store_err)? {
            keys.push(entry.map_err(store_err)?.0.value().to_string());
        }
        Ok(keys)
    }

    /// Declares `name` to run `package` at `scale`; idempotent.
    ///
    /// # Errors
    ///
    /// Store failures.
    pub fn apply_app(
        &self,
        name: &str,
        package: &str,
        scale: BTreeMap<String, Replicas>,
    ) -> Result<Applied, StateError> {
        self.update_app(name, |current| {
            let mut record = current.cloned().unwrap_or_else(|| AppRecord::new(name));
            record.package = package.to_string();
            record.scale = scale;
            Ok(record)
        })
    }

    /// Sets the desired replicas of one component, reading and writing the
    /// app in one transaction so a concurrent deploy is not undone.
    ///
    /// # Errors
    ///
    /// An unknown app or component, or store failures.
    pub fn scale(
        &self,
        app: &str,
        component: &str,
        replicas: Replicas,
    ) -> Result<Applied, StateError> {
        self.update_app(app, |current| {
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

    /// In one write transaction: reads app `name`, asks `change` for the
    /// record to store, and stores it (bumping the generation) unless it
    /// is what was stored. `change` need not set the name or generation.
    ///
    /// # Errors
    ///
    /// What `change` returns, or store failures; then nothing changed.
    pub fn update_app(
        &self,
        name: &str,
        change: impl FnOnce(Option<&AppRecord>) -> Result<AppRecord, StateError>,
    ) -> Result<Applied, StateError> {
        let tx = self.db.begin_write().map_err(store_err)?;
        let applied = {
            let mut apps = tx.open_table(APPS).map_err(store_err)?;
            let current = match apps.get(name).map_err(store_err)? {
                Some(bytes) => Some(decode::<AppRecord>(name, bytes.value())?),
                None => None,
            };
            let mut record = change(current.as_ref())?;
            record.name = name.to_string();
            match current {
                Some(app)
                    if AppRecord {
                        generation: app.generation,
                        ..record.clone()
                    } == app =>
                {
                    Applied::Unchanged
                }
                current => {
                    let generation = current.map_or(1, |app| app.generation + 1);
                    record.generation = generation;
                    let bytes = serde_json::to_vec(&record).expect("a record serializes");
                    apps.insert(name, bytes.as_slice()).map_err(store_err)?;
                    if generation == 1 {
                        Applied::Created
                    } else {
                        Applied::Updated(generation)
                    }
                }
            }
        };
        commit(tx)?;
        Ok(applied)
    }

    /// The app `name`, if declared.
    ///
    /// # Errors
    ///
    /// Store failures or a damaged record.
    pub fn app(&self, name: &str) -> Result<Option<AppRecord>, StateError> {
        let tx = self.db.begin_read().map_err(store_err)?;
        let apps = tx.open_table(APPS).map_err(store_err)?;
        match apps.get(name).map_err(store_err)? {
            Some(bytes) => Ok(Some(decode(name, bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Every declared app, by name.
    ///
    /// # Errors
    ///
    /// Store failures or a damaged record.
    pub fn apps(&self) -> Result<Vec<AppRecord>, StateError> {
        all_json(&self.db, APPS)
    }

    /// Removes app `name` and its replicas, in one transaction; whether it
    /// existed.
    ///
    /// # Errors
    ///
    /// Store failures.
    pub fn delete_app(&self, name: &str) -> Result<bool, StateError> {
        let tx = self.db.begin_write().map_err(store_err)?;
        let existed = tx
            .open_table(APPS)
            .map_err(store_err)?
            .remove(name)
            .map_err(store_err)?
            .is_some();
        {
            let mut replicas = tx.open_table(REPLICAS).map_err(store_err)?;
            let prefix = format!("{name}/");
            let ids: Vec<String> = replicas
                .iter()
                .map_err(store_err)?
                .filter_map(|entry| entry.ok().map(|(key, _)| key.value().to_string()))
                .filter(|id| id.starts_with(&prefix))
                .collect();
            for id in ids {
                replicas.remove(id.as_str()).map_err(store_err)?;
            }
        }
        commit(tx)?;
        Ok(existed)
    }

    /// Records (or replaces) node `record`.
    ///
    /// # Errors
    ///
    /// Store failures.
    pub fn put_node(&self, record: &NodeRecord) -> Result<(), StateError> {
        put_json(&self.db, NODES, &record.name, record)
    }

    /// Removes node `name`; whether it was there.
    ///
    /// # Errors
    ///
    /// Store failures.
    pub fn delete_node(&self, name: &str) -> Result<bool, StateError> {
        let tx = self.db.begin_write().map_err(store_err)?;
        let existed = tx
            .open_table(NODES)
            .map_err(store_err)?
            .remove(name)
            .map_err(store_err)?
            .is_some();
        commit(tx)?;
        Ok(existed)
    }

    /// Uses up join `token` and records node `record` in one transaction:
    /// true if the token was known and unexpired; else false, and nothing
    /// is written.
    ///
    /// # Errors
    ///
    /// Store failures; then nothing was written.
    pub fn admit_node(
        &self,
        token: &str,
        record: &NodeRecord,
        now_unix: u64,
    ) -> Result<bool, StateError> {
        let tx = self.db.begin_write().map_err(store_err)?;
        let valid = tx
            .open_table(JOIN_TOKENS)
            .map_err(store_err)?
            .remove(token_hash(token).as_str())
            .map_err(store_err)?
            .is_some_and(|expires| expires.value() > now_unix);
        if !valid {
            tx.abort().map_err(store_err)?;
            return Ok(false);
        }
        let bytes = serde_json::to_vec(record).expect("a record serializes");
        tx.open_table(NODES)
            .map_err(store_err)?
            .insert(record.name.as_str(), bytes.as_slice())
            .map_err(store_err)?;
        commit(tx)?;
        Ok(true)
    }

    /// Every node that joined, by name.
    ///
    /// # Errors
    ///
    /// Store failures or a damaged record.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StateError> {
        all_json(&self.db, NODES)
    }

    /// Every replica, by id.
    ///
    /// # Errors
    ///
    /// Store failures or a damaged record.
    pub fn replicas(&self) -> Result<Vec<ReplicaRecord>, StateError> {
        all_json(&self.db, REPLICAS)
    }

    /// Applies `changes` to the replica table in one transaction.
    ///
    /// # Errors
    ///
    /// Store failures; then nothing was applied.
    pub fn change_replicas(&self, changes: &[ReplicaChange]) -> Result<(), StateError> {
        if changes.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(store_err)?;
        {
            let mut replicas = tx.open_table(REPLICAS).map_err(store_err)?;
            for change in changes {
                match change {
                    ReplicaChange::Put(record) => {
                        let bytes = serde_json::to_vec(record).expect("a record serializes");
                        replicas
                            .insert(record.id.as_str(), bytes.as_slice())
                            .map_err(store_err)?;
                    }
                    ReplicaChange::Remove(id) => {
                        replicas.remove(id.as_str()).map_err(store_err)?;
                    }
                }
            }
        }
        commit(tx)
    }

    /// Records a join token (only its hash is stored), valid until
    /// `expires_unix` (seconds).
    ///
    /// # Errors
    ///
    /// Store failures.
    pub fn add_join_token(&self, token: &str, expires_unix: u64) -> Result<(), StateError> {
        let tx = self.db.begin_write().map_err(store_err)?;
        tx.open_table(JOIN_TOKENS)
            .map_err(store_err)?
            .insert(token_hash(token).as_str(), expires_unix)
            .map_err(store_err)?;
        commit(tx)
    }

    /// Whether `token` is known and unexpired, without using it up.
    ///
    /// # Errors
    ///
    /// Store failures.
    pub fn join_token_valid(&self, token: &str, now_unix: u64) -> Result<bool, StateError> {
        let tx = self.db.begin_read().map_err(store_err)?;
        let tokens = tx.open_table(JOIN_TOKENS).map_err(store_err)?;
        Ok(tokens
            .get(token_hash(token).as_str())
            .map_err(store_err)?
            .is_some_and(|expires| expires.value() > now_unix))
    }
}

/// How long store transactions took to commit (to disk), seconds.
pub static WRITE_DURATIONS: std::sync::LazyLock<prometheus_client::metrics::histogram::Histogram> =
    std::sync::LazyLock::new(|| {
        prometheus_client::metrics::histogram::Histogram::new([
            0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
        ])
    });

/// Commits `tx`, timing it for [`WRITE_DURATIONS`].
fn commit(tx: redb::WriteTransaction) -> Result<(), StateError> {
    let started = std::time::Instant::now();
    let committed = tx.commit().map_err(store_err);
    WRITE_DURATIONS.observe(started.elapsed().as_secs_f64());
    committed
}

fn put_json<T: Serialize>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
    value: &T,
) -> Result<(), StateError> {
    let bytes = serde_json::to_vec(value).expect("a record serializes");
    let tx = db.begin_write().map_err(store_err)?;
    tx.open_table(table)
        .map_err(store_err)?
        .insert(key, bytes.as_slice())
        .map_err(store_err)?;
    commit(tx)
}

fn all_json<T: serde::de::DeserializeOwned>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
) -> Result<Vec<T>, StateError> {
    let tx = db.begin_read().map_err(store_err)?;
    let table = tx.open_table(table).map_err(store_err)?;
    let mut all = Vec::new();
    for entry in table.iter().map_err(store_err)? {
        let (key, value) = entry.map_err(store_err)?;
        all.push(decode(key.value(), value.value())?);
    }
    Ok(all)
}

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
fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}
