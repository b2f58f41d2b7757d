//! A DEVELOPMENT-ONLY OpenID Connect issuer, started by `influxion dev` so that the
//! keyserver can be tried without an Entra ID tenant.
//!
//! It serves a discovery document, a JWKS and a token endpoint for the client
//! credentials grant, and issues ES256 access tokens shaped like Entra ID v2 app-only
//! tokens. It has no users, no consent and no revocation. Never expose it beyond
//! loopback, and never point a production keyserver at it.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The tenant id the development issuer puts in `tid`.
pub const DEV_TENANT_ID: &str = "00000000-0000-0000-0000-00000000de50";

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

/// Everything the issuer needs; the binary persists it in the data directory so that
/// restarts keep the same key and secrets.
#[derive(Clone, Serialize, Deserialize)]
pub struct DevIdpState {
    /// PKCS#8 PEM of the ES256 signing key.
    pub signing_key_pem: String,
    pub tenant_id: String,
    pub audience: String,
    pub clients: Vec<DevClient>,
}

impl DevIdpState {
    /// A fresh issuer state with a new signing key.
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
        })
    }
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
    jwk: serde_json::Value,
    state: DevIdpState,
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
    if let Some(o) = jwk.as_object_mut() {
        o.insert("kid".into(), kid.clone().into());
        o.insert("use".into(), "sig".into());
        o.insert("alg".into(), "ES256".into());
    }
    let issuer = Arc::new(Issuer {
        issuer: issuer.trim_end_matches('/').to_owned(),
        kid,
        encoding,
        jwk,
        state,
    });
    Ok(Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/token", post(token))
        .with_state(issuer))
}

fn hex_prefix(b: &[u8]) -> String {
    Sha256::digest(b)[..8]
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

async fn discovery(State(i): State<Arc<Issuer>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "issuer": i.issuer,
        "jwks_uri": format!("{}/jwks", i.issuer),
        "token_endpoint": format!("{}/token", i.issuer),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "response_types_supported": [],
        "subject_types_supported": ["public"],
        "x-influxion-warning": "DEVELOPMENT-ONLY issuer started by `influxion dev`; never trust it in production",
    }))
}

async fn jwks(State(i): State<Arc<Issuer>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "keys": [i.jwk] }))
}

#[derive(Deserialize)]
struct TokenRequest {
    grant_type: String,
    client_id: Option<String>,
    client_secret: Option<String>,
    #[allow(dead_code)]
    scope: Option<String>,
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut r = (
        status,
        Json(serde_json::json!({"error": error, "error_description": description})),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"influxion-dev\""),
        );
    }
    r
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

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

async fn token(
    State(i): State<Arc<Issuer>>,
    headers: HeaderMap,
    Form(req): Form<TokenRequest>,
) -> Response {
    if req.grant_type != "client_credentials" {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only client_credentials is supported",
        );
    }
    let (id, secret) = match (
        basic_credentials(&headers),
        req.client_id,
        req.client_secret,
    ) {
        (Some(c), _, _) => c,
        (None, Some(id), Some(secret)) => (id, secret),
        _ => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication required",
            )
        }
    };
    let client = i.state.clients.iter().find(|c| c.client_id == id);
    let ok =
        client.is_some_and(|c| bool::from(c.client_secret.as_bytes().ct_eq(secret.as_bytes())));
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
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(i.kid.clone());
    header.typ = Some("JWT".into());
    match jsonwebtoken::encode(&header, &claims, &i.encoding) {
        Ok(t) => {
            Json(serde_json::json!({"access_token": t, "token_type": "Bearer", "expires_in": 3600}))
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "development issuer could not sign a token");
            oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "signing failed",
            )
        }
    }
}

/// A stable UUID-shaped object id for a client, like Entra's service principal `oid`.
fn uuid_like(s: &str) -> String {
    let h = Sha256::digest(s.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid().to_string()
}
