//! A DEVELOPMENT-ONLY OpenID Connect issuer, started by `influxion dev` so that the
//! keyserver can be tried without an Entra ID tenant.
//!
//! It serves:
//!
//! - `GET /.well-known/openid-configuration` and `GET /jwks`;
//! - `POST /token` for three grants: `client_credentials` (for [`DevClient`]s; ES256
//!   access tokens shaped like Entra ID v2 app-only tokens), and `authorization_code`
//!   with PKCE (S256 only) and `refresh_token` (for [`DevWebClient`]s, i.e. confidential
//!   browser clients such as the keyclient backend-for-frontend);
//! - `GET /authorize` and `POST /authorize/login`: a login page that lists the
//!   [`DevUser`]s, one button each, with no passwords. Choosing one issues a single-use
//!   authorization code (60 s) to an exactly registered `redirect_uri`;
//! - `GET|POST /logout`: RP-initiated logout. The issuer keeps no browser session (every
//!   `/authorize` shows the user picker again), so it only redirects to a registered
//!   `post_logout_redirect_uri`.
//!
//! Delegated access tokens look like Entra ID v2 user tokens for the API (`aud` is the
//! API, `scp: access_as_user`, `idtyp: user`, `oid` from [`user_object_id`], the user's
//! app `roles`), so the keyserver's validator accepts them. Pending sign-ins, codes and
//! refresh tokens live only in memory (lost on restart), are bounded in number, and are
//! keyed by their SHA-256 so the raw values are never stored or logged.
//!
//! It has no passwords, no consent and no revocation: anyone who can reach it can sign
//! in as anyone. Never expose it beyond loopback, and never point a production keyserver
//! at it.

mod authorize;
mod discovery;
mod grants;
mod logout;
mod pages;
mod params;
mod token;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::routing::{get, post};
use axum::Router;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::grants::Grants;

/// The tenant id the development issuer puts in `tid`.
pub const DEV_TENANT_ID: &str = "00000000-0000-0000-0000-00000000de50";

/// The delegated scope put in `scp` of user access tokens; the keyserver requires it.
const API_SCOPE: &str = "access_as_user";

/// A client allowed to use the client credentials grant.
#[derive(Clone, Serialize, Deserialize)]
pub struct DevClient {
    pub client_id: String,
    pub client_secret: String,
    pub roles: Vec<String>,
}

impl std::fmt::Debug for DevClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevClient")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("roles", &self.roles)
            .finish()
    }
}

/// A person who can sign in on the login page (no password: they are picked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevUser {
    /// Becomes `preferred_username`; [`user_object_id`] of it becomes `sub`/`oid`.
    pub username: String,
    /// Display name (`name`).
    pub name: String,
    /// App roles put in the user's access tokens.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// A confidential browser client (e.g. a backend-for-frontend) allowed to use the
/// authorization code (with PKCE) and refresh token grants.
#[derive(Clone, Serialize, Deserialize)]
pub struct DevWebClient {
    pub client_id: String,
    pub client_secret: String,
    /// Exact `redirect_uri` values accepted at `/authorize`.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Exact `post_logout_redirect_uri` values accepted at `/logout`.
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
}

impl std::fmt::Debug for DevWebClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevWebClient")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("redirect_uris", &self.redirect_uris)
            .field("post_logout_redirect_uris", &self.post_logout_redirect_uris)
            .finish()
    }
}

/// Everything the issuer needs; the binary persists it in the data directory so that
/// restarts keep the same key and secrets.
#[derive(Clone, Serialize, Deserialize)]
pub struct DevIdpState {
    /// PKCS#8 PEM of the ES256 signing key.
    pub signing_key_pem: String,
    pub tenant_id: String,
    pub audience: String,
    pub clients: Vec<DevClient>,
    #[serde(default)]
    pub users: Vec<DevUser>,
    #[serde(default)]
    pub web_clients: Vec<DevWebClient>,
    /// Lifetime of delegated (user) access tokens.
    #[serde(default = "default_access_token_ttl_secs")]
    pub access_token_ttl_secs: u64,
}

fn default_access_token_ttl_secs() -> u64 {
    3600
}

impl DevIdpState {
    /// A fresh issuer state with a new signing key, and no users or web clients.
    pub fn generate(audience: &str, clients: Vec<DevClient>) -> Result<Self, DevIdpError> {
        let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let pem = key
            .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
            .map_err(|e| DevIdpError::Key(e.to_string()))?;
        Ok(Self {
            signing_key_pem: pem.to_string(),
            tenant_id: DEV_TENANT_ID.into(),
            audience: audience.into(),
            clients,
            users: Vec::new(),
            web_clients: Vec::new(),
            access_token_ttl_secs: default_access_token_ttl_secs(),
        })
    }
}

