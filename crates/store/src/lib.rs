//! Persistence for the keyserver: keys, subjects, signing requests, policy changes, the
//! device CA's records and the hash-chained audit log.
//!
//! All writes go through one writer task that batches concurrent operations into a
//! single transaction (group commit): every operation and its audit record commit
//! together, the commit is durable before any caller is told it succeeded, and the hash
//! chain is extended by exactly one writer, in order.
//!
//! [`Store`] is the facade the server uses. Under it, the rules (`rules.rs`, `apply.rs`,
//! `audit.rs`, `chain.rs`) are database-independent and speak to a database through the
//! traits in `db.rs`; each database (`sqlite/`) implements them with its own SQL and
//! migrations (`migrations/<db>`), and `databases.rs` picks one by URL.

pub mod access;
mod apply;
pub mod audit;
mod audit_read;
mod ca;
mod chain;
mod databases;
mod db;
mod error;
mod keys;
mod migrate;
mod ops;
pub mod pki;
pub mod policy_changes;
mod postgres;
mod rows;
mod rules;
mod sql;
mod sqlite;
#[cfg(feature = "test-helpers")]
pub mod test_helpers;
mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use influxion_core::{Grant, KeyName, KeyStatus, Permissions, Principal};
use tokio::sync::{mpsc, oneshot};

pub use access::{
    ApprovalRecord, Decision, KeyPolicy, RequestOutcome, SigningRequest, SubjectRecord,
};
pub use audit::{AuditEvent, AuditKey, AuditRecord, ChainReport, Outcome, ResealReport};
pub use audit_read::{AuditFilter, AuditPlace, PlaceChecks};
pub use error::StoreError;
pub use influxion_core::Actor;
pub use keys::{KeyPurpose, KeyRecord, Rebind};
pub use migrate::{MigrationReport, TableRows};
pub use policy_changes::PolicyChange;
pub use writer::Applied;

use db::{Database, Lock};
use ops::Op;
use writer::Job;

type SubjectCache = Arc<RwLock<Option<(u64, Arc<Vec<SubjectRecord>>)>>>;
/// Key records by name, valid for one generation of [`db::Signals::keys`].
type KeyCache = Arc<RwLock<(u64, std::collections::HashMap<KeyName, Arc<KeyRecord>>)>>;

#[derive(Clone)]
pub struct Store {
    db: Arc<dyn Database>,
    writer: mpsc::Sender<Job>,
    /// Bumped by the writer whenever subjects or grants change, and by the database's
    /// change feed when another replica changes them; the cache below is reloaded
    /// when it differs.
    subjects_gen: Arc<AtomicU64>,
    subjects: SubjectCache,
    /// Bumped by the writer whenever CAs, profiles, certificates' CRLs or key status
    /// change, so callers may cache what issuance reads.
    pki_gen: Arc<AtomicU64>,
    /// Bumped whenever a key record changes (here or, through the change feed, on
    /// another replica): every signature reads its key from the cache below.
    keys_gen: Arc<AtomicU64>,
    keys: KeyCache,
    audit_key: Arc<AuditKey>,
    /// The verified prefix of the audit chain, so `GET /v1/audit` verifies only what
    /// was appended since (a lost checkpoint only costs a full walk).
    audit_checkpoint: Arc<RwLock<Option<audit::Checkpoint>>>,
    /// Audit records verified so far by this process (observable cost of verification).
    audit_checked: Arc<AtomicU64>,
    /// The last committed audit record's sequence number, for readers that wait.
    audit_tip: tokio::sync::watch::Receiver<u64>,
    commit_observer: Arc<std::sync::OnceLock<Arc<dyn CommitObserver>>>,
    /// Where commits become durable after other connections can see them (SQLite):
    /// how far the writer's syncer has got.
    progress: Option<Arc<writer::Progress>>,
}

impl Store {
    /// Wait until every commit other connections may already see is durable. On
    /// SQLite the writer's COMMIT returns before its fsync, which follows on another
    /// thread; a read that hands out what a batch wrote (a signature, a certificate)
    /// waits here first, so that a power cut cannot take it back. Immediate where a
    /// commit is durable when it returns (PostgreSQL). An error if a sync failed.
    pub async fn durable(&self) -> Result<(), StoreError> {
        match &self.progress {
            Some(p) => p.wait().await,
            None => Ok(()),
        }
    }

