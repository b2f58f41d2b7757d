//! The seam between the store's rules and a database.
//!
//! [`Database`] is what the [`Store`](crate::Store) facade reads through and gets
//! connections from; [`Conn`] is one connection, with the transaction control the
//! group-commit writer needs and the reads and writes the rules are applied with. An
//! implementation (`sqlite/`, one day `postgres/`) holds all SQL and all driver types;
//! it decides nothing: uniqueness it reports as [`Inserted::Duplicate`], and every
//! "may this happen" is answered in `rules.rs`, `apply.rs` or `audit.rs` over the rows
//! it loads. Both traits are object-safe (`async-trait`), so the facade holds
//! `Arc<dyn Database>` and never names a driver.

use std::collections::HashMap;

use async_trait::async_trait;
use influxion_core::{Grant, KeyName, KeyPolicy, KeyStatus};

use crate::access::{SigningRequest, SubjectRecord};
use crate::audit::{AuditRecord, Head};
use crate::pki::{CaRecord, CaStatus, CertQuery, CertRecord, ProfileRecord, RevokedRow};
use crate::policy_changes::PolicyChange;
use crate::{KeyRecord, StoreError};

pub(crate) type Result<T> = std::result::Result<T, StoreError>;

/// What an opened database hands the facade.
pub(crate) struct Opened {
    pub db: std::sync::Arc<dyn Database>,
    /// The writer task's own connection (it holds it for the life of the store).
    pub writer: Box<dyn Conn>,
    /// `Some(fresh)` when this open created the keyed audit schema: the log must be
    /// keyed now, before anything else writes (`fresh`: the database was new).
    pub keying: Option<bool>,
    /// The writer connection is not tied to the runtime that opened it (SQLite's runs
    /// on a thread of its own), so the writer may run on a thread of its own too.
    pub writer_thread: bool,
    /// Where commits on the writer's connection are not durable when they return
    /// (SQLite: the writer commits with `synchronous=NORMAL`), what makes them so: it
    /// syncs everything committed before the call. The writer answers a batch only
    /// after it, and overlaps it with the next batch (`writer::Syncer`).
    pub wal_sync: Option<WalSync>,
}

/// Makes every commit made before the call durable (see [`Opened::wal_sync`]).
pub(crate) type WalSync = Box<dyn Fn() -> std::io::Result<()> + Send>;

/// Which lock a transaction takes when it begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lock {
    /// A consistent read snapshot; nothing is written.
    Read,
    /// The write lock, taken up front so what the transaction reads cannot be stale.
    Write,
}

/// The outcome of an insert whose constraint violation is a fact, not a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inserted {
    Yes,
    /// A unique key (primary key or unique index) is taken.
    Duplicate,
    /// The row it refers to does not exist (only where a method says it reports this).
    NoParent,
}

impl Inserted {
    /// `Ok` if inserted, `dup()` if a unique key was taken.
    pub(crate) fn or(self, dup: impl FnOnce() -> StoreError) -> Result<()> {
        match self {
            Inserted::Yes => Ok(()),
            Inserted::Duplicate => Err(dup()),
            Inserted::NoParent => Err(StoreError::Corrupt("a referenced row is missing".into())),
        }
    }
}

/// The two kinds of item approvers vote on; they share the voting code and differ in
/// their tables (which the database maps) and what completing the quorum does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PendingKind {
    SigningRequest,
    PolicyChange,
}

/// A vote as written.
pub(crate) struct VoteRow<'a> {
    pub approver: &'a influxion_core::Actor,
    /// `approve` or `reject`.
    pub decision: &'static str,
    pub comment: &'a str,
    pub at: &'a str,
}

/// What the writer's rules need to know about a CA (without its certificate or CRL).
#[derive(Debug, Clone)]
pub(crate) struct CaState {
    pub status: CaStatus,
    pub key_id: String,
    pub parent: Option<String>,
    pub serial: Option<String>,
    pub revoked_at: Option<String>,
    pub crl_number: i64,
}

/// What the device quota counts: one issued certificate's status and end of validity.
#[derive(Debug, Clone)]
pub(crate) struct CertValidity {
    pub status: String,
    pub not_after: String,
}

