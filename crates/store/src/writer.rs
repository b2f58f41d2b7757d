//! The single writer: group commit of operations with their audit records.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use influxion_core::{Grant, KeyName, KeyStatus};
use sqlx::SqliteConnection;
use tokio::sync::{mpsc, oneshot};

use crate::access::{self, Decision, KeyPolicy, RequestOutcome, SigningRequest, SubjectRecord};
use crate::audit::{self, AuditEvent, AuditKey, ChainTip, Outcome};
use crate::pending::{self, Ballot, Vote};
use crate::{KeyRecord, StoreError};

/// Most operations gathered into one transaction.
const MAX_BATCH: usize = 512;

pub(crate) enum Op {
    None,
    /// A key was used: commit only if the key is still active at commit time, so a
    /// signature made while a `key.disable` committed is never handed out.
    KeyUse(String),
    InsertKey(Box<KeyRecord>),
    Pki(Box<crate::pki::PkiOp>),
    SetKeyStatus(KeyName, KeyStatus),
    /// Key id, the policy the change was decided against, the new policy.
    SetKeyPolicy(String, Box<(KeyPolicy, KeyPolicy)>),
    CreateSubject(Box<SubjectRecord>),
    UpdateSubject(Box<SubjectRecord>),
    DeleteSubject(String),
    AddGrant(String, Grant),
    RemoveGrant(String, String),
    CreateRequest(Box<SigningRequest>),
    CreatePolicyChange(Box<crate::policy_changes::PolicyChange>),
    DecidePolicyChange(Box<Decision>),
    Decide(Box<Decision>),
    Cancel {
        request_id: String,
        requester: String,
        now: i64,
    },
}

impl Op {
    /// Issuance caches CA, profile and key records; certificates themselves (Issue,
    /// Revoke) do not change them.
    fn changes_pki(&self) -> bool {
        use crate::pki::PkiOp;
        match self {
            Op::SetKeyStatus(..) => true,
            Op::Pki(op) => !matches!(**op, PkiOp::Issue { .. } | PkiOp::Revoke { .. }),
            _ => false,
        }
    }

    fn changes_subjects(&self) -> bool {
        matches!(
            self,
            Op::CreateSubject(_)
                | Op::UpdateSubject(_)
                | Op::DeleteSubject(_)
                | Op::AddGrant(..)
                | Op::RemoveGrant(..)
        )
    }
}

/// What a committed job did.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    /// Sequence number of the job's (last) audit record.
    pub seq: u64,
    pub outcome: Option<RequestOutcome>,
}

pub(crate) struct Job {
    pub op: Op,
    pub audit: AuditEvent,
    pub done: oneshot::Sender<Result<Applied, StoreError>>,
}

pub(crate) async fn run(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<Job>,
    subjects_gen: Arc<AtomicU64>,
    pki_gen: Arc<AtomicU64>,
    key: Arc<AuditKey>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let jobs = std::mem::take(&mut batch);
        match commit_batch(&mut conn, &jobs, &key).await {
            Ok(results) => {
                if jobs.iter().any(|j| j.op.changes_subjects()) {
                    subjects_gen.fetch_add(1, Ordering::AcqRel);
                }
                if jobs.iter().any(|j| j.op.changes_pki()) {
                    pki_gen.fetch_add(1, Ordering::AcqRel);
                }
                for (job, result) in jobs.into_iter().zip(results) {
                    let _ = job.done.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "audit batch failed to commit");
                let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
                let chain = matches!(e, StoreError::ChainHeadMismatch(_));
                for job in jobs {
                    let err = if chain {
                        StoreError::ChainHeadMismatch(e.to_string())
                    } else {
                        StoreError::Commit(e.to_string())
                    };
                    let _ = job.done.send(Err(err));
                }
            }
        }
    }
}

/// Apply every job in one transaction; each job sits in a savepoint so that one failed
/// operation (say, a duplicate key name) neither aborts the others nor leaves a record.
async fn commit_batch(
    conn: &mut SqliteConnection,
    jobs: &[Job],
    key: &AuditKey,
) -> Result<Vec<Result<Applied, StoreError>>, StoreError> {
    // IMMEDIATE takes the write lock up front, so the chain tip read below cannot be
    // stale (another process writing the same file waits on busy_timeout).
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let mut tip = audit::tip(&mut *conn, key).await?;
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        sqlx::query("SAVEPOINT job").execute(&mut *conn).await?;
        match apply(&mut *conn, &job.op, &job.audit, &tip, key).await {
            Ok((next, outcome)) => {
                sqlx::query("RELEASE job").execute(&mut *conn).await?;
                results.push(Ok(Applied {
                    seq: next.seq,
                    outcome,
                }));
                tip = next;
            }
            Err(e) => {
                sqlx::query("ROLLBACK TO job").execute(&mut *conn).await?;
                sqlx::query("RELEASE job").execute(&mut *conn).await?;
                results.push(Err(e));
            }
        }
    }
    if tip.seq > 0 {
        audit::set_head(&mut *conn, &tip, key).await?;
    }
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    Ok(results)
}

