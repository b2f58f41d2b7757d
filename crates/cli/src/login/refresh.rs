//! A cached sign-in: refreshed before it expires (spending the refresh token once,
//! keeping a rotated one), and revoked at logout.

use anyhow::Result;

use super::{auth_failure, now, token_request, AuthFailure};
use crate::profiles::CachedToken;

/// A fresh access token from the cached refresh token.
pub async fn refresh(http: &reqwest::Client, t: &CachedToken) -> Result<CachedToken> {
    let rt = t
        .refresh_token
        .as_deref()
        .ok_or_else(|| auth_failure("the sign-in has expired: run `influxion login`"))?;
    let r = token_request(
        http,
        &t.token_endpoint,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("client_id", &t.client_id),
            ("scope", &t.scope),
        ],
    )
    .await
    .map_err(|e| match e.downcast_ref::<AuthFailure>() {
        Some(_) => auth_failure(format!("{e}; run `influxion login` again")),
        None => e,
    })?;
    let mut next = t.clone();
    next.access_token = r.access_token.clone();
    next.expires_at = now() + r.expires_in.unwrap_or(3600).clamp(0, 24 * 3600);
    if let Some(s) = &r.scope {
        next.scope = s.clone();
    }
    if let Some(rt) = &r.refresh_token {
        // Rotating providers hand out a new one; the old is spent.
        next.refresh_token = Some(rt.clone());
    }
    Ok(next)
}

/// Whether a cached access token is still good for a while.
pub fn fresh(t: &CachedToken) -> bool {
    t.expires_at - now() > 60
}

/// Revoke the refresh token at the provider, where it offers revocation (best effort).
pub async fn revoke(http: &reqwest::Client, t: &CachedToken) {
    if let (Some(endpoint), Some(rt)) = (&t.revocation_endpoint, &t.refresh_token) {
        let _ = http
            .post(endpoint)
            .form(&[
                ("token", rt.as_str()),
                ("token_type_hint", "refresh_token"),
                ("client_id", t.client_id.as_str()),
            ])
            .send()
            .await;
    }
}
