//! Rows of the SQLite schema to records and back (JSON columns, integer widths).

use influxion_core::{KeyPolicy, SubjectRules};
use serde::Serialize;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use crate::access::{ApprovalRecord, SigningRequest, SubjectRecord};
use crate::audit::AuditRecord;
use crate::pki::{CaRecord, CaStatus, CertRecord, ProfileRecord};
use crate::policy_changes::PolicyChange;
use crate::{KeyPurpose, KeyRecord, StoreError};

type Result<T> = std::result::Result<T, StoreError>;

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

/// A count or duration the store wrote as an INTEGER; out of range means corruption.
fn u32_col(r: &SqliteRow, col: &str) -> Result<u32> {
    u32::try_from(r.try_get::<i64, _>(col)?).map_err(|_| corrupt(col))
}

/// JSON text of a value the store wrote itself (serialising it cannot fail).
pub(super) fn json<T: Serialize>(v: &T, fallback: &str) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| fallback.into())
}

fn parse<T: serde::de::DeserializeOwned>(r: &SqliteRow, col: &str) -> Result<T> {
    let s: String = r.try_get(col)?;
    serde_json::from_str(&s).map_err(|_| corrupt(col))
}

pub(super) fn key(r: &SqliteRow) -> Result<KeyRecord> {
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
        created_by: actor(r, "created_by", "created_by_label")?,
        policy: KeyPolicy {
            approvals_required: u32_col(r, "approvals_required")?,
            approval_ttl_secs: u32_col(r, "approval_ttl_secs")?,
            approver_subjects: serde_json::from_str(&r.try_get::<String, _>("approver_subjects")?)
                .map_err(|_| corrupt("approver subjects"))?,
        },
        purpose: match r.try_get::<String, _>("purpose")?.as_str() {
            "sign" => KeyPurpose::Sign,
            "ca" => KeyPurpose::Ca,
            _ => return Err(corrupt("key purpose")),
        },
        certificate_pem: r.try_get("certificate_pem")?,
    })
}

pub(super) fn subject(r: &SqliteRow) -> std::result::Result<SubjectRecord, sqlx::Error> {
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
        created_by: actor(r, "created_by", "created_by_label")?,
    })
}

pub(super) fn request(r: &SqliteRow) -> Result<SigningRequest> {
    let metadata: serde_json::Value = parse(r, "metadata")?;
    let approvers: serde_json::Value = parse(r, "approver_subjects")?;
    let approvers: Vec<String> =
        serde_json::from_value(approvers).map_err(|_| corrupt("approver_subjects"))?;
    Ok(SigningRequest {
        id: r.try_get("id")?,
        key_id: r.try_get("key_id")?,
        key_name: r.try_get("key_name")?,
        algorithm: r.try_get("algorithm")?,
        digest: r.try_get("digest")?,
        requester: actor(r, "requester", "requester_label")?,
        reason: r.try_get("reason")?,
        metadata,
        quorum: u32_col(r, "quorum")?,
        approver_subjects: approvers,
        status: r.try_get("status")?,
        signature: r.try_get("signature")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        finished_at: r.try_get("finished_at")?,
        approvals: Vec::new(),
    })
}

pub(super) fn policy_change(r: &SqliteRow) -> Result<PolicyChange> {
    Ok(PolicyChange {
        id: r.try_get("id")?,
        key_id: r.try_get("key_id")?,
        key_name: r.try_get("key_name")?,
        requester: actor(r, "requester", "requester_label")?,
        reason: r.try_get("reason")?,
        base_policy: parse(r, "base_policy")?,
        policy: parse(r, "policy")?,
        weakens: parse(r, "weakens")?,
        quorum: u32_col(r, "quorum")?,
        approver_subjects: parse(r, "approver_subjects")?,
        status: r.try_get("status")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        finished_at: r.try_get("finished_at")?,
        approvals: Vec::new(),
    })
}

/// An identity column and the label column beside it.
fn actor(
    r: &SqliteRow,
    id: &str,
    label: &str,
) -> std::result::Result<influxion_core::Actor, sqlx::Error> {
    let label: Option<String> = r.try_get(label)?;
    Ok(influxion_core::Actor::from_stored(
        r.try_get(id)?,
        label.as_deref(),
    ))
}

pub(super) fn approval(a: &SqliteRow) -> Result<ApprovalRecord> {
    Ok(ApprovalRecord {
        approver: actor(a, "approver", "approver_label")?,
        decision: a.try_get("decision")?,
        comment: a.try_get("comment")?,
        at: a.try_get("at")?,
    })
}

pub(super) fn ca_status(s: &str) -> Result<CaStatus> {
    match s {
        "pending" => Ok(CaStatus::Pending),
        "active" => Ok(CaStatus::Active),
        "disabled" => Ok(CaStatus::Disabled),
        _ => Err(corrupt("CA status")),
    }
}

pub(super) fn ca(r: &SqliteRow) -> Result<CaRecord> {
    Ok(CaRecord {
        name: r.try_get("name")?,
        key_id: r.try_get("key_id")?,
        status: ca_status(&r.try_get::<String, _>("status")?)?,
        subject: r.try_get("subject")?,
        parent: r.try_get("parent")?,
        csr_pem: r.try_get("csr_pem")?,
        certificate: r.try_get("certificate")?,
        chain_pem: r.try_get("chain_pem")?,
        not_after: r.try_get("not_after")?,
        crl_number: r.try_get("crl_number")?,
        crl: r.try_get("crl")?,
        crl_next_update: r.try_get("crl_next_update")?,
        created_at: r.try_get("created_at")?,
        created_by: actor(r, "created_by", "created_by_label")?,
        serial: r.try_get("serial")?,
        revoked_at: r.try_get("revoked_at")?,
        revocation_reason: r.try_get("revocation_reason")?,
    })
}

pub(super) fn profile(r: &SqliteRow) -> Result<ProfileRecord> {
    Ok(ProfileRecord {
        name: r.try_get("name")?,
        ca: r.try_get("ca")?,
        spec: r.try_get("spec")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

pub(super) fn cert(r: &SqliteRow) -> Result<CertRecord> {
    Ok(CertRecord {
        serial: r.try_get("serial")?,
        ca: r.try_get("ca")?,
        profile: r.try_get("profile")?,
        device_id: r.try_get("device_id")?,
        subject: r.try_get("subject")?,
        not_before: r.try_get("not_before")?,
        not_after: r.try_get("not_after")?,
        der: r.try_get("der")?,
        requested_by: actor(r, "requested_by", "requested_by_label")?,
        issued_at: r.try_get("issued_at")?,
        key_generated: r.try_get("key_generated")?,
        request_key: r.try_get("request_key")?,
        status: r.try_get("status")?,
        revoked_at: r.try_get("revoked_at")?,
        revocation_reason: r.try_get("revocation_reason")?,
    })
}

/// Named, not `*`: the column set differs between schema versions.
pub(super) const AUDIT_COLUMNS: &str =
    "seq, at, actor, actor_label, action, target, outcome, detail, prev_hash, hash";

pub(super) fn audit_record(r: &SqliteRow) -> std::result::Result<AuditRecord, sqlx::Error> {
    Ok(AuditRecord {
        seq: r.try_get("seq")?,
        at: r.try_get("at")?,
        actor: r.try_get("actor")?,
        actor_label: r.try_get("actor_label")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        outcome: r.try_get("outcome")?,
        detail: r.try_get("detail")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
        mac: r.try_get("mac")?,
    })
}
