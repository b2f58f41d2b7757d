#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::IntoFuture as _;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use http_body_util::BodyExt as _;
use jsonwebtoken::{DecodingKey, Validation};
use tower::ServiceExt as _;

use std::collections::HashMap;

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use url::Url;

use super::grants::{insert_bounded, key_of, Key, RefreshGrant, STORE_CAP};
use super::*;

const ISSUER: &str = "http://127.0.0.1:9999";
const AUDIENCE: &str = "api://influxion-dev";
const CLIENT: &str = "keyclient";
const SECRET: &str = "keyclient-secret";
const REDIRECT: &str = "http://127.0.0.1:8090/auth/callback";
const REDIRECT_WITH_QUERY: &str = "http://127.0.0.1:8090/cb?tenant=dev";
const AFTER_LOGOUT: &str = "http://127.0.0.1:8090/";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

fn challenge(verifier: &str) -> String {
    B64URL.encode(Sha256::digest(verifier.as_bytes()))
}

fn state() -> DevIdpState {
    let mut s = DevIdpState::generate(
        AUDIENCE,
        vec![DevClient {
            client_id: "ci".into(),
            client_secret: "ci-secret".into(),
            roles: vec!["Influxion.Sign".into()],
        }],
    )
    .unwrap();
    s.users = vec![
        DevUser {
            username: "alice".into(),
            name: "Alice <Admin>".into(),
            roles: vec!["Influxion.Admin".into()],
        },
        DevUser {
            username: "bob".into(),
            name: "Bob Builder".into(),
            roles: vec![],
        },
    ];
    s.web_clients = vec![DevWebClient {
        client_id: CLIENT.into(),
        client_secret: SECRET.into(),
        redirect_uris: vec![REDIRECT.into(), REDIRECT_WITH_QUERY.into()],
        post_logout_redirect_uris: vec![AFTER_LOGOUT.into()],
    }];
    s
}

fn app() -> Router {
    router(ISSUER, state()).unwrap()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
    fn location(&self) -> Url {
        Url::parse(self.headers[header::LOCATION].to_str().unwrap()).unwrap()
    }
}

async fn send(app: &Router, req: Request<Body>) -> Reply {
    let r = app.clone().oneshot(req).await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let bytes = r.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

async fn get(app: &Router, path_and_query: &str) -> Reply {
    send(
        app,
        Request::get(path_and_query).body(Body::empty()).unwrap(),
    )
    .await
}

async fn post_form(app: &Router, path: &str, form: &[(&str, &str)], basic: Option<&str>) -> Reply {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut req =
        Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(b) = basic {
        req = req.header(header::AUTHORIZATION, format!("Basic {}", B64.encode(b)));
    }
    send(app, req.body(Body::from(body)).unwrap()).await
}

fn authorize_query(overrides: &[(&str, Option<&str>)]) -> String {
    let challenge = challenge(VERIFIER);
    let mut params: Vec<(&str, Option<&str>)> = vec![
        ("response_type", Some("code")),
        ("client_id", Some(CLIENT)),
        ("redirect_uri", Some(REDIRECT)),
        (
            "scope",
            Some("openid profile offline_access api://influxion-dev/access_as_user"),
        ),
        ("state", Some("st-123")),
        ("nonce", Some("n-456")),
        ("code_challenge", Some(&challenge)),
        ("code_challenge_method", Some("S256")),
    ];
    for (k, v) in overrides {
        match params.iter_mut().find(|(pk, _)| pk == k) {
            Some(p) => p.1 = *v,
            None => params.push((k, *v)),
        }
    }
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        if let Some(v) = v {
            s.append_pair(k, v);
        }
    }
    format!("/authorize?{}", s.finish())
}

fn interaction_of(html: &str) -> String {
    let marker = "name=\"interaction\" value=\"";
    let start = html.find(marker).unwrap() + marker.len();
    let len = html[start..].find('"').unwrap();
    html[start..start + len].to_owned()
}

fn query_param(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Run /authorize and the login page as `username`; the redirect back to the client.
async fn sign_in(app: &Router, overrides: &[(&str, Option<&str>)], username: &str) -> Url {
    let page = get(app, &authorize_query(overrides)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let interaction = interaction_of(&page.body);
    let r = post_form(
        app,
        "/authorize/login",
        &[("interaction", &interaction), ("username", username)],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    r.location()
}

async fn code_for(app: &Router, username: &str) -> String {
    let loc = sign_in(app, &[], username).await;
    query_param(&loc, "code").unwrap()
}

async fn redeem(app: &Router, code: &str, redirect: &str, verifier: &str, basic: &str) -> Reply {
    post_form(
        app,
        "/token",
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect),
            ("code_verifier", verifier),
        ],
        Some(basic),
    )
    .await
}

const BASIC: &str = "keyclient:keyclient-secret";

async fn decoding_key(app: &Router) -> DecodingKey {
    let jwks = get(app, "/jwks").await.json();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwks["keys"][0].clone()).unwrap();
    DecodingKey::from_jwk(&jwk).unwrap()
}

