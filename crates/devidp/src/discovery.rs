//! OpenID Connect discovery: the metadata document and the signing keys.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;

use crate::{Issuer, API_SCOPE};

fn api_scope(i: &Issuer) -> String {
    format!("{}/{API_SCOPE}", i.state.audience)
}

pub(crate) fn supported_scopes(i: &Issuer) -> [String; 5] {
    [
        "openid".into(),
        "profile".into(),
        "email".into(),
        "offline_access".into(),
        api_scope(i),
    ]
}

pub(crate) async fn discovery(State(i): State<Arc<Issuer>>) -> Json<serde_json::Value> {
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

pub(crate) async fn jwks(State(i): State<Arc<Issuer>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "keys": [i.jwk] }))
}
