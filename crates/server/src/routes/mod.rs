pub(crate) mod keys;
mod pending;
pub(crate) mod pki;
pub(crate) mod policy_changes;
pub(crate) mod requests;
pub(crate) mod sign;
pub(crate) mod subjects;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use influxion_core::{Permissions, Principal, Role};
use influxion_store::{AuditEvent, AuditRecord, ChainReport, Outcome};
use serde::{Deserialize, Serialize};

use crate::{ApiError, AppState, Caller};

pub(crate) async fn healthz() -> &'static str {
    "ok"
}

pub(crate) async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::OPENAPI_JSON,
    )
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::NotFound
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Who Influxion thinks the caller is, and what it may do. The one endpoint open to a
/// valid token that matches no subject.
#[derive(Serialize)]
pub(crate) struct Me {
    principal: Principal,
    principal_id: String,
    subjects: Vec<String>,
    grants: Vec<influxion_core::Grant>,
    /// Roles held on at least one name, for clients that hide what the caller may not do.
    roles: Vec<Role>,
}

pub(crate) async fn me(c: Caller) -> Json<Me> {
    let roles = Role::ALL
        .into_iter()
        .filter(|r| c.perms.has_role(*r))
        .collect();
    Json(Me {
        principal_id: c.principal.audit_id(),
        principal: c.principal,
        subjects: c.perms.subjects,
        grants: c.perms.grants,
        roles,
    })
}

/// Refuse unless the caller holds `role` on `name`, recording the refusal.
pub(crate) async fn require(
    st: &AppState,
    c: &Caller,
    role: Role,
    name: &str,
    action: &str,
) -> Result<(), ApiError> {
    if c.perms.allows(role, name) {
        return Ok(());
    }
    let e = forbidden(
        &c.perms,
        &format!("{action} on {name} needs the {role} role"),
    );
    refused(st, &c.principal, action, name, &e).await;
    Err(e)
}

/// Refuse callers that matched no subject with any grant (deny by default).
pub(crate) fn require_any(c: &Caller) -> Result<(), ApiError> {
    if c.perms.any() {
        Ok(())
    } else {
        Err(forbidden(&c.perms, "this needs a role"))
    }
}

pub(crate) fn forbidden(perms: &Permissions, what: &str) -> ApiError {
    if perms.subjects.is_empty() {
        ApiError::Forbidden(format!(
            "{what}; the caller matches no subject (see GET /v1/me)"
        ))
    } else {
        ApiError::Forbidden(format!(
            "{what}; subjects matched: {}",
            perms.subjects.join(", ")
        ))
    }
}

/// Append a refusal to the audit log.
pub(crate) async fn refused(
    st: &AppState,
    p: &Principal,
    action: &str,
    target: &str,
    e: &ApiError,
) {
    let outcome = if e.status().is_server_error() {
        Outcome::Error
    } else {
        Outcome::Refused
    };
    let actor = p.audit_id();
    // Any valid token holder could loop a refused call: the same bound as anonymous
    // refusals, per principal and overall, with the suppressed counts carried forward.
    let Some(admitted) = st.refusals.admit_principal(&actor) else {
        tracing::warn!(
            action,
            reason = e.slug(),
            "refusal not audited (rate limit)"
        );
        return;
    };
    // Targets come from request paths: keep records small whatever the caller sends.
    let target: String = target.chars().take(256).collect();
    let event = AuditEvent::new(actor, action, outcome)
        .target(target)
        .detail(serde_json::json!({
            "reason": e.slug(),
            "status": e.status().as_u16(),
            "suppressed_before": admitted.suppressed_before,
            "suppressed_total": admitted.suppressed_total,
        }));
    if let Err(err) = st.store.audit(event).await {
        tracing::error!(error = %err, "could not audit a refusal");
    }
}

/// Run `f`; if it fails, audit the refusal before returning the error.
pub(crate) async fn audited<T>(
    st: &AppState,
    p: &Principal,
    action: &str,
    target: &str,
    f: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let r = f.await;
    if let Err(e) = &r {
        refused(st, p, action, target, e).await;
    }
    r
}

#[derive(Deserialize)]
pub(crate) struct AuditQuery {
    limit: Option<u32>,
    /// Re-verify the whole chain instead of only what was appended since the last check.
    full: Option<bool>,
}

#[derive(Serialize)]
pub(crate) struct AuditPage {
    chain: ChainReport,
    records: Vec<AuditRecord>,
}

pub(crate) async fn audit(
    State(st): State<AppState>,
    c: Caller,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    if !c.perms.has_role(Role::Auditor) {
        let e = forbidden(&c.perms, "reading the audit log needs the auditor role");
        refused(&st, &c.principal, "audit.read", "audit", &e).await;
        return Err(e);
    }
    let Query(q) = q.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let records = st.store.recent_audit(limit).await?;
    let chain = if q.full.unwrap_or(false) {
        st.store.verify_audit_chain().await?
    } else {
        st.store.verify_audit_chain_incremental().await?
    };
    let read = st
        .store
        .audit(AuditEvent::new(c.principal.audit_id(), "audit.read", Outcome::Ok).target("audit"))
        .await;
    match read {
        Ok(_) => {}
        // A damaged log refuses writes; the page saying where it broke is what the
        // auditor needs, so it is not replaced by an internal error.
        Err(influxion_store::StoreError::ChainHeadMismatch(_))
            if matches!(chain, ChainReport::Broken { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Json(AuditPage { chain, records }))
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Approvers' decisions as the API shows them.
pub(crate) fn approvals(
    records: Vec<influxion_store::ApprovalRecord>,
) -> Vec<influxion_api::Approval> {
    records
        .into_iter()
        .map(|a| influxion_api::Approval {
            approver: a.approver,
            decision: a.decision,
            comment: a.comment,
            at: a.at,
        })
        .collect()
}
