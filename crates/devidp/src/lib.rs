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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use url::Url;

/// The tenant id the development issuer puts in `tid`.
pub const DEV_TENANT_ID: &str = "00000000-0000-0000-0000-00000000de50";

/// The delegated scope put in `scp` of user access tokens; the keyserver requires it.
const API_SCOPE: &str = "access_as_user";
/// Users' `email` claim is `{username}@` this (a reserved, never-resolving domain).
const EMAIL_DOMAIN: &str = "dev.influxion.invalid";
/// How long a user has to pick an account on the login page.
const INTERACTION_TTL_SECS: u64 = 600;
/// How long an authorization code may wait before being redeemed.
const CODE_TTL_SECS: u64 = 60;
/// How long a refresh token stays valid (each use rotates it).
const REFRESH_TTL_SECS: u64 = 24 * 3600;
const ID_TOKEN_TTL_SECS: u64 = 3600;
/// Most pending interactions, codes or refresh tokens kept at once (each).
const STORE_CAP: usize = 10_000;
/// Longest accepted `state`, `nonce` or `scope`, to bound what is kept in memory.
const MAX_PARAM_LEN: usize = 1024;

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
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/token", post(token))
        .route("/authorize", get(authorize))
        .route("/authorize/login", post(login))
        .route("/logout", get(logout_get).post(logout_post))
        .with_state(issuer))
}

fn hex_prefix(b: &[u8]) -> String {
    Sha256::digest(b)[..8]
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn api_scope(i: &Issuer) -> String {
    format!("{}/{API_SCOPE}", i.state.audience)
}

fn supported_scopes(i: &Issuer) -> [String; 5] {
    [
        "openid".into(),
        "profile".into(),
        "email".into(),
        "offline_access".into(),
        api_scope(i),
    ]
}

async fn discovery(State(i): State<Arc<Issuer>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "issuer": i.issuer,
        "jwks_uri": format!("{}/jwks", i.issuer),
        "authorization_endpoint": format!("{}/authorize", i.issuer),
        "token_endpoint": format!("{}/token", i.issuer),
        "end_session_endpoint": format!("{}/logout", i.issuer),
        "grant_types_supported": ["client_credentials", "authorization_code", "refresh_token"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": supported_scopes(&i),
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "subject_types_supported": ["public"],
        "claims_supported": [
            "iss", "aud", "sub", "exp", "iat", "nbf", "auth_time", "nonce", "azp", "oid",
            "tid", "name", "preferred_username", "email", "roles", "scp", "idtyp", "ver",
        ],
        "authorization_response_iss_parameter_supported": true,
        "x-influxion-warning": "DEVELOPMENT-ONLY issuer started by `influxion dev`; never trust it in production",
    }))
}

async fn jwks(State(i): State<Arc<Issuer>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "keys": [i.jwk] }))
}

// ---------------------------------------------------------------------------------
// Request parameters and in-memory grants
// ---------------------------------------------------------------------------------

/// Form or query parameters. RFC 6749 §3.1: empty values count as absent, and no
/// parameter may appear twice (a repeated one reads as absent and is reported).
struct Params(HashMap<String, Vec<String>>);

impl Params {
    fn new(pairs: Vec<(String, String)>) -> Self {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in pairs {
            if !v.is_empty() {
                map.entry(k).or_default().push(v);
            }
        }
        Self(map)
    }

    fn get(&self, name: &str) -> Option<&str> {
        match self.0.get(name).map(Vec::as_slice) {
            Some([one]) => Some(one.as_str()),
            _ => None,
        }
    }

    fn repeated(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, v)| v.len() > 1)
            .map(|(k, _)| k.as_str())
    }
}

/// A sign-in waiting for the user to pick an account.
struct Interaction {
    client_id: String,
    redirect_uri: String,
    scope: String,
    state: String,
    nonce: String,
    code_challenge: String,
    expires_at: u64,
}

struct AuthCode {
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    nonce: String,
    scope: String,
    username: String,
    auth_time: u64,
    expires_at: u64,
}

struct RefreshGrant {
    client_id: String,
    username: String,
    scope: String,
    auth_time: u64,
    expires_at: u64,
}

trait Expiring {
    fn expires_at(&self) -> u64;
}

