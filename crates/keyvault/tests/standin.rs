//! The Key Vault backend against the loopback HTTPS vault stand-in, reached with a
//! token from the instance-metadata stand-in: the backend conformance suite, what each
//! request carries (one sign call per signature, no key GET per signature), and each
//! fault with the error it must become.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

use std::sync::Arc;
use std::time::Duration;

use influxion_azure::{http_client, Credential, Retry, Settings, Source, KEY_VAULT_RESOURCE};
use influxion_azure_standin::{
    CertificateKey, Endpoint, Fault, IdentityStandIn, SecretFormat, VaultStandIn,
};
use influxion_backend_conformance as conformance;
use influxion_core::{BackendError, BoundKey, ExistingKey, KeyBackend, KeyType, SignAlgorithm};
use influxion_keyvault::KeyVaultBackend;

struct World {
    _dir: tempfile::TempDir,
    idp: IdentityStandIn,
    vault: VaultStandIn,
    backend: Arc<KeyVaultBackend>,
}

async fn world(authority_resource: &str) -> World {
    world_with(authority_resource, true).await
}

async fn world_with(authority_resource: &str, accept: bool) -> World {
    let dir = tempfile::tempdir().unwrap();
    let idp = IdentityStandIn::start().await.unwrap();
    let vault = VaultStandIn::start(dir.path(), "https://login.microsoftonline.com/t1")
        .await
        .unwrap();
    if accept {
        vault.accept_standin_tokens();
    }
    let backend = backend_for(&idp, &vault, authority_resource);
    World {
        _dir: dir,
        idp,
        vault,
        backend: Arc::new(backend),
    }
}

/// A backend for `vault` with its own credential and caches: what a restarted
/// keyserver has.
fn backend_for(idp: &IdentityStandIn, vault: &VaultStandIn, resource: &str) -> KeyVaultBackend {
    let settings =
        Settings::from_vars(|k| (k == "INFLUXION_IMDS_ENDPOINT").then(|| idp.url())).unwrap();
    let http = http_client(Some(&vault.ca_file)).unwrap();
    let credential = Credential::with_retry(
        Source::select(&settings).unwrap(),
        http.clone(),
        Retry {
            attempts: 2,
            first_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(20),
        },
    );
    KeyVaultBackend::new(
        vault.url().parse().unwrap(),
        http,
        Arc::new(credential),
        resource,
    )
    .deadline(Duration::from_secs(3))
}

#[tokio::test]
async fn the_key_vault_backend_conforms() {
    let w = world(KEY_VAULT_RESOURCE).await;
    conformance::run(
        w.backend.clone(),
        &[
            KeyType::EcP256,
            KeyType::EcP384,
            KeyType::Rsa2048,
            KeyType::Rsa3072,
        ],
    )
    .await;
    // Every request carried the API version and a token from the managed identity.
    let seen = w.vault.requests();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|r| r.api_version.as_deref() == Some("7.5")));
    assert!(seen.iter().all(|r| r
        .bearer
        .as_deref()
        .is_some_and(|b| b.starts_with("standin-imds-token-"))));
    // One token for all of it (cached), asked for the vault's resource.
    assert_eq!(w.idp.count(Endpoint::Imds), 1);
    assert_eq!(w.idp.seen()[0].query["resource"], KEY_VAULT_RESOURCE);
}

