//! [`EtcdStore`]: the cluster's records in etcd, for control planes that
//! outgrow one server's disk. Each record is one JSON value under the
//! store's prefix (`apps/NAME`, `nodes/NAME`, `replicas/APP/COMPONENT/N`,
//! `join-tokens/SHA256`, `quarantine/TABLE/KEY`), the cluster's CA and
//! admin token under `cluster/`; every change is one etcd transaction,
//! and a read-modify-write is a compare-and-swap on the record's revision,
//! retried when another writer got there first.
//!
//! The [`ClusterStore`] methods are synchronous, like redb's: each call
//! runs on the store's own runtime and the caller waits for its answer, as
//! it waits for a redb commit. Every call is bounded by
//! [`REQUEST_TIMEOUT`], and asks for an etcd leader, so a cluster that
//! lost quorum refuses at once, with the reason, rather than hang.

use super::{
    AppRecord, Applied, CertificateRecord, ClusterSecrets, ClusterStore, NodeRecord, ReplicaChange,
    ReplicaRecord, SetAside, StateError, WRITE_DURATIONS, acme_key, check, decode, next_generation,
    token_hash,
};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KeyValue, KvClient,
    PutOptions, Txn, TxnOp, TxnResponse,
};
use std::time::{Duration, Instant};

/// The longest one etcd request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest one try of a request may take; a request is tried again
/// (on another member, most likely) within [`REQUEST_TIMEOUT`].
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long to try to reach an etcd member.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// After etcd was found unavailable, how long calls fail at once before
/// one tries again.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Operations in one etcd transaction: etcd refuses more than 128 by
/// default (`--max-txn-ops`).
const MAX_TXN_OPS: usize = 128;

/// How often a compare-and-swap is retried when other writers keep
/// changing the record under it.
const MAX_ATTEMPTS: usize = 32;

/// The names under the prefix: the tables of records, and the keys of
/// the cluster itself.
const TABLES: [&str; 8] = [
    "apps",
    "nodes",
    "replicas",
    "join-tokens",
    "quarantine",
    "cluster",
    "servers",
    "leader",
];

/// The key naming the leader's URL, held with its lease.
const LEADER: &str = "leader";

/// The outcome of [`EtcdStore::lead`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// This control plane leads now.
    Won,
    /// Another leads, at this URL (none when it just went).
    Held(Option<String>),
}

/// The key prefix used when none is given.
pub const DEFAULT_PREFIX: &str = "/skiff/";

/// Where a control plane's state is kept, as `--store` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTarget {
    /// `http://host:port` of each etcd member.
    pub endpoints: Vec<String>,
    /// The prefix of every key, ending in `/`.
    pub prefix: String,
}

