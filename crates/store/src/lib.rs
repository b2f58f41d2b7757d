//! Persistence for the keyserver: keys and the hash-chained audit log.
//!
//! All writes go through one writer task that batches concurrent operations into a
//! single transaction (group commit): every operation and its audit record commit
//! together, the commit is durable (`synchronous = FULL`) before any caller is told
//! it succeeded, and the hash chain is extended by exactly one writer, in order.

pub mod access;
pub mod audit;
mod pending;
pub mod pki;
pub mod policy_changes;
mod writer;

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use influxion_core::{Grant, KeyName, KeyStatus, KeyType, Permissions, Principal};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::{mpsc, oneshot};

pub use access::{
    ApprovalRecord, Decision, KeyPolicy, RequestOutcome, SigningRequest, SubjectRecord,
};
pub use audit::{AuditEvent, AuditKey, AuditRecord, ChainReport, Outcome, ResealReport};
pub use policy_changes::PolicyChange;
pub use writer::Applied;
use writer::{Job, Op};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("a key named {0} already exists")]
    DuplicateKey(String),
    #[error("no key named {0}")]
    NoSuchKey(String),
    #[error("the policy of key {0} changed while this change was being decided")]
    PolicyChanged(String),
    #[error("key {0} is not active")]
    KeyNotActive(String),
    #[error("the audit chain head disagrees with the log ({0}); refusing to write until an operator investigates")]
    ChainHeadMismatch(String),
    #[error("a subject named {0} already exists")]
    DuplicateSubject(String),
    #[error("no subject {0}")]
    NoSuchSubject(String),
    #[error("the subject already has the grant {0}")]
    DuplicateGrant(String),
    #[error("no grant {0}")]
    NoSuchGrant(String),
    #[error("no signing request {0}")]
    NoSuchRequest(String),
    #[error("the signing request is no longer pending (it is {0})")]
    RequestClosed(String),
    #[error("the requester cannot approve their own request")]
    SelfApproval,
    #[error("this approver has already decided on the request")]
    AlreadyDecided,
    #[error("only the requester can cancel a request")]
    NotRequester,
    #[error("this vote completes the quorum; it must carry the signature")]
    NeedSignature,
    #[error("the transaction failed to commit: {0}")]
    Commit(String),
    #[error("the store writer has stopped")]
    Closed,
    #[error("a CA named {0} already exists")]
    DuplicateCa(String),
    #[error("{0}")]
    CaState(String),
    #[error("a profile named {0} already exists")]
    DuplicateProfile(String),
    #[error("no profile named {0}")]
    NoSuchProfile(String),
    #[error("device {device_id} already has {max} valid certificate(s) from this profile")]
    DeviceQuota { device_id: String, max: u32 },
    #[error("serial {0} is already taken")]
    DuplicateCertificate(String),
    #[error("certificate {0} is already revoked")]
    AlreadyRevoked(String),
    #[error("no certificate with serial {0}")]
    NoSuchCertificate(String),
    #[error("no CA named {0}")]
    NoSuchCa(String),
    #[error("CA {0} is already revoked")]
    CaAlreadyRevoked(String),
    #[error("CA {0} has no parent held here")]
    CaWithoutParent(String),
    #[error("profile {0} has issued certificates")]
    ProfileInUse(String),
    #[error("refusing to re-seal the audit log: {0}")]
    Reseal(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

/// A key as the store keeps it.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub id: String,
    pub name: KeyName,
    pub key_type: KeyType,
    pub backend: String,
    pub status: KeyStatus,
    pub public_key: Vec<u8>,
    pub handle: Vec<u8>,
    pub created_at: String,
    pub created_by: String,
    pub policy: KeyPolicy,
    /// `Sign` keys sign digests over the API; `Ca` keys only their CA's certificates.
    pub purpose: KeyPurpose,
}