macro_rules! expiring {
    ($($t:ty),*) => {$(impl Expiring for $t {
        fn expires_at(&self) -> u64 {
            self.expires_at
        }
    })*};
}
expiring!(Interaction, AuthCode, RefreshGrant);

/// Keyed by SHA-256 of the random value handed out, which itself is not kept.
type Key = [u8; 32];

#[derive(Default)]
struct Grants {
    interactions: HashMap<Key, Interaction>,
    codes: HashMap<Key, AuthCode>,
    refresh_tokens: HashMap<Key, RefreshGrant>,
}

/// Insert after dropping expired entries; when still full, evict what expires first.
fn insert_bounded<V: Expiring>(map: &mut HashMap<Key, V>, key: Key, value: V, now: u64) {
    map.retain(|_, v| v.expires_at() > now);
    while map.len() >= STORE_CAP {
        let Some(oldest) = map
            .iter()
            .min_by_key(|(_, v)| v.expires_at())
            .map(|(k, _)| *k)
        else {
            break;
        };
        map.remove(&oldest);
    }
    map.insert(key, value);
}

fn key_of(value: &str) -> Key {
    Sha256::digest(value.as_bytes()).into()
}

/// 32 random bytes, base64url, and the key to store it under.
fn random_token() -> (String, Key) {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let value = B64URL.encode(b);
    let key = key_of(&value);
    (value, key)
}

fn ct_eq(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// RFC 7636 §4.2: the S256 challenge is 43 base64url characters; accept 43..=128.
fn valid_code_challenge(s: &str) -> bool {
    (43..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// RFC 7636 §4.1: 43..=128 unreserved characters.
fn valid_code_verifier(s: &str) -> bool {
    (43..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

// ---------------------------------------------------------------------------------
// HTML pages
// ---------------------------------------------------------------------------------

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A plain page (no script, no style) with headers that keep it out of frames and
/// caches. `form_action` lists where forms on the page may go (and redirect to).
fn html_page(status: StatusCode, title: &str, body: &str, form_action: Option<&str>) -> Response {
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{t}</title>\n</head>\n<body>\n<h1>{t}</h1>\n{body}</body>\n</html>\n",
        t = html_escape(title),
    );
    let csp = match form_action {
        Some(sources) => format!(
            "default-src 'none'; base-uri 'none'; form-action {sources}; frame-ancestors 'none'"
        ),
        None => "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            .to_owned(),
    };
    let mut r = (status, html).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

fn error_page(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<p>{}</p>\n<p>This is the DEVELOPMENT-ONLY issuer started by <code>influxion dev</code>.</p>\n",
        html_escape(message)
    );
    html_page(status, "Sign-in error", &body, None)
}

/// `303 See Other` to `url`, never cached.
fn see_other(url: &Url) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(url.as_str()) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

// ---------------------------------------------------------------------------------
// Authorization endpoint and login page
// ---------------------------------------------------------------------------------

/// An error sent back to the client's (registered) redirect URI, RFC 6749 §4.1.2.1.
fn redirect_error(
    i: &Issuer,
    redirect: &Url,
    error: &str,
    description: &str,
    state: Option<&str>,
) -> Response {
    let mut url = redirect.clone();
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("error", error)
            .append_pair("error_description", description);
        if let Some(s) = state {
            q.append_pair("state", s);
        }
        q.append_pair("iss", &i.issuer);
    }
    see_other(&url)
}

async fn authorize(
    State(i): State<Arc<Issuer>>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let p = Params::new(pairs);
    // Until the client and its redirect URI are known good, errors are shown here:
    // never redirect anywhere that is not registered.
    let Some(client) = p.get("client_id").and_then(|id| i.web_client(id)) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Unknown or missing client_id: no such web client is registered.",
        );
    };
    let Some(redirect_uri) = p
        .get("redirect_uri")
        .filter(|r| client.redirect_uris.iter().any(|x| x == r))
    else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The redirect_uri is missing or not registered for this client.",
        );
    };
    let redirect = match Url::parse(redirect_uri) {
        Ok(u) if u.fragment().is_none() => u,
        _ => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "The registered redirect_uri is not a valid absolute URL without a fragment.",
            )
        }
    };
    let state = p.get("state").filter(|s| s.len() <= MAX_PARAM_LEN);
    let fail =
        |error: &str, description: &str| redirect_error(&i, &redirect, error, description, state);

    if let Some(name) = p.repeated() {
        return fail(
            "invalid_request",
            &format!("{name} is given more than once"),
        );
    }
    match p.get("response_type") {
        Some("code") => {}
        Some(_) => {
            return fail(
                "unsupported_response_type",
                "only response_type=code is supported",
            )
        }
        None => return fail("invalid_request", "response_type is required"),
    }
    if p.get("response_mode").is_some_and(|m| m != "query") {
        return fail("invalid_request", "only response_mode=query is supported");
    }
    let Some(state) = state else {
        return fail(
            "invalid_request",
            "state is required (at most 1024 characters)",
        );
    };
    let Some(nonce) = p.get("nonce").filter(|n| n.len() <= MAX_PARAM_LEN) else {
        return fail(
            "invalid_request",
            "nonce is required (at most 1024 characters)",
        );
    };
    let Some(code_challenge) = p.get("code_challenge") else {
        return fail("invalid_request", "code_challenge is required (PKCE)");
    };
    if !valid_code_challenge(code_challenge) {
        return fail(
            "invalid_request",
            "code_challenge must be 43 to 128 base64url characters",
        );
    }
    match p.get("code_challenge_method") {
        Some("S256") => {}
        _ => return fail("invalid_request", "code_challenge_method=S256 is required"),
    }
    let requested = p.get("scope").unwrap_or_default();
    if requested.len() > MAX_PARAM_LEN || !requested.split(' ').any(|s| s == "openid") {
        return fail("invalid_scope", "scope must include openid");
    }
    if p.get("prompt")
        .is_some_and(|v| v.split(' ').any(|x| x == "none"))
    {
        // There is no session to reuse: every sign-in shows the picker.
        return fail("login_required", "the development issuer always asks");
    }
    // Unknown scope values are ignored (OpenID Connect Core §3.1.2.1).
    let supported = supported_scopes(&i);
    let mut granted: Vec<&str> = Vec::new();
    for s in requested.split(' ') {
        if supported.iter().any(|x| x == s) && !granted.contains(&s) {
            granted.push(s);
        }
    }

    let now = now();
    let (interaction, key) = random_token();
    {
        let mut g = i.grants();
        insert_bounded(
            &mut g.interactions,
            key,
            Interaction {
                client_id: client.client_id.clone(),
                redirect_uri: redirect_uri.to_owned(),
                scope: granted.join(" "),
                state: state.to_owned(),
                nonce: nonce.to_owned(),
                code_challenge: code_challenge.to_owned(),
                expires_at: now + INTERACTION_TTL_SECS,
            },
            now,
        );
    }
    login_page(&i, client, &redirect, &interaction, &granted.join(" "))
}