impl EtcdTarget {
    /// Reads `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`.
    ///
    /// # Errors
    ///
    /// Another scheme, no member, or a member that is not `host:port`.
    pub fn parse(text: &str) -> Result<EtcdTarget, String> {
        // Credentials in the address are refused, and not echoed.
        let shown = match text.rsplit_once('@') {
            Some((_, host)) => format!("etcd://***@{host}"),
            None => text.to_string(),
        };
        let rest = text.strip_prefix("etcd://").ok_or_else(|| {
            format!("--store {shown:?}: expected etcd://HOST:PORT[,HOST:PORT...][/PREFIX]")
        })?;
        if text.contains('@') {
            return Err(format!(
                "--store {shown:?}: credentials in the address are not supported; keep etcd on a private network"
            ));
        }
        if rest.contains("://") {
            return Err(format!(
                "--store {shown:?}: give etcd's members as HOST:PORT, without http:// (etcd://10.0.0.5:2379,10.0.0.6:2379)"
            ));
        }
        let (members, prefix) = match rest.split_once('/') {
            Some((members, prefix)) => (members, format!("/{}/", prefix.trim_matches('/'))),
            None => (rest, DEFAULT_PREFIX.to_string()),
        };
        if prefix == "//" {
            return Err(format!("--store {shown:?}: the key prefix is empty"));
        }
        // Inside another cluster's tables, this cluster's keys would be
        // taken for that cluster's records, and the reverse.
        if let Some(table) = prefix.split('/').find(|segment| TABLES.contains(segment)) {
            return Err(format!(
                "--store {shown:?}: the key prefix must not have a segment named {table:?} (the name of a table of the cluster's records): choose another"
            ));
        }
        let mut endpoints = Vec::new();
        for member in members.split(',') {
            let (host, port) = member
                .rsplit_once(':')
                .filter(|(host, _)| !host.is_empty())
                .ok_or_else(|| {
                    format!("--store {shown:?}: etcd member {member:?} is not HOST:PORT")
                })?;
            port.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    format!("--store {shown:?}: etcd member {member:?} has no valid port")
                })?;
            let bracketed = host.starts_with('[') && host.ends_with(']');
            let plain = host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
            if !(plain
                || bracketed
                    && host[1..host.len() - 1]
                        .parse::<std::net::Ipv6Addr>()
                        .is_ok())
            {
                return Err(format!(
                    "--store {shown:?}: etcd member {member:?} is not HOST:PORT"
                ));
            }
            endpoints.push(format!("http://{host}:{port}"));
        }
        Ok(EtcdTarget { endpoints, prefix })
    }

    /// The members, as the user wrote them: for messages.
    pub fn describe(&self) -> String {
        let members: Vec<&str> = self
            .endpoints
            .iter()
            .map(|e| e.trim_start_matches("http://"))
            .collect();
        format!("etcd at {} (prefix {})", members.join(","), self.prefix)
    }
}

/// The cluster's records in etcd.
pub struct EtcdStore {
    target: EtcdTarget,
    client: Client,
    /// Once this control plane has led: the revision its last leadership
    /// was won at. Every write is made only if that leadership still
    /// stands, so a leader that lost it (its lease expired while it was
    /// cut off), and requests it was still answering, cannot overwrite
    /// its successor's changes; it is replaced only by a new win.
    fence: std::sync::Mutex<Option<i64>>,
    /// After etcd was found unavailable, until when calls fail at once
    /// with the same reason, so that callers holding the control plane's
    /// state lock do not each wait out a timeout.
    down_until: std::sync::Mutex<Option<(Instant, String)>>,
    /// Runs the etcd calls: its own, so that a caller on any thread (an
    /// async task of another runtime among them) can wait for one. Taken
    /// only when the store is dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropped where blocking is not allowed (in an async task) too.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl EtcdStore {
    /// Connects to `target` and checks it answers.
    ///
    /// # Errors
    ///
    /// No member answered within a few seconds, or the cluster has no
    /// leader: the error names the members.
    pub fn connect(target: EtcdTarget) -> Result<EtcdStore, StateError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("skiff-etcd")
            .enable_all()
            .build()
            .map_err(|e| StateError::Store(format!("cannot start the etcd client: {e}")))?;
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(ATTEMPT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_require_leader(true);
        let endpoints = target.endpoints.clone();
        let client = match wait(&runtime, async move {
            Client::connect(endpoints, Some(options)).await
        }) {
            Ok(client) => client,
            Err(e) => {
                // Dropped where blocking is not allowed (in an async task)
                // too.
                runtime.shutdown_background();
                return Err(unreachable_error(&target, &e));
            }
        };
        let store = EtcdStore {
            target,
            client,
            fence: std::sync::Mutex::new(None),
            down_until: std::sync::Mutex::new(None),
            runtime: Some(runtime),
        };
        // Connecting is lazy: ask for something, so that an etcd that is
        // not there is said at start, not at the first write.
        store
            .range(store.key("cluster/ca.pem"), false)
            .map_err(|e| match e {
                StateError::Unavailable(why) => {
                    StateError::Unavailable(format!("{why}; start etcd, or check --store"))
                }
                e => e,
            })?;
        Ok(store)
    }

