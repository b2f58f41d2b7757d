//! Two tokens of one module, each its own backend. Its own test binary: the module
//! and `SOFTHSM2_CONF` are process-wide.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

use std::process::Command;

use influxion_backend_conformance as conformance;
use influxion_core::KeyType;
use influxion_pkcs11::{Pkcs11Backend, TokenSelector};

mod common;
use common::{config, init_token, token, MODULE, PIN};

/// Two tokens of one module, each its own backend (`pkcs11:NAME`): the module is loaded
/// and initialized once and shared, so closing one backend does not finalize it under
/// the other; a token chosen by slot id records its label.
#[tokio::test]
async fn tokens_of_one_module_share_it() {
    let dir = tempfile::tempdir().unwrap();
    token(dir.path(), "line-a");
    init_token("line-b");
    let digest =
        influxion_core::Digest::new(influxion_core::SignAlgorithm::Es256, vec![7; 32]).unwrap();
    let a = Pkcs11Backend::open(config("pkcs11:a", "line-a", PIN, 2)).unwrap();
    let b = Pkcs11Backend::open(config("pkcs11:b", "line-b", PIN, 2)).unwrap();
    assert_eq!(influxion_core::KeyBackend::name(&a), "pkcs11:a");
    let ka =
        conformance::generate(&a, "00000000-0000-4000-8000-00000000000a", KeyType::EcP256).await;
    let kb =
        conformance::generate(&b, "00000000-0000-4000-8000-00000000000b", KeyType::EcP256).await;
    assert_eq!(
        influxion_core::KeyBackend::describe(&b, &kb.handle)["token"],
        "line-b"
    );
    // A key is signed only on its own token.
    assert!(matches!(
        influxion_core::KeyBackend::sign(&b, "k", KeyType::EcP256, &ka.handle, &digest).await,
        Err(influxion_core::BackendError::Unavailable(m)) if m.contains("line-a")
    ));
    drop(a);
    let sig = influxion_core::KeyBackend::sign(&b, "k", KeyType::EcP256, &kb.handle, &digest)
        .await
        .unwrap();
    assert!(influxion_verify::verify(KeyType::EcP256, &kb.public_key_der, &digest, &sig).unwrap());

    // By slot id: the slot of line-b, as pkcs11-tool lists it.
    let slots = Command::new("pkcs11-tool")
        .args(["--module", MODULE, "--list-token-slots"])
        .output()
        .expect("pkcs11-tool (Debian opensc)");
    let text = String::from_utf8_lossy(&slots.stdout).into_owned();
    let slot = text
        .split("Slot ")
        .find(|s| s.contains("line-b"))
        .and_then(|s| s.split_once("(0x"))
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(hex, _)| u64::from_str_radix(hex, 16).unwrap())
        .unwrap_or_else(|| panic!("no slot of line-b in {text}"));
    let mut by_slot = config("pkcs11:s", "", PIN, 1);
    by_slot.token = TokenSelector::Slot(slot);
    let s = Pkcs11Backend::open(by_slot).unwrap();
    assert_eq!(s.token_label(), "line-b");
    assert_eq!(s.token_serial(), b.token_serial());
    let sig = influxion_core::KeyBackend::sign(&s, "k", KeyType::EcP256, &kb.handle, &digest)
        .await
        .unwrap();
    assert!(influxion_verify::verify(KeyType::EcP256, &kb.public_key_der, &digest, &sig).unwrap());

    // A label two tokens carry names neither: refused, pointing to the slot. (The
    // module is loaded afresh once no backend holds it, and then sees the new token.)
    drop((b, s));
    init_token("line-b");
    match Pkcs11Backend::open(config("pkcs11:twice", "line-b", PIN, 1)) {
        Err(influxion_pkcs11::OpenError::Token(m)) => {
            assert!(m.contains("several tokens") && m.contains("slot"), "{m}")
        }
        other => panic!("a label two tokens carry: {:?}", other.err()),
    }
}
