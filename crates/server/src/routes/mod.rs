pub mod keys;
pub mod sign;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use influxion_store::{AuditEvent, AuditRecord, ChainReport, Outcome};
use serde::{Deserialize, Serialize};

use crate::{ApiError, AppState, Authenticated};

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::OPENAPI_JSON,
    )
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[derive(Serialize)]
pub struct Me {
    principal: influxion_core::Principal,
    admin: bool,
}

pub async fn me(State(st): State<AppState>, Authenticated(p): Authenticated) -> Json<Me> {
    let admin = p.has_role(&st.policy.admin_role);
    Json(Me {
        principal: p,
        admin,
    })
}

/// Refuse callers without the admin role, recording the refusal.
pub(crate) async fn require_admin(
    st: &AppState,
    p: &influxion_core::Principal,
    action: &str,
    target: &str,
) -> Result<(), ApiError> {
    if p.has_role(&st.policy.admin_role) {
        return Ok(());
    }
    let e = ApiError::Forbidden(format!(
        "{action} needs the {} app role",
        st.policy.admin_role
    ));
    refused(st, p, action, target, &e).await;
    Err(e)
}

/// Append a refusal to the audit log.
pub(crate) async fn refused(
    st: &AppState,
    p: &influxion_core::Principal,
    action: &str,
    target: &str,
    e: &ApiError,
) {
    let outcome = if e.status().is_server_error() {
        Outcome::Error
    } else {
        Outcome::Refused
    };
    let event = AuditEvent::new(p.audit_id(), action, outcome)
        .target(target)
        .detail(serde_json::json!({"reason": e.slug(), "status": e.status().as_u16()}));
    if let Err(err) = st.store.audit(event).await {
        tracing::error!(error = %err, "could not audit a refusal");
    }
}

#[derive(Deserialize)]
pub struct AuditQuery {
    limit: Option<u32>,
}

#[derive(Serialize)]
pub struct AuditPage {
    chain: ChainReport,
    records: Vec<AuditRecord>,
}

pub async fn audit(
    State(st): State<AppState>,
    Authenticated(p): Authenticated,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    require_admin(&st, &p, "audit.read", "audit").await?;
    let Query(q) = q.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let records = st.store.recent_audit(limit).await?;
    let chain = st.store.verify_audit_chain().await?;
    st.store
        .audit(AuditEvent::new(p.audit_id(), "audit.read", Outcome::Ok).target("audit"))
        .await?;
    Ok(Json(AuditPage { chain, records }))
}