    /// The full key of `key`.
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.target.prefix)
    }

    /// Sends `request` on the store's runtime and waits for the answer.
    /// A request etcd refused without applying it (its leader changed or
    /// is being elected, a member is unreachable) is sent again, for up
    /// to [`REQUEST_TIMEOUT`]; a read is sent again after any failure.
    fn send(&self, request: Request) -> Result<Answer, StateError> {
        if let Some((until, why)) = self.down_until.lock().expect("etcd state lock").as_ref()
            && Instant::now() < *until
        {
            return Err(StateError::Unavailable(why.clone()));
        }
        let kv = self.client.kv_client();
        let target = self.target.clone();
        let runtime = self
            .runtime
            .as_ref()
            .expect("the runtime lives as long as the store");
        let is_read = request.is_read();
        let result = wait(
            runtime,
            retrying(target, is_read, move || request.clone().send(kv.clone())),
        );
        let mut down = self.down_until.lock().expect("etcd state lock");
        *down = match &result {
            Err(StateError::Unavailable(why)) => Some((Instant::now() + RETRY_AFTER, why.clone())),
            _ => None,
        };
        result
    }

    /// The records at `key`, or under it with `prefix`.
    fn range(&self, key: String, prefix: bool) -> Result<Vec<KeyValue>, StateError> {
        match self.send(Request::Range { key, prefix })? {
            Answer::Range(kvs) => Ok(kvs),
            Answer::Txn(_) => unreachable!("a range is answered with records"),
        }
    }

    /// Every record under `table/`, as `(key without the prefix, bytes,
    /// revision)`.
    fn list(&self, table: &str) -> Result<Vec<(String, Vec<u8>, i64)>, StateError> {
        let prefix = self.key(&format!("{table}/"));
        let strip = prefix.len();
        // A replica's id is `app/component/N`; every other record's key is
        // one name. Anything else under the table is not this cluster's
        // (another cluster's keys nested there): left alone.
        let slashes = if table == "replicas" { 2 } else { 0 };
        Ok(self
            .range(prefix, true)?
            .into_iter()
            .map(|kv| {
                let revision = kv.mod_revision();
                let (key, value) = kv.into_key_value();
                (
                    String::from_utf8_lossy(&key[strip.min(key.len())..]).into_owned(),
                    value,
                    revision,
                )
            })
            .filter(|(key, _, _)| table == "quarantine" || key.matches('/').count() == slashes)
            .collect())
    }

    /// Every record of `table`, decoded.
    fn all<T: serde::de::DeserializeOwned>(&self, table: &str) -> Result<Vec<T>, StateError> {
        self.list(table)?
            .into_iter()
            .map(|(key, bytes, _)| decode(&format!("{table}/{key}"), &bytes))
            .collect()
    }

    /// The value at `key` and its revision (0 when absent).
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, i64), StateError> {
        Ok(match self.range(self.key(key), false)?.pop() {
            Some(found) => {
                let revision = found.mod_revision();
                (Some(found.into_key_value().1), revision)
            }
            None => (None, 0),
        })
    }

    /// Commits `txn`, timing it for [`WRITE_DURATIONS`]; while fenced
    /// (see [`EtcdStore::lead`]), only if this control plane still leads.
    fn transact(&self, txn: Txn) -> Result<TxnResponse, StateError> {
        let fence = *self.fence.lock().expect("fence lock");
        let txn = match fence {
            Some(won_at) => Txn::new()
                .when([Compare::create_revision(
                    self.key(LEADER),
                    CompareOp::Equal,
                    won_at,
                )])
                .and_then([TxnOp::txn(txn)]),
            None => txn,
        };
        let started = Instant::now();
        let answer = self.send(Request::Txn(txn));
        WRITE_DURATIONS.observe(started.elapsed().as_secs_f64());
        let response = match answer? {
            Answer::Txn(response) => response,
            Answer::Range(_) => unreachable!("a transaction is answered with its outcome"),
        };
        if fence.is_none() {
            return Ok(response);
        }
        if !response.succeeded() {
            return Err(StateError::NotLeader);
        }
        match response.op_responses().into_iter().next() {
            Some(etcd_client::TxnOpResponse::Txn(inner)) => Ok(inner),
            _ => Err(StateError::Store(format!(
                "{}: a fenced transaction came back without its inner answer",
                self.target.describe()
            ))),
        }
    }

    /// Runs `call` with the client on the store's runtime, bounded by
    /// [`REQUEST_TIMEOUT`]: the lease and election calls. A call that
    /// reached no member (one of them is down) is made again meanwhile.
    fn with_client<T, Fut>(
        &self,
        call: impl Fn(Client) -> Fut + Send + 'static,
    ) -> Result<T, StateError>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let client = self.client.clone();
        let target = self.target.clone();
        let runtime = self
            .runtime
            .as_ref()
            .expect("the runtime lives as long as the store");
        wait(
            runtime,
            retrying(target, false, move || call(client.clone())),
        )
    }

    /// A new lease of `ttl` seconds: keys put with it go when it is not
    /// kept alive.
    ///
    /// # Errors
    ///
    /// etcd unavailable.
    pub fn grant_lease(&self, ttl: i64) -> Result<i64, StateError> {
        self.with_client(
            move |mut client| async move { Ok(client.lease_grant(ttl, None).await?.id()) },
        )
    }

    /// Keeps `lease` alive for another term; false when it has expired.
    ///
    /// # Errors
    ///
    /// etcd unavailable.
    pub fn keep_alive(&self, lease: i64) -> Result<bool, StateError> {
        let kept = self.with_client(move |mut client| async move {
            let (mut keeper, mut answers) = client.lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            Ok(answers.message().await?.is_some_and(|a| a.ttl() > 0))
        });
        match kept {
            // etcd forgot it: it expired.
            Err(StateError::Store(why) | StateError::Unavailable(why))
                if why.contains("lease not found") =>
            {
                Ok(false)
            }
            kept => kept,
        }
    }

    /// Ends `lease` now, and the keys held with it.
    ///
    /// # Errors
    ///
    /// etcd unavailable.
    pub fn revoke(&self, lease: i64) -> Result<(), StateError> {
        self.with_client(
            move |mut client| async move { client.lease_revoke(lease).await.map(drop) },
        )
    }

    /// Records control plane `id` as serving `url`, for as long as
    /// `lease` lives.
    ///
    /// # Errors
    ///
    /// etcd unavailable.
    pub fn register(&self, id: &str, url: &str, lease: i64) -> Result<(), StateError> {
        let put = TxnOp::put(
            self.key(&format!("servers/{id}")),
            url,
            Some(PutOptions::new().with_lease(lease)),
        );
        self.send(Request::Txn(Txn::new().and_then([put])))
            .map(drop)
    }

    /// The URLs of the control planes registered, by id.
    ///
    /// # Errors
    ///
    /// etcd unavailable.
    pub fn servers(&self) -> Result<Vec<String>, StateError> {
        Ok(self
            .list("servers")?
            .into_iter()
            .map(|(_, url, _)| String::from_utf8_lossy(&url).into_owned())
            .collect())
    }

    /// Tries to become the leader, announcing `url`, for as long as
    /// `lease` lives: [`Leadership::Won`] when no control plane leads
    /// (its writes are fenced from then on), else who does.
    ///
    /// # Errors
    ///
    /// etcd unavailable.
    pub fn lead(&self, url: &str, lease: i64) -> Result<Leadership, StateError> {
        let key = self.key(LEADER);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                url,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let response = match self.send(Request::Txn(txn))? {
            Answer::Txn(response) => response,
            Answer::Range(_) => unreachable!("a transaction is answered with its outcome"),
        };
        if response.succeeded() {
            let won_at = response.header().map_or(0, |h| h.revision());
            *self.fence.lock().expect("fence lock") = Some(won_at);
            return Ok(Leadership::Won);
        }
        let leader = response.op_responses().into_iter().find_map(|r| match r {
            etcd_client::TxnOpResponse::Get(get) => get
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
            _ => None,
        });
        Ok(Leadership::Held(leader))
    }

    /// Commits `txn`; whether its comparisons held.
    fn commit(&self, txn: Txn) -> Result<bool, StateError> {
        Ok(self.transact(txn)?.succeeded())
    }

    /// Deletes the records `delete` names; whether one was there.
    fn delete(&self, delete: TxnOp) -> Result<bool, StateError> {
        Ok(first_deleted(
            &self.transact(Txn::new().and_then([delete]))?,
        ))
    }

    /// A put of `value` at `key` (without the prefix).
    fn put_op(&self, key: &str, value: impl Into<Vec<u8>>) -> TxnOp {
        TxnOp::put(self.key(key), value, None)
    }

    /// That `key` is at `revision` (0: absent).
    fn unchanged(&self, key: &str, revision: i64) -> Compare {
        Compare::mod_revision(self.key(key), CompareOp::Equal, revision)
    }
}