/// What the writer's batch reads as it opens ([`Conn::begin_append`]).
pub(crate) struct Begun {
    /// The last record's sequence number and hash.
    pub last: Option<(i64, String)>,
    pub head: Option<Head>,
    /// Key-use states by key id, of the asked keys that exist.
    pub keys: HashMap<String, KeyUseState>,
}

/// A key's row as a signature made without approval is checked against when its
/// record commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyUseState {
    pub status: KeyStatus,
    pub approvals_required: i64,
    pub handle: Vec<u8>,
}

/// What a committed batch changed, for the caches of every process on the database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Change {
    pub subjects: bool,
    pub pki: bool,
    /// A key record (status, policy, binding, certificate) or a new key.
    pub keys: bool,
    /// The last audit record the batch appended, if any.
    pub tip: Option<u64>,
}

/// The signals the facade's caches follow: bumped by this process's writer after each
/// commit, and by the database's change feed when another process commits (replicas
/// on one PostgreSQL database).
#[derive(Clone)]
pub(crate) struct Signals {
    pub subjects: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub pki: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub keys: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub tip: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl Signals {
    pub(crate) fn new(tip: u64) -> (Self, tokio::sync::watch::Receiver<u64>) {
        use std::sync::atomic::AtomicU64;
        use std::sync::Arc;
        let (tx, rx) = tokio::sync::watch::channel(tip);
        let s = Self {
            subjects: Arc::new(AtomicU64::new(1)),
            pki: Arc::new(AtomicU64::new(1)),
            keys: Arc::new(AtomicU64::new(1)),
            tip: Arc::new(tx),
        };
        (s, rx)
    }

    pub(crate) fn changed(&self, c: &Change) {
        use std::sync::atomic::Ordering;
        if c.subjects {
            self.subjects.fetch_add(1, Ordering::AcqRel);
        }
        if c.pki {
            self.pki.fetch_add(1, Ordering::AcqRel);
        }
        if c.keys {
            self.keys.fetch_add(1, Ordering::AcqRel);
        }
        if let Some(last) = c.tip {
            self.tip.send_if_modified(|t| {
                let newer = last > *t;
                if newer {
                    *t = last;
                }
                newer
            });
        }
    }

    /// Everything may have changed (a change feed that lost its connection).
    pub(crate) fn all_changed(&self, tip: Option<u64>) {
        self.changed(&Change {
            subjects: true,
            pki: true,
            keys: true,
            tip,
        });
    }
}

/// A column's type, the same in every database's schema: TEXT, a 64-bit INTEGER
/// (BIGINT), BLOB (BYTEA), and a flag (INTEGER 0/1 in SQLite, BOOLEAN in PostgreSQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Text,
    Int,
    Blob,
    Bool,
}

/// One stored value, as rows are copied from one database to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SqlValue {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
    Bool(bool),
}

/// A table read and written as plain rows (`migrate.rs`). Its name and columns are
/// constants there, never input, so building SQL from them is safe.
#[derive(Debug)]
pub(crate) struct Table {
    pub name: &'static str,
    /// Every column, in the order row values are given.
    pub columns: &'static [(&'static str, Kind)],
    /// The primary key's columns: rows are read in its order, in pages after a key.
    pub key: &'static [&'static str],
}

impl Table {
    pub(crate) fn kind(&self, column: &str) -> Kind {
        self.columns
            .iter()
            .find(|(c, _)| *c == column)
            .map_or(Kind::Text, |(_, k)| *k)
    }
}

/// Reads outside the writer, and the connections the writer and verification use.
#[async_trait]
pub(crate) trait Database: Send + Sync {
    /// A pooled connection, not in a transaction (verification, re-sealing).
    async fn conn(&self) -> Result<Box<dyn Conn>>;
    /// Close every connection (tests that rewrite the file between opens).
    async fn close(&self);

    async fn subjects(&self) -> Result<Vec<SubjectRecord>>;

    async fn key(&self, name: &KeyName) -> Result<Option<KeyRecord>>;
    async fn key_by_id(&self, id: &str) -> Result<Option<KeyRecord>>;
    async fn keys(&self) -> Result<Vec<KeyRecord>>;