/// The registry finds a key's backend by the name recorded with it.
impl influxion_core::BackendKey for KeyRecord {
    fn backend_name(&self) -> &str {
        &self.backend
    }
    fn key_id(&self) -> &str {
        &self.id
    }
    fn key_type(&self) -> KeyType {
        self.key_type
    }
    fn handle(&self) -> &[u8] {
        &self.handle
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyPurpose {
    #[default]
    Sign,
    Ca,
}

impl KeyPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyPurpose::Sign => "sign",
            KeyPurpose::Ca => "ca",
        }
    }
}

type SubjectCache = Arc<RwLock<Option<(u64, Arc<Vec<SubjectRecord>>)>>>;

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    writer: mpsc::Sender<Job>,
    /// Bumped by the writer whenever subjects or grants change; the cache below is
    /// reloaded when it differs. (One process per SQLite file; PostgreSQL replicas
    /// will need a shared signal.)
    subjects_gen: Arc<AtomicU64>,
    subjects: SubjectCache,
    /// Bumped by the writer whenever CAs, profiles, certificates' CRLs or key status
    /// change, so callers may cache what issuance reads.
    pki_gen: Arc<AtomicU64>,
    audit_key: Arc<AuditKey>,
    /// The verified prefix of the audit chain, so `GET /v1/audit` verifies only what
    /// was appended since (a lost checkpoint only costs a full walk).
    audit_checkpoint: Arc<RwLock<Option<audit::Checkpoint>>>,
    /// Audit records verified so far by this process (observable cost of verification).
    audit_checked: Arc<AtomicU64>,
}

/// Migration that keys the audit chain; see [`audit::key_on_upgrade`].
const KEYED_AUDIT_MIGRATION: i64 = 7;