impl ClusterStore for EtcdStore {
    fn describe(&self) -> String {
        self.target.describe()
    }

    fn set_aside_damaged(&self) -> Result<Vec<SetAside>, StateError> {
        let mut set_aside = Vec::new();
        for (table, check) in [
            (
                "apps",
                check::<AppRecord> as fn(&[u8]) -> Result<(), String>,
            ),
            ("nodes", check::<NodeRecord>),
            ("replicas", check::<ReplicaRecord>),
            ("certificates", check::<CertificateRecord>),
        ] {
            for (key, bytes, revision) in self.list(table)? {
                let Err(message) = check(&bytes) else {
                    continue;
                };
                let original = format!("{table}/{key}");
                // Moved only as it was read: a record rewritten meanwhile
                // is judged again at the next start.
                let txn = Txn::new()
                    .when([self.unchanged(&original, revision)])
                    .and_then([
                        self.put_op(&format!("quarantine/{original}"), bytes),
                        TxnOp::delete(self.key(&original), None),
                    ]);
                if self.commit(txn)? {
                    set_aside.push(SetAside {
                        table,
                        key,
                        message,
                    });
                }
            }
        }
        Ok(set_aside)
    }

    fn quarantined(&self) -> Result<Vec<String>, StateError> {
        Ok(self
            .list("quarantine")?
            .into_iter()
            .map(|(key, _, _)| key)
            .collect())
    }

