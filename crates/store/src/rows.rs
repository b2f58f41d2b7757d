//! Rows to records and back (JSON columns, integer widths), the same for every
//! database: each implements [`Cols`] for its row type, typed reads by column name.

use influxion_core::{KeyPolicy, SubjectRules};
use serde::Serialize;

use crate::access::{ApprovalRecord, SigningRequest, SubjectRecord};
use crate::audit::AuditRecord;
use crate::pki::{CaRecord, CaStatus, CertRecord, ProfileRecord};
use crate::policy_changes::PolicyChange;
use crate::{KeyPurpose, KeyRecord, StoreError};

type Result<T> = std::result::Result<T, StoreError>;
type Col<T> = std::result::Result<T, sqlx::Error>;

/// Typed column reads of one database's row type. The schema's types are the same in
/// every database's migrations (TEXT, 64-bit INTEGER, BLOB/BYTEA, a boolean flag), so
/// the decoding below is written once.
pub(crate) trait Cols {
    fn text(&self, col: &str) -> Col<String>;
    fn opt_text(&self, col: &str) -> Col<Option<String>>;
    fn int(&self, col: &str) -> Col<i64>;
    fn blob(&self, col: &str) -> Col<Vec<u8>>;
    fn opt_blob(&self, col: &str) -> Col<Option<Vec<u8>>>;
    fn flag(&self, col: &str) -> Col<bool>;
}

/// [`Cols`] for a driver's row type by its own `try_get`.
macro_rules! impl_cols {
    ($row:ty) => {
        impl $crate::rows::Cols for $row {
            fn text(&self, col: &str) -> ::std::result::Result<String, sqlx::Error> {
                sqlx::Row::try_get(self, col)
            }
            fn opt_text(&self, col: &str) -> ::std::result::Result<Option<String>, sqlx::Error> {
                sqlx::Row::try_get(self, col)
            }
            fn int(&self, col: &str) -> ::std::result::Result<i64, sqlx::Error> {
                sqlx::Row::try_get(self, col)
            }
            fn blob(&self, col: &str) -> ::std::result::Result<Vec<u8>, sqlx::Error> {
                sqlx::Row::try_get(self, col)
            }
            fn opt_blob(&self, col: &str) -> ::std::result::Result<Option<Vec<u8>>, sqlx::Error> {
                sqlx::Row::try_get(self, col)
            }
            fn flag(&self, col: &str) -> ::std::result::Result<bool, sqlx::Error> {
                sqlx::Row::try_get(self, col)
            }
        }
    };
}
pub(crate) use impl_cols;

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

/// A count or duration the store wrote as an INTEGER; out of range means corruption.
fn u32_col(r: &impl Cols, col: &str) -> Result<u32> {
    u32::try_from(r.int(col)?).map_err(|_| corrupt(col))
}

/// JSON text of a value the store wrote itself (serialising it cannot fail).
pub(crate) fn json<T: Serialize>(v: &T, fallback: &str) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| fallback.into())
}

fn parse<T: serde::de::DeserializeOwned>(r: &impl Cols, col: &str) -> Result<T> {
    let s = r.text(col)?;
    serde_json::from_str(&s).map_err(|_| corrupt(col))
}

pub(crate) fn key_use_state(r: &impl Cols) -> Result<crate::db::KeyUseState> {
    Ok(crate::db::KeyUseState {
        status: r
            .text("status")?
            .parse()
            .map_err(|_| corrupt("key status"))?,
        approvals_required: r.int("approvals_required")?,
        handle: r.blob("handle")?,
    })
}

pub(crate) fn key(r: &impl Cols) -> Result<KeyRecord> {
    Ok(KeyRecord {
        id: r.text("id")?,
        name: r.text("name")?.parse().map_err(|_| corrupt("key name"))?,
        key_type: r
            .text("key_type")?
            .parse()
            .map_err(|_| corrupt("key type"))?,
        backend: r.text("backend")?,
        status: r
            .text("status")?
            .parse()
            .map_err(|_| corrupt("key status"))?,
        public_key: r.blob("public_key")?,
        handle: r.blob("handle")?,
        created_at: r.text("created_at")?,
        created_by: actor(r, "created_by", "created_by_label")?,
        policy: KeyPolicy {
            approvals_required: u32_col(r, "approvals_required")?,
            approval_ttl_secs: u32_col(r, "approval_ttl_secs")?,
            approver_subjects: serde_json::from_str(&r.text("approver_subjects")?)
                .map_err(|_| corrupt("approver subjects"))?,
        },
        purpose: match r.text("purpose")?.as_str() {
            "sign" => KeyPurpose::Sign,
            "ca" => KeyPurpose::Ca,
            _ => return Err(corrupt("key purpose")),
        },
        certificate_pem: r.opt_text("certificate_pem")?,
    })
}

pub(crate) fn subject(r: &impl Cols) -> std::result::Result<SubjectRecord, sqlx::Error> {
    Ok(SubjectRecord {
        id: r.text("id")?,
        name: r.text("name")?,
        description: r.text("description")?,
        rules: SubjectRules {
            issuer: r.opt_text("issuer")?,
            tenant_id: r.opt_text("tenant_id")?,
            object_id: r.opt_text("object_id")?,
            app_id: r.opt_text("app_id")?,
            app_role: r.opt_text("app_role")?,
            group_id: r.opt_text("group_id")?,
            caller: Some(
                r.text("caller")?
                    .parse()
                    .map_err(|e: influxion_core::access::AccessError| {
                        sqlx::Error::Decode(e.into())
                    })?,
            ),
        },
        grants: Vec::new(),
        created_at: r.text("created_at")?,
        created_by: actor(r, "created_by", "created_by_label")?,
    })
}

