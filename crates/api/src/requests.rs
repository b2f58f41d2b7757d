//! Signing (`/v1/keys/{name}/sign`, `verify`) and what waits for approvers: signing
//! requests (`/v1/signing-requests`) and policy changes (`/v1/policy-changes`).

use influxion_core::{Actor, KeyPolicy, SignAlgorithm, Weakening};
use serde::{Deserialize, Serialize};

/// `POST /v1/keys/{name}/sign`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// Hex-encoded digest of the data, computed by the client.
    pub digest: String,
    /// Defaults to the key's default algorithm.
    pub algorithm: Option<String>,
    /// Why this is being signed; required when the key needs approval.
    pub reason: Option<String>,
    /// What approvers see about the file: name, version, size and the like.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// The signature format the digest is for (one of [`SIGNATURE_FORMATS`]; default
    /// `raw`): recorded in the audit log and shown to approvers, never the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// The signature formats a signature may be made for: a detached raw signature, CMS
/// SignedData, an MCUboot image, an Authenticode-signed PE file.
pub const SIGNATURE_FORMATS: [&str; 4] = ["raw", "cms", "mcuboot", "authenticode"];

/// A signature made at once (HTTP 200).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignResponse {
    pub key: String,
    pub algorithm: SignAlgorithm,
    pub digest: String,
    /// Base64 (standard) signature: DER for ECDSA, raw for RSA and Ed25519.
    pub signature: String,
    /// Sequence number of the audit record of this signature.
    pub audit_seq: u64,
}

/// Answer to a sign call on a key that needs approval (HTTP 202).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingResponse {
    pub request_id: String,
    pub status: String,
    pub location: String,
    pub quorum: u32,
    pub expires_at: i64,
}

/// `POST /v1/keys/{name}/verify`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    pub digest: String,
    pub algorithm: Option<String>,
    /// Base64 (standard) signature.
    pub signature: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyResponse {
    pub key: String,
    pub algorithm: SignAlgorithm,
    pub valid: bool,
}

/// One approver's decision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Approval {
    /// Who decided: `id` is `tenant/object`; `label` is what to show.
    pub approver: Actor,
    /// `approve` or `reject`.
    pub decision: String,
    pub comment: String,
    pub at: String,
}

/// The body of approve, reject (a comment is required) and cancel.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    #[serde(default)]
    pub comment: String,
}

/// A signing request as one caller sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestView {
    pub id: String,
    pub key_id: String,
    pub key_name: String,
    pub algorithm: String,
    /// Hex digest to be signed.
    pub digest: String,
    /// Who asked: `id` is `tenant/object`; `label` is what to show.
    pub requester: Actor,
    pub reason: String,
    pub metadata: serde_json::Value,
    pub quorum: u32,
    pub approver_subjects: Vec<String>,
    /// pending, signed, rejected, cancelled or expired.
    pub status: String,
    pub created_at: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub finished_at: Option<String>,
    pub approvals: Vec<Approval>,
    pub approvals_count: u32,
    /// Whether this caller may approve or reject it now.
    pub can_decide: bool,
    /// Whether this caller is the requester (and may cancel it while pending).
    pub is_requester: bool,
    /// Base64 signature, once signed.
    pub signature: Option<String>,
}

/// `GET /v1/signing-requests`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestList {
    pub requests: Vec<RequestView>,
}

/// Answer to a policy change that must be approved first (HTTP 202).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingChange {
    pub change_id: String,
    pub status: String,
    pub location: String,
    pub quorum: u32,
    pub expires_at: i64,
    pub weakens: Vec<Weakening>,
}

/// A proposed weakening of a key's policy, as one caller sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeView {
    pub id: String,
    pub key_id: String,
    pub key_name: String,
    /// Who proposed it: `id` is `tenant/object`; `label` is what to show.
    pub requester: Actor,
    pub reason: String,
    /// The policy in force when proposed; the change applies only over this one.
    pub base_policy: KeyPolicy,
    pub policy: KeyPolicy,
    pub weakens: Vec<Weakening>,
    /// Approvals needed and who may give them: the base policy's.
    pub quorum: u32,
    pub approver_subjects: Vec<String>,
    /// pending, applied, rejected, expired or superseded.
    pub status: String,
    pub created_at: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub finished_at: Option<String>,
    pub approvals: Vec<Approval>,
    pub approvals_count: u32,
    pub can_decide: bool,
    pub is_requester: bool,
}

/// `GET /v1/policy-changes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeList {
    pub changes: Vec<ChangeView>,
}