    fn update_app(
        &self,
        name: &str,
        change: &mut dyn FnMut(Option<&AppRecord>) -> Result<AppRecord, StateError>,
    ) -> Result<(Applied, AppRecord), StateError> {
        let key = format!("apps/{name}");
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                backoff(attempt);
            }
            let (bytes, revision) = self.get(&key)?;
            let current = bytes
                .map(|bytes| decode::<AppRecord>(&key, &bytes))
                .transpose()?;
            let (applied, record) =
                next_generation(name, current.as_ref(), change(current.as_ref())?);
            if applied == Applied::Unchanged {
                return Ok((applied, record));
            }
            let value = serde_json::to_vec(&record).expect("a record serializes");
            let txn = Txn::new()
                .when([self.unchanged(&key, revision)])
                .and_then([self.put_op(&key, value)]);
            if self.commit(txn)? {
                return Ok((applied, record));
            }
        }
        Err(StateError::Store(format!(
            "app {name:?} kept changing under this write ({MAX_ATTEMPTS} attempts); try again"
        )))
    }

    fn app(&self, name: &str) -> Result<Option<AppRecord>, StateError> {
        let key = format!("apps/{name}");
        self.get(&key)?
            .0
            .map(|bytes| decode(&key, &bytes))
            .transpose()
    }

    fn apps(&self) -> Result<Vec<AppRecord>, StateError> {
        self.all("apps")
    }

    fn delete_app(&self, name: &str) -> Result<bool, StateError> {
        let app = self.key(&format!("apps/{name}"));
        let replicas = self.key(&format!("replicas/{name}/"));
        let response = self.transact(Txn::new().and_then([
            TxnOp::delete(app, Some(DeleteOptions::new().with_prev_key())),
            TxnOp::delete(replicas, Some(DeleteOptions::new().with_prefix())),
        ]))?;
        Ok(first_deleted(&response))
    }

    fn put_node(&self, record: &NodeRecord) -> Result<(), StateError> {
        let value = serde_json::to_vec(record).expect("a record serializes");
        self.commit(Txn::new().and_then([self.put_op(&format!("nodes/{}", record.name), value)]))
            .map(drop)
    }

    fn delete_node(&self, name: &str) -> Result<bool, StateError> {
        self.delete(TxnOp::delete(
            self.key(&format!("nodes/{name}")),
            Some(DeleteOptions::new().with_prev_key()),
        ))
    }

    fn certificates(&self) -> Result<Vec<CertificateRecord>, StateError> {
        self.all("certificates")
    }

    fn put_certificate(&self, record: &CertificateRecord) -> Result<(), StateError> {
        let value = serde_json::to_vec(record).expect("a record serializes");
        let key = format!("certificates/{}", record.domain);
        self.commit(Txn::new().and_then([self.put_op(&key, value)]))
            .map(drop)
    }

    fn delete_certificate(&self, domain: &str) -> Result<bool, StateError> {
        self.delete(TxnOp::delete(
            self.key(&format!("certificates/{domain}")),
            Some(DeleteOptions::new().with_prev_key()),
        ))
    }

    fn acme_account(&self, directory: &str) -> Result<Option<String>, StateError> {
        let key = format!("acme-accounts/{}", acme_key(directory));
        self.get(&key)?
            .0
            .map(|bytes| {
                String::from_utf8(bytes).map_err(|_| StateError::Damaged {
                    key,
                    message: "not UTF-8".to_string(),
                })
            })
            .transpose()
    }

    fn put_acme_account(&self, directory: &str, account: &str) -> Result<(), StateError> {
        let key = format!("acme-accounts/{}", acme_key(directory));
        self.commit(Txn::new().and_then([self.put_op(&key, account.to_string())]))
            .map(drop)
    }

    fn admit_node(
        &self,
        token: &str,
        record: &NodeRecord,
        now_unix: u64,
    ) -> Result<bool, StateError> {
        let key = format!("join-tokens/{}", token_hash(token));
        let (expires, revision) = self.get(&key)?;
        if !unexpired(expires, now_unix) {
            return Ok(false);
        }
        // The token is used up in the same transaction that records the
        // node, and only if no one used it meanwhile.
        let value = serde_json::to_vec(record).expect("a record serializes");
        self.commit(Txn::new().when([self.unchanged(&key, revision)]).and_then([
            TxnOp::delete(self.key(&key), None),
            self.put_op(&format!("nodes/{}", record.name), value),
        ]))
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StateError> {
        self.all("nodes")
    }

    fn replicas(&self) -> Result<Vec<ReplicaRecord>, StateError> {
        self.all("replicas")
    }

    fn change_replicas(&self, changes: &[ReplicaChange]) -> Result<(), StateError> {
        // etcd takes at most MAX_TXN_OPS operations a transaction: more
        // changes are applied a transaction per batch. Each replica is its
        // own record, so a control plane stopped between batches leaves
        // every replica as before or after its change, and the next pass
        // completes the rest.
        //
        // A pass may change one replica twice (created, then placed);
        // etcd refuses a key twice in a transaction, so only the last
        // change of each stands, as it would applied in order.
        let mut last: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for (i, change) in changes.iter().enumerate() {
            let id = match change {
                ReplicaChange::Put(record) => record.id.as_str(),
                ReplicaChange::Remove(id) => id.as_str(),
            };
            last.insert(id, i);
        }
        let mut kept: Vec<usize> = last.into_values().collect();
        kept.sort_unstable();
        let changes: Vec<&ReplicaChange> = kept.into_iter().map(|i| &changes[i]).collect();
        for batch in changes.chunks(MAX_TXN_OPS) {
            let ops: Vec<TxnOp> = batch
                .iter()
                .map(|change| match change {
                    ReplicaChange::Put(record) => self.put_op(
                        &format!("replicas/{}", record.id),
                        serde_json::to_vec(record).expect("a record serializes"),
                    ),
                    ReplicaChange::Remove(id) => {
                        TxnOp::delete(self.key(&format!("replicas/{id}")), None)
                    }
                })
                .collect();
            self.commit(Txn::new().and_then(ops))?;
        }
        Ok(())
    }

    fn add_join_token(&self, token: &str, expires_unix: u64) -> Result<(), StateError> {
        let key = format!("join-tokens/{}", token_hash(token));
        self.commit(Txn::new().and_then([self.put_op(&key, expires_unix.to_string())]))
            .map(drop)
    }

    fn join_token_valid(&self, token: &str, now_unix: u64) -> Result<bool, StateError> {
        let (expires, _) = self.get(&format!("join-tokens/{}", token_hash(token)))?;
        Ok(unexpired(expires, now_unix))
    }

    fn secrets(&self) -> Result<Option<ClusterSecrets>, StateError> {
        let read = |key: &str| -> Result<Option<String>, StateError> {
            self.get(&format!("cluster/{key}"))?
                .0
                .map(|bytes| {
                    String::from_utf8(bytes).map_err(|_| StateError::Damaged {
                        key: format!("cluster/{key}"),
                        message: "not UTF-8".to_string(),
                    })
                })
                .transpose()
        };
        // Written together, so all three are there or none is.
        match (read("ca.pem")?, read("ca.key")?, read("admin-token")?) {
            (Some(ca_cert_pem), Some(ca_key_pem), Some(admin_token)) => Ok(Some(ClusterSecrets {
                ca_cert_pem,
                ca_key_pem,
                admin_token,
            })),
            (None, None, None) => Ok(None),
            _ => Err(StateError::Damaged {
                key: "cluster/".to_string(),
                message: "the cluster's CA and admin token are incomplete".to_string(),
            }),
        }
    }

    fn create_secrets(&self, fresh: ClusterSecrets) -> Result<ClusterSecrets, StateError> {
        // Only the first control plane's are kept: two starting at once on
        // an empty etcd end up with one CA.
        let txn = Txn::new()
            .when([Compare::version(
                self.key("cluster/ca.pem"),
                CompareOp::Equal,
                0,
            )])
            .and_then([
                self.put_op("cluster/ca.pem", fresh.ca_cert_pem.clone()),
                self.put_op("cluster/ca.key", fresh.ca_key_pem.clone()),
                self.put_op("cluster/admin-token", fresh.admin_token.clone()),
            ]);
        if self.commit(txn)? {
            return Ok(fresh);
        }
        self.secrets()?.ok_or_else(|| StateError::Damaged {
            key: "cluster/".to_string(),
            message: "the cluster's CA vanished while it was being created".to_string(),
        })
    }
}

