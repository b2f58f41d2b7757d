//! The token endpoint: client credentials (app-only tokens), authorization code with
//! PKCE and refresh token (user tokens for web clients).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::grants::{
    ct_eq, insert_bounded, key_of, random_token, valid_code_verifier, RefreshGrant,
};
use crate::params::Params;
use crate::{now, user_object_id, uuid_like, DevUser, DevWebClient, Issuer, API_SCOPE};

/// Users' `email` claim is `{username}@` this (a reserved, never-resolving domain).
const EMAIL_DOMAIN: &str = "dev.influxion.invalid";
/// How long a refresh token stays valid (each use rotates it).
const REFRESH_TTL_SECS: u64 = 24 * 3600;
const ID_TOKEN_TTL_SECS: u64 = 3600;

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

pub(crate) async fn token(
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
