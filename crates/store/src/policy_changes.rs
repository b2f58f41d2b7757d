//! Policy changes that weaken four eyes: proposed, approved by the key's quorum as it
//! stood when proposed, and applied in the transaction of the vote that completes it.

use influxion_core::{KeyPolicy, Weakening};
use serde::Serialize;
use sqlx::{Row, SqliteConnection, SqlitePool};

use crate::access::{ApprovalRecord, Decision, RequestOutcome};
use crate::audit::{self, AuditEvent, AuditKey, ChainTip, Outcome};
use crate::StoreError;

/// A proposed weakening of a key's policy.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyChange {
    pub id: String,
    pub key_id: String,
    pub key_name: String,
    /// The proposer's principal id (`tenant/object`, as for signing requests).
    pub requester: String,
    pub requester_name: Option<String>,
    pub reason: String,
    /// The policy in force when proposed; the change applies only over this one.
    pub base_policy: KeyPolicy,
    pub policy: KeyPolicy,
    pub weakens: Vec<Weakening>,
    /// Approvals needed and who may give them: the base policy's.
    pub quorum: u32,
    pub approver_subjects: Vec<String>,
    /// pending, applied, rejected, expired or superseded (the policy changed first).
    pub status: String,
    pub created_at: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub finished_at: Option<String>,
    pub approvals: Vec<ApprovalRecord>,
}

impl PolicyChange {
    pub fn approvals_count(&self) -> u32 {
        self.approvals
            .iter()
            .filter(|a| a.decision == "approve")
            .count() as u32
    }
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn parse<T: serde::de::DeserializeOwned>(
    r: &sqlx::sqlite::SqliteRow,
    col: &str,
) -> Result<T, StoreError> {
    let s: String = r.try_get(col)?;
    serde_json::from_str(&s).map_err(|_| StoreError::Corrupt(col.to_owned()))
}

fn from_row(r: &sqlx::sqlite::SqliteRow) -> Result<PolicyChange, StoreError> {
    Ok(PolicyChange {
        id: r.try_get("id")?,
        key_id: r.try_get("key_id")?,
        key_name: r.try_get("key_name")?,
        requester: r.try_get("requester")?,
        requester_name: r.try_get("requester_name")?,
        reason: r.try_get("reason")?,
        base_policy: parse(r, "base_policy")?,
        policy: parse(r, "policy")?,
        weakens: parse(r, "weakens")?,
        quorum: r.try_get::<i64, _>("quorum")? as u32,
        approver_subjects: parse(r, "approver_subjects")?,
        status: r.try_get("status")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        finished_at: r.try_get("finished_at")?,
        approvals: Vec::new(),
    })
}

async fn approvals_of(pool: &SqlitePool, id: &str) -> Result<Vec<ApprovalRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT approver, decision, comment, at FROM policy_change_approvals WHERE change_id = ? ORDER BY at",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|a| {
            Ok(ApprovalRecord {
                approver: a.try_get("approver")?,
                decision: a.try_get("decision")?,
                comment: a.try_get("comment")?,
                at: a.try_get("at")?,
            })
        })
        .collect()
}

pub(crate) async fn get(pool: &SqlitePool, id: &str) -> Result<Option<PolicyChange>, StoreError> {
    let Some(row) = sqlx::query("SELECT * FROM policy_changes WHERE id = ?")
        .bind(id)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    let mut c = from_row(&row)?;
    c.approvals = approvals_of(pool, id).await?;
    Ok(Some(c))
}

pub(crate) async fn list(
    pool: &SqlitePool,
    status: Option<&str>,
    limit: u32,
) -> Result<Vec<PolicyChange>, StoreError> {
    let rows =
        match status {
            Some(s) => sqlx::query(
                "SELECT * FROM policy_changes WHERE status = ? ORDER BY created_at DESC LIMIT ?",
            )
            .bind(s)
            .bind(limit as i64)
            .fetch_all(pool)
            .await?,
            None => {
                sqlx::query("SELECT * FROM policy_changes ORDER BY created_at DESC LIMIT ?")
                    .bind(limit as i64)
                    .fetch_all(pool)
                    .await?
            }
        };
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut c = from_row(row)?;
        c.approvals = approvals_of(pool, &c.id).await?;
        out.push(c);
    }
    Ok(out)
}

