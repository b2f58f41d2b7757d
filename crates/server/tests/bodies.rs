//! Every route that takes a JSON body refuses a bad one with the same problem, and
//! audits the refusal under its own action: not JSON, the wrong shape, no or the wrong
//! content type, too large.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

mod common;

use axum::body::Body;
use axum::http::Request;
use common::*;
use serde_json::{json, Value};

/// A route with a JSON body, and what its refusals are audited as (`None`: the route
/// audits no refusal).
struct Route {
    method: &'static str,
    path: &'static str,
    audited: Option<(&'static str, &'static str)>,
}

const ROUTES: &[Route] = &[
    Route {
        method: "POST",
        path: "/v1/keys/fw/sign",
        audited: Some(("sign", "fw")),
    },
    Route {
        method: "POST",
        path: "/v1/keys/fw/verify",
        audited: None,
    },
    Route {
        method: "POST",
        path: "/v1/keys",
        audited: Some(("key.create", "keys")),
    },
    Route {
        method: "PUT",
        path: "/v1/keys/fw/policy",
        audited: Some(("key.policy", "fw")),
    },
    Route {
        method: "POST",
        path: "/v1/subjects",
        audited: Some(("subject.create", "subjects")),
    },
    Route {
        method: "PUT",
        path: "/v1/subjects/ci",
        audited: Some(("subject.update", "ci")),
    },
    Route {
        method: "POST",
        path: "/v1/subjects/ci/grants",
        audited: Some(("grant.add", "ci")),
    },
    Route {
        method: "POST",
        path: "/v1/signing-requests/r1/approve",
        audited: Some(("signing_request.approve", "r1")),
    },
    Route {
        method: "POST",
        path: "/v1/policy-changes/c1/reject",
        audited: Some(("key.policy_change.reject", "c1")),
    },
    Route {
        method: "POST",
        path: "/v1/cas",
        audited: Some(("ca.create", "cas")),
    },
    Route {
        method: "PUT",
        path: "/v1/cas/root/certificate",
        audited: Some(("ca.import", "root")),
    },
    Route {
        method: "POST",
        path: "/v1/cas/root/revoke",
        audited: Some(("ca.revoke", "root")),
    },
    Route {
        method: "PUT",
        path: "/v1/profiles/device",
        audited: Some(("profile.put", "device")),
    },
    Route {
        method: "POST",
        path: "/v1/profiles/device/certificates",
        audited: Some(("cert.issue", "device")),
    },
    Route {
        method: "POST",
        path: "/v1/profiles/device/keys",
        audited: Some(("cert.keygen", "device")),
    },
    Route {
        method: "POST",
        path: "/v1/certificates/00ff/revoke",
        audited: Some(("cert.revoke", "00ff")),
    },
];

/// A bad body: its content type, its bytes, and the problem it must get.
struct Case {
    what: &'static str,
    content_type: Option<&'static str>,
    body: fn() -> Vec<u8>,
    status: u16,
    slug: &'static str,
}

const CASES: &[Case] = &[
    Case {
        what: "not JSON",
        content_type: Some("application/json"),
        body: || b"{not json".to_vec(),
        status: 400,
        slug: "invalid-request",
    },
    Case {
        what: "the wrong shape",
        content_type: Some("application/json"),
        body: || b"[1, 2]".to_vec(),
        status: 400,
        slug: "invalid-request",
    },
    Case {
        what: "no content type",
        content_type: None,
        body: || b"{}".to_vec(),
        status: 415,
        slug: "unsupported-media-type",
    },
    Case {
        what: "a text content type",
        content_type: Some("text/plain"),
        body: || b"{}".to_vec(),
        status: 415,
        slug: "unsupported-media-type",
    },
    Case {
        what: "too large",
        content_type: Some("application/json"),
        body: || {
            json!({"pad": "x".repeat(influxion_server::MAX_BODY_BYTES)})
                .to_string()
                .into_bytes()
        },
        status: 413,
        slug: "body-too-large",
    },
];

#[tokio::test]
async fn bad_bodies_are_the_same_problem_on_every_route() {
    let k = keys();
    let idp = TestIdp::start("", &[&k.rsa1]).await;
    let admin = token(&k.rsa1, &{
        let mut a = app_claims(&idp.issuer);
        a["azp"] = json!("key-admin");
        a["oid"] = json!("cccccccc-0000-4000-8000-000000000003");
        a
    });
    for route in ROUTES {
        // A fresh keyserver per route: its refusal budget (10 a second per caller)
        // must not swallow the audit records checked below.
        let h = Harness::new(auth_config(&idp)).await;
        assert_eq!(h.create_key(&admin, "fw", "ec-p256").await.status, 201);
        for case in CASES {
            let mut req = Request::builder()
                .method(route.method)
                .uri(route.path)
                .header("authorization", format!("Bearer {admin}"));
            if let Some(ct) = case.content_type {
                req = req.header("content-type", ct);
            }
            let req = req.body(Body::from((case.body)())).unwrap();
            let r = h.send(req).await;
            let at = format!("{} {} with {}", route.method, route.path, case.what);
            assert_eq!(r.status.as_u16(), case.status, "{at}: {}", r.text);
            r.assert_problem(case.status, case.slug);
            if let Some((action, target)) = route.audited {
                let a = h.last_audit().await;
                assert_eq!(
                    (a.action.as_str(), a.outcome.as_str(), a.target.as_deref()),
                    (action, "refused", Some(target)),
                    "{at}"
                );
                let d: Value = serde_json::from_str(&a.detail).unwrap();
                assert_eq!(d["reason"], case.slug, "{at}: {}", a.detail);
            }
        }
    }
}
