//! The store's one error type: rule violations (with the facts that decided them) apart
//! from infrastructure failures. Callers match on variants and fields, never on text.

use std::sync::Arc;

use influxion_core::Role;

use crate::pki::CaStatus;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // Infrastructure: the database, the writer, stored data. Never shown to clients.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The batch this operation was in failed as a whole (its transaction rolled back).
    #[error("the transaction failed to commit: {0}")]
    Commit(#[source] Arc<StoreError>),
    #[error("the store writer has stopped")]
    Closed,
    /// The database's password (an access token, a file) could not be obtained.
    #[error("database password unavailable: {0}")]
    Password(String),
    /// A password source was given for a database that takes none (SQLite).
    #[error("{0}")]
    Unsupported(String),
    #[error("the audit chain head disagrees with the log ({0}); refusing to write until an operator investigates")]
    ChainHeadMismatch(String),
    #[error("refusing to re-seal the audit log: {0}")]
    Reseal(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// A migration that would copy into a database holding data: nothing was written.
    #[error("the target database is not empty ({table} has rows): a migration copies into an empty database only")]
    TargetNotEmpty { table: String },
    /// A migration that cannot start (the source's schema or audit chain); nothing
    /// was written.
    #[error("not migrating: {0}")]
    MigrationRefused(String),
    /// The copy differs from the source; it was rolled back, nothing was written.
    #[error("the copy differs from the source, nothing was written: {0}")]
    MigrationMismatch(String),
    #[error("stored data is invalid: the recorded serial of CA {ca} is not its certificate's")]
    CaSerialMismatch { ca: String },

    // Rules: what the caller asked for is not allowed in the state the store is in.
    #[error("a key named {0} already exists")]
    DuplicateKey(String),
    #[error("no key named {0}")]
    NoSuchKey(String),
    #[error("the policy of key {0} changed while this change was being decided")]
    PolicyChanged(String),
    #[error("key {0} was rebound while this rotation ran")]
    KeyChanged(String),
    #[error("key {0} is not active")]
    KeyNotActive(String),
    #[error("a subject named {0} already exists")]
    DuplicateSubject(String),
    #[error("no subject {0}")]
    NoSuchSubject(String),
    #[error("the subject already has the grant {role} on {pattern}")]
    DuplicateGrant { role: Role, pattern: String },
    #[error("no grant {0}")]
    NoSuchGrant(String),
    #[error("no signing request {0}")]
    NoSuchRequest(String),
    /// The item was decided or withdrawn; `status` is what it is now (never `expired`).
    #[error("the signing request is no longer pending (it is {status})")]
    RequestClosed { status: String },
    /// The item expired before this decision.
    #[error("the signing request is no longer pending (it is expired)")]
    RequestExpired,
    #[error("the requester cannot approve their own request")]
    SelfApproval,
    #[error("this approver has already decided on the request")]
    AlreadyDecided,
    #[error("only the requester can cancel a request")]
    NotRequester,
    #[error("this vote completes the quorum; it must carry the signature")]
    NeedSignature,
    #[error("a CA named {0} already exists")]
    DuplicateCa(String),
    /// Activation of a CA that does not exist or is not waiting for its certificate.
    #[error("CA {ca} is not waiting for a certificate")]
    CaNotPending { ca: String },
    /// A status change of a CA that has no certificate yet.
    #[error("CA {ca} has no certificate yet")]
    CaNotIssued { ca: String },
    /// Issuance under a CA that is missing (`status: None`) or not active.
    #[error("CA {ca} is not active")]
    CaNotActive {
        ca: String,
        status: Option<CaStatus>,
    },
    /// Issuance under an active CA whose key is disabled or is not the CA's.
    #[error("CA {ca} is not active")]
    CaKeyNotActive { ca: String, key_id: String },
    /// A CRL whose number is not above the stored one (built from an older view).
    #[error("a newer CRL of {ca} exists")]
    CrlOutdated { ca: String, number: i64 },
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
}

impl StoreError {
    /// Whether the database could not be reached (down, restarting, the network, no
    /// free connection in time), as opposed to a fault in what was asked or stored:
    /// the caller may retry shortly (503).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Db(e) => db_unavailable(e),
            StoreError::Commit(inner) => inner.is_unavailable(),
            StoreError::Password(_) => true,
            _ => false,
        }
    }
}

fn db_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // SQLSTATE class 08: connection exceptions; 57P01-57P03: the server is
        // shutting down, was terminated by an administrator, or is starting up;
        // 55P03 and 57014: a lock or statement timeout (the store's bounds) ran out.
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03" | "55P03" | "57014")
        }),
        _ => false,
    }
}

/// An audit sequence number as stored (INTEGER, from 1) to the unsigned form reports use.
pub(crate) fn seq_u64(seq: i64) -> Result<u64, StoreError> {
    u64::try_from(seq).map_err(|_| StoreError::Corrupt("audit sequence number".into()))
}
