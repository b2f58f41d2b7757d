//! How the CLI obtains access tokens, one module per flow: a person signing in
//! ([`pkce`]: Authorization Code with PKCE on a loopback redirect, RFC 8252; [`device`]:
//! the device authorization grant, RFC 8628), [`refresh`] of a cached sign-in, and the
//! confidential clients of pipelines ([`client_credentials`], with a secret or a
//! [`assertion`] made from a certificate or a [`federated`] token). What they share —
//! the provider's metadata, the token request and its refusals — is here.

mod assertion;
mod client_credentials;
mod device;
mod federated;
mod pkce;
mod refresh;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use rand::RngCore;
use serde::Deserialize;
use zeroize::Zeroizing;

pub use assertion::{client_assertion, JWT_BEARER};
pub use client_credentials::{client_credentials, ClientAuth};
pub use device::login_device;
pub use federated::Federated;
pub use pkce::login_pkce;
pub use refresh::{fresh, refresh, revoke};

use crate::profiles::CachedToken;

/// The parts of the provider's metadata the CLI uses.
#[derive(Clone, Deserialize)]
pub struct Metadata {
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: String,
    pub device_authorization_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
}

pub async fn discover(http: &reqwest::Client, metadata_url: &str) -> Result<Metadata> {
    let ctx = || format!("fetching the OpenID Connect metadata from {metadata_url}");
    let md: Metadata = http
        .get(metadata_url)
        .send()
        .await
        .with_context(ctx)?
        .error_for_status()
        .with_context(ctx)?
        .json()
        .await
        .context("the OpenID Connect metadata document does not parse")?;
    // Codes, secrets, assertions and refresh tokens go to these: https only (loopback
    // excepted, for development and tests).
    for e in [
        Some(&md.token_endpoint),
        md.authorization_endpoint.as_ref(),
        md.device_authorization_endpoint.as_ref(),
        md.revocation_endpoint.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        if !secure_url(e) {
            bail!("the provider's metadata names {e}: endpoints must be https:// (or loopback)");
        }
    }
    Ok(md)
}

fn secure_url(u: &str) -> bool {
    url::Url::parse(u).is_ok_and(|u| {
        u.scheme() == "https" || (u.scheme() == "http" && crate::urls::is_loopback(&u))
    })
}

/// The sign-in could not be completed or was refused: exit code 4.
#[derive(Debug)]
pub struct AuthFailure(pub String);

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AuthFailure {}

pub fn auth_failure(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(AuthFailure(msg.into()))
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    refresh_token: Option<String>,
    expires_in: Option<i64>,
    /// What was granted; asked for again, exactly, on refresh (providers refuse a
    /// refresh asking for more than the grant holds).
    scope: Option<String>,
}

/// An OAuth error response (RFC 6749 5.2); either field may be missing.
#[derive(Deserialize, Default)]
struct OAuthError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

impl OAuthError {
    /// The error of a refused request; an unreadable body names nothing.
    async fn of(resp: reqwest::Response) -> Self {
        resp.json().await.unwrap_or_default()
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn random(n: usize) -> String {
    let mut b = Zeroizing::new(vec![0u8; n]);
    rand::rngs::OsRng.fill_bytes(&mut b);
    B64URL.encode(&*b)
}

/// POST a token request; an OAuth error becomes an [`AuthFailure`] naming it.
async fn token_request(
    http: &reqwest::Client,
    endpoint: &str,
    form: &[(&str, &str)],
) -> Result<TokenResponse> {
    let resp = http
        .post(endpoint)
        .form(form)
        .send()
        .await
        .with_context(|| format!("requesting a token from {endpoint}"))?;
    let status = resp.status();
    if !status.is_success() {
        let e = OAuthError::of(resp).await;
        return Err(auth_failure(format!(
            "the identity provider refused ({status}): {} {}",
            e.error, e.error_description
        )));
    }
    resp.json()
        .await
        .context("the token response does not parse")
}

/// What a person's sign-in needs.
pub struct LoginParams<'a> {
    pub metadata_url: &'a str,
    pub client_id: &'a str,
    pub scope: &'a str,
    /// `http://127.0.0.1[:port]/path`; without a port, an ephemeral one.
    pub redirect_uri: &'a str,
    pub open_browser: bool,
    pub timeout: Duration,
}

fn cached(md: &Metadata, p: &LoginParams<'_>, t: TokenResponse) -> CachedToken {
    CachedToken {
        access_token: t.access_token.clone(),
        expires_at: now() + t.expires_in.unwrap_or(3600).clamp(0, 24 * 3600),
        refresh_token: t.refresh_token.clone(),
        token_endpoint: md.token_endpoint.clone(),
        revocation_endpoint: md.revocation_endpoint.clone(),
        client_id: p.client_id.to_owned(),
        scope: t.scope.clone().unwrap_or_else(|| p.scope.to_owned()),
        metadata_url: p.metadata_url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_https_beyond_loopback() {
        for ok in [
            "https://login.microsoftonline.com/t/oauth2/v2.0/token",
            "http://127.0.0.1:8401/token",
            "http://localhost/token",
            "http://[::1]:9/token",
        ] {
            assert!(secure_url(ok), "{ok}");
        }
        for bad in [
            "http://idp.example.com/token",
            "ftp://x/",
            "not a url",
            "http://10.0.0.1/t",
        ] {
            assert!(!secure_url(bad), "{bad}");
        }
    }
}