    /// With their votes, oldest vote first.
    async fn signing_request(&self, id: &str) -> Result<Option<SigningRequest>>;
    /// Newest first, optionally only those in `status`, each with its votes.
    async fn signing_requests(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SigningRequest>>;
    async fn policy_change(&self, id: &str) -> Result<Option<PolicyChange>>;
    async fn policy_changes(&self, status: Option<&str>, limit: u32) -> Result<Vec<PolicyChange>>;

    /// Records matching `f`: newest first, or oldest first after `f.after_seq`.
    async fn audit_search(&self, f: &crate::AuditFilter) -> Result<Vec<AuditRecord>>;
    async fn audit_record(&self, seq: i64) -> Result<Option<AuditRecord>>;
    /// The last record's sequence number (0 for an empty log).
    async fn audit_last_seq(&self) -> Result<i64>;

    async fn ca(&self, name: &str) -> Result<Option<CaRecord>>;
    async fn cas(&self) -> Result<Vec<CaRecord>>;
    /// Certificates `ca` issued, counted by status.
    async fn certificate_counts(&self, ca: &str) -> Result<Vec<(String, i64)>>;
    async fn profile(&self, name: &str) -> Result<Option<ProfileRecord>>;
    async fn profiles(&self) -> Result<Vec<ProfileRecord>>;
    async fn certificate(&self, serial: &str) -> Result<Option<CertRecord>>;
    async fn certificate_by_request_key(
        &self,
        profile: &str,
        request_key: &str,
    ) -> Result<Option<CertRecord>>;
    /// Newest first; `q.visible` is applied before the limit.
    async fn search_certificates(&self, q: &CertQuery) -> Result<Vec<CertRecord>>;
    /// The newest revocation time among certificates and intermediate CAs under `ca`.
    async fn latest_revocation(&self, ca: &str) -> Result<Option<String>>;
    /// Revoked certificates and intermediate CAs under `ca`, oldest first.
    async fn revoked_for_ca(&self, ca: &str) -> Result<Vec<RevokedRow>>;

    /// Pending items of `kind` that expire at or after `now` (Unix seconds): one count
    /// query, for metrics.
    async fn pending_count(&self, kind: PendingKind, now: i64) -> Result<i64>;

    /// Connections open in the pool, and how many of them are idle.
    fn pool_status(&self) -> crate::PoolStatus;

    /// Whether a write may be queued for the writer now. False while the database is
    /// known to be away and no new attempt is due: the caller is answered at once,
    /// rather than waiting behind the writer's attempt to reach it.
    fn accepts_writes(&self) -> bool {
        true
    }

    /// Follow the commits of other processes on this database and bump `signals` for
    /// them, for the life of the store. A database only one process writes (SQLite)
    /// has nothing to follow.
    fn follow(&self, _signals: Signals) {}

    /// Raw access for tests that damage the log on purpose.
    #[cfg(feature = "test-helpers")]
    fn tamper(&self) -> &dyn crate::test_helpers::Tamper;
}

/// One connection: transactions, savepoints, and the statements the rules apply.
/// Methods that change rows return how many they changed where the rules need it.
#[async_trait]
pub(crate) trait Conn: Send {
    async fn begin(&mut self, lock: Lock) -> Result<()>;
    async fn commit(&mut self) -> Result<()>;
    async fn rollback(&mut self) -> Result<()>;
    /// A savepoint per job of a batch, so one failed job leaves no trace.
    async fn savepoint(&mut self) -> Result<()>;
    async fn release_savepoint(&mut self) -> Result<()>;
    async fn rollback_to_savepoint(&mut self) -> Result<()>;
    /// Tell the other processes on this database what the open transaction changed,
    /// delivered when it commits (nothing to do where only one process writes).
    async fn announce(&mut self, _change: &Change) -> Result<()> {
        Ok(())
    }