fn login_page(
    i: &Issuer,
    client: &DevWebClient,
    redirect: &Url,
    interaction: &str,
    scope: &str,
) -> Response {
    let mut body = format!(
        "<p><strong>DEVELOPMENT ONLY.</strong> This issuer was started by \
         <code>influxion dev</code>. It has no passwords: anyone who can reach it can \
         sign in as anyone. Never use it for anything real.</p>\n\
         <p>Sign in to <code>{}</code> (scopes: <code>{}</code>) as:</p>\n",
        html_escape(&client.client_id),
        html_escape(scope),
    );
    if i.state.users.is_empty() {
        body.push_str("<p>No development users are configured.</p>\n");
    } else {
        body.push_str(&format!(
            "<form method=\"post\" action=\"/authorize/login\">\n\
             <input type=\"hidden\" name=\"interaction\" value=\"{}\">\n",
            html_escape(interaction)
        ));
        for u in &i.state.users {
            let roles = if u.roles.is_empty() {
                "no roles".to_owned()
            } else {
                format!("roles: {}", u.roles.join(", "))
            };
            body.push_str(&format!(
                "<p><button type=\"submit\" name=\"username\" value=\"{}\">{} ({}) — {}</button></p>\n",
                html_escape(&u.username),
                html_escape(&u.name),
                html_escape(&u.username),
                html_escape(&roles),
            ));
        }
        body.push_str("</form>\n");
    }
    // The form posts here and is then redirected to the client: allow both.
    let origin = redirect.origin();
    let form_action = if origin.is_tuple() {
        format!("'self' {}", origin.ascii_serialization())
    } else {
        "'self'".to_owned()
    };
    html_page(
        StatusCode::OK,
        "Influxion development sign-in",
        &body,
        Some(&form_action),
    )
}

