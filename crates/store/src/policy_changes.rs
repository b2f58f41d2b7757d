//! Policy changes that weaken four eyes: proposed, approved by the key's quorum as it
//! stood when proposed, and applied in the transaction of the vote that completes it.

use influxion_core::{KeyPolicy, Weakening};
use serde::Serialize;
use sqlx::{Row, SqliteConnection};

use crate::access::{ApprovalRecord, Decision, RequestOutcome};
use crate::audit::{self, AuditEvent, AuditKey, ChainTip, Outcome};
use crate::pending::{self, Ballot, Vote};
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
        crate::pending::approvals_count(&self.approvals)
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

impl crate::pending::Pending for PolicyChange {
    const TABLE: &'static str = "policy_changes";
    const VOTES: &'static str = "policy_change_approvals";
    const VOTES_ITEM: &'static str = "change_id";
    const EXPIRE_ACTION: &'static str = "key.policy_change.expire";

    fn from_row(r: &sqlx::sqlite::SqliteRow) -> Result<Self, StoreError> {
        from_row(r)
    }
    fn id(&self) -> &str {
        &self.id
    }
    fn approvals_mut(&mut self) -> &mut Vec<ApprovalRecord> {
        &mut self.approvals
    }
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
    let ballot = Ballot {
        id: &c.id,
        status: &c.status,
        expires_at: c.expires_at,
        quorum: c.quorum,
        requester: &c.requester,
        key_name: &c.key_name,
    };
    let (tip, approvals) =
        match pending::vote::<PolicyChange>(conn, &ballot, d, event, tip, key).await? {
            Vote::Done(tip, outcome) => return Ok((tip, outcome)),
            Vote::Quorum { tip, approvals } => (tip, approvals),
        };
    let applied = crate::writer::set_policy(conn, &c.key_id, &c.base_policy, &c.policy).await;
    let (status, action) = match applied {
        Ok(()) => ("applied", "key.policy"),
        // Another change committed first: this one was judged against a policy no
        // longer in force, so it ends without effect.
        Err(StoreError::PolicyChanged(_)) => ("superseded", "key.policy_change.supersede"),
        Err(e) => return Err(e),
    };
    pending::finish::<PolicyChange>(conn, &c.id, status).await?;
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