#[tokio::test]
async fn one_sign_call_per_signature_and_keys_are_made_as_asked() {
    let w = world(KEY_VAULT_RESOURCE).await;
    let key = conformance::generate(w.backend.as_ref(), "k-1", KeyType::EcP256).await;
    let created = &w.vault.requests()[0];
    assert_eq!(created.method, "POST");
    assert_eq!(created.path, "/keys/influxion-k-1/create");
    let body = created.body.clone().unwrap();
    assert_eq!(body["kty"], "EC");
    assert_eq!(body["crv"], "P-256");
    assert_eq!(body["attributes"]["exportable"], false);
    assert_eq!(body["key_ops"], serde_json::json!(["sign", "verify"]));
    let before = w.vault.requests().len();
    let calls_before = w.backend.calls();
    for i in 0..5u8 {
        let d = conformance::digest_for(influxion_core::SignAlgorithm::Es256, &[i]);
        let sig = w
            .backend
            .sign(&key.id, key.key_type, &key.handle, &d)
            .await
            .unwrap();
        assert_eq!(sig[0], 0x30, "DER, not r‖s");
        assert!(influxion_verify::verify(key.key_type, &key.public_key_der, &d, &sig).unwrap());
    }
    let after = w.vault.requests();
    assert_eq!(
        after.len() - before,
        5,
        "exactly one vault call per signature"
    );
    assert_eq!(w.backend.calls() - calls_before, 5);
    assert!(after[before..]
        .iter()
        .all(|r| r.method == "POST" && r.path.ends_with("/sign")));
    let sign_body = after[before].body.clone().unwrap();
    assert_eq!(sign_body["alg"], "ES256");

    // HSM keys on a Premium vault.
    let hsm = KeyVaultBackend::new(
        w.vault.url().parse().unwrap(),
        http_client(Some(&w.vault.ca_file)).unwrap(),
        Arc::new(Credential::new(
            Source::select(
                &Settings::from_vars(|k| (k == "INFLUXION_IMDS_ENDPOINT").then(|| w.idp.url()))
                    .unwrap(),
            )
            .unwrap(),
            reqwest::Client::new(),
        )),
        KEY_VAULT_RESOURCE,
    )
    .hsm(true);
    hsm.generate("k-2", KeyType::Rsa3072).await.unwrap();
    let last = w.vault.requests().pop().unwrap();
    assert_eq!(last.body.unwrap()["kty"], "RSA-HSM");

    // No Ed25519 in Key Vault: refused before any call.
    let n = w.vault.requests().len();
    assert!(matches!(
        w.backend.generate("k-3", KeyType::Ed25519).await,
        Err(BackendError::Unsupported(KeyType::Ed25519))
    ));
    assert_eq!(w.vault.requests().len(), n);
}

