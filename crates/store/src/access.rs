//! Subjects, grants, key policies and signing requests, as the store keeps them.

use influxion_core::{Actor, Grant, SubjectRules};
use serde::Serialize;

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
    /// Who made it: identity and label at the time.
    pub created_by: influxion_core::Actor,
}

pub use influxion_core::KeyPolicy;

#[derive(Debug, Clone, Serialize)]
pub struct ApprovalRecord {
    /// The approver's identity (`tenant/object`) and label at the time of the vote.
    pub approver: Actor,
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
    /// The requester's identity (`tenant/object`) and label at the time of the request.
    pub requester: Actor,
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
        crate::rules::approvals_count(&self.approvals)
    }
}

/// An approver's decision on a request.
#[derive(Debug, Clone)]
pub struct Decision {
    pub request_id: String,
    pub approver: Actor,
    pub approve: bool,
    pub comment: String,
    /// Unix seconds, for the expiry check.
    pub now: i64,
    /// The signature, made in advance by an approver whose vote may complete the
    /// quorum. Without it, a completing vote fails with `NeedSignature`.
    pub signature: Option<Vec<u8>>,
    /// Where that signature was made (backend, vault, key version), added to the
    /// quorum's `sign` record.
    pub signed_with: serde_json::Map<String, serde_json::Value>,
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
