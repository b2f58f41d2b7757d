//! The device CA over HTTP against the real router, store and software keystore. CSRs
//! are made by the openssl command line, an independent implementation.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

mod common;

use std::process::Command;

use axum::body::Body;
use axum::http::Request;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::*;
use influxion_core::{Role, SubjectRules};
use serde_json::{json, Value};

fn openssl(args: &[&str], dir: &std::path::Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A CSR made by openssl: `key` is an openssl -newkey argument, `subj` the subject,
/// `ext` optional -addext values.
fn csr(key: &str, subj: &str, ext: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["req", "-new", "-nodes", "-keyout", "k.pem", "-subj", subj];
    let opts: Vec<&str> = key.split(' ').collect();
    args.extend(opts);
    for e in ext {
        args.push("-addext");
        args.push(e);
    }
    String::from_utf8(openssl(&args, dir.path())).unwrap()
}

fn p256_csr(cn: &str) -> String {
    csr(
        "-newkey ec -pkeyopt ec_paramgen_curve:P-256",
        &format!("/CN={cn}"),
        &[],
    )
}

fn app_token(idp: &TestIdp, app: &str, oid_suffix: u32) -> String {
    let mut c = app_claims(&idp.issuer);
    c["azp"] = json!(app);
    c["oid"] = json!(format!("00000000-0000-4000-8000-{oid_suffix:012}"));
    token(&keys().rsa1, &c)
}

struct World {
    _idp: TestIdp,
    h: Harness,
    admin: String,
    signer: String,
    line: String,
}

async fn world() -> World {
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
    let signer = app_token(&idp, "ci-signer", 1);
    let line = app_token(&idp, "line-1", 7);
    let r = h
        .call(
            "POST",
            "/v1/cas",
            Some(&admin),
            Some(json!({"name": "devices", "key_type": "ec-p256",
                        "subject": {"common_name": "Acme Device CA", "organization": "Acme", "country": "DE"}})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = h
        .call(
            "PUT",
            "/v1/profiles/device",
            Some(&admin),
            Some(json!({
                "ca": "devices",
                "subject": {"common_name": "{device_id}", "organization": "Acme"},
                "san_dns": ["{device_id}.devices.acme.test"],
                "max_per_device": 1,
            })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    World {
        _idp: idp,
        h,
        admin,
        signer,
        line,
    }
}

async fn issue(w: &World, body: Value) -> Resp {
    w.h.call(
        "POST",
        "/v1/profiles/device/certificates",
        Some(&w.line),
        Some(body),
    )
    .await
}

#[tokio::test]
async fn issues_a_certificate_from_a_csr_and_records_it() {
    let w = world().await;
    let r = issue(&w, json!({"csr": p256_csr("dev-1")})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let serial = r.json["serial"].as_str().unwrap().to_owned();
    assert_eq!(serial.len(), 32, "16-byte serial");
    assert_eq!(r.json["device_id"], "dev-1");
    assert_eq!(r.json["subject"], "O=Acme, CN=dev-1");
    assert!(r.json["certificate_pem"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    let audit = w.h.last_audit().await;
    assert_eq!(audit.action, "cert.issue");
    assert!(audit.detail.contains(&serial), "{}", audit.detail);

    // Found by device id, serial and subject.
    for q in [
        "device_id=dev-1",
        &format!("serial={serial}"),
        "subject=CN%3Ddev-1",
    ] {
        let r =
            w.h.call("GET", &format!("/v1/certificates?{q}"), Some(&w.line), None)
                .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["certificates"].as_array().unwrap().len(), 1, "{q}");
    }
    // A signer sees nothing of the CA's records.
    let r =
        w.h.call("GET", "/v1/certificates", Some(&w.signer), None)
            .await;
    r.assert_problem(403, "forbidden");
}

#[tokio::test]
async fn bad_csrs_are_refused_with_a_clear_problem() {
    let w = world().await;
    let good = p256_csr("dev-2");
    let der = pem_body(&good);
    // Change one byte of the common name: the request still parses, the signature fails.
    let mut tampered = der.clone();
    let pos = tampered.windows(5).position(|x| x == b"dev-2").unwrap();
    tampered[pos + 4] = b'3';
    let tampered = to_pem(&tampered);

    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "malformed PEM",
            json!({"csr": "-----BEGIN CERTIFICATE REQUEST-----\n!!!\n-----END CERTIFICATE REQUEST-----\n"}),
            "csr-malformed",
        ),
        (
            "malformed DER",
            json!({"csr": to_pem(b"\x30\x03\x02\x01\x01")}),
            "csr-malformed",
        ),
        ("not a CSR at all", json!({"csr": "hello"}), "csr-malformed"),
        (
            "bad self-signature",
            json!({"csr": tampered}),
            "csr-bad-signature",
        ),
        (
            "RSA 1024",
            json!({"csr": csr("-newkey rsa:1024", "/CN=dev-2", &[])}),
            "csr-key-not-allowed",
        ),
        (
            "unsupported curve",
            json!({"csr": csr("-newkey ec -pkeyopt ec_paramgen_curve:secp256k1", "/CN=dev-2", &[])}),
            "csr-key-not-allowed",
        ),
        (
            "key type the profile forbids",
            json!({"csr": csr("-newkey ed25519", "/CN=dev-2", &[])}),
            "csr-key-not-allowed",
        ),
        (
            "oversized",
            json!({"csr": format!("{good}{}", "A".repeat(9000))}),
            "csr-too-large",
        ),
        (
            "CA extension",
            json!({"csr": csr("-newkey ec -pkeyopt ec_paramgen_curve:P-256", "/CN=dev-2", &["basicConstraints=critical,CA:TRUE"])}),
            "csr-extension-forbidden",
        ),
        (
            "foreign SAN",
            json!({"csr": csr("-newkey ec -pkeyopt ec_paramgen_curve:P-256", "/CN=dev-2", &["subjectAltName=DNS:evil.example"])}),
            "csr-extension-forbidden",
        ),
        (
            "unknown extension",
            json!({"csr": csr("-newkey ec -pkeyopt ec_paramgen_curve:P-256", "/CN=dev-2", &["1.2.3.4=ASN1:UTF8String:x"])}),
            "csr-extension-forbidden",
        ),
        (
            "injected organisation",
            json!({"csr": csr("-newkey ec -pkeyopt ec_paramgen_curve:P-256", "/CN=dev-2/O=Evil Corp", &[])}),
            "csr-subject-not-allowed",
        ),
        (
            "multi-valued RDN",
            json!({"csr": csr("-newkey ec -pkeyopt ec_paramgen_curve:P-256 -multivalue-rdn", "/CN=dev-2+O=Acme", &[])}),
            "csr-subject-not-allowed",
        ),
        (
            "injected name in the CN",
            json!({"csr": p256_csr("dev-2, O=Evil")}),
            "invalid-device-id",
        ),
        (
            "CN differs from the device id",
            json!({"csr": good.clone(), "device_id": "dev-9"}),
            "csr-subject-not-allowed",
        ),
        (
            "unknown field",
            json!({"csr": good.clone(), "extensions": []}),
            "invalid-request",
        ),
    ];
    for (what, body, slug) in cases {
        let r = issue(&w, body).await;
        assert_eq!(r.status.as_u16(), 400, "{what}: {}", r.text);
        r.assert_problem(400, slug);
        let audit = w.h.last_audit().await;
        assert_eq!(audit.action, "cert.issue", "{what}");
        assert_eq!(audit.outcome, "refused", "{what}");
    }
    // Nothing was issued by any of them.
    let r =
        w.h.call("GET", "/v1/certificates", Some(&w.line), None)
            .await;
    assert_eq!(r.json["certificates"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn device_quota_and_idempotent_retries() {
    let w = world().await;
    let body = json!({"csr": p256_csr("dev-3"), "request_key": "run-1:dev-3"});
    let first = issue(&w, body.clone()).await;
    assert_eq!(first.status, 201, "{}", first.text);
    // The same request again (a retry after a lost response) returns the same certificate.
    let again = issue(&w, body).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json["serial"], first.json["serial"]);
    // A new request for the same device is over its quota of one. The certificate the
    // CA key signed for it is discarded, and that use of the key is on record.
    let r = issue(&w, json!({"csr": p256_csr("dev-3")})).await;
    r.assert_problem(400, "device-quota-exceeded");
    let records = w.h.state.store.recent_audit(2).await.unwrap();
    let discard = records
        .iter()
        .find(|a| a.action == "cert.discard")
        .expect("cert.discard record");
    assert!(
        discard.detail.contains("device-quota-exceeded"),
        "{}",
        discard.detail
    );
    // After revocation the device may have a new one.
    let serial = first.json["serial"].as_str().unwrap();
    let r =
        w.h.call(
            "POST",
            &format!("/v1/certificates/{serial}/revoke"),
            Some(&w.line),
            Some(json!({"reason": "key_compromise"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["status"], "revoked");
    let r =
        w.h.call(
            "POST",
            &format!("/v1/certificates/{serial}/revoke"),
            Some(&w.line),
            Some(json!({})),
        )
        .await;
    r.assert_problem(409, "already-revoked");
    let r = issue(&w, json!({"csr": p256_csr("dev-3")})).await;
    assert_eq!(r.status, 201, "{}", r.text);
}

#[tokio::test]
async fn revocation_is_in_the_crl() {
    let w = world().await;
    let r = issue(&w, json!({"csr": p256_csr("dev-4")})).await;
    let serial = r.json["serial"].as_str().unwrap().to_owned();
    let r =
        w.h.call(
            "POST",
            &format!("/v1/certificates/{serial}/revoke"),
            Some(&w.admin),
            Some(json!({"reason": "superseded"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let req = Request::get("/crl/devices.crl")
        .body(Body::empty())
        .unwrap();
    let resp = tower::ServiceExt::oneshot(w.h.router.clone(), req)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/pkix-crl");
    let der = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.crl"), &der).unwrap();
    let text = String::from_utf8(openssl(
        &["crl", "-inform", "DER", "-in", "c.crl", "-noout", "-text"],
        dir.path(),
    ))
    .unwrap();
    assert!(
        text.to_uppercase().contains(&serial.to_uppercase()),
        "{text}"
    );
    assert!(text.contains("Superseded"), "{text}");
    assert!(text.contains("X509v3 CRL Number"), "{text}");
    let audit = w.h.last_audit().await;
    assert_eq!(audit.action, "crl.issue");
}

#[tokio::test]
async fn server_side_keys_and_passwords() {
    let w = world().await;
    let call = |body: Value| {
        w.h.call(
            "POST",
            "/v1/profiles/device/keys",
            Some(&w.line),
            Some(body),
        )
    };
    call(json!({"device_id": "dev-5", "password": "short"}))
        .await
        .assert_problem(400, "bad-password");
    call(json!({"device_id": "dev-5"}))
        .await
        .assert_problem(400, "bad-password");
    call(json!({"device_id": "dev-5", "password": "line\nbreak-password"}))
        .await
        .assert_problem(400, "bad-password");
    call(json!({"device_id": "dev 5", "password": "long enough pw"}))
        .await
        .assert_problem(400, "invalid-device-id");
    let r = call(json!({"device_id": "dev-5", "password": "long enough pw"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let p12 = B64
        .decode(r.json["pkcs12_base64"].as_str().unwrap())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("d.p12"), p12).unwrap();
    let out = openssl(
        &[
            "pkcs12",
            "-in",
            "d.p12",
            "-passin",
            "pass:long enough pw",
            "-nodes",
        ],
        dir.path(),
    );
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("PRIVATE KEY") && text.contains("CN=dev-5"),
        "{text}"
    );
    // The wrong password does not open it.
    let bad = Command::new("openssl")
        .args([
            "pkcs12",
            "-in",
            "d.p12",
            "-passin",
            "pass:wrong password",
            "-nodes",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    // The key is not kept: the record says it was generated, and nothing else has it.
    let serial = r.json["serial"].as_str().unwrap();
    let rec =
        w.h.call(
            "GET",
            &format!("/v1/certificates/{serial}"),
            Some(&w.line),
            None,
        )
        .await;
    assert_eq!(rec.json["key_generated"], true);
    assert!(rec.json.get("private_key_pem").is_none());
}

#[tokio::test]
async fn roles_and_ca_keys() {
    let w = world().await;
    // A signer can neither issue nor create CAs or profiles.
    let r =
        w.h.call(
            "POST",
            "/v1/profiles/device/certificates",
            Some(&w.signer),
            Some(json!({"csr": p256_csr("dev-6")})),
        )
        .await;
    r.assert_problem(403, "forbidden");
    let r =
        w.h.call(
            "PUT",
            "/v1/profiles/other",
            Some(&w.line),
            Some(json!({"ca": "devices"})),
        )
        .await;
    r.assert_problem(403, "forbidden");
    let r =
        w.h.call(
            "POST",
            "/v1/cas",
            Some(&w.line),
            Some(json!({"name": "x", "subject": {"common_name": "x"}})),
        )
        .await;
    r.assert_problem(403, "forbidden");
    // The CA key is listed but cannot sign digests, even for an admin.
    let r =
        w.h.call(
            "POST",
            "/v1/keys/ca.devices/sign",
            Some(&w.admin),
            Some(json!({"digest": "ab".repeat(32)})),
        )
        .await;
    r.assert_problem(409, "ca-key");
    // Profiles are checked before they are stored.
    for (body, what) in [
        (json!({"ca": "nope"}), "unknown CA"),
        (
            json!({"ca": "devices", "key_usage": ["key_encipherment"]}),
            "RSA usage on EC",
        ),
        (
            json!({"ca": "devices", "validity_days": 0}),
            "zero validity",
        ),
        (
            json!({"ca": "devices", "san_dns": ["{device_id}..x"]}),
            "bad SAN template",
        ),
        (
            json!({"ca": "devices", "subject": {"common_name": "{serial}"}}),
            "unknown placeholder",
        ),
    ] {
        let r =
            w.h.call("PUT", "/v1/profiles/p2", Some(&w.admin), Some(body))
                .await;
        assert_eq!(r.status, 400, "{what}: {}", r.text);
        r.assert_problem(400, "invalid-profile");
    }
}

#[tokio::test]
async fn est_enrolment_with_base64_pkcs10() {
    let w = world().await;
    let r =
        w.h.call("GET", "/.well-known/est/cacerts", None, None)
            .await;
    assert_eq!(r.status, 200);
    assert!(r
        .content_type
        .unwrap()
        .starts_with("application/pkcs7-mime"));
    let p7 = B64.decode(r.text.replace("\r\n", "")).unwrap();
    assert!(!p7.is_empty());

    let der = pem_body(&p256_csr("dev-7"));
    let enroll = |ct: &str, body: String, tok: &str| {
        Request::post("/.well-known/est/simpleenroll")
            .header("content-type", ct)
            .header("authorization", format!("Bearer {tok}"))
            .body(Body::from(body))
            .unwrap()
    };
    let r =
        w.h.send(enroll("application/pkcs10", B64.encode(&der), &w.line))
            .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.content_type.unwrap().contains("smime-type=certs-only"));
    let r =
        w.h.send(enroll("application/json", B64.encode(&der), &w.line))
            .await;
    r.assert_problem(400, "invalid-request");
    let r =
        w.h.send(enroll("application/pkcs10", "%%%".into(), &w.line))
            .await;
    r.assert_problem(400, "csr-malformed");
    let r =
        w.h.send(enroll("application/pkcs10", B64.encode(&der), &w.signer))
            .await;
    r.assert_problem(403, "forbidden");
    let r =
        w.h.call("POST", "/.well-known/est/simpleenroll", None, None)
            .await;
    assert_eq!(r.status, 401);
}

/// An EST body over the API's limit is the same `body-too-large` problem the JSON
/// routes return (not the framework's plain text), and the refusal is audited.
#[tokio::test]
async fn est_body_over_the_limit_is_a_problem_document() {
    let w = world().await;
    for path in [
        "/.well-known/est/simpleenroll",
        "/.well-known/est/device/simpleenroll",
    ] {
        let req = Request::post(path)
            .header("content-type", "application/pkcs10")
            .header("authorization", format!("Bearer {}", w.line))
            .body(Body::from(vec![b'A'; influxion_server::MAX_BODY_BYTES + 1]))
            .unwrap();
        let r = w.h.send(req).await;
        r.assert_problem(413, "body-too-large");
        let a = w.h.last_audit().await;
        assert_eq!(
            (a.action.as_str(), a.outcome.as_str(), a.target.as_deref()),
            ("cert.issue", "refused", Some("device")),
            "{path}"
        );
        assert!(a.detail.contains("body-too-large"), "{}", a.detail);
    }
}

/// Whatever an extractor refuses by itself (here a path that is not UTF-8) is a
/// problem document too.
#[tokio::test]
async fn framework_rejections_are_problem_documents() {
    let w = world().await;
    let r = w.h.call("GET", "/v1/keys/%FF", Some(&w.admin), None).await;
    r.assert_problem(400, "invalid-request");
}

fn pem_body(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    B64.decode(b64).unwrap()
}

fn to_pem(der: &[u8]) -> String {
    format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        B64.encode(der)
    )
}

#[tokio::test]
async fn request_key_conflicts_profile_lifecycle_and_ca_paths() {
    let w = world().await;
    // A request key names one request: reusing it for another device is a conflict.
    let first = issue(
        &w,
        json!({"csr": p256_csr("dev-10"), "request_key": "k-10"}),
    )
    .await;
    assert_eq!(first.status, 201, "{}", first.text);
    let r = issue(
        &w,
        json!({"csr": p256_csr("dev-11"), "request_key": "k-10"}),
    )
    .await;
    r.assert_problem(409, "request-key-conflict");
    // Same device, another key pair: also a conflict (not the first certificate).
    let r = issue(
        &w,
        json!({"csr": p256_csr("dev-10"), "request_key": "k-10"}),
    )
    .await;
    r.assert_problem(409, "request-key-conflict");

    // A profile that has issued cannot be deleted; an unused one can.
    let r =
        w.h.call("DELETE", "/v1/profiles/device", Some(&w.admin), None)
            .await;
    r.assert_problem(409, "profile-in-use");
    let r =
        w.h.call(
            "PUT",
            "/v1/profiles/spare",
            Some(&w.admin),
            Some(json!({"ca": "devices"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r =
        w.h.call("DELETE", "/v1/profiles/spare", Some(&w.admin), None)
            .await;
    assert_eq!(r.status, 204, "{}", r.text);

    // A key-admin of prof-* cannot bind a profile to a CA outside its names.
    w.h.add_subject(
        "prof-admins",
        SubjectRules {
            app_id: Some("prof-admin".into()),
            ..Default::default()
        },
        &[(Role::KeyAdmin, "prof-*")],
    )
    .await;
    let prof_admin = app_token(&w._idp, "prof-admin", 9);
    let r =
        w.h.call(
            "PUT",
            "/v1/profiles/prof-1",
            Some(&prof_admin),
            Some(json!({"ca": "devices"})),
        )
        .await;
    r.assert_problem(403, "forbidden");

    // An intermediate under the root gets pathlen 0; one under it is refused.
    let r =
        w.h.call(
            "POST",
            "/v1/cas",
            Some(&w.admin),
            Some(
                json!({"name": "ica", "key_type": "ec-p256", "parent": "devices",
                        "subject": {"common_name": "ICA"}}),
            ),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r =
        w.h.call(
            "POST",
            "/v1/cas",
            Some(&w.admin),
            Some(
                json!({"name": "ica2", "key_type": "ec-p256", "parent": "ica",
                        "subject": {"common_name": "ICA 2"}}),
            ),
        )
        .await;
    r.assert_problem(400, "invalid-request");

    // Certificates outside the caller's profiles read as absent.
    let serial = first.json["serial"].as_str().unwrap();
    w.h.add_subject(
        "other-line",
        SubjectRules {
            app_id: Some("other-line".into()),
            ..Default::default()
        },
        &[(Role::Provisioner, "sensor*")],
    )
    .await;
    let other = app_token(&w._idp, "other-line", 11);
    let r =
        w.h.call(
            "GET",
            &format!("/v1/certificates/{serial}"),
            Some(&other),
            None,
        )
        .await;
    r.assert_problem(404, "unknown-certificate");

    // A disabled CA issues nothing more but still publishes its CRL.
    let r =
        w.h.call("POST", "/v1/cas/devices/disable", Some(&w.line), None)
            .await;
    r.assert_problem(403, "forbidden");
    let r =
        w.h.call("POST", "/v1/cas/nope/disable", Some(&w.admin), None)
            .await;
    r.assert_problem(404, "unknown-ca");
    let r =
        w.h.call("POST", "/v1/cas/ica/disable", Some(&w.admin), None)
            .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["status"], "disabled");
    let r =
        w.h.call(
            "PUT",
            "/v1/profiles/on-ica",
            Some(&w.admin),
            Some(json!({"ca": "ica"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r =
        w.h.call(
            "POST",
            "/v1/profiles/on-ica/certificates",
            Some(&w.admin),
            Some(json!({"csr": p256_csr("x-1")})),
        )
        .await;
    r.assert_problem(409, "ca-not-active");
    let r = w.h.call("GET", "/crl/ica.crl", None, None).await;
    assert_eq!(r.status, 200);

    // Visibility is applied before the limit: a newer certificate of a profile the
    // caller cannot see does not hide the caller's own.
    let r =
        w.h.call(
            "PUT",
            "/v1/profiles/sensor",
            Some(&w.admin),
            Some(json!({"ca": "devices"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r =
        w.h.call(
            "POST",
            "/v1/profiles/sensor/certificates",
            Some(&w.admin),
            Some(json!({"csr": p256_csr("s-1")})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r =
        w.h.call("GET", "/v1/certificates?limit=1", Some(&w.line), None)
            .await;
    let found = r.json["certificates"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{}", r.text);
    assert_eq!(found[0]["profile"], "device");
    let r =
        w.h.call("GET", "/v1/certificates?limit=1", Some(&other), None)
            .await;
    assert_eq!(r.json["certificates"][0]["profile"], "sensor", "{}", r.text);
}

#[tokio::test]
async fn subject_override_cannot_name_another_device() {
    let w = world().await;
    let r =
        w.h.call(
            "PUT",
            "/v1/profiles/device-ovr",
            Some(&w.admin),
            Some(json!({
                "ca": "devices",
                "subject": {"common_name": "{device_id}", "organization": "Acme"},
                "allow_subject_override": true,
            })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let issue_ovr = |body: Value| {
        w.h.call(
            "POST",
            "/v1/profiles/device-ovr/certificates",
            Some(&w.line),
            Some(body),
        )
    };
    // Device a asks for a certificate naming the victim.
    let evil = csr(
        "-newkey ec -pkeyopt ec_paramgen_curve:P-256",
        "/CN=victim/O=Acme",
        &[],
    );
    let r = issue_ovr(json!({"csr": evil, "device_id": "a"})).await;
    r.assert_problem(400, "csr-subject-not-allowed");
    let detail = r.json["detail"].as_str().unwrap();
    assert!(
        detail.contains("names another device") && detail.contains("device id"),
        "{detail}"
    );
    let audit = w.h.last_audit().await;
    assert_eq!(
        (audit.action.as_str(), audit.outcome.as_str()),
        ("cert.issue", "refused")
    );
    for id in ["a", "victim"] {
        let r =
            w.h.call(
                "GET",
                &format!("/v1/certificates?device_id={id}"),
                Some(&w.line),
                None,
            )
            .await;
        assert_eq!(r.json["certificates"].as_array().unwrap().len(), 0, "{id}");
    }
    // Overriding what is not the device's name still works, with the device's own CN.
    let own = csr(
        "-newkey ec -pkeyopt ec_paramgen_curve:P-256",
        "/CN=a/O=Acme Sub",
        &[],
    );
    let r = issue_ovr(json!({"csr": own, "device_id": "a"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["subject"], "O=Acme Sub, CN=a");
}

/// Write `GET /crl/{ca}.crl` as PEM to `dir/{ca}.crl.pem`; returns the PEM.
async fn crl_pem(w: &World, ca: &str, dir: &std::path::Path) -> String {
    let req = Request::get(format!("/crl/{ca}.crl"))
        .body(Body::empty())
        .unwrap();
    let resp = tower::ServiceExt::oneshot(w.h.router.clone(), req)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "CRL of {ca}");
    let der = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    std::fs::write(dir.join(format!("{ca}.crl")), &der).unwrap();
    let pem = format!("{ca}.crl.pem");
    openssl(
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            &format!("{ca}.crl"),
            "-out",
            &pem,
        ],
        dir,
    );
    std::fs::read_to_string(dir.join(pem)).unwrap()
}

async fn ca_pem(w: &World, ca: &str) -> String {
    let r =
        w.h.call("GET", &format!("/v1/cas/{ca}"), Some(&w.admin), None)
            .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["certificate_pem"].as_str().unwrap().to_owned()
}

/// An intermediate under the world's root "devices", and a profile issuing under it.
async fn intermediate(w: &World) -> String {
    let r =
        w.h.call(
            "POST",
            "/v1/cas",
            Some(&w.admin),
            Some(
                json!({"name": "ica", "key_type": "ec-p256", "parent": "devices",
                        "subject": {"common_name": "Acme ICA", "organization": "Acme"}}),
            ),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let serial = r.json["serial"].as_str().unwrap().to_owned();
    assert_eq!(serial.len(), 32, "the intermediate's serial is recorded");
    let r =
        w.h.call(
            "PUT",
            "/v1/profiles/device-ica",
            Some(&w.admin),
            Some(json!({"ca": "ica"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    serial
}

/// `openssl verify -crl_check_all` of `leaf` under root.pem (+ ica.pem) with crls.pem.
fn verify_all(dir: &std::path::Path, leaf: &str) -> std::process::Output {
    Command::new("openssl")
        .args([
            "verify",
            "-crl_check_all",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "ica.pem",
            "-CRLfile",
            "crls.pem",
            leaf,
        ])
        .current_dir(dir)
        .output()
        .unwrap()
}

#[tokio::test]
async fn revoked_intermediate_is_on_the_parent_crl_and_openssl_refuses_its_devices() {
    let w = world().await;
    let ica_serial = intermediate(&w).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("root.pem"), ca_pem(&w, "devices").await).unwrap();
    std::fs::write(d.join("ica.pem"), ca_pem(&w, "ica").await).unwrap();
    let r =
        w.h.call(
            "POST",
            "/v1/profiles/device-ica/certificates",
            Some(&w.line),
            Some(json!({"csr": p256_csr("dev-ica-1")})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    std::fs::write(
        d.join("leaf.pem"),
        r.json["certificate_pem"].as_str().unwrap(),
    )
    .unwrap();
    // A device directly under the root, for contrast.
    let r = issue(&w, json!({"csr": p256_csr("dev-root-1")})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    std::fs::write(
        d.join("direct.pem"),
        r.json["certificate_pem"].as_str().unwrap(),
    )
    .unwrap();
    let crls = |root: String, ica: String| std::fs::write(d.join("crls.pem"), root + &ica);

    // Before: the whole chain checks out against both CRLs.
    crls(crl_pem(&w, "devices", d).await, crl_pem(&w, "ica", d).await).unwrap();
    let o = verify_all(d, "leaf.pem");
    assert!(o.status.success(), "before revocation: {o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("leaf.pem: OK"));

    let r =
        w.h.call(
            "POST",
            "/v1/cas/ica/revoke",
            Some(&w.admin),
            Some(json!({"reason": "ca_compromise"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["status"], "revoked");
    assert_eq!(r.json["revocation_reason"], "ca_compromise");
    assert_eq!(r.json["serial"], ica_serial.as_str());
    // Audited in the revocation's transaction, then the parent's CRL is reissued.
    let records = w.h.state.store.recent_audit(2).await.unwrap();
    assert_eq!(records[0].action, "crl.issue");
    assert_eq!(records[0].target.as_deref(), Some("devices"));
    let rec = &records[1];
    assert_eq!(
        (
            rec.action.as_str(),
            rec.outcome.as_str(),
            rec.target.as_deref()
        ),
        ("ca.revoke", "ok", Some("ica"))
    );
    let detail: Value = serde_json::from_str(&rec.detail).unwrap();
    assert_eq!(
        detail,
        json!({"serial": ica_serial, "parent": "devices", "reason": "ca_compromise"})
    );

    // After: the root's CRL lists the intermediate, and openssl refuses the device.
    crls(crl_pem(&w, "devices", d).await, crl_pem(&w, "ica", d).await).unwrap();
    let text = String::from_utf8(openssl(
        &["crl", "-in", "devices.crl.pem", "-noout", "-text"],
        d,
    ))
    .unwrap();
    assert!(
        text.to_uppercase().contains(&ica_serial.to_uppercase()),
        "{text}"
    );
    assert!(text.contains("CA Compromise"), "{text}");
    let o = verify_all(d, "leaf.pem");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!o.status.success(), "after revocation: {out}");
    assert!(out.contains("certificate revoked"), "{out}");
    // The root's own devices are unaffected.
    let o = verify_all(d, "direct.pem");
    assert!(o.status.success(), "a device under the root: {o:?}");
    // And the revoked CA issues nothing more.
    let r =
        w.h.call(
            "POST",
            "/v1/profiles/device-ica/certificates",
            Some(&w.line),
            Some(json!({"csr": p256_csr("dev-ica-2")})),
        )
        .await;
    r.assert_problem(409, "ca-not-active");
}

#[tokio::test]
async fn ca_revocation_is_admin_only_and_refusals_are_exact() {
    let w = world().await;
    intermediate(&w).await;
    w.h.add_subject(
        "pki-key-admins",
        SubjectRules {
            app_id: Some("pki-key-admin".into()),
            ..Default::default()
        },
        &[(Role::KeyAdmin, "*"), (Role::Provisioner, "*")],
    )
    .await;
    let key_admin = app_token(&w._idp, "pki-key-admin", 21);
    let h = &w.h;
    let revoke = |ca: &str, tok: &str, body: Value| {
        let (path, tok) = (format!("/v1/cas/{ca}/revoke"), tok.to_owned());
        async move { h.call("POST", &path, Some(&tok), Some(body)).await }
    };
    let refused = |action: &str| {
        let action = action.to_owned();
        async move {
            let a = h.last_audit().await;
            assert_eq!((a.action, a.outcome), (action, "refused".to_owned()));
        }
    };
    let reason = json!({"reason": "superseded"});

    // Deny by default: key-admin and provisioner everywhere are not enough.
    for tok in [&key_admin, &w.line, &w.signer] {
        revoke("ica", tok, reason.clone())
            .await
            .assert_problem(403, "forbidden");
        refused("ca.revoke").await;
    }
    let r = w.h.call("GET", "/v1/cas/ica", Some(&w.admin), None).await;
    assert_eq!(r.json["status"], "active", "{}", r.text);

    revoke("nope", &w.admin, reason.clone())
        .await
        .assert_problem(404, "unknown-ca");
    refused("ca.revoke").await;
    // The root has no parent here: nothing of ours could list it.
    let r = revoke("devices", &w.admin, reason.clone()).await;
    r.assert_problem(409, "ca-no-parent");
    refused("ca.revoke").await;
    revoke("ica", &w.admin, json!({"reason": "because"}))
        .await
        .assert_problem(400, "invalid-request");
    refused("ca.revoke").await;
    revoke("ica", &w.admin, json!({"reason": "superseded", "extra": 1}))
        .await
        .assert_problem(400, "invalid-request");

    let r = revoke("ica", &w.admin, reason.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    revoke("ica", &w.admin, reason.clone())
        .await
        .assert_problem(409, "already-revoked");
    refused("ca.revoke").await;
    // Listed once on the parent's CRL.
    let r =
        w.h.call("GET", "/v1/cas/devices", Some(&w.admin), None)
            .await;
    let crl_number = r.json["crl_number"].as_i64().unwrap();
    let dir = tempfile::tempdir().unwrap();
    crl_pem(&w, "devices", dir.path()).await;
    let text = String::from_utf8(openssl(
        &["crl", "-in", "devices.crl.pem", "-noout", "-text"],
        dir.path(),
    ))
    .unwrap();
    assert_eq!(text.matches("Serial Number:").count(), 1, "{text}");
    assert!(crl_number >= 2, "reissued after the revocation");
}

/// `keys certify` issues from a profile's CA: the caller needs key-admin on the key and
/// provisioner on the profile; the profile must give codeSigning; the refusals are
/// exact problems.
#[tokio::test]
async fn certifying_a_key_needs_the_profile_and_code_signing() {
    let w = world().await;
    w.h.add_subject(
        "team-a",
        SubjectRules {
            app_id: Some("team-a".into()),
            ..Default::default()
        },
        &[(Role::KeyAdmin, "team-a-*")],
    )
    .await;
    let team_a = app_token(&w._idp, "team-a", 9);
    let r =
        w.h.call(
            "PUT",
            "/v1/profiles/code",
            Some(&w.admin),
            Some(
                json!({"ca": "devices", "extended_key_usage": ["code_signing"],
                        "subject": {"common_name": "{device_id}"}}),
            ),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        w.h.create_key(&team_a, "team-a-fw", "ec-p256").await.status,
        201
    );
    let certify = |who: &str, key: &str, profile: &str| {
        let (who, key, profile) = (who.to_owned(), key.to_owned(), profile.to_owned());
        let h = &w.h;
        async move {
            h.call(
                "POST",
                &format!("/v1/keys/{key}/certify"),
                Some(&who),
                Some(json!({"profile": profile})),
            )
            .await
        }
    };
    // Key-admin on the key, but not provisioner on the profile: refused.
    certify(&team_a, "team-a-fw", "code")
        .await
        .assert_problem(403, "forbidden");
    // A profile without codeSigning: refused.
    certify(&w.admin, "team-a-fw", "device")
        .await
        .assert_problem(400, "invalid-profile");
    certify(&w.admin, "team-a-fw", "nope")
        .await
        .assert_problem(404, "unknown-profile");
    let r = certify(&w.admin, "team-a-fw", "code").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["has_certificate"], true);
    // A chain for another key is refused.
    let ca = ca_pem(&w, "devices").await;
    let r =
        w.h.call(
            "PUT",
            "/v1/keys/team-a-fw/certificate",
            Some(&w.admin),
            Some(json!({"chain": ca})),
        )
        .await;
    r.assert_problem(422, "bad-key-certificate");
}