#[tokio::test]
async fn faults_become_the_right_errors() {
    let w = world(KEY_VAULT_RESOURCE).await;
    let key = conformance::generate(w.backend.as_ref(), "k-1", KeyType::EcP256).await;
    let d = conformance::digest_for(influxion_core::SignAlgorithm::Es256, b"fw");
    let sign = || w.backend.sign(&key.id, key.key_type, &key.handle, &d);

    // Throttled, then served: retried after Retry-After.
    w.vault.fail_next(&[
        Fault {
            status: 429,
            retry_after: Some(1),
        },
        Fault {
            status: 503,
            retry_after: None,
        },
    ]);
    sign().await.unwrap();

    // Failing past the deadline: unavailable (503 backend-unavailable at the edge).
    let many: Vec<Fault> = (0..40)
        .map(|_| Fault {
            status: 503,
            retry_after: Some(1),
        })
        .collect();
    w.vault.fail_next(&many);
    assert!(matches!(sign().await, Err(BackendError::Unavailable(_))));
    conformance::unavailable(w.backend.as_ref(), &key).await;
    // Recovers without a restart once the vault answers again.
    let w = world(KEY_VAULT_RESOURCE).await;
    let key = conformance::generate(w.backend.as_ref(), "k-1", KeyType::EcP256).await;
    let sign = || w.backend.sign(&key.id, key.key_type, &key.handle, &d);
    sign().await.unwrap();

    // A missing permission: refused, naming the vault and the role.
    w.vault.forbid("sign");
    match sign().await {
        Err(BackendError::Refused(m)) => {
            assert!(
                m.contains(&w.vault.url()) && m.contains("Key Vault Crypto User"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }

    // The key deleted in the vault: refused as gone, at sign and at the start-up check.
    let w = world(KEY_VAULT_RESOURCE).await;
    let key = conformance::generate(w.backend.as_ref(), "k-1", KeyType::EcP256).await;
    w.vault.delete_key("influxion-k-1");
    let e = w.backend.sign(&key.id, key.key_type, &key.handle, &d).await;
    assert!(
        matches!(&e, Err(BackendError::Refused(m)) if m.contains("no such key")),
        "{e:?}"
    );
    let e = w.backend.check(&key.id, key.key_type, &key.handle).await;
    assert!(matches!(e, Err(BackendError::Refused(_))), "{e:?}");
}

#[tokio::test]
async fn a_rotated_key_keeps_signing_with_the_pinned_version() {
    let w = world(KEY_VAULT_RESOURCE).await;
    let key = conformance::generate(w.backend.as_ref(), "k-1", KeyType::EcP256).await;
    let newer = w.vault.rotate("influxion-k-1").unwrap();
    let d = conformance::digest_for(influxion_core::SignAlgorithm::Es256, b"fw");
    let sig = w
        .backend
        .sign(&key.id, key.key_type, &key.handle, &d)
        .await
        .unwrap();
    assert!(influxion_verify::verify(key.key_type, &key.public_key_der, &d, &sig).unwrap());
    let last = w.vault.requests().pop().unwrap();
    assert!(
        !last.path.contains(&newer),
        "the pinned version, not the newest"
    );
    w.backend
        .check(&key.id, key.key_type, &key.handle)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_challenge_for_another_resource_is_refused() {
    // The backend asks tokens for one audience; the vault challenges for another (a
    // vault of another cloud, or someone fishing for a token): no token is sent on.
    let w = world_with("https://vault.azure.cn", false).await;
    let e = w.backend.generate("k-1", KeyType::EcP256).await;
    assert!(
        matches!(&e, Err(BackendError::Refused(m)) if m.contains("asks for a token for")),
        "{e:?}"
    );
    assert_eq!(w.vault.requests().len(), 1, "no second try");
    // The right resource, but the vault still refuses the token after the challenge:
    // one retry, then refused (not retried forever).
    let w = world_with(KEY_VAULT_RESOURCE, false).await;
    let e = w.backend.generate("k-1", KeyType::EcP256).await;
    assert!(
        matches!(&e, Err(BackendError::Refused(m)) if m.contains("does not accept")),
        "{e:?}"
    );
    assert_eq!(w.vault.requests().len(), 2);
}

async fn sign_and_verify(backend: &KeyVaultBackend, key: &BoundKey, alg: SignAlgorithm) {
    let d = conformance::digest_for(alg, b"firmware");
    let sig = backend
        .sign("id", key.key_type, &key.handle, &d)
        .await
        .unwrap();
    assert!(influxion_verify::verify(key.key_type, &key.public_key_der, &d, &sig).unwrap());
}

fn vault_key(name: &str, version: Option<&str>) -> ExistingKey {
    ExistingKey::VaultKey {
        name: name.into(),
        version: version.map(Into::into),
    }
}

#[tokio::test]
async fn existing_vault_keys_bind_at_a_pinned_version_and_rotate_only_when_asked() {
    let w = world(KEY_VAULT_RESOURCE).await;
    let made = conformance::generate(w.backend.as_ref(), "made", KeyType::Rsa3072).await;
    // Bound by name: the newest version now, pinned in the handle.
    let bound = w
        .backend
        .bind("id", &vault_key("influxion-made", None))
        .await
        .unwrap();
    assert_eq!(bound.key_type, KeyType::Rsa3072);
    assert_eq!(bound.public_key_der, made.public_key_der);
    assert!(bound.certificate_chain.is_empty());
    sign_and_verify(&w.backend, &bound, SignAlgorithm::Ps256).await;
    let first = w.backend.describe(&bound.handle);
    let v1 = first["vault_key_version"].as_str().unwrap().to_owned();

    // A new version in the vault changes nothing until rotation is asked for.
    let v2 = w.vault.rotate("influxion-made").unwrap();
    sign_and_verify(&w.backend, &bound, SignAlgorithm::Rs256).await;
    assert!(w.vault.requests().last().unwrap().path.contains(&v1));
    let rotated = w
        .backend
        .rotate("id", KeyType::Rsa3072, &bound.handle, None)
        .await
        .unwrap();
    assert_eq!(
        w.backend.describe(&rotated.handle)["vault_key_version"],
        v2.as_str()
    );
    assert_ne!(rotated.public_key_der, bound.public_key_der);
    sign_and_verify(&w.backend, &rotated, SignAlgorithm::Ps384).await;
    // Back to an explicit version.
    let back = w
        .backend
        .rotate("id", KeyType::Rsa3072, &rotated.handle, Some(&v1))
        .await
        .unwrap();
    assert_eq!(back.public_key_der, bound.public_key_der);
    let pinned = w
        .backend
        .bind("id", &vault_key("influxion-made", Some(&v1)))
        .await
        .unwrap();
    assert_eq!(pinned.handle, back.handle);

    // What cannot be bound, and why.
    let e = w.backend.bind("id", &vault_key("nope", None)).await;
    assert!(
        matches!(&e, Err(BackendError::Refused(m)) if m.contains("no such key")),
        "{e:?}"
    );
    w.vault
        .create_certificate("old-rsa", CertificateKey::Rsa2048, SecretFormat::Pem, true)
        .unwrap();
    // RSA-2048 binds (MCUboot and older boot chains verify it).
    let bound = w
        .backend
        .bind("id", &vault_key("old-rsa", None))
        .await
        .unwrap();
    assert_eq!(bound.key_type, KeyType::Rsa2048);
    let e = w
        .backend
        .rotate("id", KeyType::EcP256, &made.handle, None)
        .await;
    assert!(matches!(e, Err(BackendError::Crypto(_))), "{e:?}");
}

#[tokio::test]
async fn a_vault_certificate_signs_in_the_vault_and_brings_its_chain() {
    let w = world(KEY_VAULT_RESOURCE).await;
    let v1 = w
        .vault
        .create_certificate(
            "fw-signing",
            CertificateKey::P256,
            SecretFormat::Pkcs12,
            false,
        )
        .unwrap();
    let cert = ExistingKey::VaultCertificate {
        name: "fw-signing".into(),
        from_secret: false,
    };
    let bound = w.backend.bind("id", &cert).await.unwrap();
    assert_eq!(bound.key_type, KeyType::EcP256);
    // Leaf and issuing CA: the chain came from the (PKCS#12) secret.
    assert_eq!(bound.certificate_chain.len(), 2);
    let before = w.vault.requests().len();
    sign_and_verify(&w.backend, &bound, SignAlgorithm::Es256).await;
    let after = w.vault.requests();
    assert_eq!(after.len(), before + 1, "one call per signature");
    assert_eq!(
        after.last().unwrap().path,
        format!("/keys/fw-signing/{v1}/sign")
    );
    let at = w.backend.describe(&bound.handle);
    assert_eq!(at["vault_certificate"], "fw-signing");
    assert_eq!(at["vault_key"], "fw-signing");

    // Without secrets get, the chain is the certificate alone.
    w.vault.forbid("secrets-get");
    let leaf_only = w.backend.bind("id", &cert).await.unwrap();
    assert_eq!(leaf_only.certificate_chain, bound.certificate_chain[..1]);

    // Renewal makes a new key and certificate; rotation binds them.
    let v2 = w.vault.renew_certificate("fw-signing").unwrap();
    let rotated = w
        .backend
        .rotate("id", KeyType::EcP256, &bound.handle, None)
        .await
        .unwrap();
    assert_eq!(
        w.backend.describe(&rotated.handle)["vault_key_version"],
        v2.as_str()
    );
    assert_ne!(rotated.certificate_chain[0], bound.certificate_chain[0]);
    sign_and_verify(&w.backend, &rotated, SignAlgorithm::Es256).await;

    // No certificates/get permission: a problem naming the vault.
    w.vault.forbid("certificates-get");
    let e = w.backend.bind("id", &cert).await;
    assert!(
        matches!(&e, Err(BackendError::Refused(m)) if m.contains("refused")),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_certificate_secret_signs_in_memory_with_only_secrets_get() {
    let w = world(KEY_VAULT_RESOURCE).await;
    // The setup guide's vault: the identity may get secrets, nothing else.
    for op in ["sign", "get", "create", "certificates-get"] {
        w.vault.forbid(op);
    }
    for (name, key, format, alg) in [
        (
            "p12-cert",
            CertificateKey::P256,
            SecretFormat::Pkcs12,
            SignAlgorithm::Es256,
        ),
        (
            "pem-cert",
            CertificateKey::Rsa3072,
            SecretFormat::Pem,
            SignAlgorithm::Ps256,
        ),
        (
            "p384-cert",
            CertificateKey::P384,
            SecretFormat::Pem,
            SignAlgorithm::Es384,
        ),
    ] {
        w.vault.create_certificate(name, key, format, true).unwrap();
        let existing = ExistingKey::VaultCertificate {
            name: name.into(),
            from_secret: true,
        };
        let bound = w.backend.bind("id", &existing).await.unwrap();
        assert_eq!(bound.certificate_chain.len(), 2, "{name}");
        let before = w.vault.requests().len();
        sign_and_verify(&w.backend, &bound, alg).await;
        assert_eq!(
            w.vault.requests().len(),
            before,
            "signed in memory, no vault call"
        );
        let at = w.backend.describe(&bound.handle);
        assert_eq!(at["vault_secret"], name);
        assert!(at.get("vault_key").is_none());

        // A restarted keyserver has nothing in memory: check reads the secret again.
        let restarted = backend_for(&w.idp, &w.vault, KEY_VAULT_RESOURCE);
        restarted
            .check("id", bound.key_type, &bound.handle)
            .await
            .unwrap();
        assert!(w
            .vault
            .requests()
            .last()
            .unwrap()
            .path
            .starts_with(&format!("/secrets/{name}/")));
        sign_and_verify(&restarted, &bound, alg).await;
    }
    // A certificate whose key is not exportable has no private key in its secret.
    w.vault
        .create_certificate("locked", CertificateKey::P256, SecretFormat::Pkcs12, false)
        .unwrap();
    let e = w
        .backend
        .bind(
            "id",
            &ExistingKey::VaultCertificate {
                name: "locked".into(),
                from_secret: true,
            },
        )
        .await;
    assert!(
        matches!(&e, Err(BackendError::Unfit(m)) if m.contains("not exportable")),
        "{e:?}"
    );
}