fn decode(token: &str, key: &DecodingKey, aud: &str) -> serde_json::Value {
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&[aud]);
    v.set_issuer(&[ISSUER]);
    jsonwebtoken::decode::<serde_json::Value>(token, key, &v)
        .unwrap()
        .claims
}

#[tokio::test]
async fn discovery_advertises_code_flow() {
    let d = get(&app(), "/.well-known/openid-configuration")
        .await
        .json();
    assert_eq!(d["authorization_endpoint"], format!("{ISSUER}/authorize"));
    assert_eq!(d["end_session_endpoint"], format!("{ISSUER}/logout"));
    assert_eq!(d["response_types_supported"], serde_json::json!(["code"]));
    assert_eq!(
        d["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    let grants = d["grant_types_supported"].as_array().unwrap();
    for g in ["client_credentials", "authorization_code", "refresh_token"] {
        assert!(grants.iter().any(|x| x == g));
    }
    let scopes = d["scopes_supported"].as_array().unwrap();
    assert!(scopes
        .iter()
        .any(|x| x == "api://influxion-dev/access_as_user"));
}

#[tokio::test]
async fn full_authorization_code_flow() {
    let app = app();
    let page = get(&app, &authorize_query(&[])).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Influxion development sign-in"));
    assert!(page.body.contains("DEVELOPMENT ONLY"));
    assert!(page.body.contains("action=\"/authorize/login\""));
    assert!(page
        .body
        .contains("name=\"username\" value=\"alice\">Alice &lt;Admin&gt; (alice)"));
    assert!(page.body.contains("Influxion.Admin"));
    assert!(page.body.contains("value=\"bob\""));
    assert!(!page.body.contains("<script"));
    assert_eq!(page.headers[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(page.headers[header::CACHE_CONTROL], "no-store");
    let csp = page.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(csp.contains("default-src 'none'"));
    assert!(csp.contains("frame-ancestors 'none'"));
    assert!(csp.contains("form-action 'self' http://127.0.0.1:8090"));

    let interaction = interaction_of(&page.body);
    let r = post_form(
        &app,
        "/authorize/login",
        &[("interaction", &interaction), ("username", "alice")],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let loc = r.location();
    assert_eq!(
        format!("{}://{}{}", loc.scheme(), loc.authority(), loc.path()),
        REDIRECT
    );
    assert_eq!(query_param(&loc, "state").as_deref(), Some("st-123"));
    assert_eq!(query_param(&loc, "iss").as_deref(), Some(ISSUER));
    let code = query_param(&loc, "code").unwrap();

    // The interaction is single-use too.
    let again = post_form(
        &app,
        "/authorize/login",
        &[("interaction", &interaction), ("username", "alice")],
        None,
    )
    .await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);

    let t = redeem(&app, &code, REDIRECT, VERIFIER, BASIC).await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.body);
    assert_eq!(t.headers[header::CACHE_CONTROL], "no-store");
    let t = t.json();
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 3600);
    assert_eq!(
        t["scope"],
        "openid profile offline_access api://influxion-dev/access_as_user"
    );
    assert!(t["refresh_token"].as_str().unwrap().len() >= 43);

    let key = decoding_key(&app).await;
    let oid = user_object_id("alice");
    let at = decode(t["access_token"].as_str().unwrap(), &key, AUDIENCE);
    assert_eq!(at["sub"], oid);
    assert_eq!(at["oid"], oid);
    assert_eq!(at["tid"], DEV_TENANT_ID);
    assert_eq!(at["azp"], CLIENT);
    assert_eq!(at["idtyp"], "user");
    assert_eq!(at["ver"], "2.0");
    assert_eq!(at["scp"], "access_as_user");
    assert_eq!(at["roles"], serde_json::json!(["Influxion.Admin"]));
    assert_eq!(at["name"], "Alice <Admin>");
    assert_eq!(at["preferred_username"], "alice");
    assert_eq!(
        at["exp"].as_u64().unwrap(),
        at["iat"].as_u64().unwrap() + 3600
    );

    let id = decode(t["id_token"].as_str().unwrap(), &key, CLIENT);
    assert_eq!(id["nonce"], "n-456");
    assert_eq!(id["aud"], CLIENT);
    assert_eq!(id["azp"], CLIENT);
    assert_eq!(id["sub"], oid);
    assert_eq!(id["email"], "alice@dev.influxion.invalid");
    assert!(id["auth_time"].as_u64().is_some());
    let header = jsonwebtoken::decode_header(t["id_token"].as_str().unwrap()).unwrap();
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert!(header.kid.is_some());
}

#[tokio::test]
async fn user_without_roles_has_no_roles_claim() {
    let app = app();
    let code = code_for(&app, "bob").await;
    let t = redeem(&app, &code, REDIRECT, VERIFIER, BASIC).await.json();
    let at = decode(
        t["access_token"].as_str().unwrap(),
        &decoding_key(&app).await,
        AUDIENCE,
    );
    assert!(at.get("roles").is_none());
    assert_eq!(at["preferred_username"], "bob");
}

#[tokio::test]
async fn redirect_uri_query_is_kept() {
    let app = app();
    let loc = sign_in(
        &app,
        &[("redirect_uri", Some(REDIRECT_WITH_QUERY))],
        "alice",
    )
    .await;
    assert_eq!(query_param(&loc, "tenant").as_deref(), Some("dev"));
    let code = query_param(&loc, "code").unwrap();
    let t = redeem(&app, &code, REDIRECT_WITH_QUERY, VERIFIER, BASIC).await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.body);
}

#[tokio::test]
async fn wrong_verifier_is_invalid_grant_and_burns_the_code() {
    let app = app();
    let code = code_for(&app, "alice").await;
    let wrong = "x".repeat(43);
    let r = redeem(&app, &code, REDIRECT, &wrong, BASIC).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "invalid_grant");
    let r = redeem(&app, &code, REDIRECT, VERIFIER, BASIC).await;
    assert_eq!(r.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn code_replay_is_invalid_grant() {
    let app = app();
    let code = code_for(&app, "alice").await;
    assert_eq!(
        redeem(&app, &code, REDIRECT, VERIFIER, BASIC).await.status,
        StatusCode::OK
    );
    let r = redeem(&app, &code, REDIRECT, VERIFIER, BASIC).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn wrong_redirect_uri_at_token_is_invalid_grant() {
    let app = app();
    let code = code_for(&app, "alice").await;
    let r = redeem(&app, &code, REDIRECT_WITH_QUERY, VERIFIER, BASIC).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn wrong_client_secret_is_invalid_client() {
    let app = app();
    let code = code_for(&app, "alice").await;
    let r = redeem(&app, &code, REDIRECT, VERIFIER, "keyclient:nope").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error"], "invalid_client");
    assert!(r.headers.contains_key(header::WWW_AUTHENTICATE));
    // client_secret_post with the right secret still works: the code was not burnt.
    let r = post_form(
        &app,
        "/token",
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // A client-credentials client is not a web client.
    let r = redeem(&app, "whatever", REDIRECT, VERIFIER, "ci:ci-secret").await;
    assert_eq!(r.json()["error"], "invalid_client");
}

#[tokio::test]
async fn bad_client_or_redirect_uri_is_shown_not_redirected() {
    let app = app();
    for overrides in [
        vec![("redirect_uri", Some("http://evil.example/cb"))],
        vec![("redirect_uri", None)],
        vec![("client_id", Some("nobody"))],
        vec![("client_id", None)],
        vec![("client_id", Some("ci"))],
    ] {
        let r = get(&app, &authorize_query(&overrides)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{overrides:?}");
        assert!(!r.headers.contains_key(header::LOCATION));
        assert!(!r.body.contains("evil.example"));
    }
}

#[tokio::test]
async fn request_errors_redirect_to_the_client() {
    let app = app();
    type Case<'a> = (Vec<(&'a str, Option<&'a str>)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec![("code_challenge", None)], "invalid_request"),
        (vec![("code_challenge_method", None)], "invalid_request"),
        (
            vec![("code_challenge_method", Some("plain"))],
            "invalid_request",
        ),
        (vec![("code_challenge", Some("short"))], "invalid_request"),
        (vec![("nonce", None)], "invalid_request"),
        (
            vec![("response_type", Some("token"))],
            "unsupported_response_type",
        ),
        (vec![("response_type", None)], "invalid_request"),
        (vec![("scope", Some("profile"))], "invalid_scope"),
    ];
    for (overrides, error) in cases {
        let r = get(&app, &authorize_query(&overrides)).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{overrides:?}");
        let loc = r.location();
        assert!(loc.as_str().starts_with(REDIRECT));
        assert_eq!(
            query_param(&loc, "error").as_deref(),
            Some(error),
            "{overrides:?}"
        );
        assert!(query_param(&loc, "error_description").is_some());
        assert_eq!(query_param(&loc, "state").as_deref(), Some("st-123"));
        assert!(query_param(&loc, "code").is_none());
    }
    // state is required too; the error cannot echo it.
    let r = get(&app, &authorize_query(&[("state", None)])).await;
    let loc = r.location();
    assert_eq!(
        query_param(&loc, "error").as_deref(),
        Some("invalid_request")
    );
    assert!(query_param(&loc, "state").is_none());
    // A repeated parameter is refused.
    let q = format!("{}&nonce=again", authorize_query(&[]));
    let loc = get(&app, &q).await.location();
    assert_eq!(
        query_param(&loc, "error").as_deref(),
        Some("invalid_request")
    );
}

#[tokio::test]
async fn login_errors_are_pages() {
    let app = app();
    let r = post_form(
        &app,
        "/authorize/login",
        &[("interaction", "nope"), ("username", "alice")],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(!r.headers.contains_key(header::LOCATION));

    let page = get(&app, &authorize_query(&[])).await;
    let interaction = interaction_of(&page.body);
    let r = post_form(
        &app,
        "/authorize/login",
        &[("interaction", &interaction), ("username", "mallory")],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // An unknown user does not consume the interaction.
    let r = post_form(
        &app,
        "/authorize/login",
        &[("interaction", &interaction), ("username", "bob")],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn refresh_rotates() {
    let app = app();
    let code = code_for(&app, "alice").await;
    let first = redeem(&app, &code, REDIRECT, VERIFIER, BASIC).await.json();
    let rt1 = first["refresh_token"].as_str().unwrap().to_owned();
    let refresh = |rt: String, basic: &'static str| {
        let app = app.clone();
        async move {
            post_form(
                &app,
                "/token",
                &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
                Some(basic),
            )
            .await
        }
    };
    // Another client's secret cannot use it (nor burn it).
    let r = refresh(rt1.clone(), "keyclient:nope").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let r = refresh(rt1.clone(), BASIC).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let second = r.json();
    let rt2 = second["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rt1, rt2);
    let key = decoding_key(&app).await;
    let at = decode(second["access_token"].as_str().unwrap(), &key, AUDIENCE);
    assert_eq!(at["sub"], user_object_id("alice"));
    let id = decode(second["id_token"].as_str().unwrap(), &key, CLIENT);
    assert!(id.get("nonce").is_none());
    assert_eq!(second["scope"], first["scope"]);

    let r = refresh(rt1, BASIC).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "invalid_grant");
    assert_eq!(refresh(rt2, BASIC).await.status, StatusCode::OK);
}

#[tokio::test]
async fn token_endpoint_errors() {
    let app = app();
    let r = post_form(&app, "/token", &[("grant_type", "password")], Some(BASIC)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "unsupported_grant_type");
    let r = post_form(&app, "/token", &[], Some(BASIC)).await;
    assert_eq!(r.json()["error"], "invalid_request");
    let r = post_form(
        &app,
        "/token",
        &[("grant_type", "authorization_code"), ("code", "c")],
        Some(BASIC),
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_request");
}

#[tokio::test]
async fn client_credentials_unchanged() {
    let app = app();
    let r = post_form(
        &app,
        "/token",
        &[
            ("grant_type", "client_credentials"),
            ("scope", "api://influxion-dev/.default"),
        ],
        Some("ci:ci-secret"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let t = r.json();
    let at = decode(
        t["access_token"].as_str().unwrap(),
        &decoding_key(&app).await,
        AUDIENCE,
    );
    assert_eq!(at["idtyp"], "app");
    assert_eq!(at["roles"], serde_json::json!(["Influxion.Sign"]));
    assert!(at.get("scp").is_none());
    let r = post_form(
        &app,
        "/token",
        &[("grant_type", "client_credentials")],
        Some("keyclient:keyclient-secret"),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn logout_redirects_only_to_registered_uris() {
    let app = app();
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("client_id", CLIENT)
        .append_pair("post_logout_redirect_uri", AFTER_LOGOUT)
        .append_pair("state", "bye")
        .finish();
    let r = get(&app, &format!("/logout?{q}")).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let loc = r.location();
    assert!(loc.as_str().starts_with(AFTER_LOGOUT));
    assert_eq!(query_param(&loc, "state").as_deref(), Some("bye"));

    for q in [
        format!("client_id={CLIENT}&post_logout_redirect_uri=http%3A%2F%2Fevil.example%2F"),
        "client_id=nobody&post_logout_redirect_uri=http%3A%2F%2F127.0.0.1%3A8090%2F".to_owned(),
        "post_logout_redirect_uri=http%3A%2F%2F127.0.0.1%3A8090%2F".to_owned(),
        String::new(),
    ] {
        let r = get(&app, &format!("/logout?{q}")).await;
        assert_eq!(r.status, StatusCode::OK, "{q}");
        assert!(!r.headers.contains_key(header::LOCATION));
        assert!(r
            .body
            .contains("You are signed out of the development issuer"));
    }

    // An ID token we issued names the client too.
    let code = code_for(&app, "alice").await;
    let t = redeem(&app, &code, REDIRECT, VERIFIER, BASIC).await.json();
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("id_token_hint", t["id_token"].as_str().unwrap())
        .append_pair("post_logout_redirect_uri", AFTER_LOGOUT)
        .finish();
    assert_eq!(
        get(&app, &format!("/logout?{q}")).await.status,
        StatusCode::SEE_OTHER
    );
}

#[test]
fn persisted_state_without_new_fields_still_loads() {
    let mut v = serde_json::to_value(state()).unwrap();
    let o = v.as_object_mut().unwrap();
    o.remove("users");
    o.remove("web_clients");
    o.remove("access_token_ttl_secs");
    let s: DevIdpState = serde_json::from_value(v).unwrap();
    assert!(s.users.is_empty() && s.web_clients.is_empty());
    assert_eq!(s.access_token_ttl_secs, 3600);
}

#[test]
fn secrets_are_redacted_and_ids_stable() {
    let c = &state().web_clients[0];
    assert!(!format!("{c:?}").contains(SECRET));
    assert_eq!(user_object_id("alice"), user_object_id("alice"));
    assert_ne!(user_object_id("alice"), user_object_id("bob"));
    assert_ne!(user_object_id("alice"), uuid_like("alice"));
    assert!(uuid::Uuid::parse_str(&user_object_id("alice")).is_ok());
}

#[test]
fn pkce_matches_rfc7636_example() {
    assert_eq!(
        challenge(VERIFIER),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    );
}

#[test]
fn stores_are_bounded() {
    let mut map: HashMap<Key, RefreshGrant> = HashMap::new();
    let grant = |exp| RefreshGrant {
        client_id: String::new(),
        username: String::new(),
        scope: String::new(),
        auth_time: 0,
        expires_at: exp,
    };
    for n in 0..(STORE_CAP as u64 + 5) {
        insert_bounded(&mut map, key_of(&n.to_string()), grant(100 + n), 10);
    }
    assert_eq!(map.len(), STORE_CAP);
    // The newest survived; expired ones go on the next insert.
    assert!(map.contains_key(&key_of(&(STORE_CAP as u64 + 4).to_string())));
    insert_bounded(
        &mut map,
        key_of("late"),
        grant(1_000_000),
        100 + STORE_CAP as u64,
    );
    assert_eq!(map.len(), 5);
}

/// The keyserver's own validator, configured as `influxion dev` does, accepts the
/// delegated token as a user with the API scope.
#[tokio::test]
async fn keyserver_validator_accepts_user_tokens() {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let issuer = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let app = router(&issuer, state()).unwrap();
    tokio::spawn(axum::serve(listener, app.clone()).into_future());

    // Same flow, against the issuer's real URL.
    let page = get(&app, &authorize_query(&[])).await;
    let r = post_form(
        &app,
        "/authorize/login",
        &[
            ("interaction", &interaction_of(&page.body)),
            ("username", "alice"),
        ],
        None,
    )
    .await;
    let code = query_param(&r.location(), "code").unwrap();
    let t = redeem(&app, &code, REDIRECT, VERIFIER, BASIC).await.json();

    let v = influxion_auth::Validator::new(crate::validator_config(&issuer, AUDIENCE)).unwrap();
    let p = v
        .validate(t["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(p.kind, influxion_core::CallerKind::User);
    assert_eq!(p.object_id, user_object_id("alice"));
    assert_eq!(p.app_id.as_deref(), Some(CLIENT));
    assert!(p.has_scope("access_as_user"));
    assert!(p.has_role("Influxion.Admin"));
    assert_eq!(p.name.as_deref(), Some("Alice <Admin>"));
    // The ID token is not an access token for the API.
    assert!(v.validate(t["id_token"].as_str().unwrap()).await.is_err());
}
