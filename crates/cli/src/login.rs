//! How the CLI obtains access tokens: a person signing in (Authorization Code with
//! PKCE on a loopback redirect, RFC 8252, or the device authorization grant, RFC 8628),
//! refresh of a cached sign-in, and the confidential-client assertions of pipelines
//! (private_key_jwt with a certificate; workload identity federation).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

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
        u.scheme() == "https"
            || (u.scheme() == "http"
                && match u.host() {
                    Some(url::Host::Ipv4(a)) => a.is_loopback(),
                    Some(url::Host::Ipv6(a)) => a.is_loopback(),
                    Some(url::Host::Domain(d)) => d == "localhost",
                    None => false,
                })
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
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        return Err(auth_failure(format!(
            "the identity provider refused ({status}): {} {}",
            body["error"].as_str().unwrap_or(""),
            body["error_description"].as_str().unwrap_or("")
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

/// Authorization Code + PKCE (S256) with `state`, on a loopback listener that accepts
/// exactly one valid callback and then closes.
pub async fn login_pkce(http: &reqwest::Client, p: &LoginParams<'_>) -> Result<CachedToken> {
    let md = discover(http, p.metadata_url).await?;
    let authorize = md
        .authorization_endpoint
        .clone()
        .context("the provider's metadata has no authorization_endpoint")?;
    let mut redirect = url::Url::parse(p.redirect_uri)
        .with_context(|| format!("redirect URI {:?}", p.redirect_uri))?;
    let loopback = matches!(
        redirect.host_str(),
        Some("127.0.0.1" | "localhost" | "[::1]")
    );
    if redirect.scheme() != "http" || !loopback {
        bail!("the redirect URI must be http://127.0.0.1[:port]/path (RFC 8252 loopback)");
    }
    let ip: std::net::IpAddr = if redirect.host_str() == Some("[::1]") {
        std::net::Ipv6Addr::LOCALHOST.into()
    } else {
        std::net::Ipv4Addr::LOCALHOST.into()
    };
    let listener = tokio::net::TcpListener::bind((ip, redirect.port().unwrap_or(0)))
        .await
        .context("binding the loopback redirect listener")?;
    let port = listener.local_addr()?.port();
    redirect
        .set_port(Some(port))
        .map_err(|_| anyhow!("cannot set the redirect port"))?;
    let redirect_uri = redirect.to_string();

    let verifier = Zeroizing::new(random(32));
    let challenge = B64URL.encode(Sha256::digest(verifier.as_bytes()));
    let state = random(16);
    let mut url = url::Url::parse(&authorize).context("authorization_endpoint")?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", p.client_id)
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("scope", p.scope)
        .append_pair("state", &state)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");

    let (tx, rx) = tokio::sync::oneshot::channel::<Result<String, String>>();
    let slot = Arc::new(Mutex::new(Some(tx)));
    let expected = Arc::new(state);
    let path = redirect.path().to_owned();
    let app = axum::Router::new().route(
        &path,
        axum::routing::get(
            move |q: axum::extract::Query<std::collections::HashMap<String, String>>| {
                let slot = slot.clone();
                let expected = expected.clone();
                async move { callback(&q.0, &expected, &slot) }
            },
        ),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });

    eprintln!("Sign in at:\n  {url}");
    if p.open_browser {
        // Best effort: with no browser, the person opens the URL printed above.
        let _ = std::process::Command::new("xdg-open")
            .arg(url.as_str())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    eprintln!("Waiting for the sign-in to come back to {redirect_uri} …");
    let outcome = tokio::time::timeout(p.timeout, rx).await;
    let _ = stop_tx.send(());
    let _ = server.await;
    let code = match outcome {
        Err(_) => return Err(auth_failure("the sign-in did not come back in time")),
        Ok(Err(_)) => return Err(auth_failure("the loopback listener stopped")),
        Ok(Ok(Err(e))) => {
            return Err(auth_failure(format!(
                "the provider refused the sign-in: {e}"
            )))
        }
        Ok(Ok(Ok(code))) => Zeroizing::new(code),
    };
    let t = token_request(
        http,
        &md.token_endpoint,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &redirect_uri),
            ("client_id", p.client_id),
            ("code_verifier", &verifier),
        ],
    )
    .await?;
    Ok(cached(&md, p, t))
}

type Slot = Mutex<Option<tokio::sync::oneshot::Sender<Result<String, String>>>>;

/// One callback request. A wrong `state` is refused and the listener keeps waiting (it
/// may be someone else's request); the first valid one ends the wait; later ones are
/// refused.
fn callback(
    q: &std::collections::HashMap<String, String>,
    expected: &str,
    slot: &Slot,
) -> (axum::http::StatusCode, &'static str) {
    use axum::http::StatusCode;
    let state_ok = q
        .get("state")
        .is_some_and(|s| bool::from(s.as_bytes().ct_eq(expected.as_bytes())));
    if !state_ok {
        return (
            StatusCode::BAD_REQUEST,
            "Refused: this sign-in response does not match the sign-in started by influxion login.\n",
        );
    }
    let mut slot = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(tx) = slot.take() else {
        return (
            StatusCode::BAD_REQUEST,
            "Refused: this sign-in has already completed.\n",
        );
    };
    let result = match (q.get("code"), q.get("error")) {
        (_, Some(e)) => Err(format!(
            "{e} {}",
            q.get("error_description").map(String::as_str).unwrap_or("")
        )),
        (Some(c), None) if !c.is_empty() && c.len() <= 4096 => Ok(c.clone()),
        _ => Err("the response carries no code".into()),
    };
    let ok = result.is_ok();
    let _ = tx.send(result);
    if ok {
        (
            StatusCode::OK,
            "Signed in to Influxion. You can close this tab.\n",
        )
    } else {
        (
            StatusCode::BAD_REQUEST,
            "The sign-in failed; see the terminal.\n",
        )
    }
}

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
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        return Err(auth_failure(format!(
            "the provider refused the device authorization: {} {}",
            body["error"].as_str().unwrap_or(""),
            body["error_description"].as_str().unwrap_or("")
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
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        match body["error"].as_str().unwrap_or("") {
            "authorization_pending" => {}
            // RFC 8628 3.5: back off by 5 seconds.
            "slow_down" => interval += Duration::from_secs(5),
            other => {
                return Err(auth_failure(format!(
                    "the device sign-in failed: {other} {}",
                    body["error_description"].as_str().unwrap_or("")
                )))
            }
        }
    }
}

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

// ------------------------------------------------------------------ client assertions

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A private_key_jwt client assertion (RFC 7523): signed with the key of a PEM file that
/// also holds the certificate registered with the provider (Entra ID identifies it by
/// the `x5t#S256`/`x5t` thumbprints).
pub fn client_assertion(pem_text: &str, client_id: &str, token_endpoint: &str) -> Result<String> {
    let blocks = pem::parse_many(pem_text).context("the certificate file is not PEM")?;
    let key = blocks
        .iter()
        .find(|b| b.tag().ends_with("PRIVATE KEY"))
        .context("the certificate file holds no private key")?;
    let cert = blocks.iter().find(|b| b.tag() == "CERTIFICATE");
    let key_pem = Zeroizing::new(pem::encode(key));
    let (alg, enc) = if let Ok(k) = jsonwebtoken::EncodingKey::from_rsa_pem(key_pem.as_bytes()) {
        (jsonwebtoken::Algorithm::RS256, k)
    } else if let Ok(k) = jsonwebtoken::EncodingKey::from_ec_pem(key_pem.as_bytes()) {
        (jsonwebtoken::Algorithm::ES256, k)
    } else {
        bail!("the private key is neither RSA nor EC P-256 (PKCS#8 PEM)");
    };
    let mut header = jsonwebtoken::Header::new(alg);
    if let Some(c) = cert {
        header.x5t_s256 = Some(B64URL.encode(Sha256::digest(c.contents())));
        header.x5t = Some(B64URL.encode(sha1_digest(c.contents())));
    }
    let iat = now();
    let claims = serde_json::json!({
        "iss": client_id,
        "sub": client_id,
        "aud": token_endpoint,
        "jti": uuid::Uuid::new_v4().to_string(),
        "iat": iat,
        "nbf": iat,
        "exp": iat + 300,
    });
    jsonwebtoken::encode(&header, &claims, &enc).context("signing the client assertion")
}

fn sha1_digest(b: &[u8]) -> Vec<u8> {
    use sha1::Digest as _;
    sha1::Sha1::digest(b).to_vec()
}

/// Where a workload identity federation token comes from.
#[derive(Clone)]
pub enum Federated {
    /// A file another system keeps fresh (Kubernetes, GitHub Actions via azure/login).
    File(std::path::PathBuf),
    /// Azure DevOps: the job asks its OIDC endpoint with its own access token.
    AzureDevOps {
        request_uri: String,
        access_token: Zeroizing<String>,
        service_connection_id: String,
    },
}

impl Federated {
    pub async fn token(&self, http: &reqwest::Client) -> Result<Zeroizing<String>> {
        match self {
            Self::File(p) => {
                let t = std::fs::read_to_string(p).with_context(|| {
                    format!("reading AZURE_FEDERATED_TOKEN_FILE {}", p.display())
                })?;
                let t = Zeroizing::new(t.trim().to_owned());
                if t.is_empty() {
                    bail!("AZURE_FEDERATED_TOKEN_FILE {} is empty", p.display());
                }
                Ok(t)
            }
            Self::AzureDevOps {
                request_uri,
                access_token,
                service_connection_id,
            } => {
                let mut url = url::Url::parse(request_uri).context("SYSTEM_OIDCREQUESTURI")?;
                url.query_pairs_mut()
                    .append_pair("api-version", "7.1")
                    .append_pair("serviceConnectionId", service_connection_id);
                let resp = http
                    .post(url)
                    .bearer_auth(access_token.as_str())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    // A bad job token then answers 401, not a sign-in page.
                    .header("X-TFS-FedAuthRedirect", "Suppress")
                    .body("{}")
                    .send()
                    .await
                    .context("requesting the Azure DevOps OIDC token")?;
                let status = resp.status();
                if !status.is_success() {
                    return Err(auth_failure(format!(
                        "Azure DevOps refused the OIDC token request ({status}); is SYSTEM_ACCESSTOKEN mapped into the step's environment?"
                    )));
                }
                #[derive(Deserialize)]
                struct Oidc {
                    #[serde(rename = "oidcToken")]
                    oidc_token: String,
                }
                let o: Oidc = resp
                    .json()
                    .await
                    .context("the Azure DevOps OIDC response does not parse")?;
                Ok(Zeroizing::new(o.oidc_token))
            }
        }
    }
}

/// How a confidential client proves itself at the token endpoint.
pub enum ClientAuth<'a> {
    Secret(&'a str),
    /// A client assertion: a private_key_jwt or a federated token (RFC 7523).
    Assertion(&'a str),
}

/// The client credentials grant (RFC 6749 4.4), with a secret or an assertion.
pub async fn client_credentials(
    http: &reqwest::Client,
    token_endpoint: &str,
    client_id: &str,
    scope: &str,
    auth: ClientAuth<'_>,
) -> Result<Zeroizing<String>> {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("scope", scope),
    ];
    match auth {
        ClientAuth::Secret(s) => form.push(("client_secret", s)),
        ClientAuth::Assertion(a) => {
            form.push(("client_assertion_type", JWT_BEARER));
            form.push(("client_assertion", a));
        }
    }
    let t = token_request(http, token_endpoint, &form)
        .await
        .map_err(|e| match e.downcast_ref::<AuthFailure>() {
            Some(_) => auth_failure(format!(
                "the identity provider refused the client credentials: {e:#}"
            )),
            // Not a refusal (network, parse): not an authentication failure either.
            None => e,
        })?;
    Ok(Zeroizing::new(t.access_token.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

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

    #[test]
    fn one_valid_callback_only() {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let slot = Mutex::new(Some(tx));
        let (s, _) = callback(&q(&[("code", "c"), ("state", "wrong")]), "st", &slot);
        assert_eq!(s, 400);
        let (s, _) = callback(&q(&[("code", "c")]), "st", &slot);
        assert_eq!(s, 400);
        assert!(rx.try_recv().is_err(), "a refused callback ends nothing");
        let (s, _) = callback(&q(&[("code", "c"), ("state", "st")]), "st", &slot);
        assert_eq!(s, 200);
        assert_eq!(rx.try_recv().ok(), Some(Ok("c".to_owned())));
        let (s, _) = callback(&q(&[("code", "c2"), ("state", "st")]), "st", &slot);
        assert_eq!(s, 400);
    }
}
