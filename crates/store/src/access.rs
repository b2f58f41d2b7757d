//! Subjects, grants, key policies and signing requests.

use influxion_core::{Grant, Role, SubjectRules};
use serde::Serialize;
use sqlx::{Row, SqliteConnection, SqlitePool};

use crate::StoreError;

/// A subject with its match rules and grants.
#[derive(Debug, Clone, Serialize)]
pub struct SubjectRecord {
    pub id: String,
    pub name: String,
    pub description: String,
    #[serde(flatten)]
    pub rules: SubjectRules,
    pub grants: Vec<Grant>,
    pub created_at: String,
    pub created_by: String,
}

pub use influxion_core::KeyPolicy;

#[derive(Debug, Clone, Serialize)]
pub struct ApprovalRecord {
    pub approver: String,
    pub decision: String,
    pub comment: String,
    pub at: String,
}

/// A signing request on a key whose policy needs approval.
#[derive(Debug, Clone, Serialize)]
pub struct SigningRequest {
    pub id: String,
    pub key_id: String,
    pub key_name: String,
    pub algorithm: String,
    /// Hex digest to be signed.
    pub digest: String,
    /// The requester's principal id (`kind:tenant/object`).
    pub requester: String,
    pub requester_name: Option<String>,
    pub reason: String,
    pub metadata: serde_json::Value,
    pub quorum: u32,
    pub approver_subjects: Vec<String>,
    pub status: String,
    #[serde(skip)]
    pub signature: Option<Vec<u8>>,
    pub created_at: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub finished_at: Option<String>,
    pub approvals: Vec<ApprovalRecord>,
}

impl SigningRequest {
    pub fn approvals_count(&self) -> u32 {
        crate::pending::approvals_count(&self.approvals)
    }
}

/// An approver's decision on a request.
#[derive(Debug, Clone)]
pub struct Decision {
    pub request_id: String,
    pub approver: String,
    pub approve: bool,
    pub comment: String,
    /// Unix seconds, for the expiry check.
    pub now: i64,
    /// The signature, made in advance by an approver whose vote may complete the
    /// quorum. Without it, a completing vote fails with `NeedSignature`.
    pub signature: Option<Vec<u8>>,
}

/// What an approval, rejection or cancellation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestOutcome {
    /// The vote counted; more are needed.
    Approved {
        approvals: u32,
        quorum: u32,
    },
    /// This vote completed the quorum and the signature was stored.
    Signed,
    Rejected,
    Cancelled,
    /// The request had expired; it is now marked so and nothing else happened.
    Expired,
    /// This vote completed the quorum of a policy change, and the policy was replaced.
    Applied,
    /// This vote completed the quorum of a policy change, but the key's policy had
    /// changed since it was proposed: it ended without effect.
    Superseded,
}

pub(crate) fn subject_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<SubjectRecord, sqlx::Error> {
    Ok(SubjectRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        rules: SubjectRules {
            issuer: r.try_get("issuer")?,
            tenant_id: r.try_get("tenant_id")?,
            object_id: r.try_get("object_id")?,
            app_id: r.try_get("app_id")?,
            app_role: r.try_get("app_role")?,
            group_id: r.try_get("group_id")?,
            caller: Some(
                r.try_get::<String, _>("caller")?.parse().map_err(
                    |e: influxion_core::access::AccessError| sqlx::Error::Decode(e.into()),
                )?,
            ),
        },
        grants: Vec::new(),
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
    })
}

