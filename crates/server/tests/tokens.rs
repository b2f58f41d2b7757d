//! Bad-token cases against the real router, a real SQLite store, and a loopback
//! identity provider: each asserts the exact status, problem type and challenge.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

async fn setup() -> (TestIdp, Harness) {
    let k = keys();
    let idp = TestIdp::start("", &[&k.rsa1, &k.ec1]).await;
    let h = Harness::new(auth_config(&idp)).await;
    (idp, h)
}

async fn me(h: &Harness, token: &str) -> Resp {
    h.call("GET", "/v1/me", Some(token), None).await
}

fn with(mut claims: Value, key: &str, v: Value) -> Value {
    claims[key] = v;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

#[tokio::test]
async fn valid_app_and_user_tokens_are_accepted() {
    let (idp, h) = setup().await;
    let r = me(&h, &token(&keys().rsa1, &app_claims(&idp.issuer))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["principal"]["kind"], "app");
    assert_eq!(r.json["principal"]["tenant_id"], TENANT);
    assert_eq!(r.json["principal"]["app_id"], "ci-signer");
    let r = me(&h, &token(&keys().ec1, &user_claims(&idp.issuer))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["principal"]["kind"], "user");
    assert_eq!(r.json["principal"]["name"], "Alice Approver");
    // v2 tokens carry the API's client id as audience.
    let r = me(
        &h,
        &token(
            &keys().rsa1,
            &with(app_claims(&idp.issuer), "aud", json!(API_CLIENT_ID)),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Expired a minute ago is within Microsoft's default five-minute skew.
    let r = me(
        &h,
        &token(
            &keys().rsa1,
            &with(app_claims(&idp.issuer), "exp", json!(now() - 60)),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn no_token() {
    let (_idp, h) = setup().await;
    h.call("GET", "/v1/me", None, None)
        .await
        .assert_invalid_token("token-missing");
    let a = h.state.store.recent_audit(1).await.unwrap().remove(0);
    assert_eq!(
        (a.action.as_str(), a.outcome.as_str()),
        ("authenticate", "refused")
    );
    assert!(a.detail.contains("token-missing"));
}

#[tokio::test]
async fn empty_bearer_and_other_schemes() {
    let (_idp, h) = setup().await;
    for header in ["Bearer ", "Bearer    ", "Basic dXNlcjpwYXNz", "Bearertoken"] {
        let req = axum::http::Request::builder()
            .uri("/v1/me")
            .header("authorization", header)
            .body(axum::body::Body::empty())
            .unwrap();
        let r = h.send(req).await;
        assert_eq!(r.status, 401, "{header:?}");
        assert!(r.www_authenticate.unwrap().contains("invalid_token"));
    }
}

/// Two Authorization headers, a valid token in either position: refused as ambiguous
/// (RFC 6750 invalid_request), never decided by which one comes first.
#[tokio::test]
async fn two_authorization_headers_are_refused_in_either_order() {
    let (idp, h) = setup().await;
    let good = format!("Bearer {}", token(&keys().rsa1, &app_claims(&idp.issuer)));
    assert_eq!(me(&h, good.trim_start_matches("Bearer ")).await.status, 200);
    for pair in [
        [good.as_str(), "Bearer garbage"],
        ["Bearer garbage", good.as_str()],
    ] {
        let req = axum::http::Request::builder()
            .uri("/v1/me")
            .header("authorization", pair[0])
            .header("authorization", pair[1])
            .body(axum::body::Body::empty())
            .unwrap();
        let r = h.send(req).await;
        r.assert_problem(400, "invalid-request");
        let challenge = r.www_authenticate.as_deref().unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer ") && challenge.contains(r#"error="invalid_request""#),
            "{challenge}"
        );
        let a = h.last_audit().await;
        assert_eq!(
            (a.action.as_str(), a.outcome.as_str()),
            ("authenticate", "refused")
        );
        assert!(a.detail.contains("invalid-request"), "{}", a.detail);
    }
}

#[tokio::test]
async fn malformed_tokens() {
    let (_idp, h) = setup().await;
    for t in ["abc", "a.b", "a.b.c.d", "....", "eyJ.eyJ.sig"] {
        me(&h, t).await.assert_invalid_token("token-malformed");
    }
}

#[tokio::test]
async fn bad_base64() {
    let (idp, h) = setup().await;
    me(&h, "@@@@.e30.c2ln")
        .await
        .assert_invalid_token("token-malformed");
    // Valid header, payload that is not base64url: the signature is checked before the
    // payload is decoded, so an unauthenticated payload is never parsed.
    let good = token(&keys().rsa1, &app_claims(&idp.issuer));
    let parts: Vec<&str> = good.split('.').collect();
    me(&h, &format!("{}.%%%%.{}", parts[0], parts[2]))
        .await
        .assert_invalid_token("token-signature");
    // Signature part that is not base64url.
    me(&h, &format!("{}.{}.%%%%", parts[0], parts[1]))
        .await
        .assert_invalid_token("token-malformed");
}

#[tokio::test]
async fn alg_none() {
    let (idp, h) = setup().await;
    let t = raw_token(
        &json!({"alg": "none", "kid": "rsa-1"}),
        &app_claims(&idp.issuer),
        |_| String::new(),
    );
    me(&h, &t).await.assert_invalid_token("token-algorithm");
    let t = raw_token(
        &json!({"alg": "None", "kid": "rsa-1", "typ": "JWT"}),
        &app_claims(&idp.issuer),
        |_| "x".into(),
    );
    me(&h, &t).await.assert_invalid_token("token-algorithm");
}

#[tokio::test]
async fn hs256_signed_with_the_public_key() {
    let (idp, h) = setup().await;
    let k = keys();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(k.rsa1.kid.clone());
    let forged = jsonwebtoken::encode(
        &header,
        &app_claims(&idp.issuer),
        &jsonwebtoken::EncodingKey::from_secret(k.rsa1.public_pem.as_bytes()),
    )
    .unwrap();
    me(&h, &forged)
        .await
        .assert_invalid_token("token-algorithm");
}

#[tokio::test]
async fn unknown_kid_after_refresh() {
    let (idp, h) = setup().await;
    // Prime the cache.
    assert_eq!(
        me(&h, &token(&keys().rsa1, &app_claims(&idp.issuer)))
            .await
            .status,
        200
    );
    let before = idp.jwks_fetches();
    me(&h, &token(&keys().rsa2, &app_claims(&idp.issuer)))
        .await
        .assert_invalid_token("token-unknown-key");
    assert_eq!(
        idp.jwks_fetches(),
        before + 1,
        "an unknown kid triggers exactly one refresh"
    );
}

#[tokio::test]
async fn unknown_kid_refresh_is_rate_limited() {
    let k = keys();
    let idp = TestIdp::start("", &[&k.rsa1]).await;
    let mut cfg = auth_config(&idp);
    cfg.jwks_min_refresh_interval = std::time::Duration::from_secs(300);
    let h = Harness::new(cfg).await;
    assert_eq!(
        me(&h, &token(&k.rsa1, &app_claims(&idp.issuer)))
            .await
            .status,
        200
    );
    let before = idp.jwks_fetches();
    for i in 0..20 {
        let t = token(&k.rsa2, &with(app_claims(&idp.issuer), "jti", json!(i)));
        me(&h, &t).await.assert_invalid_token("token-unknown-key");
    }
    assert!(
        idp.jwks_fetches() <= before + 1,
        "fetches: {} -> {}",
        before,
        idp.jwks_fetches()
    );
}

#[tokio::test]
async fn jku_x5u_jwk_headers_are_ignored() {
    let k = keys();
    let (idp, h) = setup().await;
    // An attacker's IdP that must never be contacted.
    let evil = TestIdp::start("", &[&k.attacker]).await;
    let claims = app_claims(&idp.issuer);
    for extra in [
        json!({"jku": format!("{}/jwks", evil.base)}),
        json!({"x5u": format!("{}/cert.pem", evil.base)}),
        json!({"jwk": k.attacker.jwk}),
    ] {
        let mut header = json!({"alg": "RS256", "typ": "JWT", "kid": "rsa-1"});
        for (kk, v) in extra.as_object().unwrap() {
            header[kk] = v.clone();
        }
        let t = raw_token(&header, &claims, |input| sign_rs256(&k.attacker, input));
        me(&h, &t).await.assert_invalid_token("token-signature");
        // And with a kid only the attacker knows.
        header["kid"] = json!("evil-kid");
        let t = raw_token(&header, &claims, |input| sign_rs256(&k.attacker, input));
        me(&h, &t).await.assert_invalid_token("token-unknown-key");
    }
    assert_eq!(evil.jwks_fetches(), 0, "the attacker's key URL was fetched");
}

/// RS256 over an arbitrary signing input, to build tokens with custom headers.
fn sign_rs256(key: &TestKey, input: &str) -> String {
    jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &key.encoding,
        jsonwebtoken::Algorithm::RS256,
    )
    .unwrap()
}

#[tokio::test]
async fn expired() {
    let (idp, h) = setup().await;
    let c = with(app_claims(&idp.issuer), "exp", json!(now() - 3600));
    me(&h, &token(&keys().rsa1, &c))
        .await
        .assert_invalid_token("token-expired");
}

#[tokio::test]
async fn missing_exp() {
    let (idp, h) = setup().await;
    let c = without(app_claims(&idp.issuer), "exp");
    me(&h, &token(&keys().rsa1, &c))
        .await
        .assert_invalid_token("token-malformed");
}

#[tokio::test]
async fn nbf_in_the_future() {
    let (idp, h) = setup().await;
    let c = with(app_claims(&idp.issuer), "nbf", json!(now() + 3600));
    me(&h, &token(&keys().rsa1, &c))
        .await
        .assert_invalid_token("token-not-yet-valid");
}

#[tokio::test]
async fn iat_in_the_future() {
    let (idp, h) = setup().await;
    let c = with(app_claims(&idp.issuer), "iat", json!(now() + 3600));
    me(&h, &token(&keys().rsa1, &c))
        .await
        .assert_invalid_token("token-not-yet-valid");
}

#[tokio::test]
async fn wrong_issuer() {
    let (_idp, h) = setup().await;
    let c =
        app_claims("https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0");
    me(&h, &token(&keys().rsa1, &c))
        .await
        .assert_invalid_token("token-issuer");
}

#[tokio::test]
async fn wrong_tenant_single_tenant() {
    let (idp, h) = setup().await;
    let c = with(
        app_claims(&idp.issuer),
        "tid",
        json!("99999999-2222-3333-4444-555555555555"),
    );
    me(&h, &token(&keys().rsa1, &c))
        .await
        .assert_invalid_token("token-tenant");
}

#[tokio::test]
async fn multi_tenant_issuer_template() {
    let k = keys();
    let idp = TestIdp::start("/{tenantid}/v2.0", &[&k.rsa1]).await;
    let mut cfg = auth_config(&idp);
    cfg.tenant_id = None;
    cfg.allowed_tenants = vec![TENANT.into(), "22222222-2222-3333-4444-555555555555".into()];
    let h = Harness::new(cfg).await;
    let iss_for = |tid: &str| format!("{}/{tid}/v2.0", idp.base);
    // Issuer matches its own tid, tenant allowed: accepted.
    let ok = app_claims(&iss_for(TENANT));
    assert_eq!(me(&h, &token(&k.rsa1, &ok)).await.status, 200);
    // Issuer names one tenant, tid another: refused.
    let c = with(
        app_claims(&iss_for(TENANT)),
        "tid",
        json!("22222222-2222-3333-4444-555555555555"),
    );
    me(&h, &token(&k.rsa1, &c))
        .await
        .assert_invalid_token("token-issuer");
    // Consistent but not an allowed tenant.
    let other = "33333333-2222-3333-4444-555555555555";
    let c = with(app_claims(&iss_for(other)), "tid", json!(other));
    me(&h, &token(&k.rsa1, &c))
        .await
        .assert_invalid_token("token-tenant");
    // A template with neither a pinned tenant nor an allow-list accepts no one.
    let mut open = auth_config(&idp);
    open.tenant_id = None;
    open.allowed_tenants = vec![];
    let h2 = Harness::new(open).await;
    me(&h2, &token(&k.rsa1, &ok))
        .await
        .assert_invalid_token("token-tenant");
    // No tid at all under a template.
    let c = without(app_claims(&iss_for(TENANT)), "tid");
    me(&h, &token(&k.rsa1, &c))
        .await
        .assert_invalid_token("token-issuer");
}

#[tokio::test]
async fn wrong_audience() {
    let (idp, h) = setup().await;
    let c = with(
        app_claims(&idp.issuer),
        "aud",
        json!("api://something-else"),
    );
    me(&h, &token(&keys().rsa1, &c))
        .await
        .assert_invalid_token("token-audience");
}

#[tokio::test]
async fn token_for_microsoft_graph() {
    let (idp, h) = setup().await;
    let c = with(
        app_claims(&idp.issuer),
        "aud",
        json!("00000003-0000-0000-c000-000000000000"),
    );
    me(&h, &token(&keys().rsa1, &c))
        .await
        .assert_invalid_token("token-audience");
    // Graph tokens also carry a nonce header; refused before the signature is checked.
    let t = raw_token(
        &json!({"alg": "RS256", "kid": "rsa-1", "typ": "JWT", "nonce": "abc"}),
        &app_claims(&idp.issuer),
        |i| sign_rs256(&keys().rsa1, i),
    );
    me(&h, &t).await.assert_invalid_token("token-audience");
}

#[tokio::test]
async fn token_for_another_application() {
    let (idp, h) = setup().await;
    let c = with(
        app_claims(&idp.issuer),
        "aud",
        json!(["api://payroll", "7d0f0000-0000-4000-8000-000000000000"]),
    );
    me(&h, &token(&keys().rsa1, &c))
        .await
        .assert_invalid_token("token-audience");
}

#[tokio::test]
async fn wrong_version() {
    let (idp, h) = setup().await;
    let c = with(app_claims(&idp.issuer), "ver", json!("1.0"));
    me(&h, &token(&keys().rsa1, &c))
        .await
        .assert_invalid_token("token-version");
}

#[tokio::test]
async fn missing_scope() {
    let (idp, h) = setup().await;
    let c = with(user_claims(&idp.issuer), "scp", json!("User.Read openid"));
    let r = me(&h, &token(&keys().rsa1, &c)).await;
    r.assert_problem(403, "insufficient-scope");
    assert!(r
        .www_authenticate
        .unwrap()
        .contains(r#"error="insufficient_scope""#));
}

#[tokio::test]
async fn missing_app_role() {
    let (idp, h) = setup().await;
    let c = with(app_claims(&idp.issuer), "roles", json!(["Some.Other.Role"]));
    let r = me(&h, &token(&keys().rsa1, &c)).await;
    r.assert_problem(403, "insufficient-scope");
    assert!(r
        .www_authenticate
        .unwrap()
        .contains(r#"error="insufficient_scope""#));
    // Entra omits `roles` when none are assigned.
    let c = without(app_claims(&idp.issuer), "roles");
    me(&h, &token(&keys().rsa1, &c))
        .await
        .assert_problem(403, "insufficient-scope");
}

#[tokio::test]
async fn signature_stripped() {
    let (idp, h) = setup().await;
    let t = token(&keys().rsa1, &app_claims(&idp.issuer));
    let stripped = format!("{}.", t.rsplit_once('.').unwrap().0);
    me(&h, &stripped)
        .await
        .assert_invalid_token("token-signature");
}

#[tokio::test]
async fn payload_tampered() {
    let (idp, h) = setup().await;
    let t = token(&keys().rsa1, &app_claims(&idp.issuer));
    let parts: Vec<&str> = t.split('.').collect();
    let evil = with(
        app_claims(&idp.issuer),
        "roles",
        json!([SIGN_ROLE, ADMIN_ROLE]),
    );
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        B64URL.encode(evil.to_string()),
        parts[2]
    );
    me(&h, &forged)
        .await
        .assert_invalid_token("token-signature");
}

#[tokio::test]
async fn signed_by_an_unpublished_key_with_a_published_kid() {
    let (idp, h) = setup().await;
    me(&h, &token(&keys().attacker, &app_claims(&idp.issuer)))
        .await
        .assert_invalid_token("token-signature");
}

#[tokio::test]
async fn algorithm_does_not_fit_the_key() {
    let (idp, h) = setup().await;
    // ES256 header naming an RSA key.
    let t = raw_token(
        &json!({"alg": "ES256", "kid": "rsa-1"}),
        &app_claims(&idp.issuer),
        |_| "AAAA".into(),
    );
    me(&h, &t).await.assert_invalid_token("token-algorithm");
}

#[tokio::test]
async fn critical_header_and_bad_typ() {
    let (idp, h) = setup().await;
    let t = raw_token(
        &json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"], "exp": 1}),
        &app_claims(&idp.issuer),
        |i| sign_rs256(&keys().rsa1, i),
    );
    me(&h, &t).await.assert_invalid_token("token-malformed");
    let t = raw_token(
        &json!({"alg": "RS256", "kid": "rsa-1", "typ": "dpop+jwt"}),
        &app_claims(&idp.issuer),
        |i| sign_rs256(&keys().rsa1, i),
    );
    me(&h, &t).await.assert_invalid_token("token-malformed");
}

#[tokio::test]
async fn oversized_token() {
    let (idp, h) = setup().await;
    let c = with(
        app_claims(&idp.issuer),
        "padding",
        json!("x".repeat(20_000)),
    );
    me(&h, &token(&keys().rsa1, &c))
        .await
        .assert_invalid_token("token-too-large");
}

#[tokio::test]
async fn symmetric_keys_in_the_jwks_are_never_used() {
    let (idp, h) = setup().await;
    let secret = b"published-hmac-secret-published-hmac";
    let mut jwks: Vec<Value> = vec![keys().rsa1.jwk.clone()];
    jwks.push(json!({"kty": "oct", "kid": "hmac-1", "k": B64URL.encode(secret)}));
    idp.publish_raw(jwks);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("hmac-1".into());
    let t = jsonwebtoken::encode(
        &header,
        &app_claims(&idp.issuer),
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap();
    me(&h, &t).await.assert_invalid_token("token-algorithm");
}

#[tokio::test]
async fn key_rotation() {
    let k = keys();
    let idp = TestIdp::start("", &[&k.rsa1]).await;
    let h = Harness::new(auth_config(&idp)).await;
    let old = token(&k.rsa1, &app_claims(&idp.issuer));
    assert_eq!(me(&h, &old).await.status, 200);
    // The provider rotates: publishes the new key and withdraws the old one.
    idp.publish(&[&k.rsa2]);
    let new = token(&k.rsa2, &app_claims(&idp.issuer));
    assert_eq!(
        me(&h, &new).await.status,
        200,
        "new key accepted after rotation"
    );
    // The old key is gone; even a token already seen is refused now.
    me(&h, &old).await.assert_invalid_token("token-unknown-key");
    let fresh_old = token(&k.rsa1, &with(app_claims(&idp.issuer), "jti", json!("x")));
    me(&h, &fresh_old)
        .await
        .assert_invalid_token("token-unknown-key");
}

#[tokio::test]
async fn cached_keys_survive_an_unreachable_provider() {
    let k = keys();
    let mut idp = TestIdp::start("", &[&k.rsa1]).await;
    let h = Harness::new(auth_config(&idp)).await;
    assert_eq!(
        me(&h, &token(&k.rsa1, &app_claims(&idp.issuer)))
            .await
            .status,
        200
    );
    idp.stop().await;
    let t = token(
        &k.rsa1,
        &with(app_claims(&idp.issuer), "jti", json!("after-outage")),
    );
    assert_eq!(
        me(&h, &t).await.status,
        200,
        "validation continues with cached keys"
    );
    // An unknown kid cannot be resolved while the provider is down.
    me(&h, &token(&k.rsa2, &app_claims(&idp.issuer)))
        .await
        .assert_invalid_token("token-unknown-key");
}

#[tokio::test]
async fn provider_unreachable_from_the_start_is_503() {
    let k = keys();
    let mut idp = TestIdp::start("", &[&k.rsa1]).await;
    idp.stop().await;
    let h = Harness::new(auth_config(&idp)).await;
    let r = me(&h, &token(&k.rsa1, &app_claims(&idp.issuer))).await;
    r.assert_problem(503, "token-validation-unavailable");
}

// ------------------------------------------------------------ issue 12, items 1–3

/// An Entra ID token issued to the keyclient when the web client and the API are one
/// app registration: `aud` is the API's client id, and a user assigned the app role
/// carries it in `roles`. It must never pass as an (app-only) access token.
fn id_token_claims(issuer: &str) -> Value {
    let n = now();
    json!({
        "iss": issuer,
        "aud": API_CLIENT_ID,
        "tid": TENANT,
        "oid": "bbbbbbbb-0000-4000-8000-000000000002",
        "sub": "pairwise-subject-of-alice",
        "ver": "2.0",
        "name": "Alice Approver",
        "preferred_username": "alice@contoso.example",
        "roles": [SIGN_ROLE],
        "nonce": "n-0S6_WzA2Mj",
        "iat": n,
        "nbf": n,
        "exp": n + 600,
    })
}

#[tokio::test]
async fn id_tokens_are_not_access_tokens() {
    let (idp, h) = setup().await;
    let k = keys();
    // With the app role in `roles` it used to be taken as an app-only caller.
    let r = me(&h, &token(&k.rsa1, &id_token_claims(&idp.issuer))).await;
    r.assert_invalid_token("token-not-access-token");
    let a = h.last_audit().await;
    assert_eq!(
        (a.action.as_str(), a.outcome.as_str()),
        ("authenticate", "refused")
    );
    assert!(a.detail.contains("token-not-access-token"), "{}", a.detail);
    // Without roles it used to get a 403 (insufficient scope) instead of a 401.
    let c = without(id_token_claims(&idp.issuer), "roles");
    me(&h, &token(&k.rsa1, &c))
        .await
        .assert_invalid_token("token-not-access-token");
    // Each ID-token-only claim alone is enough, even on an otherwise valid token.
    for claim in ["nonce", "at_hash", "c_hash"] {
        let c = with(app_claims(&idp.issuer), claim, json!("x"));
        me(&h, &token(&k.rsa1, &c))
            .await
            .assert_invalid_token("token-not-access-token");
    }
    // An ID token without nonce (implicit-less flows) still lacks the client claim
    // every Entra v2 access token carries.
    let c = without(id_token_claims(&idp.issuer), "nonce");
    me(&h, &token(&k.rsa1, &c))
        .await
        .assert_invalid_token("token-not-access-token");
    for (claims, why) in [
        (without(app_claims(&idp.issuer), "azp"), "v2 app"),
        (without(user_claims(&idp.issuer), "azp"), "v2 user"),
    ] {
        let r = me(&h, &token(&k.rsa1, &claims)).await;
        assert_eq!(r.status, 401, "{why}: {}", r.text);
        assert!(
            r.problem_type().ends_with("/token-not-access-token"),
            "{why}: {}",
            r.text
        );
    }
    // An empty azp is no client either.
    let c = with(app_claims(&idp.issuer), "azp", json!(""));
    me(&h, &token(&k.rsa1, &c))
        .await
        .assert_invalid_token("token-not-access-token");
}

#[tokio::test]
async fn v1_and_rfc9068_tokens_need_their_client_claim() {
    let k = keys();
    let idp = TestIdp::start("", &[&k.rsa1]).await;
    let mut cfg = auth_config(&idp);
    cfg.extra_issuers = vec!["https://sts.windows.net/{tenantid}/".into()];
    cfg.accepted_versions = vec![];
    let h = Harness::new(cfg).await;
    let v1 = |c: Value| {
        let mut c = with(
            c,
            "iss",
            json!(format!("https://sts.windows.net/{TENANT}/")),
        );
        c["ver"] = json!("1.0");
        c["aud"] = json!(AUDIENCE);
        c.as_object_mut().unwrap().remove("azp");
        c
    };
    // A v1 access token names its client in appid.
    let good = with(v1(app_claims(&idp.issuer)), "appid", json!("ci-signer"));
    let r = me(&h, &token(&k.rsa1, &good)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["principal"]["app_id"], "ci-signer");
    me(&h, &token(&k.rsa1, &v1(app_claims(&idp.issuer))))
        .await
        .assert_invalid_token("token-not-access-token");
    // Providers without `ver` (RFC 9068): client_id (or azp).
    let rfc = |c: Value| without(without(c, "ver"), "azp");
    me(&h, &token(&k.rsa1, &rfc(app_claims(&idp.issuer))))
        .await
        .assert_invalid_token("token-not-access-token");
    let c = with(
        rfc(app_claims(&idp.issuer)),
        "client_id",
        json!("ci-signer"),
    );
    assert_eq!(me(&h, &token(&k.rsa1, &c)).await.status, 200);
}

#[tokio::test]
async fn audience_arrays_are_refused_unless_exactly_this_api() {
    let (idp, h) = setup().await;
    let k = keys();
    let graph = "00000003-0000-0000-c000-000000000000";
    for aud in [
        json!([API_CLIENT_ID, graph]),
        json!([graph, API_CLIENT_ID]),
        json!([AUDIENCE, API_CLIENT_ID]),
        json!([API_CLIENT_ID, API_CLIENT_ID]),
        json!([]),
    ] {
        let c = with(app_claims(&idp.issuer), "aud", aud.clone());
        let r = me(&h, &token(&k.rsa1, &c)).await;
        assert_eq!(r.status, 401, "{aud}: {}", r.text);
        assert!(r.problem_type().ends_with("/token-audience"), "{aud}");
    }
    // An array of exactly one element equal to the API is the same as the string.
    let c = with(app_claims(&idp.issuer), "aud", json!([API_CLIENT_ID]));
    assert_eq!(me(&h, &token(&k.rsa1, &c)).await.status, 200);
}

#[tokio::test]
async fn version_must_fit_the_issuer_form() {
    let k = keys();
    let idp = TestIdp::start(&format!("/{TENANT}/v2.0"), &[&k.rsa1]).await;
    let mut cfg = auth_config(&idp);
    cfg.extra_issuers = vec!["https://sts.windows.net/{tenantid}/".into()];
    // Accept either version, so only the issuer-form rule can refuse.
    cfg.accepted_versions = vec![];
    let h = Harness::new(cfg).await;
    let v2 = app_claims(&idp.issuer);
    assert_eq!(me(&h, &token(&k.rsa1, &v2)).await.status, 200);
    // A v2.0 issuer with ver 1.0 (and the v1 client claim, so nothing else is wrong).
    let c = with(
        with(v2.clone(), "ver", json!("1.0")),
        "appid",
        json!("ci-signer"),
    );
    me(&h, &token(&k.rsa1, &c))
        .await
        .assert_invalid_token("token-version");
    me(&h, &token(&k.rsa1, &without(v2.clone(), "ver")))
        .await
        .assert_invalid_token("token-version");
    // An sts.windows.net (v1) issuer with ver 2.0.
    let c = with(
        v2,
        "iss",
        json!(format!("https://sts.windows.net/{TENANT}/")),
    );
    me(&h, &token(&k.rsa1, &c))
        .await
        .assert_invalid_token("token-version");
}