    // The audit log.
    /// Whether the log has the keyed schema (a read-only copy of an old file may not).
    async fn audit_keyed_schema(&mut self) -> Result<bool>;
    /// The last record's seq and hash, if any.
    async fn audit_last(&mut self) -> Result<Option<(i64, String)>>;
    /// The head; `keyed: false` reads a file without the `mac` column (mac is None).
    async fn audit_head(&mut self, keyed: bool) -> Result<Option<Head>>;
    async fn audit_hash(&mut self, seq: i64) -> Result<Option<String>>;
    /// Up to `limit` records after `seq`, in order (mac None on an unkeyed file).
    async fn audit_records_after(
        &mut self,
        seq: i64,
        limit: u32,
        keyed: bool,
    ) -> Result<Vec<AuditRecord>>;
    async fn audit_insert(&mut self, r: &AuditRecord) -> Result<()>;
    /// Several consecutive records, in as few statements as the database allows.
    async fn audit_insert_many(&mut self, rs: &[AuditRecord]) -> Result<()>;
    async fn audit_set_head(&mut self, seq: i64, hash: &str, mac: &str) -> Result<()>;
    /// The writer's batch opens: the write transaction, then the last record, the head
    /// (keyed), and what the batch's key uses are checked against (the keys of `keys`
    /// that exist). One round trip where the database can do it in one.
    async fn begin_append(&mut self, keys: &[&str]) -> Result<Begun> {
        self.begin(Lock::Write).await?;
        let last = self.audit_last().await?;
        let head = self.audit_head(true).await?;
        let mut states = HashMap::with_capacity(keys.len());
        for &id in keys {
            if let Some(state) = self.key_use_state(id).await? {
                states.insert(id.to_owned(), state);
            }
        }
        Ok(Begun {
            last,
            head,
            keys: states,
        })
    }
    /// The writer's batch closes: its remaining records, the sealed head (`None`: the
    /// log is empty), the announcement of `change`, the commit. One round trip where the
    /// database can do it in one. An error may come from the commit itself: whether
    /// the transaction committed is then unknown (see `writer::InDoubt`).
    async fn finish_append(
        &mut self,
        records: &[AuditRecord],
        head: Option<(i64, &str, &str)>,
        change: &Change,
    ) -> Result<()> {
        self.audit_insert_many(records).await?;
        if let Some((seq, hash, mac)) = head {
            self.audit_set_head(seq, hash, mac).await?;
        }
        if *change != Change::default() {
            self.announce(change).await?;
        }
        self.commit().await
    }
    async fn audit_set_mac(&mut self, seq: i64, mac: &str) -> Result<()>;

    // Keys.
    async fn insert_key(&mut self, k: &KeyRecord) -> Result<Inserted>;
    async fn key_by_id(&mut self, id: &str) -> Result<Option<KeyRecord>>;
    async fn key_status(&mut self, id: &str) -> Result<Option<KeyStatus>>;
    /// What a direct signature is checked against at commit time.
    async fn key_use_state(&mut self, id: &str) -> Result<Option<KeyUseState>>;
    async fn set_key_status(&mut self, name: &KeyName, status: KeyStatus) -> Result<u64>;
    async fn set_key_policy(&mut self, id: &str, p: &KeyPolicy) -> Result<u64>;
    /// Rows changed: 0 when the key no longer has `r.expected_handle`.
    async fn rebind_key(&mut self, r: &crate::Rebind) -> Result<u64>;

    // Subjects and grants.
    async fn insert_subject(&mut self, s: &SubjectRecord) -> Result<Inserted>;
    async fn update_subject(&mut self, s: &SubjectRecord) -> Result<u64>;
    /// Deletes its grants too; returns the subjects deleted.
    async fn delete_subject(&mut self, id: &str) -> Result<u64>;
    /// Reports [`Inserted::NoParent`] when the subject does not exist.
    async fn insert_grant(&mut self, subject_id: &str, g: &Grant, at: &str) -> Result<Inserted>;
    async fn delete_grant(&mut self, subject_id: &str, grant_id: &str) -> Result<u64>;