pub(crate) async fn insert_key(
    conn: &mut SqliteConnection,
    k: &KeyRecord,
) -> Result<(), StoreError> {
    let r = sqlx::query(
        "INSERT INTO keys (id, name, key_type, backend, status, public_key, handle, created_at, created_by, purpose)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&k.id)
    .bind(k.name.as_str())
    .bind(k.key_type.as_str())
    .bind(&k.backend)
    .bind(k.status.as_str())
    .bind(&k.public_key)
    .bind(&k.handle)
    .bind(&k.created_at)
    .bind(&k.created_by)
    .bind(k.purpose.as_str())
    .execute(&mut *conn)
    .await;
    unique(r, || StoreError::DuplicateKey(k.name.to_string()))?;
    Ok(())
}

pub(crate) fn unique<T>(
    r: Result<T, sqlx::Error>,
    dup: impl FnOnce() -> StoreError,
) -> Result<T, StoreError> {
    match r {
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(dup()),
        r => Ok(r?),
    }
}

async fn apply(
    conn: &mut SqliteConnection,
    op: &Op,
    event: &AuditEvent,
    tip: &ChainTip,
    key: &AuditKey,
) -> Result<(ChainTip, Option<RequestOutcome>), StoreError> {
    match op {
        Op::None => {}
        Op::KeyUse(key_id) => {
            let status: Option<String> = sqlx::query_scalar("SELECT status FROM keys WHERE id = ?")
                .bind(key_id)
                .fetch_optional(&mut *conn)
                .await?;
            if status.as_deref() != Some("active") {
                return Err(StoreError::KeyNotActive(key_id.clone()));
            }
        }
        Op::InsertKey(k) => insert_key(conn, k).await?,
        Op::Pki(op) => crate::pki::apply(conn, op).await?,
        Op::SetKeyStatus(name, status) => {
            let r = sqlx::query("UPDATE keys SET status = ? WHERE name = ?")
                .bind(status.as_str())
                .bind(name.as_str())
                .execute(&mut *conn)
                .await?;
            if r.rows_affected() == 0 {
                return Err(StoreError::NoSuchKey(name.to_string()));
            }
        }
        Op::SetKeyPolicy(key_id, change) => {
            let (expected, p) = &**change;
            set_policy(conn, key_id, expected, p).await?;
        }
        Op::CreateSubject(s) => {
            let r = sqlx::query(
                "INSERT INTO subjects (id, name, description, issuer, tenant_id, object_id, app_id, app_role, group_id, caller, created_at, created_by)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&s.id)
            .bind(&s.name)
            .bind(&s.description)
            .bind(&s.rules.issuer)
            .bind(&s.rules.tenant_id)
            .bind(&s.rules.object_id)
            .bind(&s.rules.app_id)
            .bind(&s.rules.app_role)
            .bind(&s.rules.group_id)
            .bind(s.rules.caller_rule().as_str())
            .bind(&s.created_at)
            .bind(&s.created_by)
            .execute(&mut *conn)
            .await;
            unique(r, || StoreError::DuplicateSubject(s.name.clone()))?;
            for g in &s.grants {
                insert_grant(conn, &s.id, g).await?;
            }
        }
        Op::UpdateSubject(s) => {
            let r = sqlx::query(
                "UPDATE subjects SET description = ?, issuer = ?, tenant_id = ?, object_id = ?, app_id = ?, app_role = ?, group_id = ?, caller = ?
                 WHERE id = ?",
            )
            .bind(&s.description)
            .bind(&s.rules.issuer)
            .bind(&s.rules.tenant_id)
            .bind(&s.rules.object_id)
            .bind(&s.rules.app_id)
            .bind(&s.rules.app_role)
            .bind(&s.rules.group_id)
            .bind(s.rules.caller_rule().as_str())
            .bind(&s.id)
            .execute(&mut *conn)
            .await?;
            if r.rows_affected() == 0 {
                return Err(StoreError::NoSuchSubject(s.name.clone()));
            }
        }
        Op::DeleteSubject(id) => {
            sqlx::query("DELETE FROM grants WHERE subject_id = ?")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            let r = sqlx::query("DELETE FROM subjects WHERE id = ?")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            if r.rows_affected() == 0 {
                return Err(StoreError::NoSuchSubject(id.clone()));
            }
        }
        Op::AddGrant(subject_id, g) => insert_grant(conn, subject_id, g).await?,
        Op::RemoveGrant(subject_id, grant_id) => {
            let r = sqlx::query("DELETE FROM grants WHERE id = ? AND subject_id = ?")
                .bind(grant_id)
                .bind(subject_id)
                .execute(&mut *conn)
                .await?;
            if r.rows_affected() == 0 {
                return Err(StoreError::NoSuchGrant(grant_id.clone()));
            }
        }
        Op::CreateRequest(r) => access::insert_request(conn, r).await?,
        Op::CreatePolicyChange(c) => crate::policy_changes::insert(conn, c).await?,
        Op::DecidePolicyChange(d) => {
            return crate::policy_changes::decide(conn, d, event, tip, key).await
        }
        Op::Decide(d) => return decide(conn, d, event, tip, key).await,
        Op::Cancel {
            request_id,
            requester,
            now,
        } => {
            let open = access::open_request(conn, request_id).await?;
            if open.status != "pending" {
                return Err(StoreError::RequestClosed(open.status));
            }
            if *now > open.expires_at {
                return pending::expire::<SigningRequest>(
                    conn,
                    request_id,
                    &open.key_name,
                    tip,
                    key,
                )
                .await;
            }
            if open.requester != *requester {
                return Err(StoreError::NotRequester);
            }
            pending::finish::<SigningRequest>(conn, request_id, "cancelled").await?;
            let next = audit::append(conn, event, tip, key).await?;
            return Ok((next, Some(RequestOutcome::Cancelled)));
        }
    }
    Ok((audit::append(conn, event, tip, key).await?, None))
}

/// Replace a key's policy, provided it is still `expected`: whether a change weakens
/// the policy was decided against `expected`, and if another change committed since,
/// that decision is stale and nothing is written.
pub(crate) async fn set_policy(
    conn: &mut SqliteConnection,
    key_id: &str,
    expected: &KeyPolicy,
    p: &KeyPolicy,
) -> Result<(), StoreError> {
    let json =
        |p: &KeyPolicy| serde_json::to_string(&p.approver_subjects).unwrap_or_else(|_| "[]".into());
    let r = sqlx::query(
        "UPDATE keys SET approvals_required = ?, approval_ttl_secs = ?, approver_subjects = ?
         WHERE id = ? AND approvals_required = ? AND approval_ttl_secs = ? AND approver_subjects = ?",
    )
    .bind(p.approvals_required as i64)
    .bind(p.approval_ttl_secs as i64)
    .bind(json(p))
    .bind(key_id)
    .bind(expected.approvals_required as i64)
    .bind(expected.approval_ttl_secs as i64)
    .bind(json(expected))
    .execute(&mut *conn)
    .await?;
    if r.rows_affected() == 0 {
        let exists: Option<String> = sqlx::query_scalar("SELECT name FROM keys WHERE id = ?")
            .bind(key_id)
            .fetch_optional(&mut *conn)
            .await?;
        return Err(match exists {
            Some(name) => StoreError::PolicyChanged(name),
            None => StoreError::NoSuchKey(key_id.to_owned()),
        });
    }
    Ok(())
}

async fn insert_grant(
    conn: &mut SqliteConnection,
    subject_id: &str,
    g: &Grant,
) -> Result<(), StoreError> {
    let r = sqlx::query("INSERT INTO grants (id, subject_id, role, pattern, created_at, created_by) VALUES (?, ?, ?, ?, ?, '')")
        .bind(&g.id)
        .bind(subject_id)
        .bind(g.role.as_str())
        .bind(&g.pattern)
        .bind(crate::now_rfc3339())
        .execute(&mut *conn)
        .await;
    match r {
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
            Err(StoreError::NoSuchSubject(subject_id.into()))
        }
        r => unique(r, || {
            StoreError::DuplicateGrant(format!("{} on {}", g.role, g.pattern))
        })
        .map(|_| ()),
    }
}

/// Record an approval or rejection; the vote that completes the quorum stores the
/// signature made in advance.
async fn decide(
    conn: &mut SqliteConnection,
    d: &Decision,
    event: &AuditEvent,
    tip: &ChainTip,
    key: &AuditKey,
) -> Result<(ChainTip, Option<RequestOutcome>), StoreError> {
    let open = access::open_request(conn, &d.request_id).await?;
    let ballot = Ballot {
        id: &d.request_id,
        status: &open.status,
        expires_at: open.expires_at,
        quorum: open.quorum,
        requester: &open.requester,
        key_name: &open.key_name,
    };
    let (tip, approvals) =
        match pending::vote::<SigningRequest>(conn, &ballot, d, event, tip, key).await? {
            Vote::Done(tip, outcome) => return Ok((tip, outcome)),
            Vote::Quorum { tip, approvals } => (tip, approvals),
        };
    let Some(signature) = &d.signature else {
        return Err(StoreError::NeedSignature);
    };
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM keys WHERE id = ?")
        .bind(&open.key_id)
        .fetch_optional(&mut *conn)
        .await?;
    if status.as_deref() != Some("active") {
        return Err(StoreError::KeyNotActive(open.key_name));
    }
    let r = sqlx::query(
        "UPDATE signing_requests SET status = 'signed', signature = ?, finished_at = ? WHERE id = ? AND status = 'pending'",
    )
    .bind(signature)
    .bind(crate::now_rfc3339())
    .bind(&d.request_id)
    .execute(&mut *conn)
    .await?;
    if r.rows_affected() != 1 {
        return Err(StoreError::RequestClosed("signed".into()));
    }
    let signed = AuditEvent::new("system:quorum", "sign", Outcome::Ok)
        .target(open.key_name.clone())
        .detail(serde_json::json!({
            "request": d.request_id,
            "requester": open.requester,
            "approvals": approvals,
            "quorum": open.quorum,
        }));
    Ok((
        audit::append(conn, &signed, &tip, key).await?,
        Some(RequestOutcome::Signed),
    ))
}
