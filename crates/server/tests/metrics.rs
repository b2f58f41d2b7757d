//! The metrics router against the real API router and store: requests counted by route
//! template (never the raw path), refused tokens by reason, the approval queue and the
//! identity provider's key fetches read at scrape time; `/metrics` is not on the API.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

mod common;

use axum::body::Body;
use axum::http::Request;
use common::*;
use http_body_util::BodyExt;
use serde_json::json;
use sha2::Digest as _;
use tower::ServiceExt;

async fn scrape(h: &Harness) -> String {
    let resp = influxion_server::metrics::router(h.state.clone())
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        influxion_server::metrics::CONTENT_TYPE
    );
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// The value of one series (its name and labels exactly as exposed).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

#[tokio::test]
async fn requests_refusals_and_the_queue_are_exposed() {
    let k = keys();
    let idp = TestIdp::start("", &[&k.rsa1]).await;
    let h = Harness::new(auth_config(&idp)).await;
    // As `influxion serve` wires it: the writer reports its batches.
    assert!(h
        .state
        .store
        .observe_commits(std::sync::Arc::new(h.state.metrics.clone())));
    let signer = token(&k.rsa1, &app_claims(&idp.issuer));
    let mut a = app_claims(&idp.issuer);
    a["roles"] = json!([ADMIN_ROLE]);
    a["azp"] = json!("key-admin");
    a["oid"] = json!("cccccccc-0000-4000-8000-000000000003");
    let admin = token(&k.rsa1, &a);
    for name in ["fw", "fw-2"] {
        assert_eq!(h.create_key(&admin, name, "ec-p256").await.status, 201);
    }
    let digest = hex::encode(sha2::Sha256::digest(b"image"));
    for name in ["fw", "fw-2", "fw"] {
        let r = h
            .call(
                "POST",
                &format!("/v1/keys/{name}/sign"),
                Some(&signer),
                Some(json!({"digest": digest})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    // Refused tokens: none at all, and an expired one.
    h.call("GET", "/v1/keys", None, None).await;
    let mut old = app_claims(&idp.issuer);
    old["exp"] = json!(now() - 3600);
    h.call("GET", "/v1/keys", Some(&token(&k.rsa1, &old)), None)
        .await
        .assert_invalid_token("token-expired");
    // A path of the caller's choosing is not a label; /metrics is not on the API.
    h.call("GET", "/v1/nothing/abc123", None, None).await;
    h.call("GET", "/metrics", None, None)
        .await
        .assert_problem(404, "not-found");
    // One signing request pending.
    h.call(
        "PUT",
        "/v1/keys/fw-2/policy",
        Some(&admin),
        Some(json!({"approvals_required": 1})),
    )
    .await;
    let r = h
        .call(
            "POST",
            "/v1/keys/fw-2/sign",
            Some(&signer),
            Some(json!({"digest": digest, "reason": "release"})),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);

    let text = scrape(&h).await;
    let v = |series: &str| value(&text, series);
    assert_eq!(
        v(
            r#"influxion_http_requests_total{route="/v1/keys/{name}/sign",method="POST",status="200"}"#
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        v(
            r#"influxion_http_requests_total{route="/v1/keys/{name}/sign",method="POST",status="202"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        v(r#"influxion_http_requests_total{route="/v1/keys",method="GET",status="401"}"#),
        Some(2.0)
    );
    assert_eq!(
        v(r#"influxion_http_requests_total{route="unmatched",method="GET",status="404"}"#),
        Some(2.0)
    );
    assert!(!text.contains("abc123"), "{text}");
    assert_eq!(
        v(
            r#"influxion_http_request_duration_seconds_count{route="/v1/keys/{name}/sign",method="POST"}"#
        ),
        Some(4.0)
    );
    assert_eq!(
        v(r#"influxion_token_refusals_total{reason="token-missing"}"#),
        Some(1.0)
    );
    assert_eq!(
        v(r#"influxion_token_refusals_total{reason="token-expired"}"#),
        Some(1.0)
    );
    assert_eq!(
        v(r#"influxion_sign_duration_seconds_count{outcome="ok"}"#),
        Some(3.0)
    );
    assert_eq!(
        v(r#"influxion_approval_queue_depth{kind="signing_request"}"#),
        Some(1.0)
    );
    assert_eq!(
        v(r#"influxion_approval_queue_depth{kind="policy_change"}"#),
        Some(0.0)
    );
    // The provider's keys were fetched once, for the first token.
    assert_eq!(
        v(r#"influxion_jwks_refreshes_total{outcome="ok"}"#),
        Some(1.0)
    );
    assert_eq!(
        v(r#"influxion_jwks_refreshes_total{outcome="error"}"#),
        Some(0.0)
    );
    // The writer's batches (at least one per signature, key and policy change) and the
    // read pool, as the store reports them.
    assert!(
        v("influxion_audit_batch_size_count").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(v("influxion_audit_append_duration_seconds_count").is_some_and(|n| n >= 1.0));
    assert!(
        v(r#"influxion_db_pool_connections{state="idle"}"#).is_some(),
        "{text}"
    );
    assert!(
        v(r#"influxion_db_pool_connections{state="in_use"}"#).is_some(),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"));

    // The metrics router serves nothing else.
    let resp = influxion_server::metrics::router(h.state.clone())
        .oneshot(Request::get("/v1/keys").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}