async fn login(State(i): State<Arc<Issuer>>, Form(pairs): Form<Vec<(String, String)>>) -> Response {
    let p = Params::new(pairs);
    let (Some(interaction), Some(username)) = (p.get("interaction"), p.get("username")) else {
        return error_page(StatusCode::BAD_REQUEST, "Missing interaction or username.");
    };
    let now = now();
    let key = key_of(interaction);
    let pending = {
        let mut g = i.grants();
        if g.interactions.get(&key).is_none_or(|x| x.expires_at <= now) {
            return error_page(
                StatusCode::BAD_REQUEST,
                "This sign-in is unknown or has expired. Start again from the application.",
            );
        }
        if i.user(username).is_none() {
            return error_page(StatusCode::BAD_REQUEST, "Unknown development user.");
        }
        g.interactions.remove(&key)
    };
    let Some(pending) = pending else {
        return error_page(StatusCode::BAD_REQUEST, "This sign-in has expired.");
    };
    let Ok(mut url) = Url::parse(&pending.redirect_uri) else {
        return error_page(StatusCode::BAD_REQUEST, "Invalid redirect_uri.");
    };
    let (code, code_key) = random_token();
    {
        let mut g = i.grants();
        insert_bounded(
            &mut g.codes,
            code_key,
            AuthCode {
                client_id: pending.client_id,
                redirect_uri: pending.redirect_uri,
                code_challenge: pending.code_challenge,
                nonce: pending.nonce,
                scope: pending.scope,
                username: username.to_owned(),
                auth_time: now,
                expires_at: now + CODE_TTL_SECS,
            },
            now,
        );
    }
    url.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &pending.state)
        .append_pair("iss", &i.issuer);
    see_other(&url)
}

// ---------------------------------------------------------------------------------
// RP-initiated logout
// ---------------------------------------------------------------------------------

async fn logout_get(
    State(i): State<Arc<Issuer>>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    logout(&i, &Params::new(pairs))
}

async fn logout_post(
    State(i): State<Arc<Issuer>>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    logout(&i, &Params::new(pairs))
}

fn logout(i: &Issuer, p: &Params) -> Response {
    // The client is named by `client_id`, or by the audience of an ID token we issued.
    let hinted = p.get("id_token_hint").and_then(|t| id_token_audience(i, t));
    let client_id = match (p.get("client_id"), hinted.as_deref()) {
        (Some(c), Some(h)) if c != h => None,
        (Some(c), _) => Some(c),
        (None, h) => h,
    };
    let target = client_id
        .and_then(|c| i.web_client(c))
        .zip(p.get("post_logout_redirect_uri"))
        .filter(|(c, u)| c.post_logout_redirect_uris.iter().any(|x| x == u))
        .and_then(|(_, u)| Url::parse(u).ok());
    if let Some(mut url) = target {
        if let Some(state) = p.get("state") {
            url.query_pairs_mut().append_pair("state", state);
        }
        return see_other(&url);
    }
    html_page(
        StatusCode::OK,
        "Signed out",
        "<p>You are signed out of the development issuer.</p>\n\
         <p>This is the DEVELOPMENT-ONLY issuer started by <code>influxion dev</code>; \
         it keeps no sign-in session of its own.</p>\n",
        None,
    )
}

/// The `aud` of an ID token this issuer signed (expired ones included, as the spec
/// allows for `id_token_hint`).
fn id_token_audience(i: &Issuer, token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Aud {
        aud: String,
    }
    let mut v = Validation::new(Algorithm::ES256);
    v.validate_exp = false;
    v.validate_aud = false;
    v.set_required_spec_claims::<&str>(&[]);
    v.set_issuer(&[&i.issuer]);
    jsonwebtoken::decode::<Aud>(token, &i.decoding, &v)
        .ok()
        .map(|d| d.claims.aud)
}

// ---------------------------------------------------------------------------------
// Token endpoint
// ---------------------------------------------------------------------------------

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut r = (
        status,
        Json(serde_json::json!({"error": error, "error_description": description})),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"influxion-dev\""),
        );
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn invalid_request(description: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_request", description)
}

