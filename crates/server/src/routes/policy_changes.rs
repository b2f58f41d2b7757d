//! Changes that weaken a key's policy, decided like signing requests: proposed by a
//! key-admin, approved by the key's approvers under the quorum in force when proposed,
//! applied (and audited) by the store in the transaction of the completing vote.

use axum::extract::{Path, Query, State};
use axum::Json;
use influxion_api::{ChangeList, ChangeView, PendingChange};
use influxion_core::{KeyPolicy, Role, Weakening};
use influxion_store::{AuditEvent, Decision, KeyRecord, Outcome, PolicyChange, RequestOutcome};

use super::pending::{self, DecisionBody};
use super::{audited, now_unix};
use crate::extract::JsonBody;
use crate::{ApiError, AppState, Caller};

pub(crate) async fn propose(
    st: &AppState,
    c: &Caller,
    key: &KeyRecord,
    policy: KeyPolicy,
    weakens: Vec<Weakening>,
    reason: String,
) -> Result<PendingChange, ApiError> {
    let id = super::new_id();
    let base = &key.policy;
    let expires_at = now_unix() + base.approval_ttl_secs as i64;
    let change = PolicyChange {
        id: id.clone(),
        key_id: key.id.clone(),
        key_name: key.name.to_string(),
        requester: c.person(),
        reason: reason.clone(),
        base_policy: base.clone(),
        policy: policy.clone(),
        weakens: weakens.clone(),
        quorum: base.approvals_required,
        approver_subjects: base.approver_subjects.clone(),
        status: "pending".into(),
        created_at: influxion_store::now_rfc3339(),
        expires_at,
        finished_at: None,
        approvals: Vec::new(),
    };
    let event = AuditEvent::new(c.actor.clone(), "key.policy_change.create", Outcome::Ok)
        .target(key.name.to_string())
        .detail(serde_json::json!({
            "change": id,
            "before": base,
            "after": policy,
            "weakens": weakens,
            "reason": reason,
            "quorum": base.approvals_required,
        }));
    st.store.create_policy_change(change, event).await?;
    Ok(PendingChange {
        location: format!("/v1/policy-changes/{id}"),
        change_id: id,
        status: "pending".into(),
        quorum: base.approvals_required,
        expires_at,
        weakens,
    })
}

/// A change as one caller sees it.
fn view(c: &Caller, mut ch: PolicyChange) -> ChangeView {
    let me = c.principal.identity();
    if ch.status == "pending" && now_unix() > ch.expires_at {
        ch.status = "expired".into();
    }
    let decided = ch.approvals.iter().any(|a| a.approver.id == me);
    let can_decide =
        ch.status == "pending" && ch.requester.id != me && !decided && may_approve(c, &ch);
    ChangeView {
        approvals_count: ch.approvals_count(),
        is_requester: ch.requester.id == me,
        can_decide,
        id: ch.id,
        key_id: ch.key_id,
        key_name: ch.key_name,
        requester: ch.requester,
        reason: ch.reason,
        base_policy: ch.base_policy,
        policy: ch.policy,
        weakens: ch.weakens,
        quorum: ch.quorum,
        approver_subjects: ch.approver_subjects,
        status: ch.status,
        created_at: ch.created_at,
        expires_at: ch.expires_at,
        finished_at: ch.finished_at,
        approvals: super::approvals(ch.approvals),
    }
}

/// The same rule as for the key's signing requests, under the policy the change
/// would replace.
fn may_approve(c: &Caller, ch: &PolicyChange) -> bool {
    pending::may_approve(c, &ch.key_name, &ch.approver_subjects)
}

fn may_see(c: &Caller, ch: &PolicyChange) -> bool {
    ch.requester.id == c.principal.identity()
        || c.perms.has_role(Role::Auditor)
        || c.perms.allows(Role::KeyAdmin, &ch.key_name)
        || may_approve(c, ch)
}

pub(crate) async fn list(
    State(st): State<AppState>,
    c: Caller,
    q: Result<Query<pending::PendingListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ChangeList>, ApiError> {
    super::require_any(&c)?;
    let (status, limit) = pending::pending_list_params(
        q,
        &["pending", "applied", "rejected", "expired", "superseded"],
    )?;
    let changes = st
        .store
        .list_policy_changes(status.as_deref(), limit)
        .await?
        .into_iter()
        .filter(|ch| may_see(&c, ch))
        .map(|ch| view(&c, ch))
        .collect();
    Ok(Json(ChangeList { changes }))
}

async fn visible(st: &AppState, c: &Caller, id: &str) -> Result<PolicyChange, ApiError> {
    pending::check_pending_id(id)?;
    match st.store.get_policy_change(id).await? {
        Some(ch) if may_see(c, &ch) => Ok(ch),
        _ => Err(ApiError::UnknownRequest(id.to_owned())),
    }
}

pub(crate) async fn show(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<ChangeView>, ApiError> {
    super::require_any(&c)?;
    Ok(Json(view(&c, visible(&st, &c, &id).await?)))
}

async fn decide(
    st: &AppState,
    c: &Caller,
    id: &str,
    approve: bool,
    body: Result<JsonBody<DecisionBody>, ApiError>,
) -> Result<Json<ChangeView>, ApiError> {
    let action = if approve {
        "key.policy_change.approve"
    } else {
        "key.policy_change.reject"
    };
    let p = &c.principal;
    audited(st, &c.actor, action, id, async {
        let JsonBody(body) = body?;
        body.check(approve)?;
        super::require_any(c)?;
        pending::check_pending_id(id)?;
        let ch = st
            .store
            .get_policy_change(id)
            .await?
            .ok_or_else(|| ApiError::UnknownRequest(id.to_owned()))?;
        let me = p.identity();
        if ch.requester.id == me {
            return Err(ApiError::SelfApproval);
        }
        if !may_approve(c, &ch) {
            return Err(super::forbidden(
                &c.perms,
                "deciding on this policy change needs the approver role on its key (and to be one of its approver subjects)",
            ));
        }
        let event = AuditEvent::new(c.actor.clone(), action, Outcome::Ok)
            .target(id.to_owned())
            .detail(serde_json::json!({"key": ch.key_name, "comment": body.comment}));
        let d = Decision {
            request_id: id.to_owned(),
            approver: c.person(),
            approve,
            comment: body.comment.clone(),
            now: now_unix(),
            signature: None,
            signed_with: Default::default(),
        };
        let applied = st.store.decide_policy_change(d, event).await?;
        if applied.outcome == Some(RequestOutcome::Expired) {
            return Err(ApiError::RequestExpired);
        }
        let ch = st
            .store
            .get_policy_change(id)
            .await?
            .ok_or_else(|| ApiError::UnknownRequest(id.to_owned()))?;
        Ok(Json(view(c, ch)))
    })
    .await
}

pub(crate) async fn approve(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
    body: Result<JsonBody<DecisionBody>, ApiError>,
) -> Result<Json<ChangeView>, ApiError> {
    decide(&st, &c, &id, true, body).await
}

pub(crate) async fn reject(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
    body: Result<JsonBody<DecisionBody>, ApiError>,
) -> Result<Json<ChangeView>, ApiError> {
    decide(&st, &c, &id, false, body).await
}
