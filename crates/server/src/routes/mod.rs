pub(crate) mod audit;
pub(crate) mod keys;
mod pending;
pub(crate) mod pki;
pub(crate) mod policy_changes;
pub(crate) mod requests;
pub(crate) mod sign;
pub(crate) mod subjects;

use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use influxion_core::{Actor, Permissions, Principal, Role};
use influxion_store::{AuditEvent, Outcome};
use serde::Serialize;

use crate::rate_limit::Operation;
use crate::{ApiError, AppState, Caller};

pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// Ready to serve: the database answers, the identity provider's signing keys are held
/// (tokens can be checked) and every configured key backend can use a key it holds (one
/// stored key each, as at start). Unauthenticated, for load
/// balancers: states only; the reasons go to the log. `/healthz` stays process-only.
pub(crate) async fn readyz(
    axum::extract::State(st): axum::extract::State<AppState>,
) -> impl IntoResponse {
    use axum::http::StatusCode;
    let mut ready = true;
    let mut backends = serde_json::Map::new();
    let keys = match st.store.list_keys().await {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: the database does not answer");
            ready = false;
            None
        }
    };
    for name in st.backends.names() {
        let state = match keys
            .as_ref()
            .and_then(|ks| ks.iter().find(|k| k.backend == name))
        {
            None if keys.is_none() => "unknown",
            None => "ok (no keys)",
            Some(k) => match st.backends.check(k).await {
                Ok(()) => "ok",
                Err(e) => {
                    tracing::warn!(backend = name, error = %e, "readiness: key backend not usable");
                    ready = false;
                    match e {
                        influxion_core::BackendError::Unavailable(_) => "unavailable",
                        influxion_core::BackendError::Refused(_) => "refused",
                        _ => "failing",
                    }
                }
            },
        };
        backends.insert(name.to_owned(), serde_json::Value::from(state));
    }
    let database = if keys.is_some() { "ok" } else { "unavailable" };
    // Without the provider's keys no token can be checked; cached keys keep counting
    // while the provider is down, up to their maximum age.
    let jwks = if st.validator.keys_usable() {
        "ok"
    } else {
        tracing::warn!("readiness: the identity provider's signing keys are not held");
        ready = false;
        "unavailable"
    };
    if ready {
        let body = serde_json::json!({"status": "ready", "database": database, "jwks": jwks, "backends": backends});
        return (StatusCode::OK, Json(body)).into_response();
    }
    // Every error answer is a problem document; the states are extension members.
    let body = serde_json::json!({
        "type": "https://influxion.dev/problems/not-ready",
        "title": "Not ready",
        "status": 503,
        "detail": "the database, the identity provider's keys or a key backend is not usable (the keyserver's log says why)",
        "database": database,
        "jwks": jwks,
        "backends": backends,
    });
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
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
    /// The caller as audit records will name it.
    actor: Actor,
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
        actor: c.actor,
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
    refused(st, &c.actor, action, name, &e).await;
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

/// Take one `op` from the rate limits of the caller's subjects that allow it (`role`
/// on `name`, or admin). Called after authentication and the permission check, before
/// the key is used; a refusal is a 429 `rate-limited`, audited by the caller's
/// `audited` block through the refusal budget like any other.
pub(crate) async fn rate_limit(
    st: &AppState,
    c: &Caller,
    op: Operation,
    role: Role,
    name: &str,
) -> Result<(), ApiError> {
    if !st.rate_limits.limits(op) {
        return Ok(());
    }
    let subjects = st.store.subjects().await?;
    let charged = subjects.iter().filter(|s| {
        c.perms.subjects.contains(&s.name)
            && Permissions {
                subjects: Vec::new(),
                grants: s.grants.clone(),
            }
            .allows(role, name)
    });
    st.rate_limits.check(op, charged).map_err(|l| {
        st.metrics.rate_limited(op.as_str());
        ApiError::RateLimited {
            subject: l.subject,
            counted: op.counted(),
            per_minute: l.per_minute,
            retry_after_secs: l.retry_after_secs,
        }
    })
}

/// Append a refusal to the audit log.
pub(crate) async fn refused(
    st: &AppState,
    actor: &Actor,
    action: &str,
    target: &str,
    e: &ApiError,
) {
    let outcome = if e.status().is_server_error() {
        Outcome::Error
    } else {
        Outcome::Refused
    };
    // Any valid token holder could loop a refused call: the same bound as anonymous
    // refusals, per principal and overall, with the suppressed counts carried forward.
    let Some(admitted) = st.refusals.admit_principal(&actor.id) else {
        tracing::warn!(
            action,
            reason = e.slug(),
            "refusal not audited (rate limit)"
        );
        return;
    };
    // Targets come from request paths: keep records small whatever the caller sends.
    let target: String = target.chars().take(256).collect();
    let event = AuditEvent::new(actor.clone(), action, outcome)
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
    actor: &Actor,
    action: &str,
    target: &str,
    f: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let r = f.await;
    if let Err(e) = &r {
        refused(st, actor, action, target, e).await;
    }
    r
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