    /// Open (creating if needed) the database at `url` (e.g. `sqlite:///var/lib/influxion/db.sqlite`)
    /// and run migrations. `audit_key` (derived from the KEK) seals the audit chain.
    pub async fn open(url: &str, audit_key: AuditKey) -> Result<Self, StoreError> {
        Self::open_with(url, audit_key, None).await
    }

    /// [`Store::open`] with the password of a PostgreSQL database supplied by
    /// `password` (fetched for new connections and again before it expires) rather
    /// than the URL or the `PG*` variables.
    pub async fn open_with(
        url: &str,
        audit_key: AuditKey,
        password: Option<Arc<dyn DatabasePassword>>,
    ) -> Result<Self, StoreError> {
        let db::Opened {
            db,
            writer: mut conn,
            keying,
            writer_thread,
            wal_sync,
        } = databases::open(url, password).await?;
        let audit_key = Arc::new(audit_key);
        if let Some(fresh) = keying {
            // Keyed just now: seal the log once, before anything else writes to it.
            conn.begin(Lock::Write).await?;
            match chain::key_on_upgrade(conn.as_mut(), &audit_key, fresh).await {
                Ok(()) => {
                    conn.commit().await?;
                    if let Some(sync) = &wal_sync {
                        sync().map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
                    }
                }
                Err(e) => {
                    let _ = conn.rollback().await;
                    return Err(e);
                }
            }
        }
        let last = u64::try_from(db.audit_last_seq().await?).unwrap_or(0);
        let (signals, audit_tip) = db::Signals::new(last);
        db.follow(signals.clone());
        let (tx, rx) = mpsc::channel(4096);
        let commit_observer = Arc::new(std::sync::OnceLock::new());
        let syncer = wal_sync
            .map(|sync| writer::Syncer::start(sync, signals.clone()))
            .transpose()
            .map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
        let progress = syncer.as_ref().map(|s| s.progress.clone());
        let writer = writer::run(
            conn,
            rx,
            signals.clone(),
            audit_key.clone(),
            commit_observer.clone(),
            syncer,
        );
        if writer_thread {
            // Under load the request tasks fill the runtime's queues, and the writer,
            // which awaits its connection a dozen times per batch, waited behind them
            // at every step. On a thread of its own it is scheduled by the kernel
            // alone. It ends when the last handle to the store is dropped.
            // No I/O driver: the writer's connection talks to its own thread over
            // channels, and without one the runtime parks on a futex, not epoll, and is
            // woken without an eventfd write (both were in the sign profile).
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
            std::thread::Builder::new()
                .name("influxion-writer".into())
                .spawn(move || rt.block_on(writer))
                .map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
        } else {
            tokio::spawn(writer);
        }
        Ok(Self {
            progress,
            db,
            writer: tx,
            subjects_gen: signals.subjects,
            subjects: Arc::new(RwLock::new(None)),
            pki_gen: signals.pki,
            keys_gen: signals.keys,
            keys: Arc::new(RwLock::new((0, std::collections::HashMap::new()))),
            audit_key,
            audit_checkpoint: Arc::new(RwLock::new(None)),
            audit_checked: Arc::new(AtomicU64::new(0)),
            audit_tip,
            commit_observer,
        })
    }

    /// Signing requests and policy changes waiting for approvals (pending, not yet
    /// expired at `now`, Unix seconds), counted in the database.
    pub async fn pending_counts(&self, now: i64) -> Result<(u64, u64), StoreError> {
        let count = |n: i64| u64::try_from(n).map_err(|_| StoreError::Corrupt("count".into()));
        let requests = self
            .db
            .pending_count(db::PendingKind::SigningRequest, now)
            .await?;
        let changes = self
            .db
            .pending_count(db::PendingKind::PolicyChange, now)
            .await?;
        Ok((count(requests)?, count(changes)?))
    }

    /// Connections of the read pool.
    pub fn pool_status(&self) -> PoolStatus {
        self.db.pool_status()
    }

    /// Report every committed batch to `observer` from now on (one observer; a second
    /// call replaces nothing and returns false).
    pub fn observe_commits(&self, observer: Arc<dyn CommitObserver>) -> bool {
        self.commit_observer.set(observer).is_ok()
    }

    /// Generation of CA, profile and key-status data; changes after every commit that
    /// touches them.
    pub fn pki_generation(&self) -> u64 {
        self.pki_gen.load(Ordering::Acquire)
    }

