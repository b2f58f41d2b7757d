//! The Key Vault stand-in keeps the documented contract the Key Vault backend will be
//! built against: HTTPS with its own CA (trusted through `INFLUXION_VAULT_CA_FILE`, as
//! `http_client` adds it to the system roots), `api-version` required, the 401
//! challenge, key bundles as JWKs, ECDSA signatures as raw r‖s over the digest, errors
//! as `{"error":{"code","message"}}`, 429 with `Retry-After`. A token from the
//! credential chain (instance metadata stand-in) is what it accepts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use influxion_azure::{http_client, Credential, Retry, Settings, Source, KEY_VAULT_RESOURCE};
use influxion_azure_standin::{Fault, IdentityStandIn, VaultStandIn};
use serde_json::{json, Value};
use sha2::Digest as _;

const API: &str = "api-version=7.5";

#[tokio::test]
async fn the_vault_stand_in_keeps_the_documented_contract() {
    let dir = tempfile::tempdir().unwrap();
    let idp = IdentityStandIn::start().await.unwrap();
    let vault = VaultStandIn::start(dir.path(), "https://login.microsoftonline.com/t1")
        .await
        .unwrap();
    vault.accept_standin_tokens();
    let http = http_client(Some(&vault.ca_file)).unwrap();
    let settings =
        Settings::from_vars(|k| (k == "INFLUXION_IMDS_ENDPOINT").then(|| idp.url())).unwrap();
    let cred = Credential::with_retry(
        Source::select(&settings).unwrap(),
        http.clone(),
        Retry::default(),
    );
    let token = cred.token(KEY_VAULT_RESOURCE).await.unwrap();
    let base = vault.url();

    // Without a token: 401 with the challenge naming the authority and the resource.
    let r = http
        .post(format!("{base}keys/fw/create?{API}"))
        .json(&json!({"kty": "EC", "crv": "P-256"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert_eq!(
        challenge,
        "Bearer authorization=\"https://login.microsoftonline.com/t1\", resource=\"https://vault.azure.net\""
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "Unauthorized");

    // Without api-version: 400 BadParameter.
    let r = http
        .get(format!("{base}keys/fw"))
        .bearer_auth(token.token.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Create, read back, sign; the signature is r‖s over the digest and verifies.
    let created: Value = http
        .post(format!("{base}keys/fw/create?{API}"))
        .bearer_auth(token.token.as_str())
        .json(&json!({"kty": "EC-HSM", "crv": "P-256", "key_ops": ["sign", "verify"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kid = created["key"]["kid"].as_str().unwrap().to_owned();
    assert!(kid.starts_with(&format!("{base}keys/fw/")), "{kid}");
    assert_eq!(created["key"]["kty"], "EC");
    assert_eq!(created["attributes"]["exportable"], false);
    let version = kid.rsplit('/').next().unwrap().to_owned();
    let x = B64URL
        .decode(created["key"]["x"].as_str().unwrap())
        .unwrap();
    let y = B64URL
        .decode(created["key"]["y"].as_str().unwrap())
        .unwrap();
    let point = p256::EncodedPoint::from_affine_coordinates(
        x.as_slice().into(),
        y.as_slice().into(),
        false,
    );
    let vk = p256::ecdsa::VerifyingKey::from_encoded_point(&point).unwrap();
    let digest = sha2::Sha256::digest(b"firmware image");
    let signed: Value = http
        .post(format!("{base}keys/fw/{version}/sign?{API}"))
        .bearer_auth(token.token.as_str())
        .json(&json!({"alg": "ES256", "value": B64URL.encode(digest)}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(signed["kid"], kid);
    let rs = B64URL.decode(signed["value"].as_str().unwrap()).unwrap();
    assert_eq!(rs.len(), 64, "raw r‖s, not DER");
    let sig = p256::ecdsa::Signature::from_slice(&rs).unwrap();
    use signature::hazmat::PrehashVerifier as _;
    vk.verify_prehash(&digest, &sig).unwrap();

    // A digest of the wrong length, an unknown version, throttling, a refusal.
    let r = http
        .post(format!("{base}keys/fw/{version}/sign?{API}"))
        .bearer_auth(token.token.as_str())
        .json(&json!({"alg": "ES256", "value": B64URL.encode([0u8; 20])}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .get(format!("{base}keys/fw/0000?{API}"))
        .bearer_auth(token.token.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "KeyNotFound");
    vault.fail_next(&[Fault {
        status: 429,
        retry_after: Some(2),
    }]);
    let r = http
        .get(format!("{base}keys/fw?{API}"))
        .bearer_auth(token.token.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "2");
    vault.forbid("sign");
    let r = http
        .post(format!("{base}keys/fw/{version}/sign?{API}"))
        .bearer_auth(token.token.as_str())
        .json(&json!({"alg": "ES256", "value": B64URL.encode(digest)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "Forbidden");

    // What reached the vault: every call with api-version except the one without.
    let seen = vault.requests();
    assert_eq!(seen.iter().filter(|r| r.api_version.is_none()).count(), 1);
    assert!(seen[0].bearer.is_none());

    // A client without the test CA does not trust the vault: roots are added, not
    // replaced, and nothing else trusts this CA.
    let plain = http_client(None).unwrap();
    assert!(plain
        .get(format!("{base}keys/fw?{API}"))
        .send()
        .await
        .is_err());
}
