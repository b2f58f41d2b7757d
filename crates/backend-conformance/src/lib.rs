//! The conformance suite of key backends.
//!
//! Every [`KeyBackend`] runs [`run`] in its own tests: the software keystore against
//! itself, an HSM backend against SoftHSM, a Key Vault backend against its stand-in.
//! What one backend promises, all of them do: keys of every type they support sign
//! with every algorithm of that type and verify with [`influxion_verify`] from the
//! public key alone; a digest of another algorithm, a handle of another key type or a
//! damaged handle is an error, never a signature; a key whose backend is not
//! configured is unavailable.
//!
//! This is test support: a failed expectation panics with what was expected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use influxion_core::key::HashAlg;
use influxion_core::{
    BackendError, BackendKey, Backends, Digest, KeyBackend, KeyType, SignAlgorithm,
};
use sha2::Digest as _;

/// A digest of `msg` for `alg`, as a client would compute it.
pub fn digest_for(alg: SignAlgorithm, msg: &[u8]) -> Digest {
    let bytes = match alg.hash() {
        HashAlg::Sha256 => sha2::Sha256::digest(msg).to_vec(),
        HashAlg::Sha384 => sha2::Sha384::digest(msg).to_vec(),
        HashAlg::Sha512 => sha2::Sha512::digest(msg).to_vec(),
    };
    Digest::new(alg, bytes).expect("digest of the algorithm's length")
}

/// A key as the store would keep it, made by the backend under test.
pub struct TestKey {
    pub backend: String,
    pub id: String,
    pub key_type: KeyType,
    pub handle: Vec<u8>,
    pub public_key_der: Vec<u8>,
}

impl BackendKey for TestKey {
    fn backend_name(&self) -> &str {
        &self.backend
    }
    fn key_id(&self) -> &str {
        &self.id
    }
    fn key_type(&self) -> KeyType {
        self.key_type
    }
    fn handle(&self) -> &[u8] {
        &self.handle
    }
}

/// Generate a key of `key_type` on `backend`.
pub async fn generate(backend: &dyn KeyBackend, id: &str, key_type: KeyType) -> TestKey {
    let g = backend
        .generate(id, key_type)
        .await
        .unwrap_or_else(|e| panic!("{}: generating {key_type}: {e}", backend.name()));
    TestKey {
        backend: backend.name().to_owned(),
        id: id.to_owned(),
        key_type,
        handle: g.handle,
        public_key_der: g.public_key_der,
    }
}

/// Run the whole suite against `backend` for the key types it supports.
pub async fn run(backend: Arc<dyn KeyBackend>, key_types: &[KeyType]) {
    assert!(
        !key_types.is_empty(),
        "a backend supports at least one key type"
    );
    let registry = Backends::new(backend.clone());
    let mut keys = Vec::new();
    for (i, &kt) in key_types.iter().enumerate() {
        let key = generate(backend.as_ref(), &format!("conformance-{i}-{kt}"), kt).await;
        public_key_is_the_key_type(&key);
        registry
            .check(&key)
            .await
            .unwrap_or_else(|e| panic!("{}: check of a fresh {kt} key: {e}", backend.name()));
        signs_every_algorithm_and_verifies(&registry, &key).await;
        signs_inline_as_it_says(backend.as_ref(), &key);
        refuses_digests_of_other_key_types(&registry, &key).await;
        refuses_a_damaged_handle(&registry, &key).await;
        keys.push(key);
    }
    refuses_a_handle_of_another_key_type(&registry, &keys).await;
    refuses_digests_of_the_wrong_length();
    unconfigured_backend_is_unavailable(&registry, &keys[0]).await;
}

fn public_key_is_the_key_type(key: &TestKey) {
    assert_eq!(
        influxion_verify::detect_key_type(&key.public_key_der),
        Some(key.key_type),
        "{}: the public key of a {} key is a {} SubjectPublicKeyInfo",
        key.backend,
        key.key_type,
        key.key_type
    );
}

/// A backend that says it signs a key type inline makes, on the calling thread, the
/// signatures `sign` would (and refuses a damaged handle there too); one that does not
/// refuses to.
fn signs_inline_as_it_says(backend: &dyn KeyBackend, key: &TestKey) {
    let alg = key.key_type.default_algorithm();
    let d = digest_for(alg, b"certificate to be");
    let sig = backend.sign_inline(&key.id, key.key_type, &key.handle, &d);
    if !backend.signs_inline(key.key_type) {
        assert!(
            sig.is_err(),
            "{}: a {} key it does not sign inline is refused inline",
            key.backend,
            key.key_type
        );
        return;
    }
    let sig = sig.unwrap_or_else(|e| panic!("{}: {} inline: {e}", key.backend, key.key_type));
    assert_eq!(
        influxion_verify::verify(key.key_type, &key.public_key_der, &d, &sig).ok(),
        Some(true),
        "{}: an inline {} signature verifies with the public key",
        key.backend,
        key.key_type
    );
    // Under an id of its own: a backend may keep the opened key by id.
    let mut damaged = key.handle.clone();
    let mid = damaged.len() / 2;
    if let Some(b) = damaged.get_mut(mid) {
        *b ^= 0x5a;
    }
    let id = format!("{}-damaged-inline", key.id);
    assert!(
        backend
            .sign_inline(&id, key.key_type, &damaged, &d)
            .is_err(),
        "{}: a damaged {} handle signs nothing inline",
        key.backend,
        key.key_type
    );
}

