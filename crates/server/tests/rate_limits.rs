//! Per-subject rate limits against the real router, store and software keystore: a
//! subject gets its signatures (or signing requests, or certificates) per minute, then
//! 429 `rate-limited` with `Retry-After`; other subjects are not affected; refusals are
//! audited through the refusal budget.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

mod common;

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::process::Command;

use axum::body::Body;
use axum::http::Request;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::*;
use influxion_core::{Role, SubjectRules};
use influxion_server::{PerMinute, RateLimits};
use serde_json::{json, Value};
use sha2::Digest as _;

fn app_token(idp: &TestIdp, app: &str, oid_suffix: u32) -> String {
    let mut c = app_claims(&idp.issuer);
    c["azp"] = json!(app);
    c["oid"] = json!(format!("00000000-0000-4000-8000-{oid_suffix:012}"));
    token(&keys().rsa1, &c)
}

fn per_minute(signatures: u32, certificates: u32) -> PerMinute {
    PerMinute {
        signatures: NonZeroU32::new(signatures),
        certificates: NonZeroU32::new(certificates),
    }
}

fn limits(entries: &[(&str, PerMinute)]) -> RateLimits {
    RateLimits {
        default: PerMinute::default(),
        subjects: entries
            .iter()
            .map(|(k, p)| ((*k).to_owned(), *p))
            .collect::<BTreeMap<_, _>>(),
    }
}

struct Ctx {
    _idp: TestIdp,
    h: Harness,
    admin: String,
    /// Matches subject `ci` (the harness's signer).
    ci: String,
    /// Matches subject `nightly`, another signer.
    nightly: String,
}

async fn setup(l: RateLimits) -> Ctx {
    let idp = TestIdp::start("", &[&keys().rsa1]).await;
    let h = Harness::new(auth_config(&idp)).await;
    h.add_subject(
        "nightly",
        SubjectRules {
            app_id: Some("nightly".into()),
            ..Default::default()
        },
        &[(Role::Signer, "*")],
    )
    .await;
    let h = h.with_rate_limits(l);
    let admin = app_token(&idp, "key-admin", 3);
    let r = h.create_key(&admin, "fw", "ec-p256").await;
    assert_eq!(r.status, 201, "{}", r.text);
    Ctx {
        ci: app_token(&idp, "ci-signer", 1),
        nightly: app_token(&idp, "nightly", 2),
        admin,
        h,
        _idp: idp,
    }
}

fn digest(i: u32) -> String {
    hex::encode(sha2::Sha256::digest(format!("firmware {i}")))
}

async fn sign(c: &Ctx, key: &str, tok: &str, i: u32) -> Resp {
    c.h.call(
        "POST",
        &format!("/v1/keys/{key}/sign"),
        Some(tok),
        Some(json!({"digest": digest(i), "reason": "release"})),
    )
    .await
}

/// A 429 `rate-limited` problem with a `Retry-After` of at least one whole second and
/// at most `max`.
#[track_caller]
fn assert_limited(r: &Resp, max: u64) -> u64 {
    r.assert_problem(429, "rate-limited");
    let after: u64 = r
        .headers
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in whole seconds");
    assert!((1..=max).contains(&after), "Retry-After {after}");
    after
}

