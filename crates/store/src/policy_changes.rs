//! Policy changes that weaken four eyes: proposed, approved by the key's quorum as it
//! stood when proposed, and applied in the transaction of the vote that completes it.

use influxion_core::{Actor, KeyPolicy, Weakening};
use serde::Serialize;

use crate::access::ApprovalRecord;

/// A proposed weakening of a key's policy.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyChange {
    pub id: String,
    pub key_id: String,
    pub key_name: String,
    /// The proposer's identity (`tenant/object`, as for signing requests) and label.
    pub requester: Actor,
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
        crate::rules::approvals_count(&self.approvals)
    }
}