/// The stable, UUID-shaped object id (`oid`, also `sub`) of a development user, so that
/// keyserver subjects can be created for users before they first sign in.
pub fn user_object_id(username: &str) -> String {
    uuid_like(&format!("user:{username}"))
}

#[derive(Debug, thiserror::Error)]
pub enum DevIdpError {
    #[error("development issuer key: {0}")]
    Key(String),
}

struct Issuer {
    issuer: String,
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwk: serde_json::Value,
    state: DevIdpState,
    grants: Mutex<Grants>,
}

impl Issuer {
    fn grants(&self) -> MutexGuard<'_, Grants> {
        // The maps stay consistent even if a holder panicked: every update is one call.
        self.grants.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn web_client(&self, client_id: &str) -> Option<&DevWebClient> {
        self.state
            .web_clients
            .iter()
            .find(|c| c.client_id == client_id)
    }

    fn user(&self, username: &str) -> Option<&DevUser> {
        self.state.users.iter().find(|u| u.username == username)
    }

    fn sign<T: Serialize>(&self, claims: &T) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, claims, &self.encoding)
    }
}

/// Build the issuer's router. `issuer` is its externally visible base URL.
pub fn router(issuer: &str, state: DevIdpState) -> Result<Router, DevIdpError> {
    let secret = p256::SecretKey::from_pkcs8_pem(&state.signing_key_pem)
        .map_err(|e| DevIdpError::Key(e.to_string()))?;
    let der = secret
        .to_pkcs8_der()
        .map_err(|e| DevIdpError::Key(e.to_string()))?;
    let encoding = EncodingKey::from_ec_der(der.as_bytes());
    let public_jwk = secret.public_key().to_jwk_string();
    let kid = hex_prefix(public_jwk.as_bytes());
    let mut jwk: serde_json::Value =
        serde_json::from_str(&public_jwk).map_err(|e| DevIdpError::Key(e.to_string()))?;
    let coordinate = |name: &str| jwk.get(name).and_then(|v| v.as_str()).unwrap_or_default();
    let decoding = DecodingKey::from_ec_components(coordinate("x"), coordinate("y"))
        .map_err(|e| DevIdpError::Key(e.to_string()))?;
    if let Some(o) = jwk.as_object_mut() {
        o.insert("kid".into(), kid.clone().into());
        o.insert("use".into(), "sig".into());
        o.insert("alg".into(), "ES256".into());
    }
    let issuer = Arc::new(Issuer {
        issuer: issuer.trim_end_matches('/').to_owned(),
        kid,
        encoding,
        decoding,
        jwk,
        state,
        grants: Mutex::new(Grants::default()),
    });
    Ok(Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(discovery::discovery),
        )
        .route("/jwks", get(discovery::jwks))
        .route("/token", post(token::token))
        .route("/authorize", get(authorize::authorize))
        .route("/authorize/login", post(authorize::login))
        .route("/logout", get(logout::logout_get).post(logout::logout_post))
        .with_state(issuer))
}

fn hex_prefix(b: &[u8]) -> String {
    Sha256::digest(b)[..8]
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How a keyserver trusts this issuer: its metadata, `audience`, its tenant pinned like a
/// single-tenant deployment, v2 tokens with the `access_as_user` scope for people and
/// the `Influxion.Sign`/`Influxion.Admin` app roles for clients. `influxion dev` runs
/// with exactly this, and the tests check the issuer's tokens against it.
pub fn validator_config(issuer: &str, audience: &str) -> influxion_auth::AuthConfig {
    use std::time::Duration;
    influxion_auth::AuthConfig {
        metadata_url: format!("{issuer}/.well-known/openid-configuration"),
        audiences: vec![audience.into()],
        tenant_id: Some(DEV_TENANT_ID.into()),
        allowed_tenants: vec![],
        extra_issuers: vec![],
        required_scope: "access_as_user".into(),
        app_roles: vec!["Influxion.Sign".into(), "Influxion.Admin".into()],
        accepted_versions: vec!["2.0".into()],
        algorithms: influxion_auth::AuthConfig::DEFAULT_ALGORITHMS.to_vec(),
        clock_skew: Duration::from_secs(300),
        jwks_refresh_interval: Duration::from_secs(3600),
        jwks_min_refresh_interval: Duration::from_secs(60),
        jwks_max_age: Duration::from_secs(24 * 3600),
        max_token_bytes: 16 * 1024,
        allow_insecure_http: false,
    }
}

/// A stable UUID-shaped object id for a client, like Entra's service principal `oid`.
fn uuid_like(s: &str) -> String {
    let h = Sha256::digest(s.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid().to_string()
}

#[cfg(test)]
mod tests;