fn invalid_grant(description: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description)
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(B64.decode(rest.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    // RFC 6749 2.3.1: both parts are form-urlencoded inside Basic.
    let id = url_decode(id)?;
    let secret = url_decode(secret)?;
    Some((id, secret))
}

fn url_decode(s: &str) -> Option<String> {
    let pair = format!("x={s}");
    url::form_urlencoded::parse(pair.as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
}

/// HTTP Basic, else `client_id` and `client_secret` in the body.
fn presented_client(headers: &HeaderMap, p: &Params) -> Option<(String, String)> {
    basic_credentials(headers).or_else(|| {
        p.get("client_id")
            .zip(p.get("client_secret"))
            .map(|(id, s)| (id.to_owned(), s.to_owned()))
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn token(
    State(i): State<Arc<Issuer>>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let p = Params::new(pairs);
    if let Some(name) = p.repeated() {
        return invalid_request(&format!("{name} is given more than once"));
    }
    match p.get("grant_type") {
        Some("client_credentials") => client_credentials(&i, &headers, &p),
        Some("authorization_code") => authorization_code(&i, &headers, &p),
        Some("refresh_token") => refresh_token(&i, &headers, &p),
        Some(_) => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "supported: client_credentials, authorization_code, refresh_token",
        ),
        None => invalid_request("grant_type is required"),
    }
}

#[derive(Serialize)]
struct AccessClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: String,
    oid: String,
    tid: &'a str,
    azp: &'a str,
    idtyp: &'static str,
    ver: &'static str,
    roles: &'a [String],
    iat: u64,
    nbf: u64,
    exp: u64,
}

fn client_credentials(i: &Issuer, headers: &HeaderMap, p: &Params) -> Response {
    let Some((id, secret)) = presented_client(headers, p) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication required",
        );
    };
    let client = i.state.clients.iter().find(|c| c.client_id == id);
    let ok = client.is_some_and(|c| ct_eq(&c.client_secret, &secret));
    let Some(client) = client.filter(|_| ok) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client or wrong secret",
        );
    };
    let now = now();
    let oid = uuid_like(&client.client_id);
    let claims = AccessClaims {
        iss: &i.issuer,
        aud: &i.state.audience,
        sub: oid.clone(),
        oid,
        tid: &i.state.tenant_id,
        azp: &client.client_id,
        idtyp: "app",
        ver: "2.0",
        roles: &client.roles,
        iat: now,
        nbf: now,
        exp: now + 3600,
    };
    match i.sign(&claims) {
        Ok(t) => {
            Json(serde_json::json!({"access_token": t, "token_type": "Bearer", "expires_in": 3600}))
                .into_response()
        }
        Err(e) => signing_failed(&e),
    }
}

fn signing_failed(e: &jsonwebtoken::errors::Error) -> Response {
    tracing::error!(error = %e, "development issuer could not sign a token");
    oauth_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "signing failed",
    )
}

/// Client authentication for the user grants, against the web clients.
#[allow(clippy::result_large_err)] // the error is the finished HTTP response
fn authenticate_web_client<'a>(
    i: &'a Issuer,
    headers: &HeaderMap,
    p: &Params,
) -> Result<&'a DevWebClient, Response> {
    let Some((id, secret)) = presented_client(headers, p) else {
        return Err(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication required",
        ));
    };
    let client = i.web_client(&id);
    let ok = client.is_some_and(|c| ct_eq(&c.client_secret, &secret));
    client.filter(|_| ok).ok_or_else(|| {
        oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client or wrong secret",
        )
    })
}

fn authorization_code(i: &Issuer, headers: &HeaderMap, p: &Params) -> Response {
    let client = match authenticate_web_client(i, headers, p) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (Some(code), Some(redirect_uri), Some(verifier)) =
        (p.get("code"), p.get("redirect_uri"), p.get("code_verifier"))
    else {
        return invalid_request("code, redirect_uri and code_verifier are required");
    };
    if !valid_code_verifier(verifier) {
        return invalid_request("code_verifier must be 43 to 128 unreserved characters");
    }
    let now = now();
    // Single use: whatever happens next, the code is gone.
    let grant = i.grants().codes.remove(&key_of(code));
    let Some(grant) = grant.filter(|g| g.expires_at > now) else {
        return invalid_grant("the code is unknown, used or expired");
    };
    if grant.client_id != client.client_id {
        return invalid_grant("the code was issued to another client");
    }
    if grant.redirect_uri != redirect_uri {
        return invalid_grant("redirect_uri does not match the authorization request");
    }
    let challenge = B64URL.encode(Sha256::digest(verifier.as_bytes()));
    if !ct_eq(&challenge, &grant.code_challenge) {
        return invalid_grant("code_verifier does not match the code_challenge");
    }
    let Some(user) = i.user(&grant.username) else {
        return invalid_grant("the user no longer exists");
    };
    user_tokens(
        i,
        client,
        user,
        &grant.scope,
        Some(&grant.nonce),
        grant.auth_time,
    )
}

