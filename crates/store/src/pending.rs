//! What signing requests and policy changes share: each is a row awaiting the votes of
//! a key's approvers, with its votes in a table of their own. Reading them and recording
//! a vote are one piece of code; only the tables, the row mapping and what the vote that
//! completes the quorum does differ.

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection, SqlitePool};

use crate::access::{ApprovalRecord, Decision, RequestOutcome};
use crate::audit::{self, AuditEvent, AuditKey, ChainTip, Outcome};
use crate::StoreError;

/// A kind of item approvers vote on. The table names are constants, never input, so
/// building SQL from them is safe.
pub(crate) trait Pending: Sized {
    /// The table of items.
    const TABLE: &'static str;
    /// The table of votes, and its column naming the item voted on.
    const VOTES: &'static str;
    const VOTES_ITEM: &'static str;
    /// The audit action recorded when a vote finds the item expired.
    const EXPIRE_ACTION: &'static str;

    fn from_row(r: &SqliteRow) -> Result<Self, StoreError>;
    fn id(&self) -> &str;
    fn approvals_mut(&mut self) -> &mut Vec<ApprovalRecord>;
}

/// The number of approving votes among `approvals`.
pub(crate) fn approvals_count(approvals: &[ApprovalRecord]) -> u32 {
    approvals.iter().filter(|a| a.decision == "approve").count() as u32
}

async fn approvals_of<T: Pending>(
    pool: &SqlitePool,
    id: &str,
) -> Result<Vec<ApprovalRecord>, StoreError> {
    let sql = format!(
        "SELECT approver, decision, comment, at FROM {} WHERE {} = ? ORDER BY at",
        T::VOTES,
        T::VOTES_ITEM
    );
    let rows = sqlx::query(&sql).bind(id).fetch_all(pool).await?;
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

/// One item with its votes.
pub(crate) async fn get<T: Pending>(pool: &SqlitePool, id: &str) -> Result<Option<T>, StoreError> {
    let sql = format!("SELECT * FROM {} WHERE id = ?", T::TABLE);
    let Some(row) = sqlx::query(&sql).bind(id).fetch_optional(pool).await? else {
        return Ok(None);
    };
    let mut item = T::from_row(&row)?;
    *item.approvals_mut() = approvals_of::<T>(pool, id).await?;
    Ok(Some(item))
}

/// The newest items, optionally only those in `status`, each with its votes.
pub(crate) async fn list<T: Pending>(
    pool: &SqlitePool,
    status: Option<&str>,
    limit: u32,
) -> Result<Vec<T>, StoreError> {
    let rows = match status {
        Some(s) => {
            let sql = format!(
                "SELECT * FROM {} WHERE status = ? ORDER BY created_at DESC LIMIT ?",
                T::TABLE
            );
            sqlx::query(&sql)
                .bind(s)
                .bind(limit as i64)
                .fetch_all(pool)
                .await?
        }
        None => {
            let sql = format!(
                "SELECT * FROM {} ORDER BY created_at DESC LIMIT ?",
                T::TABLE
            );
            sqlx::query(&sql).bind(limit as i64).fetch_all(pool).await?
        }
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut item = T::from_row(row)?;
        let approvals = approvals_of::<T>(pool, item.id()).await?;
        *item.approvals_mut() = approvals;
        out.push(item);
    }
    Ok(out)
}

/// Close a pending item with `status`; fails if it was no longer pending.
pub(crate) async fn finish<T: Pending>(
    conn: &mut SqliteConnection,
    id: &str,
    status: &str,
) -> Result<(), StoreError> {
    let sql = format!(
        "UPDATE {} SET status = ?, finished_at = ? WHERE id = ? AND status = 'pending'",
        T::TABLE
    );
    let r = sqlx::query(&sql)
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

/// Mark an overdue item expired, with its own audit record.
pub(crate) async fn expire<T: Pending>(
    conn: &mut SqliteConnection,
    id: &str,
    key_name: &str,
    tip: &ChainTip,
    key: &AuditKey,
) -> Result<(ChainTip, Option<RequestOutcome>), StoreError> {
    finish::<T>(conn, id, "expired").await?;
    let e = AuditEvent::new("system:expiry", T::EXPIRE_ACTION, Outcome::Ok)
        .target(id.to_owned())
        .detail(serde_json::json!({"key": key_name}));
    Ok((
        audit::append(conn, &e, tip, key).await?,
        Some(RequestOutcome::Expired),
    ))
}

/// The state of an item a vote needs, read inside the writer's transaction.
pub(crate) struct Ballot<'a> {
    pub id: &'a str,
    pub status: &'a str,
    pub expires_at: i64,
    pub quorum: u32,
    pub requester: &'a str,
    pub key_name: &'a str,
}

/// What recording a vote left to the caller.
pub(crate) enum Vote {
    /// The vote settled it (expired, rejected or still short of the quorum).
    Done(ChainTip, Option<RequestOutcome>),
    /// This vote, already audited at `tip`, completed the quorum: the caller acts on it.
    Quorum { tip: ChainTip, approvals: u32 },
}

/// Record an approval or rejection. The single writer serialises decisions, so exactly
/// one vote can see the quorum reached while the item is still pending.
pub(crate) async fn vote<T: Pending>(
    conn: &mut SqliteConnection,
    b: &Ballot<'_>,
    d: &Decision,
    event: &AuditEvent,
    tip: &ChainTip,
    key: &AuditKey,
) -> Result<Vote, StoreError> {
    if b.status != "pending" {
        return Err(StoreError::RequestClosed(b.status.to_owned()));
    }
    if d.now > b.expires_at {
        let (tip, outcome) = expire::<T>(conn, b.id, b.key_name, tip, key).await?;
        return Ok(Vote::Done(tip, outcome));
    }
    if b.requester == d.approver {
        return Err(StoreError::SelfApproval);
    }
    let sql = format!(
        "INSERT INTO {} ({}, approver, decision, comment, at) VALUES (?, ?, ?, ?, ?)",
        T::VOTES,
        T::VOTES_ITEM
    );
    let r = sqlx::query(&sql)
        .bind(b.id)
        .bind(&d.approver)
        .bind(if d.approve { "approve" } else { "reject" })
        .bind(&d.comment)
        .bind(crate::now_rfc3339())
        .execute(&mut *conn)
        .await;
    crate::writer::unique(r, || StoreError::AlreadyDecided)?;
    if !d.approve {
        finish::<T>(conn, b.id, "rejected").await?;
        return Ok(Vote::Done(
            audit::append(conn, event, tip, key).await?,
            Some(RequestOutcome::Rejected),
        ));
    }
    let tip = audit::append(conn, event, tip, key).await?;
    let sql = format!(
        "SELECT COUNT(*) FROM {} WHERE {} = ? AND decision = 'approve'",
        T::VOTES,
        T::VOTES_ITEM
    );
    let approvals: i64 = sqlx::query_scalar(&sql)
        .bind(b.id)
        .fetch_one(&mut *conn)
        .await?;
    let approvals = approvals as u32;
    if approvals < b.quorum {
        return Ok(Vote::Done(
            tip,
            Some(RequestOutcome::Approved {
                approvals,
                quorum: b.quorum,
            }),
        ));
    }
    Ok(Vote::Quorum { tip, approvals })
}
