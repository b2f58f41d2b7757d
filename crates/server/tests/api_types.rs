//! The types of `influxion-api` describe the keyserver's answers exactly: each answer
//! read into its type and written back is the same document. The server builds the
//! answers of keys, signing and approvals from these types; this test holds the others
//! (the device CA's and subjects', still built from store records) to the same shapes,
//! so the CLI never reads a field the server does not send.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

mod common;

use std::process::Command;

use common::*;
use influxion_api::pki::{CaList, CaView, CertList, IssuedView, ProfileList, ProfileView};
use influxion_api::{KeyList, KeyView, Subject, SubjectList};
use influxion_core::{Role, SubjectRules};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

/// `r` is a success, and reads back into `T` unchanged.
#[track_caller]
fn same<T: Serialize + DeserializeOwned>(r: &Resp) {
    assert!(r.status.is_success(), "{}: {}", r.status, r.text);
    let typed: T = serde_json::from_value(r.json.clone())
        .unwrap_or_else(|e| panic!("{}: {e}: {}", std::any::type_name::<T>(), r.text));
    assert_eq!(
        serde_json::to_value(&typed).unwrap(),
        r.json,
        "{}",
        std::any::type_name::<T>()
    );
}

fn app_token(idp: &TestIdp, app: &str, oid_suffix: u32) -> String {
    let mut c = app_claims(&idp.issuer);
    c["azp"] = json!(app);
    c["oid"] = json!(format!("00000000-0000-4000-8000-{oid_suffix:012}"));
    token(&keys().rsa1, &c)
}

/// A P-256 CSR made by openssl.
fn csr(cn: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("openssl")
        .args(["req", "-new", "-nodes", "-keyout", "k.pem", "-subj"])
        .arg(format!("/CN={cn}"))
        .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])
        .current_dir(dir.path())
        .output()
        .expect("openssl must be installed (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn answers_read_back_into_the_api_types_unchanged() {
    let idp = TestIdp::start("", &[&keys().rsa1]).await;
    let h = Harness::new(auth_config(&idp)).await;
    h.add_subject(
        "line-1",
        SubjectRules {
            app_id: Some("line-1".into()),
            ..Default::default()
        },
        &[(Role::Provisioner, "device*")],
    )
    .await;
    let admin = app_token(&idp, "key-admin", 3);
    let line = app_token(&idp, "line-1", 7);
    let call =
        |method: &'static str, path: String, token: &str, body: Option<serde_json::Value>| {
            let token = token.to_owned();
            let h = &h;
            async move { h.call(method, &path, Some(&token), body).await }
        };

    let r = call(
        "POST",
        "/v1/keys".into(),
        &admin,
        Some(json!({"name": "fw-types", "key_type": "ec-p256"})),
    )
    .await;
    same::<KeyView>(&r);
    same::<KeyList>(&call("GET", "/v1/keys".into(), &admin, None).await);

    let r = call(
        "POST",
        "/v1/cas".into(),
        &admin,
        Some(json!({"name": "devices", "key_type": "ec-p256",
                    "subject": {"common_name": "Acme Device CA", "organization": "Acme"}})),
    )
    .await;
    same::<CaView>(&r);
    same::<CaList>(&call("GET", "/v1/cas".into(), &admin, None).await);
    // A pending intermediate carries its CSR and no certificate.
    let r = call(
        "POST",
        "/v1/cas".into(),
        &admin,
        Some(
            json!({"name": "pending", "key_type": "ec-p256", "external": true,
                    "subject": {"common_name": "Acme Intermediate"}}),
        ),
    )
    .await;
    same::<CaView>(&r);

    let r = call(
        "PUT",
        "/v1/profiles/device".into(),
        &admin,
        Some(
            json!({"ca": "devices", "subject": {"common_name": "{device_id}"},
                    "san_dns": ["{device_id}.devices.acme.test"]}),
        ),
    )
    .await;
    same::<ProfileView>(&r);
    same::<ProfileList>(&call("GET", "/v1/profiles".into(), &admin, None).await);

    let r = call(
        "POST",
        "/v1/profiles/device/certificates".into(),
        &line,
        Some(json!({"csr": csr("device-1"), "request_key": "k-1"})),
    )
    .await;
    same::<IssuedView>(&r);
    let serial = r.json["serial"].as_str().unwrap().to_owned();
    same::<CertList>(&call("GET", "/v1/certificates".into(), &admin, None).await);
    same::<IssuedView>(&call("GET", format!("/v1/certificates/{serial}"), &admin, None).await);
    let r = call(
        "POST",
        format!("/v1/certificates/{serial}/revoke"),
        &admin,
        Some(json!({"reason": "superseded"})),
    )
    .await;
    same::<IssuedView>(&r);
    assert_eq!(r.json["revocation_reason"], "superseded", "{}", r.text);
    let r = call(
        "POST",
        "/v1/profiles/device/keys".into(),
        &line,
        Some(json!({"device_id": "device-2", "format": "pem"})),
    )
    .await;
    same::<IssuedView>(&r);

    same::<SubjectList>(&call("GET", "/v1/subjects".into(), &admin, None).await);
    same::<Subject>(&call("GET", "/v1/subjects/line-1".into(), &admin, None).await);
}
