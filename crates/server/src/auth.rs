//! The extractor that turns a bearer token into a `Principal`: the only way a handler
//! learns who is calling.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use influxion_auth::AuthError;
use influxion_core::{Actor, Principal};
use influxion_store::{AuditEvent, Outcome};

use crate::{ApiError, AppState};

pub struct Authenticated(pub Principal);

/// An authenticated caller together with what its matched subjects allow.
pub struct Caller {
    pub principal: Principal,
    pub perms: influxion_core::Permissions,
    /// The caller as audit records name it: identity and display label.
    pub actor: Actor,
}

impl Caller {
    /// The caller as signing requests, approvals and policy changes name it.
    pub fn person(&self) -> Actor {
        self.principal.actor(&self.perms.subjects)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Authenticated(principal) = Authenticated::from_request_parts(parts, state).await?;
        let perms = state.store.permissions(&principal).await?;
        let actor = principal.audit_actor(&perms.subjects);
        Ok(Caller {
            principal,
            perms,
            actor,
        })
    }
}

/// Longest request path kept in an audit record.
const MAX_AUDIT_TARGET: usize = 256;

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn bearer(parts: &Parts) -> Result<&str, AuthError> {
    let mut all = parts.headers.get_all(header::AUTHORIZATION).iter();
    let value = all.next().ok_or(AuthError::Missing)?;
    // Two credentials: which one a proxy or this server would pick is not defined,
    // so neither is used (RFC 6750 section 3.1, invalid_request).
    if all.next().is_some() {
        return Err(AuthError::InvalidRequest(
            "the request carries more than one Authorization header",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| AuthError::Malformed("authorization header is not ASCII"))?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed(
        "authorization header is not 'Bearer <token>'",
    ))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Missing);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token)
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let result = match bearer(parts) {
            Ok(token) => state.validator.validate(token).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(p) => Ok(Authenticated(p)),
            Err(e) => {
                state.metrics.token_refused(e.slug());
                // Refusals are audited too (rate-limited); the token itself never is.
                match state.refusals.admit() {
                    Some(suppressed) => {
                        let event = AuditEvent::new(
                            Actor::id_only("anonymous"),
                            "authenticate",
                            Outcome::Refused,
                        )
                        .target(truncate(parts.uri.path(), MAX_AUDIT_TARGET))
                        .detail(serde_json::json!({
                            "method": parts.method.as_str(),
                            "reason": e.slug(),
                            "suppressed_before": suppressed,
                        }));
                        if let Err(err) = state.store.audit(event).await {
                            tracing::error!(error = %err, "could not audit a refused request");
                        }
                    }
                    None => tracing::warn!(
                        reason = e.slug(),
                        "refused request not audited (rate limit)"
                    ),
                }
                Err(ApiError::Auth(e))
            }
        }
    }
}