    pub(crate) async fn submit_op(&self, op: Op, audit: AuditEvent) -> Result<Applied, StoreError> {
        // While the database is away, only the job that carries the next attempt to
        // reach it waits for the writer; the others are refused at once (503), as
        // reads are. (Signatures read their key from the cache, so without this they
        // queued behind each attempt, up to the acquire timeout.)
        if !self.db.accepts_writes() {
            return Err(StoreError::Db(sqlx::Error::PoolTimedOut));
        }
        let (done, wait) = oneshot::channel();
        self.writer
            .send(Job { op, audit, done })
            .await
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    pub(crate) async fn submit(&self, op: Op, audit: AuditEvent) -> Result<u64, StoreError> {
        self.submit_op(op, audit).await.map(|a| a.seq)
    }

    /// Every subject with its grants (cached until the next change).
    pub async fn subjects(&self) -> Result<Arc<Vec<SubjectRecord>>, StoreError> {
        let generation = self.subjects_gen.load(Ordering::Acquire);
        if let Ok(c) = self.subjects.read() {
            if let Some((g, s)) = c.as_ref() {
                if *g == generation {
                    return Ok(s.clone());
                }
            }
        }
        let loaded = Arc::new(self.db.subjects().await?);
        if let Ok(mut c) = self.subjects.write() {
            *c = Some((generation, loaded.clone()));
        }
        Ok(loaded)
    }

    /// The subjects `p` matches and their grants, added up.
    pub async fn permissions(&self, p: &Principal) -> Result<Permissions, StoreError> {
        let mut perms = Permissions::default();
        for s in self.subjects().await?.iter().filter(|s| s.rules.matches(p)) {
            perms.subjects.push(s.name.clone());
            perms.grants.extend(s.grants.iter().cloned());
        }
        Ok(perms)
    }

    pub async fn get_subject(&self, name: &str) -> Result<Option<SubjectRecord>, StoreError> {
        Ok(self
            .subjects()
            .await?
            .iter()
            .find(|s| s.name == name)
            .cloned())
    }

    pub async fn create_subject(
        &self,
        s: SubjectRecord,
        event: AuditEvent,
    ) -> Result<u64, StoreError> {
        self.submit(Op::CreateSubject(Box::new(s)), event).await
    }

    pub async fn update_subject(
        &self,
        s: SubjectRecord,
        event: AuditEvent,
    ) -> Result<u64, StoreError> {
        self.submit(Op::UpdateSubject(Box::new(s)), event).await
    }

    pub async fn delete_subject(&self, id: &str, event: AuditEvent) -> Result<u64, StoreError> {
        self.submit(Op::DeleteSubject(id.to_owned()), event).await
    }

    pub async fn add_grant(
        &self,
        subject_id: &str,
        grant: Grant,
        event: AuditEvent,
    ) -> Result<u64, StoreError> {
        self.submit(Op::AddGrant(subject_id.to_owned(), grant), event)
            .await
    }

    pub async fn remove_grant(
        &self,
        subject_id: &str,
        grant_id: &str,
        event: AuditEvent,
    ) -> Result<u64, StoreError> {
        self.submit(
            Op::RemoveGrant(subject_id.to_owned(), grant_id.to_owned()),
            event,
        )
        .await
    }

    /// Replace a key's policy, provided it is still `expected` when the change commits
    /// (otherwise [`StoreError::PolicyChanged`], nothing written).
    pub async fn set_key_policy(
        &self,
        key_id: &str,
        expected: &KeyPolicy,
        policy: KeyPolicy,
        event: AuditEvent,
    ) -> Result<u64, StoreError> {
        self.submit(
            Op::SetKeyPolicy(key_id.to_owned(), Box::new((expected.clone(), policy))),
            event,
        )
        .await
    }

    pub async fn create_request(
        &self,
        r: SigningRequest,
        event: AuditEvent,
    ) -> Result<u64, StoreError> {
        self.submit(Op::CreateRequest(Box::new(r)), event).await
    }

    /// Approve or reject; see [`Decision`].
    pub async fn decide(&self, d: Decision, event: AuditEvent) -> Result<Applied, StoreError> {
        self.submit_op(Op::Decide(Box::new(d)), event).await
    }

    pub async fn cancel_request(
        &self,
        id: &str,
        requester: &str,
        now: i64,
        event: AuditEvent,
    ) -> Result<Applied, StoreError> {
        self.submit_op(
            Op::Cancel {
                request_id: id.to_owned(),
                requester: requester.to_owned(),
                now,
            },
            event,
        )
        .await
    }

    /// Propose a weakening policy change; see [`PolicyChange`].
    pub async fn create_policy_change(
        &self,
        c: PolicyChange,
        event: AuditEvent,
    ) -> Result<u64, StoreError> {
        self.submit(Op::CreatePolicyChange(Box::new(c)), event)
            .await
    }

    /// Approve or reject a policy change; the completing vote applies it.
    pub async fn decide_policy_change(
        &self,
        d: Decision,
        event: AuditEvent,
    ) -> Result<Applied, StoreError> {
        self.submit_op(Op::DecidePolicyChange(Box::new(d)), event)
            .await
    }

    pub async fn get_policy_change(&self, id: &str) -> Result<Option<PolicyChange>, StoreError> {
        self.db.policy_change(id).await
    }

    pub async fn list_policy_changes(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<PolicyChange>, StoreError> {
        self.db.policy_changes(status, limit).await
    }

    pub async fn get_request(&self, id: &str) -> Result<Option<SigningRequest>, StoreError> {
        self.db.signing_request(id).await
    }

    pub async fn list_requests(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SigningRequest>, StoreError> {
        self.db.signing_requests(status, limit).await
    }

    /// Append an audit record on its own (a signature, a refusal). Returns its sequence
    /// number once it is durable.
    pub async fn audit(&self, event: AuditEvent) -> Result<u64, StoreError> {
        self.submit(Op::None, event).await
    }

    /// Record a use of `key` (a signature made without approval); fails, writing
    /// nothing, if when the record commits the key is no longer active
    /// (`KeyNotActive`), or needs approval or was rebound since `key` was read
    /// (`KeyChanged`).
    pub async fn audit_key_use(
        &self,
        key: &KeyRecord,
        event: AuditEvent,
    ) -> Result<u64, StoreError> {
        let op = Op::KeyUse {
            key_id: key.id.clone(),
            handle: key.handle.clone(),
        };
        self.submit(op, event).await
    }

    /// Insert a key and its audit record in one transaction.
    pub async fn insert_key(&self, key: KeyRecord, event: AuditEvent) -> Result<u64, StoreError> {
        self.submit(Op::InsertKey(Box::new(key)), event).await
    }

    /// Bind a key to another version of its backend key and record it in one
    /// transaction; fails with `KeyChanged` if it was rebound meanwhile.
    pub async fn rebind_key(&self, rebind: Rebind, event: AuditEvent) -> Result<u64, StoreError> {
        self.submit(Op::RebindKey(Box::new(rebind)), event).await
    }

    /// Change a key's status and record it in one transaction.
    pub async fn set_key_status(
        &self,
        name: &KeyName,
        status: KeyStatus,
        event: AuditEvent,
    ) -> Result<u64, StoreError> {
        self.submit(Op::SetKeyStatus(name.clone(), status), event)
            .await
    }

    /// The key named `name`, from the cache while no key changed. A change made
    /// through this process is seen by its next read; one made on another replica once
    /// its notification arrives. What a stale record could allow is refused when the
    /// signature's record commits ([`Store::audit_key_use`]).
    pub async fn key(&self, name: &KeyName) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let generation = self.keys_gen.load(Ordering::Acquire);
        if let Ok(c) = self.keys.read() {
            if c.0 == generation {
                if let Some(k) = c.1.get(name) {
                    return Ok(Some(k.clone()));
                }
            }
        }
        let loaded = self.db.key(name).await?.map(Arc::new);
        if let (Some(k), Ok(mut c)) = (&loaded, self.keys.write()) {
            // Read after `generation` was: current for it, at worst reloaded once
            // more. Only keys that exist are kept, so the cache is bounded by them.
            if c.0 != generation {
                *c = (generation, std::collections::HashMap::new());
            }
            c.1.insert(name.clone(), k.clone());
        }
        Ok(loaded)
    }

    /// [`Store::key`], as a record of the caller's own.
    pub async fn get_key(&self, name: &KeyName) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.key(name).await?.map(|k| (*k).clone()))
    }

