//! Subjects, roles and the approval workflow over HTTP, against the real router and
//! store: every role allows exactly what it should.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::*;
use influxion_core::{Role, SubjectRules};
use serde_json::{json, Value};

fn digest() -> String {
    "ab".repeat(32)
}

fn app_token(idp: &TestIdp, app: &str) -> String {
    let mut c = app_claims(&idp.issuer);
    c["azp"] = json!(app);
    c["oid"] = json!(format!(
        "00000000-0000-4000-8000-{:0>12}",
        app.len() * 1000 + app.bytes().map(|b| b as usize).sum::<usize>()
    ));
    token(&keys().rsa1, &c)
}

struct World {
    idp: TestIdp,
    h: Harness,
    admin: String,
    signer: String,
}

async fn world() -> World {
    let k = keys();
    let idp = TestIdp::start("", &[&k.rsa1]).await;
    let h = Harness::new(auth_config(&idp)).await;
    let admin = token(&k.rsa1, &{
        let mut a = app_claims(&idp.issuer);
        a["azp"] = json!("key-admin");
        a["oid"] = json!("cccccccc-0000-4000-8000-000000000003");
        a
    });
    let signer = token(&k.rsa1, &app_claims(&idp.issuer));
    assert_eq!(h.create_key(&admin, "fw", "ec-p256").await.status, 201);
    assert_eq!(
        h.create_key(&admin, "fw-approval", "ec-p256").await.status,
        201
    );
    let r = h
        .call(
            "PUT",
            "/v1/keys/fw-approval/policy",
            Some(&admin),
            Some(json!({"approvals_required": 2})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    World {
        idp,
        h,
        admin,
        signer,
    }
}

async fn pending_request(w: &World) -> String {
    let r =
        w.h.call(
            "POST",
            "/v1/keys/fw-approval/sign",
            Some(&w.signer),
            Some(json!({"digest": digest(), "reason": "release"})),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    r.json["request_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn every_role_allows_exactly_what_it_should() {
    let w = world().await;
    // One caller per role (and one with none), each matched by its own subject.
    let roles: Vec<(&str, Option<Role>)> = vec![
        ("admin", Some(Role::Admin)),
        ("key-admin", Some(Role::KeyAdmin)),
        ("signer", Some(Role::Signer)),
        ("approver", Some(Role::Approver)),
        ("provisioner", Some(Role::Provisioner)),
        ("auditor", Some(Role::Auditor)),
        ("none", None),
    ];
    for (name, role) in &roles {
        let grants: Vec<(Role, &str)> = role.iter().map(|r| (*r, "*")).collect();
        let app = format!("caller-{name}");
        w.h.add_subject(
            &format!("s-{name}"),
            SubjectRules {
                app_id: Some(app),
                ..Default::default()
            },
            &grants,
        )
        .await;
    }
    use Role::*;
    // endpoint label, roles that succeed
    let table: Vec<(&str, Vec<Role>)> = vec![
        (
            "GET /v1/keys",
            vec![Admin, KeyAdmin, Signer, Approver, Provisioner, Auditor],
        ),
        (
            "GET /v1/keys/fw",
            vec![Admin, KeyAdmin, Signer, Approver, Provisioner, Auditor],
        ),
        ("POST /v1/keys", vec![Admin, KeyAdmin]),
        ("PUT /v1/keys/fw/policy", vec![Admin, KeyAdmin]),
        ("POST /v1/keys/{own}/disable", vec![Admin, KeyAdmin]),
        ("POST /v1/keys/fw/sign", vec![Admin, Signer]),
        ("POST /v1/keys/fw-approval/sign", vec![Admin, Signer]),
        (
            "GET /v1/signing-requests",
            vec![Admin, KeyAdmin, Signer, Approver, Provisioner, Auditor],
        ),
        (
            "POST /v1/signing-requests/{id}/approve",
            vec![Admin, Approver],
        ),
        ("GET /v1/audit", vec![Admin, Auditor]),
        ("GET /v1/subjects", vec![Admin, Auditor]),
        ("POST /v1/subjects", vec![Admin]),
        ("POST /v1/subjects/{s}/grants", vec![Admin]),
    ];
    for (name, role) in &roles {
        let t = app_token(&w.idp, &format!("caller-{name}"));
        // /v1/me works for everyone with a valid token.
        assert_eq!(w.h.call("GET", "/v1/me", Some(&t), None).await.status, 200);
        for (endpoint, allowed) in &table {
            // Fixtures each call needs, made by the admin.
            let own_key = format!("own-{name}");
            let (method, path, body) = match *endpoint {
                "GET /v1/keys" => ("GET", "/v1/keys".to_owned(), None),
                "GET /v1/keys/fw" => ("GET", "/v1/keys/fw".to_owned(), None),
                "POST /v1/keys" => (
                    "POST",
                    "/v1/keys".to_owned(),
                    Some(json!({"name": format!("new-{name}"), "key_type": "ec-p256"})),
                ),
                "PUT /v1/keys/fw/policy" => (
                    "PUT",
                    "/v1/keys/fw/policy".to_owned(),
                    Some(json!({"approvals_required": 0})),
                ),
                "POST /v1/keys/{own}/disable" => {
                    assert_eq!(
                        w.h.create_key(&w.admin, &own_key, "ec-p256").await.status,
                        201
                    );
                    ("POST", format!("/v1/keys/{own_key}/disable"), None)
                }
                "POST /v1/keys/fw/sign" => (
                    "POST",
                    "/v1/keys/fw/sign".to_owned(),
                    Some(json!({"digest": digest()})),
                ),
                "POST /v1/keys/fw-approval/sign" => (
                    "POST",
                    "/v1/keys/fw-approval/sign".to_owned(),
                    Some(json!({"digest": digest(), "reason": "table"})),
                ),
                "GET /v1/signing-requests" => ("GET", "/v1/signing-requests".to_owned(), None),
                "POST /v1/signing-requests/{id}/approve" => {
                    let id = pending_request(&w).await;
                    (
                        "POST",
                        format!("/v1/signing-requests/{id}/approve"),
                        Some(json!({"comment": "ok"})),
                    )
                }
                "GET /v1/audit" => ("GET", "/v1/audit".to_owned(), None),
                "GET /v1/subjects" => ("GET", "/v1/subjects".to_owned(), None),
                "POST /v1/subjects" => (
                    "POST",
                    "/v1/subjects".to_owned(),
                    Some(json!({"name": format!("made-by-{name}"), "app_id": "x"})),
                ),
                "POST /v1/subjects/{s}/grants" => (
                    "POST",
                    "/v1/subjects/ci/grants".to_owned(),
                    Some(json!({"role": "auditor", "pattern": format!("p-{name}")})),
                ),
                other => panic!("{other}"),
            };
            let r = w.h.call(method, &path, Some(&t), body).await;
            let ok = role.is_some_and(|r| allowed.contains(&r));
            if ok {
                assert!(
                    matches!(r.status.as_u16(), 200..=202),
                    "{name} on {endpoint} should succeed: {} {}",
                    r.status,
                    r.text
                );
            } else {
                r.assert_problem(403, "forbidden");
            }
        }
    }
}

#[tokio::test]
async fn grants_are_scoped_by_pattern() {
    let w = world().await;
    w.h.add_subject(
        "fw-signer",
        SubjectRules {
            app_id: Some("pattern-app".into()),
            ..Default::default()
        },
        &[(Role::Signer, "fw"), (Role::Approver, "other-*")],
    )
    .await;
    let t = app_token(&w.idp, "pattern-app");
    let ok =
        w.h.call(
            "POST",
            "/v1/keys/fw/sign",
            Some(&t),
            Some(json!({"digest": digest()})),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let no =
        w.h.call(
            "POST",
            "/v1/keys/fw-approval/sign",
            Some(&t),
            Some(json!({"digest": digest(), "reason": "x"})),
        )
        .await;
    no.assert_problem(403, "forbidden");
    let id = pending_request(&w).await;
    w.h.call(
        "POST",
        &format!("/v1/signing-requests/{id}/approve"),
        Some(&t),
        Some(json!({})),
    )
    .await
    .assert_problem(403, "forbidden");
    let me = w.h.call("GET", "/v1/me", Some(&t), None).await;
    assert_eq!(me.json["subjects"], json!(["fw-signer"]));
    assert_eq!(me.json["roles"], json!(["signer", "approver"]));
}

#[tokio::test]
async fn two_approvers_sign_once_and_the_requester_gets_the_signature() {
    let w = world().await;
    for i in 1..=2 {
        w.h.add_subject(
            &format!("approver-{i}"),
            SubjectRules {
                app_id: Some(format!("approver-app-{i}")),
                ..Default::default()
            },
            &[(Role::Approver, "fw-*")],
        )
        .await;
    }
    let a1 = app_token(&w.idp, "approver-app-1");
    let a2 = app_token(&w.idp, "approver-app-2");
    let r = w
        .h
        .call(
            "POST",
            "/v1/keys/fw-approval/sign",
            Some(&w.signer),
            Some(json!({"digest": digest(), "reason": "release 2.1", "metadata": {"file": "fw.bin", "version": "2.1"}})),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let id = r.json["request_id"].as_str().unwrap().to_owned();
    assert_eq!(r.json["location"], format!("/v1/signing-requests/{id}"));
    // A reason is required on approval keys.
    w.h.call(
        "POST",
        "/v1/keys/fw-approval/sign",
        Some(&w.signer),
        Some(json!({"digest": digest()})),
    )
    .await
    .assert_problem(400, "invalid-request");

    // Approvers see what they decide on.
    let list =
        w.h.call(
            "GET",
            "/v1/signing-requests?status=pending",
            Some(&a1),
            None,
        )
        .await;
    let item = &list.json["requests"][0];
    assert_eq!(item["id"], id.as_str());
    assert_eq!(item["reason"], "release 2.1");
    assert_eq!(item["metadata"]["version"], "2.1");
    assert_eq!(item["digest"], digest());
    assert_eq!(item["can_decide"], true);

    let path = format!("/v1/signing-requests/{id}/approve");
    let approve = |t: String| {
        let (h, path) = (&w.h, path.clone());
        async move {
            h.call("POST", &path, Some(&t), Some(json!({"comment": "checked"})))
                .await
        }
    };
    let r = approve(a1.clone()).await;
    assert_eq!(
        (r.status.as_u16(), r.json["status"].as_str()),
        (200, Some("pending")),
        "{}",
        r.text
    );
    // One approver counts once.
    approve(a1.clone())
        .await
        .assert_problem(409, "already-decided");
    // The requester can never approve, whatever subjects it matches.
    w.h.add_subject(
        "ci-also-approver",
        SubjectRules {
            app_id: Some("ci-signer".into()),
            ..Default::default()
        },
        &[(Role::Approver, "*")],
    )
    .await;
    approve(w.signer.clone())
        .await
        .assert_problem(403, "self-approval");
    let r = approve(a2.clone()).await;
    assert_eq!(r.json["status"], "signed", "{}", r.text);
    // Signed exactly once; the requester fetches a signature that verifies.
    approve(app_token(&w.idp, "key-admin"))
        .await
        .assert_problem(409, "request-closed");
    let got =
        w.h.call(
            "GET",
            &format!("/v1/signing-requests/{id}"),
            Some(&w.signer),
            None,
        )
        .await;
    let sig = got.json["signature"].as_str().unwrap();
    let v =
        w.h.call(
            "POST",
            "/v1/keys/fw-approval/verify",
            Some(&w.signer),
            Some(json!({"digest": digest(), "signature": sig})),
        )
        .await;
    assert_eq!(v.json["valid"], true);
    assert!(B64.decode(sig).is_ok());
    let audit = w.h.state.store.recent_audit(100).await.unwrap();
    let signed: Vec<_> = audit
        .iter()
        .filter(|a| a.action == "sign" && a.detail.contains(&id))
        .collect();
    assert_eq!(signed.len(), 1);
    for action in ["signing_request.create", "signing_request.approve"] {
        assert!(
            audit
                .iter()
                .any(|a| a.action == action && a.outcome == "ok"),
            "{action}"
        );
    }
}

#[tokio::test]
async fn reject_and_cancel_end_requests_without_signatures() {
    let w = world().await;
    let admin = w.admin.clone();
    let id = pending_request(&w).await;
    w.h.call(
        "POST",
        &format!("/v1/signing-requests/{id}/reject"),
        Some(&admin),
        Some(json!({"comment": " "})),
    )
    .await
    .assert_problem(400, "invalid-request");
    let r =
        w.h.call(
            "POST",
            &format!("/v1/signing-requests/{id}/reject"),
            Some(&admin),
            Some(json!({"comment": "wrong build"})),
        )
        .await;
    assert_eq!(r.json["status"], "rejected", "{}", r.text);
    w.h.call(
        "POST",
        &format!("/v1/signing-requests/{id}/approve"),
        Some(&admin),
        Some(json!({})),
    )
    .await
    .assert_problem(409, "request-closed");

    let id = pending_request(&w).await;
    w.h.call(
        "POST",
        &format!("/v1/signing-requests/{id}/cancel"),
        Some(&admin),
        None,
    )
    .await
    .assert_problem(403, "not-requester");
    let r =
        w.h.call(
            "POST",
            &format!("/v1/signing-requests/{id}/cancel"),
            Some(&w.signer),
            None,
        )
        .await;
    assert_eq!(r.json["status"], "cancelled", "{}", r.text);
    w.h.call(
        "POST",
        &format!("/v1/signing-requests/{id}/approve"),
        Some(&admin),
        Some(json!({})),
    )
    .await
    .assert_problem(409, "request-closed");
    let got =
        w.h.call(
            "GET",
            &format!("/v1/signing-requests/{id}"),
            Some(&w.signer),
            None,
        )
        .await;
    assert!(got.json["signature"].is_null());
    w.h.call(
        "GET",
        "/v1/signing-requests/does-not-exist",
        Some(&admin),
        None,
    )
    .await
    .assert_problem(404, "unknown-request");
}

#[tokio::test]
async fn workload_identity_app_role_is_matched_only_in_its_tenant() {
    let k = keys();
    let other = "99999999-2222-3333-4444-555555555555";
    let idp = TestIdp::start("/{tenantid}/v2.0", &[&k.rsa1]).await;
    let mut cfg = auth_config(&idp);
    cfg.tenant_id = None;
    cfg.allowed_tenants = vec![TENANT.into(), other.into()];
    let h = Harness::new(cfg).await;
    // Azure DevOps workload identity: app-only token whose `roles` carry the app role.
    h.add_subject(
        "pipelines",
        SubjectRules {
            tenant_id: Some(TENANT.into()),
            app_role: Some(SIGN_ROLE.into()),
            ..Default::default()
        },
        &[(Role::Signer, "*")],
    )
    .await;
    h.add_subject(
        "tenant-admins",
        SubjectRules {
            tenant_id: Some(TENANT.into()),
            app_id: Some("tenant-admin".into()),
            ..Default::default()
        },
        &[(Role::Admin, "*")],
    )
    .await;
    let claims_for = |tid: &str, azp: &str| {
        let mut c = app_claims(&format!("{}/{tid}/v2.0", idp.base));
        c["tid"] = json!(tid);
        c["azp"] = json!(azp);
        c
    };
    let admin = token(&k.rsa1, &claims_for(TENANT, "tenant-admin"));
    assert_eq!(h.create_key(&admin, "fw", "ec-p256").await.status, 201);
    let pipeline = token(&k.rsa1, &claims_for(TENANT, "ado-pipeline"));
    let r = h
        .call(
            "POST",
            "/v1/keys/fw/sign",
            Some(&pipeline),
            Some(json!({"digest": digest()})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let me: Value = h.call("GET", "/v1/me", Some(&pipeline), None).await.json;
    assert_eq!(me["subjects"], json!(["pipelines"]));
    // Same role, same app, another (allowed) tenant: valid token, but no subject.
    let foreign = token(&k.rsa1, &claims_for(other, "ado-pipeline"));
    let r = h
        .call(
            "POST",
            "/v1/keys/fw/sign",
            Some(&foreign),
            Some(json!({"digest": digest()})),
        )
        .await;
    r.assert_problem(403, "forbidden");
    // The admin's app id from another tenant is not the admin either.
    let foreign_admin = token(&k.rsa1, &claims_for(other, "tenant-admin"));
    h.create_key(&foreign_admin, "evil", "ec-p256")
        .await
        .assert_problem(403, "forbidden");
}

#[tokio::test]
async fn subject_management_is_audited_and_keeps_an_admin() {
    let w = world().await;
    let r = w
        .h
        .call(
            "POST",
            "/v1/subjects",
            Some(&w.admin),
            Some(json!({"name": "release-team", "group_id": "g-123", "grants": [{"role": "approver", "pattern": "fw-*"}]})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let a = w.h.last_audit().await;
    assert_eq!(
        (a.action.as_str(), a.target.as_deref()),
        ("subject.create", Some("release-team"))
    );
    assert!(a.actor.contains("cccccccc-0000-4000-8000-000000000003"));
    // Too broad: issuer alone matches everyone.
    w.h.call(
        "POST",
        "/v1/subjects",
        Some(&w.admin),
        Some(json!({"name": "everyone", "issuer": w.idp.issuer})),
    )
    .await
    .assert_problem(400, "invalid-request");
    w.h.call(
        "POST",
        "/v1/subjects",
        Some(&w.admin),
        Some(json!({"name": "release-team", "app_id": "x"})),
    )
    .await
    .assert_problem(409, "subject-exists");
    // Admin is all-or-nothing: a pattern would suggest a scope it does not have.
    w.h.call(
        "POST",
        "/v1/subjects/release-team/grants",
        Some(&w.admin),
        Some(json!({"role": "admin", "pattern": "fw-*"})),
    )
    .await
    .assert_problem(400, "invalid-request");
    w.h.call(
        "POST",
        "/v1/subjects/release-team/grants",
        Some(&w.admin),
        Some(json!({"role": "superuser"})),
    )
    .await
    .assert_problem(400, "invalid-request");
    let r =
        w.h.call(
            "PUT",
            "/v1/subjects/release-team",
            Some(&w.admin),
            Some(json!({"group_id": "g-456"})),
        )
        .await;
    assert_eq!(r.json["group_id"], "g-456", "{}", r.text);
    // The last admin cannot remove itself.
    w.h.call("DELETE", "/v1/subjects/admins", Some(&w.admin), None)
        .await
        .assert_problem(409, "last-admin");
    let r =
        w.h.call("DELETE", "/v1/subjects/release-team", Some(&w.admin), None)
            .await;
    assert_eq!(r.status, 204);
    assert_eq!(w.h.last_audit().await.action, "subject.delete");
}

/// A software keystore whose next signature waits until the test lets it go, so a
/// test can change a request while its approver's signature is being made.
struct GatedKeystore {
    inner: influxion_keystore::SoftwareKeystore,
    armed: std::sync::atomic::AtomicBool,
    entered: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl influxion_core::KeyBackend for GatedKeystore {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn generate(
        &self,
        key_id: &str,
        key_type: influxion_core::KeyType,
    ) -> Result<influxion_core::GeneratedKey, influxion_core::BackendError> {
        self.inner.generate(key_id, key_type).await
    }

    async fn sign(
        &self,
        key_id: &str,
        key_type: influxion_core::KeyType,
        handle: &[u8],
        digest: &influxion_core::Digest,
    ) -> Result<Vec<u8>, influxion_core::BackendError> {
        let sig = self.inner.sign(key_id, key_type, handle, digest).await?;
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
        Ok(sig)
    }

    async fn check(
        &self,
        key_id: &str,
        key_type: influxion_core::KeyType,
        handle: &[u8],
    ) -> Result<(), influxion_core::BackendError> {
        self.inner.check(key_id, key_type, handle).await
    }
}

/// Issue 12 item 7: the approver's vote signs before the store decides; when the
/// requester cancels in between, the signature is thrown away and that use of the key
/// is recorded as `sign.discard`.
#[tokio::test]
async fn a_signature_that_loses_the_race_is_recorded_as_discarded() {
    let k = keys();
    let idp = TestIdp::start("", &[&k.rsa1]).await;
    let gate = std::sync::Arc::new(GatedKeystore {
        inner: influxion_keystore::SoftwareKeystore::new(influxion_keystore::Kek::generate()),
        armed: Default::default(),
        entered: Default::default(),
        release: Default::default(),
    });
    let h = std::sync::Arc::new(Harness::with_backend(auth_config(&idp), gate.clone()).await);
    let admin = app_token(&idp, "key-admin");
    let signer = token(&k.rsa1, &app_claims(&idp.issuer));
    assert_eq!(h.create_key(&admin, "rel", "ec-p256").await.status, 201);
    let r = h
        .call(
            "PUT",
            "/v1/keys/rel/policy",
            Some(&admin),
            Some(json!({"approvals_required": 1})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = h
        .call(
            "POST",
            "/v1/keys/rel/sign",
            Some(&signer),
            Some(json!({"digest": digest(), "reason": "release"})),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let id = r.json["request_id"].as_str().unwrap().to_owned();

    gate.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let approval = {
        let (h, admin, id) = (h.clone(), admin.clone(), id.clone());
        tokio::spawn(async move {
            h.call(
                "POST",
                &format!("/v1/signing-requests/{id}/approve"),
                Some(&admin),
                Some(json!({"comment": "ok"})),
            )
            .await
        })
    };
    // The approver's signature exists now; the requester cancels before it is stored.
    gate.entered.notified().await;
    let r = h
        .call(
            "POST",
            &format!("/v1/signing-requests/{id}/cancel"),
            Some(&signer),
            None,
        )
        .await;
    assert_eq!(r.json["status"], "cancelled", "{}", r.text);
    gate.release.notify_one();
    approval
        .await
        .unwrap()
        .assert_problem(409, "request-closed");

    let records = h.state.store.recent_audit(5).await.unwrap();
    let discard = records
        .iter()
        .find(|a| a.action == "sign.discard")
        .unwrap_or_else(|| panic!("no sign.discard in {records:?}"));
    assert_eq!(discard.outcome, "refused");
    assert_eq!(discard.target.as_deref(), Some(id.as_str()));
    let d: Value = serde_json::from_str(&discard.detail).unwrap();
    assert_eq!(d["key"], "rel");
    assert_eq!(d["digest"], digest());
    assert_eq!(d["reason"], "request-closed");
    assert_eq!(d["signature_sha256"].as_str().map(str::len), Some(64));
    // The request has no signature, and the chain holds the record.
    let got = h
        .call(
            "GET",
            &format!("/v1/signing-requests/{id}"),
            Some(&signer),
            None,
        )
        .await;
    assert!(got.json["signature"].is_null());
    assert!(matches!(
        h.state.store.verify_audit_chain().await.unwrap(),
        influxion_store::ChainReport::Intact { .. }
    ));
}

async fn assert_refused(h: &Harness, action: &str, target: &str, slug: &str) {
    let a = h.last_audit().await;
    assert_eq!(
        (a.action.as_str(), a.outcome.as_str(), a.target.as_deref()),
        (action, "refused", Some(target)),
        "{a:?}"
    );
    let d: Value = serde_json::from_str(&a.detail).unwrap();
    assert_eq!(d["reason"], slug, "{}", a.detail);
}

async fn set_policy(w: &World, t: &str, key: &str, body: Value) -> Resp {
    w.h.call(
        "PUT",
        &format!("/v1/keys/{key}/policy"),
        Some(t),
        Some(body),
    )
    .await
}

/// Issue 12 item 4: a key-admin who also signs must not be able to switch four eyes
/// off (fewer approvals, other approvers, longer TTL), sign alone and switch it back.
#[tokio::test]
async fn a_key_admin_signer_cannot_weaken_four_eyes() {
    let w = world().await;
    for (name, app, grants) in [
        (
            "mallory",
            "mallory-app",
            vec![(Role::KeyAdmin, "fw-*"), (Role::Signer, "fw-*")],
        ),
        // A second identity the same person controls, eligible to approve.
        (
            "mallory-approver",
            "mallory-app-2",
            vec![(Role::Approver, "fw-*")],
        ),
        (
            "approver-1",
            "approver-app-1",
            vec![(Role::Approver, "fw-*")],
        ),
        (
            "approver-2",
            "approver-app-2",
            vec![(Role::Approver, "fw-*")],
        ),
        ("key-admin-only", "ka-app", vec![(Role::KeyAdmin, "fw-*")]),
        (
            "admin-signer",
            "root-signer-app",
            vec![(Role::Admin, "*"), (Role::Signer, "fw-*")],
        ),
    ] {
        w.h.add_subject(
            name,
            SubjectRules {
                app_id: Some(app.into()),
                ..Default::default()
            },
            &grants,
        )
        .await;
    }
    let mallory = app_token(&w.idp, "mallory-app");
    assert_eq!(
        w.h.create_key(&w.admin, "fw-4eyes", "ec-p256").await.status,
        201
    );
    let r = set_policy(&w, &w.admin, "fw-4eyes", json!({"approvals_required": 1})).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // (d) Strengthening is immediate, even for mallory, and audited with before/after.
    let strong = json!({"approvals_required": 2, "approvers": ["approver-1", "approver-2"], "approval_ttl_secs": 3600});
    for body in [
        json!({"approvals_required": 2}),
        json!({"approvals_required": 2, "approvers": ["approver-1", "approver-2"]}),
        strong.clone(),
    ] {
        let r = set_policy(&w, &mallory, "fw-4eyes", body.clone()).await;
        assert_eq!(r.status, 200, "{body}: {}", r.text);
        let a = w.h.last_audit().await;
        assert_eq!(
            (a.action.as_str(), a.outcome.as_str(), a.target.as_deref()),
            ("key.policy", "ok", Some("fw-4eyes"))
        );
        let d: Value = serde_json::from_str(&a.detail).unwrap();
        assert_eq!(d["weakens"], json!([]), "{d}");
        assert_eq!(d["after"]["approvals_required"], 2, "{d}");
    }
    let policy =
        w.h.call("GET", "/v1/keys/fw-4eyes", Some(&mallory), None)
            .await
            .json["policy"]
            .clone();
    assert_eq!(
        policy,
        json!({"approvals_required": 2, "approval_ttl_secs": 3600, "approver_subjects": ["approver-1", "approver-2"]})
    );

    // (a) lowering the quorum, (b) replacing or adding approvers, (c) a longer TTL:
    // not applied but proposed (202), whoever of mallory, a plain key-admin or an admin
    // who also signs asks; recorded as a proposal, the policy untouched.
    let ttl = 3600;
    let weakenings = [
        (
            json!({"approvals_required": 0, "approval_ttl_secs": ttl}),
            json!(["fewer_approvals", "wider_approvers"]),
        ),
        (
            json!({"approvals_required": 1, "approvers": ["approver-1", "approver-2"], "approval_ttl_secs": ttl}),
            json!(["fewer_approvals"]),
        ),
        (
            json!({"approvals_required": 2, "approvers": ["approver-1", "mallory-approver"], "approval_ttl_secs": ttl}),
            json!(["wider_approvers"]),
        ),
        (
            json!({"approvals_required": 2, "approvers": ["approver-1", "approver-2", "mallory-approver"], "approval_ttl_secs": ttl}),
            json!(["wider_approvers"]),
        ),
        (
            json!({"approvals_required": 2, "approvers": ["approver-1", "approver-2"], "approval_ttl_secs": 7200}),
            json!(["longer_ttl"]),
        ),
    ];
    let mut ids = Vec::new();
    for t in [
        &mallory,
        &app_token(&w.idp, "ka-app"),
        &app_token(&w.idp, "root-signer-app"),
    ] {
        for (body, weakens) in &weakenings {
            let r = set_policy(&w, t, "fw-4eyes", body.clone()).await;
            assert_eq!(r.status, 202, "{body}: {}", r.text);
            assert_eq!(r.json["status"], "pending");
            assert_eq!(r.json["quorum"], 2);
            assert_eq!(&r.json["weakens"], weakens);
            let id = r.json["change_id"].as_str().unwrap().to_owned();
            let a = w.h.last_audit().await;
            assert_eq!(
                (a.action.as_str(), a.outcome.as_str(), a.target.as_deref()),
                ("key.policy_change.create", "ok", Some("fw-4eyes"))
            );
            let d: Value = serde_json::from_str(&a.detail).unwrap();
            assert_eq!((&d["change"], &d["weakens"]), (&json!(id), weakens), "{d}");
            ids.push(id);
        }
    }
    let now =
        w.h.call("GET", "/v1/keys/fw-4eyes", Some(&mallory), None)
            .await
            .json["policy"]
            .clone();
    assert_eq!(now, policy);
    // So mallory's signature still waits for two approvers that are not mallory...
    let r =
        w.h.call(
            "POST",
            "/v1/keys/fw-4eyes/sign",
            Some(&mallory),
            Some(json!({"digest": digest(), "reason": "alone"})),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    // ...and mallory cannot approve its own proposal, nor through the identity it
    // controls that is not one of the key's approvers; each refusal is recorded.
    let (lower, longer_ttl) = (ids[0].clone(), ids[4].clone());
    let decide = |id: &str, t: &str, verb: &str, comment: &str| {
        let (h, path, t) = (
            &w.h,
            format!("/v1/policy-changes/{id}/{verb}"),
            t.to_owned(),
        );
        let body = json!({"comment": comment});
        async move { h.call("POST", &path, Some(&t), Some(body)).await }
    };
    decide(&lower, &mallory, "approve", "")
        .await
        .assert_problem(403, "self-approval");
    assert_refused(&w.h, "key.policy_change.approve", &lower, "self-approval").await;
    decide(&lower, &app_token(&w.idp, "mallory-app-2"), "approve", "")
        .await
        .assert_problem(403, "forbidden");
    assert_refused(&w.h, "key.policy_change.approve", &lower, "forbidden").await;
    // Approvers see what they decide on.
    let seen =
        w.h.call(
            "GET",
            &format!("/v1/policy-changes/{lower}"),
            Some(&app_token(&w.idp, "approver-app-1")),
            None,
        )
        .await;
    assert_eq!(seen.json["can_decide"], true, "{}", seen.text);
    assert_eq!(seen.json["policy"]["approvals_required"], 0);
    assert_eq!(seen.json["base_policy"], policy);

    // (e) The key's approvers apply it: the completing vote replaces the policy and is
    // recorded by the quorum, in the same transaction.
    let a1 = app_token(&w.idp, "approver-app-1");
    let a2 = app_token(&w.idp, "approver-app-2");
    let r = decide(&lower, &a1, "approve", "ok").await;
    assert_eq!(
        (r.status.as_u16(), r.json["status"].as_str()),
        (200, Some("pending")),
        "{}",
        r.text
    );
    decide(&lower, &a1, "approve", "again")
        .await
        .assert_problem(409, "already-decided");
    let r = decide(&longer_ttl, &a1, "approve", "ok").await;
    assert_eq!(r.json["status"], "pending", "{}", r.text);
    let r = decide(&lower, &a2, "approve", "ok").await;
    assert_eq!(r.json["status"], "applied", "{}", r.text);
    let a = w.h.last_audit().await;
    assert_eq!(
        (a.actor.as_str(), a.action.as_str(), a.target.as_deref()),
        ("system:quorum", "key.policy", Some("fw-4eyes"))
    );
    let d: Value = serde_json::from_str(&a.detail).unwrap();
    assert_eq!(
        (&d["change"], &d["before"]),
        (&json!(lower), &policy),
        "{d}"
    );
    assert_eq!(d["after"]["approvals_required"], 0, "{d}");
    let now =
        w.h.call("GET", "/v1/keys/fw-4eyes", Some(&mallory), None)
            .await
            .json["policy"]
            .clone();
    assert_eq!(now["approvals_required"], 0, "{now}");
    // A proposal judged against the old policy no longer applies: it is superseded.
    let r = decide(&longer_ttl, &a2, "approve", "ok").await;
    assert_eq!(r.json["status"], "superseded", "{}", r.text);
    assert_eq!(w.h.last_audit().await.action, "key.policy_change.supersede");
    let after =
        w.h.call("GET", "/v1/keys/fw-4eyes", Some(&mallory), None)
            .await
            .json["policy"]
            .clone();
    assert_eq!(after, now);
    decide(&ids[1], &a1, "reject", "no").await;
    assert_eq!(
        decide(&ids[1], &a2, "approve", "").await.problem_type(),
        "https://influxion.dev/problems/request-closed"
    );
    let r =
        w.h.call(
            "POST",
            "/v1/keys/fw-4eyes/sign",
            Some(&mallory),
            Some(json!({"digest": digest()})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // An admin who does not sign with the key may weaken it at once; the record says how.
    assert_eq!(
        w.h.create_key(&w.admin, "fw-admin", "ec-p256").await.status,
        201
    );
    let one = json!({"approvals_required": 1});
    assert_eq!(set_policy(&w, &w.admin, "fw-admin", one).await.status, 200);
    let r = set_policy(&w, &w.admin, "fw-admin", json!({"approvals_required": 0})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let a = w.h.last_audit().await;
    assert_eq!(
        (a.action.as_str(), a.outcome.as_str()),
        ("key.policy", "ok")
    );
    let d: Value = serde_json::from_str(&a.detail).unwrap();
    assert_eq!(d["weakens"], json!(["fewer_approvals"]), "{d}");
}

fn user_token(idp: &TestIdp, azp: &str, roles: &[&str]) -> String {
    let mut c = user_claims(&idp.issuer);
    c["azp"] = json!(azp);
    if !roles.is_empty() {
        c["roles"] = json!(roles);
    }
    token(&keys().rsa1, &c)
}

async fn subjects_of(h: &Harness, t: &str) -> Value {
    let r = h.call("GET", "/v1/me", Some(t), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["subjects"].clone()
}

/// Issue 12 item 5: app_id/app_role subjects match applications, not people who sign
/// in through the application or are assigned the role, unless told `caller: any`.
#[tokio::test]
async fn app_id_and_app_role_subjects_match_apps_not_people() {
    let w = world().await;
    let r =
        w.h.call(
            "POST",
            "/v1/subjects",
            Some(&w.admin),
            Some(json!({"name": "release-app", "app_id": "release-app", "grants": [{"role": "signer", "pattern": "fw"}]})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["caller"], "app");
    let r =
        w.h.call(
            "POST",
            "/v1/subjects",
            Some(&w.admin),
            Some(json!({"name": "releasers", "app_role": "Influxion.Release", "grants": [{"role": "signer", "pattern": "fw"}]})),
        )
        .await;
    assert_eq!(r.json["caller"], "app", "{}", r.text);
    let app = app_token(&w.idp, "release-app");
    let person_via_app = user_token(&w.idp, "release-app", &[]);
    let person_with_role = user_token(&w.idp, "portal", &["Influxion.Release"]);
    let mut role_claims = app_claims(&w.idp.issuer);
    role_claims["azp"] = json!("some-pipeline");
    role_claims["roles"] = json!([SIGN_ROLE, "Influxion.Release"]);
    let app_with_role = token(&keys().rsa1, &role_claims);

    assert_eq!(subjects_of(&w.h, &app).await, json!(["release-app"]));
    assert_eq!(
        subjects_of(&w.h, &app_with_role).await,
        json!(["releasers"])
    );
    assert_eq!(subjects_of(&w.h, &person_via_app).await, json!([]));
    assert_eq!(subjects_of(&w.h, &person_with_role).await, json!([]));
    for t in [&person_via_app, &person_with_role] {
        w.h.call(
            "POST",
            "/v1/keys/fw/sign",
            Some(t),
            Some(json!({"digest": digest()})),
        )
        .await
        .assert_problem(403, "forbidden");
        assert_refused(&w.h, "sign", "fw", "forbidden").await;
    }
    // The Harness's subjects (written without `caller`) follow the same default: the
    // delegated token of user_claims carries azp = ci-signer and is not the CI app.
    assert_eq!(
        subjects_of(&w.h, &user_token(&w.idp, "ci-signer", &[])).await,
        json!([])
    );

    // `caller: any` matches both; `caller: user` only people.
    for (name, caller) in [("release-app", "any"), ("releasers", "user")] {
        let rule = if name == "release-app" {
            json!({"app_id": "release-app", "caller": caller})
        } else {
            json!({"app_role": "Influxion.Release", "caller": caller})
        };
        let r =
            w.h.call(
                "PUT",
                &format!("/v1/subjects/{name}"),
                Some(&w.admin),
                Some(rule),
            )
            .await;
        assert_eq!(r.json["caller"], caller, "{}", r.text);
        let d: Value = serde_json::from_str(&w.h.last_audit().await.detail).unwrap();
        assert_eq!(d["before"]["caller"], "app", "{d}");
        assert_eq!(d["after"]["caller"], caller, "{d}");
    }
    assert_eq!(subjects_of(&w.h, &app).await, json!(["release-app"]));
    assert_eq!(
        subjects_of(&w.h, &person_via_app).await,
        json!(["release-app"])
    );
    assert_eq!(
        subjects_of(&w.h, &person_with_role).await,
        json!(["releasers"])
    );
    assert_eq!(subjects_of(&w.h, &app_with_role).await, json!([]));
    let r =
        w.h.call(
            "POST",
            "/v1/keys/fw/sign",
            Some(&person_via_app),
            Some(json!({"digest": digest()})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // A person or group rule keeps matching anyone it names; a bad value is refused.
    let r =
        w.h.call(
            "POST",
            "/v1/subjects",
            Some(&w.admin),
            Some(json!({"name": "team", "group_id": "g-1"})),
        )
        .await;
    assert_eq!(r.json["caller"], "any", "{}", r.text);
    w.h.call(
        "POST",
        "/v1/subjects",
        Some(&w.admin),
        Some(json!({"name": "odd", "app_id": "x", "caller": "people"})),
    )
    .await
    .assert_problem(400, "invalid-request");
}