/// Whether a join token's stored expiry (Unix seconds, in decimal) is
/// after `now_unix`.
fn unexpired(expires: Option<Vec<u8>>, now_unix: u64) -> bool {
    expires
        .and_then(|bytes| String::from_utf8(bytes).ok()?.parse::<u64>().ok())
        .is_some_and(|expires| expires > now_unix)
}

/// Whether the first operation of a transaction, a delete asking for
/// what it deleted, deleted something.
fn first_deleted(response: &TxnResponse) -> bool {
    response.op_responses().first().is_some_and(
        |r| matches!(r, etcd_client::TxnOpResponse::Delete(d) if !d.prev_kvs().is_empty()),
    )
}

/// One request to etcd: the two the store makes.
#[derive(Clone)]
enum Request {
    /// The records at `key`, or under it with `prefix`.
    Range { key: String, prefix: bool },
    /// A transaction.
    Txn(Txn),
}

/// etcd's answer to a [`Request`].
enum Answer {
    Range(Vec<KeyValue>),
    Txn(TxnResponse),
}

impl Request {
    fn is_read(&self) -> bool {
        matches!(self, Request::Range { .. })
    }

    async fn send(self, mut kv: KvClient) -> Result<Answer, etcd_client::Error> {
        match self {
            Request::Range { key, prefix } => {
                let options = prefix.then(|| GetOptions::new().with_prefix());
                Ok(Answer::Range(kv.get(key, options).await?.take_kvs()))
            }
            Request::Txn(txn) => Ok(Answer::Txn(kv.txn(txn).await?)),
        }
    }
}