pub(crate) fn request(r: &impl Cols) -> Result<SigningRequest> {
    let metadata: serde_json::Value = parse(r, "metadata")?;
    let approvers: serde_json::Value = parse(r, "approver_subjects")?;
    let approvers: Vec<String> =
        serde_json::from_value(approvers).map_err(|_| corrupt("approver_subjects"))?;
    Ok(SigningRequest {
        id: r.text("id")?,
        key_id: r.text("key_id")?,
        key_name: r.text("key_name")?,
        algorithm: r.text("algorithm")?,
        digest: r.text("digest")?,
        requester: actor(r, "requester", "requester_label")?,
        reason: r.text("reason")?,
        metadata,
        quorum: u32_col(r, "quorum")?,
        approver_subjects: approvers,
        status: r.text("status")?,
        signature: r.opt_blob("signature")?,
        created_at: r.text("created_at")?,
        expires_at: r.int("expires_at")?,
        finished_at: r.opt_text("finished_at")?,
        approvals: Vec::new(),
    })
}

pub(crate) fn policy_change(r: &impl Cols) -> Result<PolicyChange> {
    Ok(PolicyChange {
        id: r.text("id")?,
        key_id: r.text("key_id")?,
        key_name: r.text("key_name")?,
        requester: actor(r, "requester", "requester_label")?,
        reason: r.text("reason")?,
        base_policy: parse(r, "base_policy")?,
        policy: parse(r, "policy")?,
        weakens: parse(r, "weakens")?,
        quorum: u32_col(r, "quorum")?,
        approver_subjects: parse(r, "approver_subjects")?,
        status: r.text("status")?,
        created_at: r.text("created_at")?,
        expires_at: r.int("expires_at")?,
        finished_at: r.opt_text("finished_at")?,
        approvals: Vec::new(),
    })
}

/// An identity column and the label column beside it.
fn actor(
    r: &impl Cols,
    id: &str,
    label: &str,
) -> std::result::Result<influxion_core::Actor, sqlx::Error> {
    let label = r.opt_text(label)?;
    Ok(influxion_core::Actor::from_stored(
        r.text(id)?,
        label.as_deref(),
    ))
}

pub(crate) fn approval(a: &impl Cols) -> Result<ApprovalRecord> {
    Ok(ApprovalRecord {
        approver: actor(a, "approver", "approver_label")?,
        decision: a.text("decision")?,
        comment: a.text("comment")?,
        at: a.text("at")?,
    })
}

pub(crate) fn ca_status(s: &str) -> Result<CaStatus> {
    match s {
        "pending" => Ok(CaStatus::Pending),
        "active" => Ok(CaStatus::Active),
        "disabled" => Ok(CaStatus::Disabled),
        _ => Err(corrupt("CA status")),
    }
}

pub(crate) fn ca(r: &impl Cols) -> Result<CaRecord> {
    Ok(CaRecord {
        name: r.text("name")?,
        key_id: r.text("key_id")?,
        status: ca_status(&r.text("status")?)?,
        subject: r.text("subject")?,
        parent: r.opt_text("parent")?,
        csr_pem: r.opt_text("csr_pem")?,
        certificate: r.opt_blob("certificate")?,
        chain_pem: r.text("chain_pem")?,
        not_after: r.opt_text("not_after")?,
        crl_number: r.int("crl_number")?,
        crl: r.opt_blob("crl")?,
        crl_next_update: r.opt_text("crl_next_update")?,
        created_at: r.text("created_at")?,
        created_by: actor(r, "created_by", "created_by_label")?,
        serial: r.opt_text("serial")?,
        revoked_at: r.opt_text("revoked_at")?,
        revocation_reason: r.opt_text("revocation_reason")?,
    })
}

pub(crate) fn profile(r: &impl Cols) -> Result<ProfileRecord> {
    Ok(ProfileRecord {
        name: r.text("name")?,
        ca: r.text("ca")?,
        spec: r.text("spec")?,
        created_at: r.text("created_at")?,
        updated_at: r.text("updated_at")?,
    })
}

pub(crate) fn cert(r: &impl Cols) -> Result<CertRecord> {
    Ok(CertRecord {
        serial: r.text("serial")?,
        ca: r.text("ca")?,
        profile: r.text("profile")?,
        device_id: r.text("device_id")?,
        subject: r.text("subject")?,
        not_before: r.text("not_before")?,
        not_after: r.text("not_after")?,
        der: r.blob("der")?,
        requested_by: actor(r, "requested_by", "requested_by_label")?,
        issued_at: r.text("issued_at")?,
        key_generated: r.flag("key_generated")?,
        request_key: r.opt_text("request_key")?,
        status: r.text("status")?,
        revoked_at: r.opt_text("revoked_at")?,
        revocation_reason: r.opt_text("revocation_reason")?,
    })
}

/// Named, not `*`: the column set differs between schema versions.
pub(crate) const AUDIT_COLUMNS: &str =
    "seq, at, actor, actor_label, action, target, outcome, detail, prev_hash, hash";

pub(crate) fn audit_record(r: &impl Cols) -> std::result::Result<AuditRecord, sqlx::Error> {
    Ok(AuditRecord {
        seq: r.int("seq")?,
        at: r.text("at")?,
        actor: r.text("actor")?,
        actor_label: r.opt_text("actor_label")?,
        action: r.text("action")?,
        target: r.opt_text("target")?,
        outcome: r.text("outcome")?,
        detail: r.text("detail")?,
        prev_hash: r.text("prev_hash")?,
        hash: r.text("hash")?,
        mac: r.opt_text("mac")?,
    })
}
