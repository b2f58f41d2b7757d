//! The audit log (`GET /v1/audit`, `GET /v1/audit/{seq}`).

use influxion_core::Actor;
use serde::{Deserialize, Serialize};

/// One record. `actor.id` is the stable identity the record is keyed on; the other
/// actor fields are display text recorded from the token at the time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: String,
    pub actor: Actor,
    pub action: String,
    pub target: Option<String>,
    /// ok, refused or error.
    pub outcome: String,
    pub detail: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
    /// HMAC-SHA256 under the audit key; null for records written before keying.
    pub mac: Option<String>,
}

/// What verifying the chain found (`status`: `intact` or `broken`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Chain {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unkeyed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyed: Option<bool>,
    /// Where it broke, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /v1/audit`: records newest first, or oldest first after `after`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditPage {
    /// The whole chain, verified; absent on export pages (`after`), which are read
    /// often and verified by `GET /v1/audit` or `influxion audit verify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<Chain>,
    pub records: Vec<AuditEntry>,
    /// The last record in the log when this page was read.
    pub last_seq: i64,
}

/// How one record sits in the chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordChecks {
    pub hash_matches: bool,
    /// valid, invalid, or none (written before keying).
    pub mac: String,
    pub previous_hash: Option<String>,
    pub links_to_previous: bool,
    pub next_seq: Option<i64>,
    pub next_links_here: bool,
    pub last_seq: i64,
}

/// `GET /v1/audit/{seq}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditRecordView {
    pub record: AuditEntry,
    pub checks: RecordChecks,
    /// The whole chain, verified (incrementally).
    pub chain: Chain,
}
