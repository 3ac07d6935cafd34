//! [`RedbStore`]: the cluster's records in an embedded transactional
//! database (redb), one table per kind of record; the default store, and
//! the one `skiff up` uses.

use super::{
    AppRecord, Applied, CertificateRecord, ClusterSecrets, ClusterStore, NodeRecord, ReplicaChange,
    ReplicaRecord, SetAside, StateError, WRITE_DURATIONS, acme_key, check, decode, next_generation,
    store_err, token_hash,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use std::path::{Path, PathBuf};

pub(super) const APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("apps");
const JOIN_TOKENS: TableDefinition<&str, u64> = TableDefinition::new("join_tokens");
pub(super) const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const REPLICAS: TableDefinition<&str, &[u8]> = TableDefinition::new("replicas");
const CERTIFICATES: TableDefinition<&str, &[u8]> = TableDefinition::new("certificates");
/// ACME accounts, by [`acme_key`] of their directory.
const ACME_ACCOUNTS: TableDefinition<&str, &str> = TableDefinition::new("acme_accounts");
/// Records that could not be decoded, keyed `table/key`, kept as they
/// were so an operator can look at them; nothing reads them back.
const QUARANTINE: TableDefinition<&str, &[u8]> = TableDefinition::new("quarantine");

/// The cluster's records in one redb database file.
pub struct RedbStore {
    pub(super) db: Database,
    /// The database file; the cluster's CA and admin token are files
    /// beside it.
    path: PathBuf,
}

impl RedbStore {
    /// Opens (creating if needed) the store at `path`.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened or is not a redb database.
    pub fn open(path: &Path) -> Result<RedbStore, StateError> {
        // It holds certificates' keys and ACME accounts: the owner's
        // alone, from its first byte (and for a file made by an earlier
        // version, from now on).
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let made = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(path)
                .and_then(|file| file.set_permissions(std::fs::Permissions::from_mode(0o600)));
            if let Err(e) = made {
                return Err(StateError::Store(format!("{}: {e}", path.display())));
            }
        }
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
        tx.open_table(CERTIFICATES).map_err(store_err)?;
        tx.open_table(ACME_ACCOUNTS).map_err(store_err)?;
        commit(tx)?;
        Ok(RedbStore {
            db,
            path: path.to_path_buf(),
        })
    }
}

impl RedbStore {
    /// The file `name` beside the database.
    fn beside(&self, name: &str) -> PathBuf {
        self.path.with_file_name(name)
    }

    fn read_beside(&self, name: &str) -> Result<String, StateError> {
        let path = self.beside(name);
        std::fs::read_to_string(&path)
            .map_err(|e| StateError::Store(format!("cannot read {}: {e}", path.display())))
    }

    fn write_beside(&self, name: &str, text: &str) -> Result<(), StateError> {
        crate::home::write_private(&self.beside(name), text.as_bytes())
            .map_err(|e| StateError::Store(format!("{e:#}")))
    }

    /// The admin token kept beside the database, if there is one.
    fn admin_token(&self) -> Result<Option<String>, StateError> {
        if !self.beside(ADMIN_TOKEN).exists() {
            return Ok(None);
        }
        Ok(Some(self.read_beside(ADMIN_TOKEN)?.trim().to_string()))
    }
}

/// The files beside the database that hold the cluster's secrets; the
/// CA certificate's presence says the cluster was created.
const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const ADMIN_TOKEN: &str = "admin-token";

impl ClusterStore for RedbStore {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn secrets(&self) -> Result<Option<ClusterSecrets>, StateError> {
        if !self.beside(CA_CERT).exists() {
            return Ok(None);
        }
        let admin_token = match self.admin_token()? {
            Some(token) => token,
            // Deleted by hand: a new one, which the operator reads here.
            None => {
                let mut bytes = [0u8; 32];
                getrandom::fill(&mut bytes).expect("the OS random source works");
                let token = hex::encode(bytes);
                self.write_beside(ADMIN_TOKEN, &token)?;
                token
            }
        };
        Ok(Some(ClusterSecrets {
            ca_cert_pem: self.read_beside(CA_CERT)?,
            ca_key_pem: self.read_beside(CA_KEY)?,
            admin_token,
        }))
    }

    fn create_secrets(&self, fresh: ClusterSecrets) -> Result<ClusterSecrets, StateError> {
        // One control plane per data directory (redb locks the file): no
        // other creates them meanwhile.
        if let Some(kept) = self.secrets()? {
            return Ok(kept);
        }
        // The key first: the certificate's presence says both are there.
        self.write_beside(CA_KEY, &fresh.ca_key_pem)?;
        self.write_beside(CA_CERT, &fresh.ca_cert_pem)?;
        let admin_token = match self.admin_token()? {
            Some(token) => token,
            None => {
                self.write_beside(ADMIN_TOKEN, &fresh.admin_token)?;
                fresh.admin_token
            }
        };
        Ok(ClusterSecrets {
            admin_token,
            ..fresh
        })
    }

