//! The signing API against the real router, store and software keystore: good paths,
//! and each bad input with its exact problem and audit record.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::*;
use serde_json::{json, Value};
use sha2::Digest as _;

struct Ctx {
    _idp: TestIdp,
    h: Harness,
    signer: String,
    admin: String,
}

async fn setup() -> Ctx {
    let k = keys();
    let idp = TestIdp::start("", &[&k.rsa1]).await;
    let h = Harness::new(auth_config(&idp)).await;
    let signer = token(&k.rsa1, &app_claims(&idp.issuer));
    let mut a = app_claims(&idp.issuer);
    a["roles"] = json!([ADMIN_ROLE]);
    a["azp"] = json!("key-admin");
    a["oid"] = json!("cccccccc-0000-4000-8000-000000000003");
    let admin = token(&k.rsa1, &a);
    let r = h.create_key(&admin, "fw", "ec-p256").await;
    assert_eq!(r.status, 201, "{}", r.text);
    Ctx {
        _idp: idp,
        h,
        signer,
        admin,
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

async fn assert_refusal_audited(h: &Harness, action: &str, target: &str, slug: &str) {
    let a = h.last_audit().await;
    assert_eq!(a.action, action);
    assert_eq!(a.outcome, "refused");
    assert_eq!(a.target.as_deref(), Some(target));
    let d: Value = serde_json::from_str(&a.detail).unwrap();
    assert_eq!(d["reason"], slug, "{}", a.detail);
}

#[tokio::test]
async fn sign_and_verify_round_trip_with_audit() {
    let c = setup().await;
    let digest = sha256_hex(b"firmware image");
    let r =
        c.h.call(
            "POST",
            "/v1/keys/fw/sign",
            Some(&c.signer),
            Some(json!({"digest": digest})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["algorithm"], "ES256");
    let sig = r.json["signature"].as_str().unwrap().to_owned();
    assert!(B64.decode(&sig).is_ok());
    let seq = r.json["audit_seq"].as_u64().unwrap();
    let a = c.h.last_audit().await;
    assert_eq!(
        (
            u64::try_from(a.seq).unwrap(),
            a.action.as_str(),
            a.outcome.as_str()
        ),
        (seq, "sign", "ok")
    );
    assert!(a.detail.contains(&digest));
    assert!(a.actor.starts_with("app:"), "{}", a.actor);

    let v =
        c.h.call(
            "POST",
            "/v1/keys/fw/verify",
            Some(&c.signer),
            Some(json!({"digest": digest, "signature": sig})),
        )
        .await;
    assert_eq!(v.json["valid"], true, "{}", v.text);
    let other = sha256_hex(b"other image");
    let v =
        c.h.call(
            "POST",
            "/v1/keys/fw/verify",
            Some(&c.signer),
            Some(json!({"digest": other, "signature": sig})),
        )
        .await;
    assert_eq!(v.json["valid"], false);
}

#[tokio::test]
async fn every_key_type_signs() {
    let c = setup().await;
    for (name, kt, alg, hash_len) in [
        ("p384", "ec-p384", "ES384", 48),
        ("ed", "ed25519", "EdDSA", 32),
        ("rsa", "rsa-3072", "PS256", 32),
        ("rsa4k", "rsa-4096", "RS512", 64),
    ] {
        let r = c.h.create_key(&c.admin, name, kt).await;
        assert_eq!(r.status, 201, "{}", r.text);
        assert_eq!(r.json["key_type"], kt);
        assert!(r.json["public_key_pem"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----"));
        let digest = hex::encode(vec![7u8; hash_len]);
        let s =
            c.h.call(
                "POST",
                &format!("/v1/keys/{name}/sign"),
                Some(&c.signer),
                Some(json!({"digest": digest, "algorithm": alg})),
            )
            .await;
        assert_eq!(s.status, 200, "{kt}: {}", s.text);
        let v =
            c.h.call(
                "POST",
                &format!("/v1/keys/{name}/verify"),
                Some(&c.signer),
                Some(json!({"digest": digest, "algorithm": alg, "signature": s.json["signature"]})),
            )
            .await;
        assert_eq!(v.json["valid"], true, "{kt}");
    }
}

#[tokio::test]
async fn unknown_key() {
    let c = setup().await;
    let r =
        c.h.call(
            "POST",
            "/v1/keys/nope/sign",
            Some(&c.signer),
            Some(json!({"digest": sha256_hex(b"x")})),
        )
        .await;
    r.assert_problem(404, "unknown-key");
    assert_refusal_audited(&c.h, "sign", "nope", "unknown-key").await;
}

#[tokio::test]
async fn invalid_key_name() {
    let c = setup().await;
    let r =
        c.h.call(
            "POST",
            "/v1/keys/..%2Fetc/sign",
            Some(&c.signer),
            Some(json!({"digest": sha256_hex(b"x")})),
        )
        .await;
    r.assert_problem(400, "invalid-key-name");
}

#[tokio::test]
async fn disabled_key() {
    let c = setup().await;
    let r =
        c.h.call("POST", "/v1/keys/fw/disable", Some(&c.admin), None)
            .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["status"], "disabled");
    let a = c.h.last_audit().await;
    assert_eq!(
        (a.action.as_str(), a.outcome.as_str()),
        ("key.disable", "ok")
    );
    let r =
        c.h.call(
            "POST",
            "/v1/keys/fw/sign",
            Some(&c.signer),
            Some(json!({"digest": sha256_hex(b"x")})),
        )
        .await;
    r.assert_problem(409, "key-disabled");
    assert_refusal_audited(&c.h, "sign", "fw", "key-disabled").await;
}

#[tokio::test]
async fn wrong_digest_length() {
    let c = setup().await;
    let r =
        c.h.call(
            "POST",
            "/v1/keys/fw/sign",
            Some(&c.signer),
            Some(json!({"digest": hex::encode([1u8; 20])})),
        )
        .await;
    r.assert_problem(400, "digest-length");
    assert!(r.json["detail"].as_str().unwrap().contains("32-byte"));
    assert_refusal_audited(&c.h, "sign", "fw", "digest-length").await;
}

#[tokio::test]
async fn digest_not_hex() {
    let c = setup().await;
    let r =
        c.h.call(
            "POST",
            "/v1/keys/fw/sign",
            Some(&c.signer),
            Some(json!({"digest": "zz".repeat(32)})),
        )
        .await;
    r.assert_problem(400, "digest-encoding");
    assert_refusal_audited(&c.h, "sign", "fw", "digest-encoding").await;
}

#[tokio::test]
async fn algorithm_not_allowed_for_key_type() {
    let c = setup().await;
    for alg in ["ES384", "RS256", "EdDSA"] {
        let r =
            c.h.call(
                "POST",
                "/v1/keys/fw/sign",
                Some(&c.signer),
                Some(json!({"digest": sha256_hex(b"x"), "algorithm": alg})),
            )
            .await;
        r.assert_problem(400, "algorithm-not-allowed");
        assert_refusal_audited(&c.h, "sign", "fw", "algorithm-not-allowed").await;
    }
}

#[tokio::test]
async fn unknown_algorithm() {
    let c = setup().await;
    for alg in ["none", "HS256", "es256"] {
        let r =
            c.h.call(
                "POST",
                "/v1/keys/fw/sign",
                Some(&c.signer),
                Some(json!({"digest": sha256_hex(b"x"), "algorithm": alg})),
            )
            .await;
        r.assert_problem(400, "unsupported-algorithm");
    }
}

#[tokio::test]
async fn oversized_body() {
    let c = setup().await;
    let r =
        c.h.call(
            "POST",
            "/v1/keys/fw/sign",
            Some(&c.signer),
            Some(json!({"digest": sha256_hex(b"x"), "pad": "x".repeat(64 * 1024)})),
        )
        .await;
    r.assert_problem(413, "body-too-large");
    assert_refusal_audited(&c.h, "sign", "fw", "body-too-large").await;
}

#[tokio::test]
async fn malformed_bodies() {
    let c = setup().await;
    // Unknown field.
    let r =
        c.h.call(
            "POST",
            "/v1/keys/fw/sign",
            Some(&c.signer),
            Some(json!({"digest": sha256_hex(b"x"), "file": "/etc/passwd"})),
        )
        .await;
    r.assert_problem(400, "invalid-request");
    // Missing digest.
    let r =
        c.h.call("POST", "/v1/keys/fw/sign", Some(&c.signer), Some(json!({})))
            .await;
    r.assert_problem(400, "invalid-request");
    // Not JSON at all.
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/keys/fw/sign")
        .header("authorization", format!("Bearer {}", c.signer))
        .header("content-type", "application/json")
        .body(axum::body::Body::from("{not json"))
        .unwrap();
    c.h.send(req).await.assert_problem(400, "invalid-request");
    // No content type.
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/keys/fw/sign")
        .header("authorization", format!("Bearer {}", c.signer))
        .body(axum::body::Body::from(
            json!({"digest": sha256_hex(b"x")}).to_string(),
        ))
        .unwrap();
    c.h.send(req)
        .await
        .assert_problem(415, "unsupported-media-type");
}

#[tokio::test]
async fn key_administration_needs_the_admin_role() {
    let c = setup().await;
    let r = c.h.create_key(&c.signer, "sneaky", "ec-p256").await;
    r.assert_problem(403, "forbidden");
    assert_refusal_audited(&c.h, "key.create", "keys", "forbidden").await;
    let r =
        c.h.call("POST", "/v1/keys/fw/disable", Some(&c.signer), None)
            .await;
    r.assert_problem(403, "forbidden");
    let r = c.h.call("GET", "/v1/audit", Some(&c.signer), None).await;
    r.assert_problem(403, "forbidden");
}

#[tokio::test]
async fn a_caller_matching_no_subject_can_only_ask_who_it_is() {
    let c = setup().await;
    let mut claims = app_claims(&c._idp.issuer);
    claims["azp"] = json!("stranger");
    let stranger = token(&keys().rsa1, &claims);
    let r =
        c.h.call(
            "POST",
            "/v1/keys/fw/sign",
            Some(&stranger),
            Some(json!({"digest": sha256_hex(b"x")})),
        )
        .await;
    r.assert_problem(403, "forbidden");
    assert!(
        r.json["detail"]
            .as_str()
            .unwrap()
            .contains("matches no subject"),
        "{}",
        r.text
    );
    assert_refusal_audited(&c.h, "sign", "fw", "forbidden").await;
    c.h.call("GET", "/v1/keys", Some(&stranger), None)
        .await
        .assert_problem(403, "forbidden");
    let me = c.h.call("GET", "/v1/me", Some(&stranger), None).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.json["subjects"], json!([]));
}

#[tokio::test]
async fn anonymous_refusals_are_rate_limited_and_counted() {
    let c = setup().await;
    let before = c.h.last_audit().await.seq;
    for _ in 0..(influxion_server::RefusalLimiter::PER_SECOND + 20) {
        c.h.call("GET", "/v1/keys", None, None)
            .await
            .assert_invalid_token("token-missing");
    }
    let after = c.h.last_audit().await.seq;
    assert!(
        after - before <= influxion_server::RefusalLimiter::PER_SECOND as i64,
        "{before} -> {after}"
    );
    // A long path is truncated in the record.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let long = format!("/v1/keys/{}", "a".repeat(5000));
    c.h.call("GET", &long, None, None)
        .await
        .assert_invalid_token("token-missing");
    let a = c.h.last_audit().await;
    assert!(a.target.unwrap().len() <= 256);
    let d: Value = serde_json::from_str(&a.detail).unwrap();
    assert!(d["suppressed_before"].as_u64().unwrap() >= 20, "{d}");
}

async fn forbidden_sign(h: &Harness, token: &str) {
    h.call(
        "POST",
        "/v1/keys/fw/sign",
        Some(token),
        Some(json!({"digest": sha256_hex(b"x")})),
    )
    .await
    .assert_problem(403, "forbidden");
}

/// Issue 12 item 6: a valid token that matches no subject cannot fill the hash-chained
/// log by looping a forbidden call; what was not written is counted in the next record.
#[tokio::test]
async fn refusals_of_valid_token_callers_are_rate_limited_and_counted() {
    let c = setup().await;
    let mut claims = app_claims(&c._idp.issuer);
    claims["azp"] = json!("looper");
    claims["oid"] = json!("dddddddd-0000-4000-8000-000000000004");
    let looper = token(&keys().rsa1, &claims);
    let before = c.h.last_audit().await.seq;
    let tries = influxion_server::RefusalLimiter::PER_PRINCIPAL_PER_SECOND + 40;
    for _ in 0..tries {
        forbidden_sign(&c.h, &looper).await;
    }
    let written = c.h.last_audit().await.seq - before;
    // The loop may straddle a one-second window: at most two windows' worth.
    assert!(
        written <= 2 * influxion_server::RefusalLimiter::PER_PRINCIPAL_PER_SECOND as i64,
        "{written} of {tries} refusals written"
    );
    // Another caller's refusal is still recorded while the looper is throttled.
    let mut other = app_claims(&c._idp.issuer);
    other["azp"] = json!("other-stranger");
    other["oid"] = json!("eeeeeeee-0000-4000-8000-000000000005");
    forbidden_sign(&c.h, &token(&keys().rsa1, &other)).await;
    assert_refusal_audited(&c.h, "sign", "fw", "forbidden").await;
    let a = c.h.last_audit().await;
    assert!(
        a.actor.contains("eeeeeeee-0000-4000-8000-000000000005"),
        "{}",
        a.actor
    );
    // The looper's next record, in a new window, carries what was suppressed.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    forbidden_sign(&c.h, &looper).await;
    let a = c.h.last_audit().await;
    assert!(
        a.actor.contains("dddddddd-0000-4000-8000-000000000004"),
        "{}",
        a.actor
    );
    let d: Value = serde_json::from_str(&a.detail).unwrap();
    assert_eq!(d["reason"], "forbidden");
    assert!(d["suppressed_before"].as_u64().unwrap() > 0, "{d}");
    // Every refusal is either written or counted in a later record.
    let (mut records, mut counted) = (0u64, 0u64);
    for r in c.h.state.store.recent_audit(1000).await.unwrap() {
        if r.actor.contains("dddddddd-0000-4000-8000-000000000004") {
            let d: Value = serde_json::from_str(&r.detail).unwrap();
            records += 1;
            counted += d["suppressed_before"].as_u64().unwrap();
        }
    }
    assert_eq!(records + counted, u64::from(tries) + 1);
}

#[tokio::test]
async fn key_creation_rules() {
    let c = setup().await;
    c.h.create_key(&c.admin, "fw", "ec-p256")
        .await
        .assert_problem(409, "key-exists");
    c.h.create_key(&c.admin, "Bad Name", "ec-p256")
        .await
        .assert_problem(400, "invalid-key-name");
    c.h.create_key(&c.admin, "weak", "rsa-1024")
        .await
        .assert_problem(400, "invalid-request");
    let a = c.h.last_audit().await;
    assert_eq!(
        (a.action.as_str(), a.outcome.as_str()),
        ("key.create", "refused")
    );
}

#[tokio::test]
async fn key_listing_and_export() {
    let c = setup().await;
    let r = c.h.call("GET", "/v1/keys", Some(&c.signer), None).await;
    assert_eq!(r.json["keys"][0]["name"], "fw");
    // Never any private material.
    assert!(!r.text.contains("handle") && !r.text.contains("PRIVATE"));
    let r =
        c.h.call(
            "GET",
            "/v1/keys/fw/public?format=jwk",
            Some(&c.signer),
            None,
        )
        .await;
    assert_eq!(r.json["kty"], "EC");
    assert_eq!(r.json["crv"], "P-256");
    assert_eq!(r.json["kid"], "fw");
    let r =
        c.h.call("GET", "/v1/keys/fw/public", Some(&c.signer), None)
            .await;
    assert!(r.text.starts_with("-----BEGIN PUBLIC KEY-----"));
    c.h.call(
        "GET",
        "/v1/keys/fw/public?format=der",
        Some(&c.signer),
        None,
    )
    .await
    .assert_problem(400, "invalid-request");
}

#[tokio::test]
async fn audit_endpoint_verifies_only_new_records() {
    let c = setup().await;
    let store = &c.h.state.store;
    let sign = || {
        c.h.call(
            "POST",
            "/v1/keys/fw/sign",
            Some(&c.signer),
            Some(json!({"digest": sha256_hex(b"a")})),
        )
    };
    sign().await;
    let page = || c.h.call("GET", "/v1/audit?limit=1", Some(&c.admin), None);
    let before = store.audit_records_checked();
    let r = page().await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["chain"]["status"], "intact", "{}", r.text);
    assert_eq!(r.json["chain"]["keyed"], true, "{}", r.text);
    let records = r.json["chain"]["records"].as_u64().unwrap();
    // The first page walks the whole chain.
    assert_eq!(store.audit_records_checked() - before, records);

    // The next one only the record the first page wrote (its audit.read).
    let before = store.audit_records_checked();
    let r = page().await;
    assert_eq!(r.json["chain"]["records"].as_u64(), Some(records + 1));
    assert_eq!(store.audit_records_checked() - before, 1);
    sign().await;
    sign().await;
    let before = store.audit_records_checked();
    let r = page().await;
    assert_eq!(r.json["chain"]["records"].as_u64(), Some(records + 4));
    assert_eq!(store.audit_records_checked() - before, 3);

    // ?full=true walks everything again.
    let before = store.audit_records_checked();
    let r =
        c.h.call("GET", "/v1/audit?full=true", Some(&c.admin), None)
            .await;
    assert_eq!(r.json["chain"]["status"], "intact", "{}", r.text);
    assert_eq!(store.audit_records_checked() - before, records + 5);

    // Truncation behind the checkpoint, with a rewritten head, is still reported, and
    // the page is served although the damaged log refuses to record the read.
    let last = store.recent_audit(1).await.unwrap()[0].seq;
    let keep = last - 2;
    store.tamper().truncate_audit(keep).await.unwrap();
    let r = page().await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["chain"]["status"], "broken", "{}", r.text);
    // The checkpoint (the record before the last page's audit.read) is gone.
    assert_eq!(
        r.json["chain"]["seq"].as_i64(),
        Some(last - 1),
        "{}",
        r.text
    );
    let r =
        c.h.call("GET", "/v1/audit?full=true", Some(&c.admin), None)
            .await;
    assert_eq!(
        r.json["chain"]["seq"].as_i64(),
        Some(keep + 1),
        "{}",
        r.text
    );
    assert!(
        r.json["chain"]["reason"]
            .as_str()
            .unwrap()
            .contains("MAC does not verify"),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn audit_endpoint_reports_an_intact_chain() {
    let c = setup().await;
    c.h.call(
        "POST",
        "/v1/keys/fw/sign",
        Some(&c.signer),
        Some(json!({"digest": sha256_hex(b"a")})),
    )
    .await;
    let r =
        c.h.call("GET", "/v1/audit?limit=10", Some(&c.admin), None)
            .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["chain"]["status"], "intact", "{}", r.text);
    assert!(r.json["records"].as_array().unwrap().len() >= 2);
    assert_eq!(
        r.json["records"][0]["detail"]["algorithm"], "ES256",
        "{}",
        r.text
    );
    c.h.call("GET", "/v1/audit?limit=lots", Some(&c.admin), None)
        .await
        .assert_problem(400, "invalid-request");
}

#[tokio::test]
async fn wrong_method_is_a_problem() {
    let c = setup().await;
    c.h.call("DELETE", "/v1/keys/fw", Some(&c.admin), None)
        .await
        .assert_problem(405, "method-not-allowed");
}

#[tokio::test]
async fn unknown_routes_are_problems() {
    let c = setup().await;
    c.h.call("GET", "/v2/nothing", None, None)
        .await
        .assert_problem(404, "not-found");
}

#[tokio::test]
async fn openapi_documents_every_route() {
    let c = setup().await;
    let r = c.h.call("GET", "/openapi.json", None, None).await;
    assert_eq!(r.status, 200);
    let paths = r.json["paths"].as_object().expect("paths");
    for p in [
        "/healthz",
        "/openapi.json",
        "/v1/me",
        "/v1/keys",
        "/v1/keys/{name}",
        "/v1/keys/{name}/public",
        "/v1/keys/{name}/disable",
        "/v1/keys/{name}/import",
        "/v1/keys/{name}/rotate",
        "/v1/keys/{name}/certificate",
        "/v1/keys/{name}/sign",
        "/v1/keys/{name}/verify",
        "/v1/audit",
        "/v1/audit/{seq}",
        "/readyz",
        "/v1/keys/{name}/policy",
        "/v1/subjects",
        "/v1/subjects/{name}",
        "/v1/subjects/{name}/grants",
        "/v1/subjects/{name}/grants/{id}",
        "/v1/policy-changes",
        "/v1/policy-changes/{id}",
        "/v1/policy-changes/{id}/approve",
        "/v1/policy-changes/{id}/reject",
        "/v1/signing-requests",
        "/v1/signing-requests/{id}",
        "/v1/signing-requests/{id}/approve",
        "/v1/signing-requests/{id}/reject",
        "/v1/signing-requests/{id}/cancel",
        "/v1/cas",
        "/v1/cas/{name}",
        "/v1/cas/{name}/certificate",
        "/v1/cas/{name}/chain",
        "/v1/cas/{name}/crl",
        "/v1/cas/{name}/disable",
        "/v1/cas/{name}/revoke",
        "/crl/{file}",
        "/v1/profiles",
        "/v1/profiles/{name}",
        "/v1/profiles/{name}/certificates",
        "/v1/profiles/{name}/keys",
        "/v1/certificates",
        "/v1/certificates/{serial}",
        "/v1/certificates/{serial}/revoke",
        "/.well-known/est/cacerts",
        "/.well-known/est/simpleenroll",
        "/.well-known/est/{label}/cacerts",
        "/.well-known/est/{label}/simpleenroll",
    ] {
        assert!(paths.contains_key(p), "{p} missing from openapi.json");
    }
}

/// The software keystore under another backend name, as an HSM would be to the server.
struct Elsewhere(influxion_keystore::SoftwareKeystore);

#[async_trait::async_trait]
impl influxion_core::KeyBackend for Elsewhere {
    fn name(&self) -> &'static str {
        "elsewhere"
    }
    async fn generate(
        &self,
        id: &str,
        kt: influxion_core::KeyType,
    ) -> Result<influxion_core::GeneratedKey, influxion_core::BackendError> {
        self.0.generate(id, kt).await
    }
    async fn sign(
        &self,
        id: &str,
        kt: influxion_core::KeyType,
        handle: &[u8],
        d: &influxion_core::Digest,
    ) -> Result<Vec<u8>, influxion_core::BackendError> {
        self.0.sign(id, kt, handle, d).await
    }
    async fn check(
        &self,
        id: &str,
        kt: influxion_core::KeyType,
        handle: &[u8],
    ) -> Result<(), influxion_core::BackendError> {
        self.0.check(id, kt, handle).await
    }
}

/// Each key is signed by the backend its record names: a key made on a backend the
/// server no longer has answers 503 (it is not sent to another backend), while keys of
/// the configured backends keep signing.
#[tokio::test]
async fn a_key_is_signed_only_by_the_backend_it_names() {
    use std::sync::Arc;
    let k = keys();
    let idp = TestIdp::start("", &[&k.rsa1]).await;
    let kek = influxion_keystore::Kek::generate;
    let h = Harness::with_backend(
        auth_config(&idp),
        Arc::new(Elsewhere(influxion_keystore::SoftwareKeystore::new(kek()))),
    )
    .await;
    let signer = token(&k.rsa1, &app_claims(&idp.issuer));
    let mut a = app_claims(&idp.issuer);
    a["roles"] = json!([ADMIN_ROLE]);
    a["azp"] = json!("key-admin");
    a["oid"] = json!("cccccccc-0000-4000-8000-000000000003");
    let admin = token(&k.rsa1, &a);
    let r = h.create_key(&admin, "remote", "ec-p256").await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["backend"], "elsewhere");
    let body = json!({"digest": sha256_hex(b"firmware image")});
    let r = h
        .call(
            "POST",
            "/v1/keys/remote/sign",
            Some(&signer),
            Some(body.clone()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let h = h.with_backends(influxion_core::Backends::new(Arc::new(
        influxion_keystore::SoftwareKeystore::new(kek()),
    )));
    let r = h.create_key(&admin, "local", "ec-p256").await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["backend"], "software");
    let r = h
        .call(
            "POST",
            "/v1/keys/local/sign",
            Some(&signer),
            Some(body.clone()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = h
        .call("POST", "/v1/keys/remote/sign", Some(&signer), Some(body))
        .await;
    r.assert_problem(503, "backend-unavailable");
}