#[tokio::test]
async fn a_subject_gets_its_signatures_then_429_and_others_are_not_affected() {
    let c = setup(limits(&[("ci", per_minute(3, 0))])).await;
    for i in 0..3 {
        let r = sign(&c, "fw", &c.ci, i).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let r = sign(&c, "fw", &c.ci, 3).await;
    // Three per minute: the next one in 20 seconds.
    assert_limited(&r, 20);
    assert!(
        r.json["detail"]
            .as_str()
            .unwrap()
            .contains("subject ci may make 3 signatures per minute"),
        "{}",
        r.text
    );
    // Refused before the key was used, and on record like any refusal.
    let a = c.h.last_audit().await;
    assert_eq!(
        (a.action.as_str(), a.outcome.as_str(), a.target.as_deref()),
        ("sign", "refused", Some("fw"))
    );
    let d: Value = serde_json::from_str(&a.detail).unwrap();
    assert_eq!(
        (d["reason"].as_str(), d["status"].as_u64()),
        (Some("rate-limited"), Some(429))
    );

    // Another subject, and an admin, sign on.
    for i in 10..15 {
        let r = sign(&c, "fw", &c.nightly, i).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let r = sign(&c, "fw", &c.admin, 20).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Still limited; verifying is not signing.
    assert_limited(&sign(&c, "fw", &c.ci, 4).await, 20);
    let r =
        c.h.call(
            "POST",
            "/v1/keys/fw/verify",
            Some(&c.ci),
            Some(json!({"digest": digest(0), "signature": B64.encode([0u8; 64])})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn the_default_applies_to_each_subject_and_an_entry_by_id_replaces_it() {
    let mut l = limits(&[("sub-nightly", per_minute(1, 0))]);
    l.default = per_minute(2, 0);
    let c = setup(l).await;
    for tok in [&c.ci, &c.admin] {
        for i in 0..2 {
            assert_eq!(sign(&c, "fw", tok, i).await.status, 200);
        }
        assert_limited(&sign(&c, "fw", tok, 2).await, 30);
    }
    // `sub-nightly` is the subject's id: its own limit, not the default.
    assert_eq!(sign(&c, "fw", &c.nightly, 0).await.status, 200);
    assert_limited(&sign(&c, "fw", &c.nightly, 1).await, 60);
}

#[tokio::test]
async fn signing_requests_count_as_signatures() {
    let c = setup(limits(&[("ci", per_minute(2, 0))])).await;
    let r =
        c.h.call(
            "PUT",
            "/v1/keys/fw/policy",
            Some(&c.admin),
            Some(json!({"approvals_required": 1})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    for i in 0..2 {
        let r = sign(&c, "fw", &c.ci, i).await;
        assert_eq!(r.status, 202, "{}", r.text);
    }
    assert_limited(&sign(&c, "fw", &c.ci, 2).await, 30);
    // The refused one made no request.
    let pending =
        c.h.state
            .store
            .list_requests(Some("pending"), 10)
            .await
            .unwrap();
    assert_eq!(pending.len(), 2);
}

#[tokio::test]
async fn refusals_of_a_flood_are_audited_within_the_budget() {
    let c = setup(limits(&[("ci", per_minute(1, 0))])).await;
    assert_eq!(sign(&c, "fw", &c.ci, 0).await.status, 200);
    let before = c.h.last_audit().await.seq;
    for i in 1..=40 {
        assert_limited(&sign(&c, "fw", &c.ci, i).await, 60);
    }
    let records = c.h.state.store.recent_audit(100).await.unwrap();
    let refused = records.iter().filter(|a| a.seq > before).count();
    // At most ten per principal per second are written (two windows at worst).
    assert!(
        (1..=2 * influxion_server::RefusalLimiter::PER_PRINCIPAL_PER_SECOND as usize)
            .contains(&refused),
        "{refused} refusals audited"
    );
}

fn openssl_csr(cn: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("openssl")
        .args([
            "req", "-new", "-nodes", "-keyout", "k.pem", "-outform", "DER",
        ])
        .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])
        .args(["-subj", &format!("/CN={cn}")])
        .current_dir(dir.path())
        .output()
        .expect("openssl must be installed (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn pem(der: &[u8]) -> String {
    format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        B64.encode(der)
    )
}

#[tokio::test]
async fn certificates_are_limited_apart_from_signatures() {
    let idp = TestIdp::start("", &[&keys().rsa1]).await;
    let h = Harness::new(auth_config(&idp)).await;
    h.add_subject(
        "line-1",
        SubjectRules {
            app_id: Some("line-1".into()),
            ..Default::default()
        },
        &[(Role::Provisioner, "device"), (Role::Signer, "fw")],
    )
    .await;
    let h = h.with_rate_limits(limits(&[("line-1", per_minute(1, 2))]));
    let admin = app_token(&idp, "key-admin", 3);
    let line = app_token(&idp, "line-1", 7);
    let r = h
        .call(
            "POST",
            "/v1/cas",
            Some(&admin),
            Some(json!({"name": "devices", "key_type": "ec-p256",
                        "subject": {"common_name": "Acme Device CA"}})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = h
        .call(
            "PUT",
            "/v1/profiles/device",
            Some(&admin),
            Some(
                json!({"ca": "devices", "subject": {"common_name": "{device_id}"},
                        "allow_server_keygen": true}),
            ),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(h.create_key(&admin, "fw", "ec-p256").await.status, 201);

    // Two certificates: one from the API, one over EST.
    let r = h
        .call(
            "POST",
            "/v1/profiles/device/certificates",
            Some(&line),
            Some(json!({"csr": pem(&openssl_csr("dev-1"))})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let enroll = |cn: &str| {
        Request::post("/.well-known/est/simpleenroll")
            .header("content-type", "application/pkcs10")
            .header("authorization", format!("Bearer {line}"))
            .body(Body::from(B64.encode(openssl_csr(cn))))
            .unwrap()
    };
    let r = h.send(enroll("dev-2")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The third is refused on every issuing route, EST included.
    assert_limited(&h.send(enroll("dev-3")).await, 30);
    let r = h
        .call(
            "POST",
            "/v1/profiles/device/certificates",
            Some(&line),
            Some(json!({"csr": pem(&openssl_csr("dev-4"))})),
        )
        .await;
    assert_limited(&r, 30);
    let r = h
        .call(
            "POST",
            "/v1/profiles/device/keys",
            Some(&line),
            Some(json!({"device_id": "dev-5", "format": "pem"})),
        )
        .await;
    assert_limited(&r, 30);
    let a = h.last_audit().await;
    assert_eq!(
        (a.action.as_str(), a.outcome.as_str()),
        ("cert.keygen", "refused")
    );

    // Signatures have their own budget.
    let sign = |i: u32| {
        h.call(
            "POST",
            "/v1/keys/fw/sign",
            Some(&line),
            Some(json!({"digest": digest(i)})),
        )
    };
    assert_eq!(sign(0).await.status, 200);
    assert_limited(&sign(1).await, 60);
}

#[tokio::test]
async fn openapi_documents_429_where_limits_apply() {
    let c = setup(RateLimits::default()).await;
    let r = c.h.call("GET", "/openapi.json", None, None).await;
    for p in [
        "/v1/keys/{name}/sign",
        "/v1/profiles/{name}/certificates",
        "/v1/profiles/{name}/keys",
        "/.well-known/est/simpleenroll",
        "/.well-known/est/{label}/simpleenroll",
    ] {
        let resp = &r.json["paths"][p]["post"]["responses"]["429"];
        assert!(resp.is_object(), "{p} documents no 429");
    }
    let limited = &r.json["components"]["responses"]["RateLimited"];
    assert!(limited["headers"]["Retry-After"].is_object(), "{limited}");
}