    fn set_aside_damaged(&self) -> Result<Vec<SetAside>, StateError> {
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
                ("certificates", CERTIFICATES, check::<CertificateRecord>),
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

    fn quarantined(&self) -> Result<Vec<String>, StateError> {
        let tx = self.db.begin_read().map_err(store_err)?;
        let table = tx.open_table(QUARANTINE).map_err(store_err)?;
        let mut keys = Vec::new();
        for entry in table.iter().map_err(store_err)? {
            keys.push(entry.map_err(store_err)?.0.value().to_string());
        }
        Ok(keys)
    }

    fn update_app(
        &self,
        name: &str,
        change: &mut dyn FnMut(Option<&AppRecord>) -> Result<AppRecord, StateError>,
    ) -> Result<(Applied, AppRecord), StateError> {
        let tx = self.db.begin_write().map_err(store_err)?;
        let (applied, record) = {
            let mut apps = tx.open_table(APPS).map_err(store_err)?;
            let current = match apps.get(name).map_err(store_err)? {
                Some(bytes) => Some(decode::<AppRecord>(name, bytes.value())?),
                None => None,
            };
            let (applied, record) =
                next_generation(name, current.as_ref(), change(current.as_ref())?);
            if applied != Applied::Unchanged {
                let bytes = serde_json::to_vec(&record).expect("a record serializes");
                apps.insert(name, bytes.as_slice()).map_err(store_err)?;
            }
            (applied, record)
        };
        commit(tx)?;
        Ok((applied, record))
    }

    fn app(&self, name: &str) -> Result<Option<AppRecord>, StateError> {
        let tx = self.db.begin_read().map_err(store_err)?;
        let apps = tx.open_table(APPS).map_err(store_err)?;
        match apps.get(name).map_err(store_err)? {
            Some(bytes) => Ok(Some(decode(name, bytes.value())?)),
            None => Ok(None),
        }
    }

    fn apps(&self) -> Result<Vec<AppRecord>, StateError> {
        all_json(&self.db, APPS)
    }

    fn delete_app(&self, name: &str) -> Result<bool, StateError> {
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

    fn put_node(&self, record: &NodeRecord) -> Result<(), StateError> {
        put_json(&self.db, NODES, &record.name, record)
    }

    fn certificates(&self) -> Result<Vec<CertificateRecord>, StateError> {
        all_json(&self.db, CERTIFICATES)
    }

    fn put_certificate(&self, record: &CertificateRecord) -> Result<(), StateError> {
        put_json(&self.db, CERTIFICATES, &record.domain, record)
    }

    fn delete_certificate(&self, domain: &str) -> Result<bool, StateError> {
        let tx = self.db.begin_write().map_err(store_err)?;
        let existed = tx
            .open_table(CERTIFICATES)
            .map_err(store_err)?
            .remove(domain)
            .map_err(store_err)?
            .is_some();
        commit(tx)?;
        Ok(existed)
    }

    fn acme_account(&self, directory: &str) -> Result<Option<String>, StateError> {
        let tx = self.db.begin_read().map_err(store_err)?;
        let table = tx.open_table(ACME_ACCOUNTS).map_err(store_err)?;
        Ok(table
            .get(acme_key(directory).as_str())
            .map_err(store_err)?
            .map(|v| v.value().to_string()))
    }

    fn put_acme_account(&self, directory: &str, account: &str) -> Result<(), StateError> {
        let tx = self.db.begin_write().map_err(store_err)?;
        tx.open_table(ACME_ACCOUNTS)
            .map_err(store_err)?
            .insert(acme_key(directory).as_str(), account)
            .map_err(store_err)?;
        commit(tx)
    }

    fn delete_node(&self, name: &str) -> Result<bool, StateError> {
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

    fn admit_node(
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

    fn nodes(&self) -> Result<Vec<NodeRecord>, StateError> {
        all_json(&self.db, NODES)
    }

    fn replicas(&self) -> Result<Vec<ReplicaRecord>, StateError> {
        all_json(&self.db, REPLICAS)
    }

    fn change_replicas(&self, changes: &[ReplicaChange]) -> Result<(), StateError> {
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

    fn add_join_token(&self, token: &str, expires_unix: u64) -> Result<(), StateError> {
        let tx = self.db.begin_write().map_err(store_err)?;
        tx.open_table(JOIN_TOKENS)
            .map_err(store_err)?
            .insert(token_hash(token).as_str(), expires_unix)
            .map_err(store_err)?;
        commit(tx)
    }

    fn join_token_valid(&self, token: &str, now_unix: u64) -> Result<bool, StateError> {
        let tx = self.db.begin_read().map_err(store_err)?;
        let tokens = tx.open_table(JOIN_TOKENS).map_err(store_err)?;
        Ok(tokens
            .get(token_hash(token).as_str())
            .map_err(store_err)?
            .is_some_and(|expires| expires.value() > now_unix))
    }
}

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
