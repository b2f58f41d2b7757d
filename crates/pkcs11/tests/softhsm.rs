//! The PKCS#11 backend against SoftHSM2 (Debian `softhsm2`), with a token initialised
//! in a temporary directory (`SOFTHSM2_CONF`): the backend conformance suite, keys
//! generated sensitive and not extractable (checked from outside with `pkcs11-tool`),
//! and a wrong PIN refused at open.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

use std::process::Command;
use std::sync::Arc;

use influxion_backend_conformance as conformance;
use influxion_core::KeyType;
use influxion_pkcs11::{OpenError, Pkcs11Backend};

mod common;
use common::{config, token, MODULE, PIN};

#[tokio::test]
async fn the_pkcs11_backend_conforms_on_softhsm() {
    let dir = tempfile::tempdir().unwrap();
    token(dir.path(), "influxion-test");

    // A wrong PIN fails at open, naming the setting.
    let wrong = Pkcs11Backend::open(config("pkcs11", "influxion-test", "0000", 2));
    assert!(
        matches!(&wrong, Err(OpenError::Pin { why, .. }) if !why.is_empty()),
        "{:?}",
        wrong.as_ref().err()
    );
    assert!(wrong
        .err()
        .unwrap()
        .to_string()
        .contains("INFLUXION_PKCS11_PIN"));
    let missing = Pkcs11Backend::open(config("pkcs11", "no-such-token", PIN, 2));
    assert!(matches!(missing, Err(OpenError::NoToken(_))));

    let backend =
        Arc::new(Pkcs11Backend::open(config("pkcs11", "influxion-test", PIN, 4)).unwrap());
    conformance::run(
        backend.clone(),
        &[
            KeyType::EcP256,
            KeyType::EcP384,
            KeyType::Rsa2048,
            KeyType::Rsa3072,
            KeyType::Ed25519,
        ],
    )
    .await;

    // From outside: the private keys are on the token, sensitive, never extractable.
    let key = conformance::generate(
        backend.as_ref(),
        "5b0c7c2e-8a1d-4a3e-9d55-0a1b2c3d4e5f",
        KeyType::EcP256,
    )
    .await;
    let listed = Command::new("pkcs11-tool")
        .args([
            "--module",
            MODULE,
            "--token-label",
            "influxion-test",
            "--login",
            "--pin",
            PIN,
            "--list-objects",
            "--type",
            "privkey",
        ])
        .output()
        .expect("pkcs11-tool (Debian opensc)");
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let ours = text
        .split("Private Key Object")
        .find(|o| o.contains("5b0c7c2e8a1d4a3e9d550a1b2c3d4e5f"))
        .unwrap_or_else(|| panic!("the key is not on the token: {text}"));
    assert!(ours.contains("sensitive"), "{ours}");
    assert!(
        !ours.contains("extractable") || ours.contains("never extractable"),
        "{ours}"
    );
    let described = influxion_core::KeyBackend::describe(backend.as_ref(), &key.handle);
    assert_eq!(described["token"], "influxion-test");
    assert_eq!(described["key_id"], "5b0c7c2e8a1d4a3e9d550a1b2c3d4e5f");
}