impl Store {
    /// Open (creating if needed) the database at `url` (e.g. `sqlite:///var/lib/influxion/db.sqlite`)
    /// and run migrations. `audit_key` (derived from the KEK) seals the audit chain.
    pub async fn open(url: &str, audit_key: AuditKey) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: the WAL is fsynced at every commit, so an acknowledged audit record
            // survives power loss.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // Migrations on their own connection, closed afterwards: sqlx caches a prepared
        // statement's columns, and a statement prepared before a schema change would
        // read rows of the new shape with the old column list.
        let mut setup: sqlx::SqliteConnection = sqlx::ConnectOptions::connect(&opts).await?;
        let applied: Vec<i64> = match sqlx::query_scalar("SELECT version FROM _sqlx_migrations")
            .fetch_all(&mut setup)
            .await
        {
            Ok(v) => v,
            // No migrations table: a new database.
            Err(sqlx::Error::Database(_)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        sqlx::migrate!("./migrations/sqlite")
            .run(&mut setup)
            .await?;
        sqlx::Connection::close(setup).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts.clone())
            .await?;
        let audit_key = Arc::new(audit_key);
        let mut conn: sqlx::SqliteConnection = sqlx::ConnectOptions::connect(&opts).await?;
        if !applied.contains(&KEYED_AUDIT_MIGRATION) {
            // Applied just now: seal the log once, before anything else writes to it.
            sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await?;
            match audit::key_on_upgrade(&mut conn, &audit_key, applied.is_empty()).await {
                Ok(()) => sqlx::query("COMMIT").execute(&mut conn).await?,
                Err(e) => {
                    let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
                    return Err(e);
                }
            };
        }
        let (tx, rx) = mpsc::channel(4096);
        let subjects_gen = Arc::new(AtomicU64::new(1));
        let pki_gen = Arc::new(AtomicU64::new(1));
        tokio::spawn(writer::run(
            conn,
            rx,
            subjects_gen.clone(),
            pki_gen.clone(),
            audit_key.clone(),
        ));
        Ok(Self {
            pool,
            writer: tx,
            subjects_gen,
            subjects: Arc::new(RwLock::new(None)),
            pki_gen,
            audit_key,
            audit_checkpoint: Arc::new(RwLock::new(None)),
            audit_checked: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Generation of CA, profile and key-status data; changes after every commit that
    /// touches them.
    pub fn pki_generation(&self) -> u64 {
        self.pki_gen.load(Ordering::Acquire)
    }

    async fn submit_op(&self, op: Op, audit: AuditEvent) -> Result<Applied, StoreError> {
        let (done, wait) = oneshot::channel();
        self.writer
            .send(Job { op, audit, done })
            .await
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    async fn submit(&self, op: Op, audit: AuditEvent) -> Result<u64, StoreError> {
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
        let loaded = Arc::new(access::load_subjects(&self.pool).await?);
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
        pending::get::<PolicyChange>(&self.pool, id).await
    }

    pub async fn list_policy_changes(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<PolicyChange>, StoreError> {
        pending::list::<PolicyChange>(&self.pool, status, limit).await
    }

    pub async fn get_request(&self, id: &str) -> Result<Option<SigningRequest>, StoreError> {
        pending::get::<SigningRequest>(&self.pool, id).await
    }

    pub async fn list_requests(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SigningRequest>, StoreError> {
        pending::list::<SigningRequest>(&self.pool, status, limit).await
    }

    /// Append an audit record on its own (a signature, a refusal). Returns its sequence
    /// number once it is durable.
    pub async fn audit(&self, event: AuditEvent) -> Result<u64, StoreError> {
        self.submit(Op::None, event).await
    }

    /// Record a use of key `key_id` (a signature); fails, writing nothing, if the key
    /// is no longer active when the record commits.
    pub async fn audit_key_use(&self, key_id: &str, event: AuditEvent) -> Result<u64, StoreError> {
        self.submit(Op::KeyUse(key_id.to_owned()), event).await
    }

    /// Insert a key and its audit record in one transaction.
    pub async fn insert_key(&self, key: KeyRecord, event: AuditEvent) -> Result<u64, StoreError> {
        self.submit(Op::InsertKey(Box::new(key)), event).await
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

    pub async fn get_key(&self, name: &KeyName) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM keys WHERE name = ?")
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| key_from_row(&r)).transpose()
    }

    pub async fn get_key_by_id(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM keys WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| key_from_row(&r)).transpose()
    }

    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM keys ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// The newest audit records, newest first.
    pub async fn recent_audit(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        audit::recent(&self.pool, limit).await
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
        let (report, next) = audit::verify(
            &self.pool,
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
        let mut conn = self.pool.acquire().await?;
        // IMMEDIATE: the writer of this or another process waits for us (busy_timeout).
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        match audit::reseal(&mut conn, &self.audit_key, from, &event).await {
            Ok(r) => {
                sqlx::query("COMMIT").execute(&mut *conn).await?;
                Ok(r)
            }
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
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
    ) -> Result<ChainReport, StoreError> {
        let opts = SqliteConnectOptions::from_str(url)?
            .read_only(true)
            .create_if_missing(false);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await?;
        let report = audit::verify(&pool, key, None, &AtomicU64::new(0)).await;
        pool.close().await;
        report.map(|(r, _)| r)
    }

    /// Direct pool access for tests that tamper with rows.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn key_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<KeyRecord, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(what.to_owned());
    Ok(KeyRecord {
        id: r.try_get("id")?,
        name: r
            .try_get::<String, _>("name")?
            .parse()
            .map_err(|_| corrupt("key name"))?,
        key_type: r
            .try_get::<String, _>("key_type")?
            .parse()
            .map_err(|_| corrupt("key type"))?,
        backend: r.try_get("backend")?,
        status: r
            .try_get::<String, _>("status")?
            .parse()
            .map_err(|_| corrupt("key status"))?,
        public_key: r.try_get("public_key")?,
        handle: r.try_get("handle")?,
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
        policy: KeyPolicy {
            approvals_required: r.try_get::<i64, _>("approvals_required")? as u32,
            approval_ttl_secs: r.try_get::<i64, _>("approval_ttl_secs")? as u32,
            approver_subjects: serde_json::from_str(&r.try_get::<String, _>("approver_subjects")?)
                .map_err(|_| corrupt("approver subjects"))?,
        },
        purpose: match r.try_get::<String, _>("purpose")?.as_str() {
            "sign" => KeyPurpose::Sign,
            "ca" => KeyPurpose::Ca,
            _ => return Err(corrupt("key purpose")),
        },
    })
}

/// The current time as an RFC 3339 UTC timestamp.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