/// Every subject with its grants.
pub(crate) async fn load_subjects(pool: &SqlitePool) -> Result<Vec<SubjectRecord>, StoreError> {
    let rows = sqlx::query("SELECT * FROM subjects ORDER BY name")
        .fetch_all(pool)
        .await?;
    let mut subjects = rows
        .iter()
        .map(subject_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let grants =
        sqlx::query("SELECT id, subject_id, role, pattern FROM grants ORDER BY role, pattern")
            .fetch_all(pool)
            .await?;
    for g in grants {
        let subject_id: String = g.try_get("subject_id")?;
        let role: Role = g
            .try_get::<String, _>("role")?
            .parse()
            .map_err(|_| StoreError::Corrupt("grant role".into()))?;
        if let Some(s) = subjects.iter_mut().find(|s| s.id == subject_id) {
            s.grants.push(Grant {
                id: g.try_get("id")?,
                role,
                pattern: g.try_get("pattern")?,
            });
        }
    }
    Ok(subjects)
}

fn request_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<SigningRequest, StoreError> {
    let json = |col: &str| -> Result<serde_json::Value, StoreError> {
        let s: String = r.try_get(col)?;
        serde_json::from_str(&s).map_err(|_| StoreError::Corrupt(col.to_owned()))
    };
    let approvers: Vec<String> = serde_json::from_value(json("approver_subjects")?)
        .map_err(|_| StoreError::Corrupt("approver_subjects".into()))?;
    Ok(SigningRequest {
        id: r.try_get("id")?,
        key_id: r.try_get("key_id")?,
        key_name: r.try_get("key_name")?,
        algorithm: r.try_get("algorithm")?,
        digest: r.try_get("digest")?,
        requester: r.try_get("requester")?,
        requester_name: r.try_get("requester_name")?,
        reason: r.try_get("reason")?,
        metadata: json("metadata")?,
        quorum: r.try_get::<i64, _>("quorum")? as u32,
        approver_subjects: approvers,
        status: r.try_get("status")?,
        signature: r.try_get("signature")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        finished_at: r.try_get("finished_at")?,
        approvals: Vec::new(),
    })
}

impl crate::pending::Pending for SigningRequest {
    const TABLE: &'static str = "signing_requests";
    const VOTES: &'static str = "approvals";
    const VOTES_ITEM: &'static str = "request_id";
    const EXPIRE_ACTION: &'static str = "signing_request.expire";

    fn from_row(r: &sqlx::sqlite::SqliteRow) -> Result<Self, StoreError> {
        request_from_row(r)
    }
    fn id(&self) -> &str {
        &self.id
    }
    fn approvals_mut(&mut self) -> &mut Vec<ApprovalRecord> {
        &mut self.approvals
    }
}

pub(crate) async fn insert_request(
    conn: &mut SqliteConnection,
    r: &SigningRequest,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO signing_requests (id, key_id, key_name, algorithm, digest, requester, requester_name, reason,
             metadata, quorum, approver_subjects, status, signature, created_at, expires_at, finished_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', NULL, ?, ?, NULL)",
    )
    .bind(&r.id)
    .bind(&r.key_id)
    .bind(&r.key_name)
    .bind(&r.algorithm)
    .bind(&r.digest)
    .bind(&r.requester)
    .bind(&r.requester_name)
    .bind(&r.reason)
    .bind(r.metadata.to_string())
    .bind(r.quorum as i64)
    .bind(serde_json::to_string(&r.approver_subjects).unwrap_or_else(|_| "[]".into()))
    .bind(&r.created_at)
    .bind(r.expires_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The state a decision needs, read inside the writer's transaction.
pub(crate) struct OpenRequest {
    pub status: String,
    pub expires_at: i64,
    pub quorum: u32,
    pub requester: String,
    pub key_id: String,
    pub key_name: String,
}

pub(crate) async fn open_request(
    conn: &mut SqliteConnection,
    id: &str,
) -> Result<OpenRequest, StoreError> {
    let r = sqlx::query("SELECT status, expires_at, quorum, requester, key_id, key_name FROM signing_requests WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NoSuchRequest(id.to_owned()))?;
    Ok(OpenRequest {
        status: r.try_get("status")?,
        expires_at: r.try_get("expires_at")?,
        quorum: r.try_get::<i64, _>("quorum")? as u32,
        requester: r.try_get("requester")?,
        key_id: r.try_get("key_id")?,
        key_name: r.try_get("key_name")?,
    })
}