/// Whether etcd refused a request before applying it (it cannot have
/// taken effect), so that sending it again is safe.
fn not_applied(e: &etcd_client::Error) -> bool {
    use etcd_client::Error;
    match e {
        // No connection was made.
        Error::TransportError(_) | Error::IoError(_) => true,
        Error::GRpcStatus(status) => {
            let message = status.message();
            message.contains("leader changed")
                || message.contains("no leader")
                || message.contains("tcp connect error")
        }
        _ => false,
    }
}

/// Runs `attempt` until it answers, for up to [`REQUEST_TIMEOUT`]: each
/// try is bounded on its own ([`ATTEMPT_TIMEOUT`]), so a member that hangs
/// (frozen, not dead) does not take the whole budget. A try that got no
/// answer may have been applied and is made again: every request the
/// store makes may be (reads; puts and deletes of whole records;
/// transactions that compare revisions first; lease calls). A try etcd
/// refused is made again when it was a read (`any_failure`) or was
/// refused before it could apply.
async fn retrying<T, Fut>(
    target: EtcdTarget,
    any_failure: bool,
    attempt: impl Fn() -> Fut,
) -> Result<T, StateError>
where
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        let left = REQUEST_TIMEOUT.saturating_sub(started.elapsed());
        let (error, again) = match tokio::time::timeout(ATTEMPT_TIMEOUT.min(left), attempt()).await
        {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => {
                let again = any_failure || not_applied(&e);
                (store_error(&target, &e), again)
            }
            Err(_) => (
                StateError::Unavailable(format!(
                    "{} did not answer within {}s",
                    target.describe(),
                    REQUEST_TIMEOUT.as_secs()
                )),
                true,
            ),
        };
        if !again || started.elapsed() + pause >= REQUEST_TIMEOUT {
            return Err(error);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// Waits before retry number `attempt` of a compare-and-swap another
/// writer won: a random while, growing with the attempts, so writers
/// racing on one record take turns rather than collide again.
fn backoff(attempt: usize) {
    let mut byte = [0u8; 1];
    getrandom::fill(&mut byte).expect("the OS random source works");
    let most_ms = (attempt as u64 * 4).min(50);
    std::thread::sleep(Duration::from_millis(
        1 + u64::from(byte[0]) * most_ms / 255,
    ));
}

/// Runs `future` on `runtime` and waits for it, from any thread.
fn wait<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    future: impl Future<Output = T> + Send + 'static,
) -> T {
    let (answer, answered) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = answer.send(future.await);
    });
    answered
        .recv()
        .expect("the etcd runtime answers every call it is given")
}

/// The error of a call to `target` that failed: etcd refusing the
/// request itself is [`StateError::Store`]; anything else (unreachable,
/// no leader, no answer in time, a connection broken mid-request) is
/// [`StateError::Unavailable`].
fn store_error(target: &EtcdTarget, e: &etcd_client::Error) -> StateError {
    use etcd_client::Error;
    use tonic::Code;
    match e {
        Error::GRpcStatus(status)
            if matches!(
                status.code(),
                Code::InvalidArgument
                    | Code::FailedPrecondition
                    | Code::OutOfRange
                    | Code::ResourceExhausted
                    | Code::PermissionDenied
                    | Code::Unauthenticated
                    | Code::AlreadyExists
                    | Code::NotFound
            ) =>
        {
            StateError::Store(format!("{}: {}", target.describe(), status.message()))
        }
        Error::GRpcStatus(status) => StateError::Unavailable(format!(
            "{} cannot take requests: {}",
            target.describe(),
            status.message()
        )),
        e => unreachable_error(target, e),
    }
}

fn unreachable_error(target: &EtcdTarget, e: &etcd_client::Error) -> StateError {
    StateError::Unavailable(format!("{} is unreachable: {e}", target.describe()))
}
