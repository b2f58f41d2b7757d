//! Persistence for the keyserver: keys and the hash-chained audit log.
//!
//! All writes go through one writer task that batches concurrent operations into a
//! single transaction (group commit): every operation and its audit record commit
//! together, the commit is durable (`synchronous = FULL`) before any caller is told
//! it succeeded, and the hash chain is extended by exactly one writer, in order.

pub mod audit;
mod writer;

use std::str::FromStr;
use std::time::Duration;

use influxion_core::{KeyName, KeyStatus, KeyType};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::{mpsc, oneshot};

pub use audit::{AuditEvent, AuditRecord, ChainReport, Outcome};
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
    #[error("key {0} is not active")]
    KeyNotActive(String),
    #[error("the audit chain head disagrees with the log ({0}); refusing to write until an operator investigates")]
    ChainHeadMismatch(String),
    #[error("the transaction failed to commit: {0}")]
    Commit(String),
    #[error("the store writer has stopped")]
    Closed,
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
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    writer: mpsc::Sender<Job>,
}

impl Store {
    /// Open (creating if needed) the database at `url` (e.g. `sqlite:///var/lib/influxion/db.sqlite`)
    /// and run migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: the WAL is fsynced at every commit, so an acknowledged audit record
            // survives power loss.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        let conn = sqlx::ConnectOptions::connect(&opts).await?;
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(writer::run(conn, rx));
        Ok(Self { pool, writer: tx })
    }

    async fn submit(&self, op: Op, audit: AuditEvent) -> Result<u64, StoreError> {
        let (done, wait) = oneshot::channel();
        self.writer
            .send(Job { op, audit, done })
            .await
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
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
        audit::verify_chain(&self.pool).await
    }

    /// Verify the audit chain of a database without changing it: opened read-only,
    /// not created, no migrations. For `influxion audit verify` on a copy or backup.
    pub async fn verify_database(url: &str) -> Result<ChainReport, StoreError> {
        let opts = SqliteConnectOptions::from_str(url)?
            .read_only(true)
            .create_if_missing(false);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await?;
        let report = audit::verify_chain(&pool).await;
        pool.close().await;
        report
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
    })
}

/// The current time as an RFC 3339 UTC timestamp.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