    pub async fn get_key_by_id(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.db.key_by_id(id).await
    }

    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.db.keys().await
    }

    /// Walk the whole chain and report the first broken record, if any.
    pub async fn verify_audit_chain(&self) -> Result<ChainReport, StoreError> {
        self.verify_audit_from(None).await
    }

    /// Verify only what was appended since the last verification that found the chain
    /// intact (the records up to it were checked then; the checkpoint record is checked
    /// to be still there, unchanged). Cost: O(new records).
    pub async fn verify_audit_chain_incremental(&self) -> Result<ChainReport, StoreError> {
        let from = self.audit_checkpoint.read().ok().and_then(|c| c.clone());
        self.verify_audit_from(from).await
    }

    async fn verify_audit_from(
        &self,
        from: Option<audit::Checkpoint>,
    ) -> Result<ChainReport, StoreError> {
        let (report, next) = chain::verify(
            self.db.as_ref(),
            Some(&self.audit_key),
            from.as_ref(),
            &self.audit_checked,
        )
        .await?;
        if let (Some(next), Ok(mut c)) = (next, self.audit_checkpoint.write()) {
            // Concurrent verifications may finish out of order; keep the furthest.
            if c.as_ref().is_none_or(|c| c.seq() <= next.seq()) {
                *c = Some(next);
            }
        }
        Ok(report)
    }

    /// How many audit records this process has verified (hash, link and MAC), in total.
    pub fn audit_records_checked(&self) -> u64 {
        self.audit_checked.load(Ordering::Relaxed)
    }

    /// Give the records from `from` on that predate keying a MAC each, after verifying
    /// the whole chain, and append `event` (its detail says what was done) in the same
    /// transaction. See docs/audit.md.
    pub async fn reseal_audit(
        &self,
        from: i64,
        event: AuditEvent,
    ) -> Result<ResealReport, StoreError> {
        let mut conn = self.db.conn().await?;
        // The write lock: the writer of this or another process waits for us.
        conn.begin(Lock::Write).await?;
        match chain::reseal(conn.as_mut(), &self.audit_key, from, &event).await {
            Ok(r) => {
                conn.commit().await?;
                Ok(r)
            }
            Err(e) => {
                let _ = conn.rollback().await;
                Err(e)
            }
        }
    }

    /// Verify the audit chain of a database without changing it: opened read-only,
    /// not created, no migrations. For `influxion audit verify` on a copy or backup.
    /// Without `key` only the hash links are checked (the report says `keyed: false`).
    pub async fn verify_database(
        url: &str,
        key: Option<&AuditKey>,
        password: Option<Arc<dyn DatabasePassword>>,
    ) -> Result<ChainReport, StoreError> {
        let db = databases::open_read_only(url, password).await?;
        let report = chain::verify(db.as_ref(), key, None, &AtomicU64::new(0)).await;
        db.close().await;
        report.map(|(r, _)| r)
    }

    /// Copy the database at `source` (read-only, one consistent snapshot) into the
    /// empty database at `target` (migrated first), in one transaction, and verify the
    /// copy before it commits: row counts of every table, the audit chain with `key`
    /// ending at the source's head, and a few rows of each table field by field. A
    /// target holding any row is refused ([`StoreError::TargetNotEmpty`]); a
    /// difference rolls everything back ([`StoreError::MigrationMismatch`]). For
    /// `influxion db migrate-to` (SQLite to PostgreSQL). The passwords are the two
    /// databases' (PostgreSQL only), as for [`Store::open_with`].
    pub async fn migrate_to(
        source: &str,
        target: &str,
        key: &AuditKey,
        source_password: Option<Arc<dyn DatabasePassword>>,
        target_password: Option<Arc<dyn DatabasePassword>>,
    ) -> Result<MigrationReport, StoreError> {
        migrate::run(source, source_password, target, target_password, key).await
    }

    /// Raw access to the database for tests that damage it on purpose.
    #[cfg(feature = "test-helpers")]
    pub fn tamper(&self) -> &dyn test_helpers::Tamper {
        self.db.tamper()
    }
}

/// Whether `url` names a database several keyserver replicas can share (PostgreSQL).
pub fn is_shared_database(url: &str) -> bool {
    databases::is_shared(url)
}

/// The connection pool of the store's reads (the writer's connection is apart on
/// SQLite, from the pool on PostgreSQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    pub open: u32,
    pub idle: usize,
}

/// Told of every batch the writer commits: how many operations it held and how long
/// the transaction took (begin to commit), for metrics.
pub trait CommitObserver: Send + Sync {
    fn batch_committed(&self, operations: usize, took: std::time::Duration);
}

/// A database password obtained at run time: an Entra access token for Azure Database
/// for PostgreSQL, or a file's content. Never logged.
pub struct Secret {
    pub value: zeroize::Zeroizing<String>,
    /// How long it stays valid; `None`: until replaced (it is read again every few
    /// minutes).
    pub valid_for: Option<std::time::Duration>,
}

/// Where new database connections get their password.
#[async_trait::async_trait]
pub trait DatabasePassword: Send + Sync {
    async fn password(&self) -> Result<Secret, String>;
}

/// The current time as an RFC 3339 UTC timestamp.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
