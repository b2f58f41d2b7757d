//! A SoftHSM token that goes away mid-run (its directory moved): signatures answer
//! "unavailable", and once the directory is back the backend has reconnected and
//! logged in again by itself. Its own test binary: the module is process-wide.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

use std::time::Duration;

use influxion_core::{BackendError, Digest, KeyBackend, KeyType, SignAlgorithm};
use influxion_pkcs11::Pkcs11Backend;

mod common;
use common::{config, token, PIN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_goes_away_comes_back_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    token(dir.path(), "away");
    let tokens = dir.path().join("tokens");

    let backend = Pkcs11Backend::open(config("pkcs11", "away", PIN, 4)).unwrap();
    let key = backend
        .generate("0f0e0d0c-0b0a-4908-8706-050403020100", KeyType::EcP256)
        .await
        .unwrap();
    let digest = Digest::new(SignAlgorithm::Es256, vec![0x5a; 32]).unwrap();
    let sign = || backend.sign("k", KeyType::EcP256, &key.handle, &digest);
    sign().await.unwrap();

    std::fs::rename(&tokens, dir.path().join("elsewhere")).unwrap();
    for _ in 0..3 {
        match sign().await {
            Err(BackendError::Unavailable(why)) => assert!(why.contains("token"), "{why}"),
            other => panic!("a sign with the token away: {other:?}"),
        }
    }
    assert!(!backend.connected());
    match backend.check("k", KeyType::EcP256, &key.handle).await {
        Err(BackendError::Unavailable(_)) => {}
        other => panic!("check with the token away: {other:?}"),
    }

    std::fs::rename(dir.path().join("elsewhere"), &tokens).unwrap();
    let mut back = false;
    for _ in 0..300 {
        if backend.connected() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the backend did not reconnect within 30 s");
    let sig = sign().await.unwrap();
    assert!(influxion_verify::verify(KeyType::EcP256, &key.public_key_der, &digest, &sig).unwrap());
}
