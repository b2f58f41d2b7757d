//! The device authorization grant (RFC 8628), for equipment without a browser.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use super::{auth_failure, cached, discover, LoginParams, OAuthError, TokenResponse};
use crate::profiles::CachedToken;

#[derive(Deserialize)]
struct DeviceAuthorization {
    device_code: String,
    user_code: String,
    verification_uri: String,
    verification_uri_complete: Option<String>,
    expires_in: u64,
    interval: Option<u64>,
}

/// The device authorization grant, for equipment without a browser.
pub async fn login_device(http: &reqwest::Client, p: &LoginParams<'_>) -> Result<CachedToken> {
    let md = discover(http, p.metadata_url).await?;
    let endpoint = md.device_authorization_endpoint.clone().ok_or_else(|| {
        auth_failure(
            "the provider does not offer the device code flow (no device_authorization_endpoint)",
        )
    })?;
    let resp = http
        .post(&endpoint)
        .form(&[("client_id", p.client_id), ("scope", p.scope)])
        .send()
        .await
        .with_context(|| format!("calling {endpoint}"))?;
    if !resp.status().is_success() {
        let e = OAuthError::of(resp).await;
        return Err(auth_failure(format!(
            "the provider refused the device authorization: {} {}",
            e.error, e.error_description
        )));
    }
    let d: DeviceAuthorization = resp
        .json()
        .await
        .context("the device authorization does not parse")?;
    eprintln!(
        "To sign in, open {} and enter the code {}",
        d.verification_uri, d.user_code
    );
    if let Some(u) = &d.verification_uri_complete {
        eprintln!("  (or open {u})");
    }
    let mut interval = Duration::from_secs(d.interval.unwrap_or(5).clamp(1, 60));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(d.expires_in).min(p.timeout);
    loop {
        tokio::time::sleep(interval).await;
        if tokio::time::Instant::now() > deadline {
            return Err(auth_failure(
                "the device code expired before the sign-in completed",
            ));
        }
        let resp = http
            .post(&md.token_endpoint)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", d.device_code.as_str()),
                ("client_id", p.client_id),
            ])
            .send()
            .await
            .with_context(|| format!("polling {}", md.token_endpoint))?;
        if resp.status().is_success() {
            let t: TokenResponse = resp
                .json()
                .await
                .context("the token response does not parse")?;
            return Ok(cached(&md, p, t));
        }
        let e = OAuthError::of(resp).await;
        match e.error.as_str() {
            "authorization_pending" => {}
            // RFC 8628 3.5: back off by 5 seconds.
            "slow_down" => interval += Duration::from_secs(5),
            other => {
                return Err(auth_failure(format!(
                    "the device sign-in failed: {other} {}",
                    e.error_description
                )))
            }
        }
    }
}