pub(crate) async fn insert(
    conn: &mut SqliteConnection,
    c: &PolicyChange,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO policy_changes (id, key_id, key_name, requester, requester_name, reason, base_policy,
             policy, weakens, quorum, approver_subjects, status, created_at, expires_at, finished_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, NULL)",
    )
    .bind(&c.id)
    .bind(&c.key_id)
    .bind(&c.key_name)
    .bind(&c.requester)
    .bind(&c.requester_name)
    .bind(&c.reason)
    .bind(json(&c.base_policy))
    .bind(json(&c.policy))
    .bind(json(&c.weakens))
    .bind(c.quorum as i64)
    .bind(json(&c.approver_subjects))
    .bind(&c.created_at)
    .bind(c.expires_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn finish(conn: &mut SqliteConnection, id: &str, status: &str) -> Result<(), StoreError> {
    let r = sqlx::query(
        "UPDATE policy_changes SET status = ?, finished_at = ? WHERE id = ? AND status = 'pending'",
    )
    .bind(status)
    .bind(crate::now_rfc3339())
    .bind(id)
    .execute(&mut *conn)
    .await?;
    if r.rows_affected() != 1 {
        return Err(StoreError::RequestClosed(id.to_owned()));
    }
    Ok(())
}

/// Record a vote on a policy change; the vote that completes the quorum applies it,
/// provided the key's policy is still the one the change was proposed against.
pub(crate) async fn decide(
    conn: &mut SqliteConnection,
    d: &Decision,
    event: &AuditEvent,
    tip: &ChainTip,
    key: &AuditKey,
) -> Result<(ChainTip, Option<RequestOutcome>), StoreError> {
    let row = sqlx::query("SELECT * FROM policy_changes WHERE id = ?")
        .bind(&d.request_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NoSuchRequest(d.request_id.clone()))?;
    let c = from_row(&row)?;
    if c.status != "pending" {
        return Err(StoreError::RequestClosed(c.status));
    }
    if d.now > c.expires_at {
        finish(conn, &c.id, "expired").await?;
        let e = AuditEvent::new("system:expiry", "key.policy_change.expire", Outcome::Ok)
            .target(c.id.clone())
            .detail(serde_json::json!({"key": c.key_name}));
        return Ok((
            audit::append(conn, &e, tip, key).await?,
            Some(RequestOutcome::Expired),
        ));
    }
    if c.requester == d.approver {
        return Err(StoreError::SelfApproval);
    }
    let r = sqlx::query(
        "INSERT INTO policy_change_approvals (change_id, approver, decision, comment, at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(&c.id)
    .bind(&d.approver)
    .bind(if d.approve { "approve" } else { "reject" })
    .bind(&d.comment)
    .bind(crate::now_rfc3339())
    .execute(&mut *conn)
    .await;
    crate::writer::unique(r, || StoreError::AlreadyDecided)?;
    if !d.approve {
        finish(conn, &c.id, "rejected").await?;
        return Ok((
            audit::append(conn, event, tip, key).await?,
            Some(RequestOutcome::Rejected),
        ));
    }
    let tip = audit::append(conn, event, tip, key).await?;
    let approvals: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM policy_change_approvals WHERE change_id = ? AND decision = 'approve'",
    )
    .bind(&c.id)
    .fetch_one(&mut *conn)
    .await?;
    let approvals = approvals as u32;
    if approvals < c.quorum {
        return Ok((
            tip,
            Some(RequestOutcome::Approved {
                approvals,
                quorum: c.quorum,
            }),
        ));
    }
    let applied = crate::writer::set_policy(conn, &c.key_id, &c.base_policy, &c.policy).await;
    let (status, action) = match applied {
        Ok(()) => ("applied", "key.policy"),
        // Another change committed first: this one was judged against a policy no
        // longer in force, so it ends without effect.
        Err(StoreError::PolicyChanged(_)) => ("superseded", "key.policy_change.supersede"),
        Err(e) => return Err(e),
    };
    finish(conn, &c.id, status).await?;
    let e = AuditEvent::new("system:quorum", action, Outcome::Ok)
        .target(c.key_name.clone())
        .detail(serde_json::json!({
            "change": c.id,
            "requester": c.requester,
            "before": c.base_policy,
            "after": c.policy,
            "weakens": c.weakens,
            "approvals": approvals,
            "quorum": c.quorum,
        }));
    let outcome = if status == "applied" {
        RequestOutcome::Applied
    } else {
        RequestOutcome::Superseded
    };
    Ok((audit::append(conn, &e, &tip, key).await?, Some(outcome)))
}