    // Signing requests and policy changes.
    async fn insert_request(&mut self, r: &SigningRequest) -> Result<()>;
    async fn insert_policy_change(&mut self, c: &PolicyChange) -> Result<()>;
    /// Without its votes.
    async fn signing_request(&mut self, id: &str) -> Result<Option<SigningRequest>>;
    /// Without its votes.
    async fn policy_change(&mut self, id: &str) -> Result<Option<PolicyChange>>;
    /// [`Inserted::Duplicate`]: this approver has voted on the item already.
    async fn insert_vote(
        &mut self,
        kind: PendingKind,
        id: &str,
        v: &VoteRow<'_>,
    ) -> Result<Inserted>;
    async fn approvals(&mut self, kind: PendingKind, id: &str) -> Result<u32>;
    /// Close the item with `status` if it is still pending; false if it was not.
    async fn finish(&mut self, kind: PendingKind, id: &str, status: &str, at: &str)
        -> Result<bool>;
    /// Mark a pending signing request signed with `signature`; false if not pending.
    async fn store_signature(&mut self, id: &str, signature: &[u8], at: &str) -> Result<bool>;

    // The device CA.
    async fn insert_ca(&mut self, ca: &CaRecord) -> Result<Inserted>;
    async fn ca_state(&mut self, name: &str) -> Result<Option<CaState>>;
    async fn activate_ca(
        &mut self,
        name: &str,
        certificate: &[u8],
        chain_pem: &str,
        not_after: &str,
    ) -> Result<()>;
    async fn set_ca_status(&mut self, name: &str, status: &CaStatus) -> Result<()>;
    /// Disable `name` and record its certificate's serial (if not yet) and revocation;
    /// [`Inserted::Duplicate`]: the serial belongs to another CA.
    async fn revoke_ca(
        &mut self,
        name: &str,
        serial: &str,
        at: &str,
        reason: &str,
    ) -> Result<Inserted>;
    async fn store_crl(
        &mut self,
        ca: &str,
        number: i64,
        der: &[u8],
        next_update: &str,
    ) -> Result<()>;
    async fn insert_profile(&mut self, p: &ProfileRecord) -> Result<Inserted>;
    async fn update_profile(&mut self, p: &ProfileRecord) -> Result<u64>;
    async fn profile_used(&mut self, name: &str) -> Result<bool>;
    async fn delete_profile(&mut self, name: &str) -> Result<u64>;
    /// Whether a device or CA certificate has this serial.
    async fn serial_taken(&mut self, serial: &str) -> Result<bool>;
    async fn device_certificates(
        &mut self,
        profile: &str,
        device_id: &str,
    ) -> Result<Vec<CertValidity>>;
    async fn insert_certificate(&mut self, c: &CertRecord) -> Result<Inserted>;
    /// Insert `certs` in this order, as many [`Conn::insert_certificate`] calls would;
    /// whether each went in. The writer's batches insert their certificates this way.
    async fn insert_certificates(&mut self, certs: &[&CertRecord]) -> Result<Vec<bool>> {
        let mut inserted = Vec::with_capacity(certs.len());
        for c in certs {
            inserted.push(self.insert_certificate(c).await? == Inserted::Yes);
        }
        Ok(inserted)
    }
    async fn certificate_status(&mut self, serial: &str) -> Result<Option<String>>;
    async fn revoke_certificate(&mut self, serial: &str, at: &str, reason: &str) -> Result<()>;

    // Plain rows, for copying a database into another (`migrate.rs`).
    /// The names of `table`'s columns (none: there is no such table).
    async fn table_columns(&mut self, table: &'static str) -> Result<Vec<String>>;
    async fn count_rows(&mut self, t: &Table) -> Result<u64>;
    /// Up to `limit` rows of `t`, each its values in the order of `t.columns`, in the
    /// order of the primary key (bytewise for text, in every database), starting after
    /// the row whose key is `after` (the values of `t.key`), or at the first row.
    async fn table_rows(
        &mut self,
        t: &Table,
        after: Option<&[SqlValue]>,
        limit: u32,
    ) -> Result<Vec<Vec<SqlValue>>>;
    /// Insert `rows` (values in the order of `t.columns`) in one statement.
    async fn insert_rows(&mut self, t: &Table, rows: &[Vec<SqlValue>]) -> Result<()>;
}