fn refresh_token(i: &Issuer, headers: &HeaderMap, p: &Params) -> Response {
    let client = match authenticate_web_client(i, headers, p) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(presented) = p.get("refresh_token") else {
        return invalid_request("refresh_token is required");
    };
    let now = now();
    let key = key_of(presented);
    // Rotation: a refresh token is used at most once.
    let grant = {
        let mut g = i.grants();
        match g.refresh_tokens.get(&key) {
            Some(x) if x.client_id == client.client_id => g.refresh_tokens.remove(&key),
            _ => None,
        }
    };
    let Some(grant) = grant.filter(|g| g.expires_at > now) else {
        return invalid_grant("the refresh token is unknown, used or expired");
    };
    // A narrower scope may be asked for, never a wider one.
    let scope = match p.get("scope") {
        None => grant.scope.clone(),
        Some(s) => {
            let original: Vec<&str> = grant.scope.split(' ').collect();
            if !s.split(' ').all(|x| original.contains(&x)) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    "scope exceeds what was granted",
                );
            }
            s.to_owned()
        }
    };
    let Some(user) = i.user(&grant.username) else {
        return invalid_grant("the user no longer exists");
    };
    user_tokens(i, client, user, &scope, None, grant.auth_time)
}

#[derive(Serialize)]
struct UserAccessClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    oid: &'a str,
    tid: &'a str,
    azp: &'a str,
    idtyp: &'static str,
    ver: &'static str,
    scp: &'static str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    roles: &'a [String],
    name: &'a str,
    preferred_username: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
}

#[derive(Serialize)]
struct IdTokenClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    azp: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
    iat: u64,
    exp: u64,
    auth_time: u64,
    name: &'a str,
    preferred_username: &'a str,
    email: String,
    oid: &'a str,
    tid: &'a str,
}

/// Access, ID and (new) refresh token for `user`, as a token endpoint response.
fn user_tokens(
    i: &Issuer,
    client: &DevWebClient,
    user: &DevUser,
    scope: &str,
    nonce: Option<&str>,
    auth_time: u64,
) -> Response {
    let now = now();
    let oid = user_object_id(&user.username);
    let ttl = i.state.access_token_ttl_secs;
    let access = UserAccessClaims {
        iss: &i.issuer,
        aud: &i.state.audience,
        sub: &oid,
        oid: &oid,
        tid: &i.state.tenant_id,
        azp: &client.client_id,
        idtyp: "user",
        ver: "2.0",
        scp: API_SCOPE,
        roles: &user.roles,
        name: &user.name,
        preferred_username: &user.username,
        iat: now,
        nbf: now,
        exp: now + ttl,
    };
    let id = IdTokenClaims {
        iss: &i.issuer,
        aud: &client.client_id,
        sub: &oid,
        azp: &client.client_id,
        nonce,
        iat: now,
        exp: now + ID_TOKEN_TTL_SECS,
        auth_time,
        name: &user.name,
        preferred_username: &user.username,
        email: format!("{}@{EMAIL_DOMAIN}", user.username),
        oid: &oid,
        tid: &i.state.tenant_id,
    };
    let (access_token, id_token) = match (i.sign(&access), i.sign(&id)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return signing_failed(&e),
    };
    let (refresh, key) = random_token();
    {
        let mut g = i.grants();
        insert_bounded(
            &mut g.refresh_tokens,
            key,
            RefreshGrant {
                client_id: client.client_id.clone(),
                username: user.username.clone(),
                scope: scope.to_owned(),
                auth_time,
                expires_at: now + REFRESH_TTL_SECS,
            },
            now,
        );
    }
    let mut r = Json(serde_json::json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": ttl,
        "scope": scope,
        "id_token": id_token,
        "refresh_token": refresh,
    }))
    .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
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
