//! What signing requests and policy changes have in common: who may vote, the body of
//! a vote, the parameters of a list, and the check of an id. Both route modules use
//! these; neither imports the other.

use axum::extract::Query;
use influxion_core::Role;
use serde::Deserialize;

use crate::{ApiError, Caller};

/// Whether the caller may vote on a signing request or policy change on `key_name`:
/// the approver role on the key, and one of `approver_subjects` if it names any.
pub(crate) fn may_approve(c: &Caller, key_name: &str, approver_subjects: &[String]) -> bool {
    c.perms.allows(Role::Approver, key_name)
        && (approver_subjects.is_empty()
            || approver_subjects
                .iter()
                .any(|s| c.perms.subjects.contains(s)))
}

/// The query of a list of signing requests or policy changes.
#[derive(Deserialize)]
pub(crate) struct PendingListQuery {
    status: Option<String>,
    limit: Option<u32>,
}

/// The status filter (one of `statuses`) and the page size of such a list.
pub(crate) fn pending_list_params(
    q: Result<Query<PendingListQuery>, axum::extract::rejection::QueryRejection>,
    statuses: &[&str],
) -> Result<(Option<String>, u32), ApiError> {
    let Query(q) = q.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    if let Some(s) = q.status.as_deref() {
        if !statuses.contains(&s) {
            return Err(ApiError::InvalidRequest(format!("unknown status {s:?}")));
        }
    }
    Ok((q.status, q.limit.unwrap_or(100).clamp(1, 500)))
}

/// Ids of signing requests and policy changes are short; a longer one is unknown, and
/// echoed back only in part.
pub(crate) fn check_pending_id(id: &str) -> Result<(), ApiError> {
    if id.len() > 64 {
        return Err(ApiError::UnknownRequest(id.chars().take(64).collect()));
    }
    Ok(())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct DecisionBody {
    #[serde(default)]
    pub(crate) comment: String,
}

impl DecisionBody {
    pub(crate) fn check(&self, approve: bool) -> Result<(), ApiError> {
        if self.comment.len() > 1000 {
            return Err(ApiError::InvalidRequest(
                "comment is at most 1000 characters".into(),
            ));
        }
        if !approve && self.comment.trim().is_empty() {
            return Err(ApiError::InvalidRequest(
                "a rejection needs a comment".into(),
            ));
        }
        Ok(())
    }
}