async fn signs_every_algorithm_and_verifies(registry: &Backends, key: &TestKey) {
    for &alg in key.key_type.algorithms() {
        let d = digest_for(alg, b"firmware image");
        let sig = registry
            .sign(key, &d)
            .await
            .unwrap_or_else(|e| panic!("{}: {} {alg}: {e}", key.backend, key.key_type));
        assert_eq!(
            influxion_verify::verify(key.key_type, &key.public_key_der, &d, &sig).ok(),
            Some(true),
            "{}: a {} {alg} signature verifies with the public key",
            key.backend,
            key.key_type
        );
        let other = digest_for(alg, b"tampered image");
        assert_eq!(
            influxion_verify::verify(key.key_type, &key.public_key_der, &other, &sig).ok(),
            Some(false),
            "{}: a {} {alg} signature does not verify for another digest",
            key.backend,
            key.key_type
        );
        // Signing twice works (a cached or pooled key is as good as a fresh one).
        let again = registry.sign(key, &d).await.unwrap();
        assert_eq!(
            influxion_verify::verify(key.key_type, &key.public_key_der, &d, &again).ok(),
            Some(true)
        );
    }
}

async fn refuses_digests_of_other_key_types(registry: &Backends, key: &TestKey) {
    for alg in SignAlgorithm::ALL {
        if key.key_type.allows(alg) {
            continue;
        }
        let d = digest_for(alg, b"firmware image");
        match registry.sign(key, &d).await {
            Err(BackendError::AlgorithmMismatch) => {}
            other => panic!(
                "{}: a {} key signing a {alg} digest must be AlgorithmMismatch, got {other:?}",
                key.backend, key.key_type
            ),
        }
    }
}

async fn refuses_a_damaged_handle(registry: &Backends, key: &TestKey) {
    let mut handle = key.handle.clone();
    let mid = handle.len() / 2;
    if let Some(b) = handle.get_mut(mid) {
        *b ^= 0x5a;
    }
    let damaged = TestKey {
        backend: key.backend.clone(),
        id: format!("{}-damaged", key.id),
        key_type: key.key_type,
        handle,
        public_key_der: key.public_key_der.clone(),
    };
    let d = digest_for(key.key_type.default_algorithm(), b"firmware image");
    assert!(
        registry.sign(&damaged, &d).await.is_err(),
        "{}: a damaged {} handle must not sign",
        key.backend,
        key.key_type
    );
    assert!(
        registry.check(&damaged).await.is_err(),
        "{}: a damaged {} handle must fail the start-up check",
        key.backend,
        key.key_type
    );
}

/// A handle recorded with the wrong key type (a corrupted or edited row) is an error.
async fn refuses_a_handle_of_another_key_type(registry: &Backends, keys: &[TestKey]) {
    for key in keys {
        for other in KeyType::ALL {
            if other == key.key_type {
                continue;
            }
            let mislabelled = TestKey {
                backend: key.backend.clone(),
                id: key.id.clone(),
                key_type: other,
                handle: key.handle.clone(),
                public_key_der: key.public_key_der.clone(),
            };
            let d = digest_for(other.default_algorithm(), b"firmware image");
            assert!(
                registry.sign(&mislabelled, &d).await.is_err(),
                "{}: a {} handle recorded as {other} must be refused",
                key.backend,
                key.key_type
            );
        }
    }
}

/// A digest of the wrong length never reaches a backend: the type refuses it.
fn refuses_digests_of_the_wrong_length() {
    for alg in SignAlgorithm::ALL {
        for len in [0, alg.digest_len() - 1, alg.digest_len() + 1, 64 + 1] {
            assert!(
                Digest::new(alg, vec![0; len]).is_err(),
                "{alg}: a {len}-byte digest must be refused"
            );
        }
    }
}

async fn unconfigured_backend_is_unavailable(registry: &Backends, key: &TestKey) {
    let elsewhere = TestKey {
        backend: "not-configured".into(),
        id: key.id.clone(),
        key_type: key.key_type,
        handle: key.handle.clone(),
        public_key_der: key.public_key_der.clone(),
    };
    let d = digest_for(key.key_type.default_algorithm(), b"firmware image");
    assert!(matches!(
        registry.sign(&elsewhere, &d).await,
        Err(BackendError::Unavailable(_))
    ));
    assert!(matches!(
        registry.check(&elsewhere).await,
        Err(BackendError::Unavailable(_))
    ));
}

/// For backends that can be made unavailable (a removed token, an unreachable vault):
/// `key` was made while it worked; now every use must say `Unavailable` (503 at the
/// HTTP edge), not a crypto failure and not a signature.
pub async fn unavailable(backend: &dyn KeyBackend, key: &TestKey) {
    let d = digest_for(key.key_type.default_algorithm(), b"firmware image");
    assert!(
        matches!(
            backend.sign(&key.id, key.key_type, &key.handle, &d).await,
            Err(BackendError::Unavailable(_))
        ),
        "{}: signing while unavailable",
        backend.name()
    );
    assert!(
        matches!(
            backend.check(&key.id, key.key_type, &key.handle).await,
            Err(BackendError::Unavailable(_))
        ),
        "{}: check while unavailable",
        backend.name()
    );
}
