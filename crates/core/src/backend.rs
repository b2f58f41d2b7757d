//! The seam between the keyserver and wherever private keys live.
//!
//! A [`KeyBackend`] is one place keys live (the software keystore, an HSM token, a
//! Key Vault). Every stored key names its backend, and [`Backends`] resolves that name
//! for each operation, so a key is only ever sent to the backend that holds it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::key::{Digest, KeyType};

/// What a backend returns when it creates a key: an opaque handle the store keeps, and
/// the public key as DER SubjectPublicKeyInfo.
#[derive(Debug)]
pub struct GeneratedKey {
    /// Backend-specific reference to the private key: wrapped key material for the
    /// software keystore, an object label for PKCS#11, a key URL for Key Vault.
    pub handle: Vec<u8>,
    pub public_key_der: Vec<u8>,
}

/// A key that already exists in a backend, named by an operator to be bound to an
/// Influxion key (`influxion keys import`), in the backend's own terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExistingKey {
    /// A Key Vault key, at a version (the newest when `None`).
    VaultKey {
        name: String,
        version: Option<String>,
    },
    /// A Key Vault certificate. Its key signs through `keys/sign`; with `from_secret`
    /// the private key is read from the certificate's secret and held in memory.
    VaultCertificate { name: String, from_secret: bool },
    /// A private key on a PKCS#11 token, by `CKA_LABEL` or `CKA_ID` (one of them).
    /// One the token would let out (extractable, or not sensitive) is refused unless
    /// `allow_extractable`.
    TokenKey {
        label: Option<String>,
        id: Option<Vec<u8>>,
        allow_extractable: bool,
    },
}

/// What a backend returns when it binds an existing key or a newer version of one.
#[derive(Debug)]
pub struct BoundKey {
    pub key_type: KeyType,
    pub handle: Vec<u8>,
    pub public_key_der: Vec<u8>,
    /// DER certificates, leaf first, when the key comes with a certificate.
    pub certificate_chain: Vec<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(
        "the key handle could not be unwrapped (wrong key-encryption key or corrupted record)"
    )]
    Unwrap,
    #[error("key type {0} is not supported by this backend")]
    Unsupported(KeyType),
    #[error("the algorithm does not fit the key")]
    AlgorithmMismatch,
    #[error("cryptographic operation failed: {0}")]
    Crypto(String),
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The backend answered, and said no: a permission the keyserver's identity lacks,
    /// a key or version deleted there. Not transient; an operator must act.
    #[error("the key backend refused: {0}")]
    Refused(String),
    /// The existing key an operator named cannot be bound (a key type Influxion has
    /// no use for, a key that may not sign, an operation this backend lacks).
    #[error("{0}")]
    Unfit(String),
}

/// A place private keys live. Object safe so the HTTP layer holds `Arc<dyn KeyBackend>`
/// and never knows which implementation runs.
#[async_trait::async_trait]
pub trait KeyBackend: Send + Sync {
    /// A short name stored beside each key (`software`, `azure-keyvault`, `pkcs11` or
    /// `pkcs11:TOKEN` for one of several named tokens).
    fn name(&self) -> &str;

    /// Create a new private key. `key_id` is a stable identifier the backend may bind
    /// into the handle (for example as authenticated data).
    async fn generate(&self, key_id: &str, key_type: KeyType)
        -> Result<GeneratedKey, BackendError>;

    /// Sign a digest with the key behind `handle`.
    async fn sign(
        &self,
        key_id: &str,
        key_type: KeyType,
        handle: &[u8],
        digest: &Digest,
    ) -> Result<Vec<u8>, BackendError>;

    /// Whether [`KeyBackend::sign_inline`] signs keys of `key_type`: only where a
    /// signature takes microseconds of CPU and no I/O (the software keystore's EC and
    /// Ed25519 keys). A caller whose signer cannot await (the certificate builder's)
    /// then signs on its own thread instead of a blocking thread, two thread hand-offs
    /// fewer per certificate.
    fn signs_inline(&self, _key_type: KeyType) -> bool {
        false
    }

    /// Sign on the calling thread; for keys [`KeyBackend::signs_inline`] accepts.
    fn sign_inline(
        &self,
        _key_id: &str,
        key_type: KeyType,
        _handle: &[u8],
        _digest: &Digest,
    ) -> Result<Vec<u8>, BackendError> {
        Err(BackendError::Unfit(format!(
            "the {} key backend does not sign {key_type} keys inline",
            self.name()
        )))
    }

    /// Prove the backend can use a stored key: run at start, so a wrong key-encryption
    /// key, a missing token or a refused credential fails there, naming the setting,
    /// rather than as an error on the first signature.
    async fn check(
        &self,
        key_id: &str,
        key_type: KeyType,
        handle: &[u8],
    ) -> Result<(), BackendError>;

    /// Where the key behind `handle` lives, for audit records (vault URL, key name and
    /// version; token and object id). Never secret material; empty by default.
    fn describe(&self, _handle: &[u8]) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }

    /// Bind a key that already exists in this backend (`influxion keys import`).
    async fn bind(&self, _key_id: &str, existing: &ExistingKey) -> Result<BoundKey, BackendError> {
        Err(BackendError::Unfit(format!(
            "the {} key backend cannot bind {existing:?}",
            self.name()
        )))
    }

    /// Bind another version of the key behind `handle` (`version`, or the newest):
    /// rotation that the operator asks for, never implicit.
    async fn rotate(
        &self,
        _key_id: &str,
        _key_type: KeyType,
        _handle: &[u8],
        _version: Option<&str>,
    ) -> Result<BoundKey, BackendError> {
        Err(BackendError::Unfit(format!(
            "keys of the {} key backend have no versions to rotate to; create a new key",
            self.name()
        )))
    }
}

/// What the registry needs to know of a stored key. The store's key record implements
/// it; the trait keeps this crate free of the store.
pub trait BackendKey {
    /// The [`KeyBackend::name`] recorded when the key was made.
    fn backend_name(&self) -> &str;
    fn key_id(&self) -> &str;
    fn key_type(&self) -> KeyType;
    fn handle(&self) -> &[u8];
}

/// The configured key backends, by name, and the one new keys go to unless a caller
/// names another. Cheap to clone: the application state (and so this) is cloned for
/// every request.
#[derive(Clone)]
pub struct Backends {
    by_name: Arc<BTreeMap<String, Arc<dyn KeyBackend>>>,
    default: Arc<dyn KeyBackend>,
}

impl Backends {
    /// A registry with one backend, which is also the default for new keys.
    pub fn new(default: Arc<dyn KeyBackend>) -> Self {
        Self {
            by_name: Arc::new(BTreeMap::from([(
                default.name().to_owned(),
                default.clone(),
            )])),
            default,
        }
    }

    /// Add a backend (a later one of the same name replaces the earlier).
    pub fn with(mut self, backend: Arc<dyn KeyBackend>) -> Self {
        if backend.name() == self.default.name() {
            self.default = backend.clone();
        }
        Arc::make_mut(&mut self.by_name).insert(backend.name().to_owned(), backend);
        self
    }

    /// The backend of this name. A key whose backend is not configured here (a key
    /// made on an HSM, read by a keyserver started without it) is unavailable, not an
    /// error of the request.
    pub fn get(&self, name: &str) -> Result<&Arc<dyn KeyBackend>, BackendError> {
        self.by_name.get(name).ok_or_else(|| {
            BackendError::Unavailable(format!("no key backend {name:?} is configured"))
        })
    }

    /// The backend holding this key.
    pub fn for_key(&self, key: &impl BackendKey) -> Result<&Arc<dyn KeyBackend>, BackendError> {
        self.get(key.backend_name())
    }

    /// Where new keys go unless the caller names a backend.
    pub fn default_backend(&self) -> &Arc<dyn KeyBackend> {
        &self.default
    }

    /// The configured backend names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.by_name.keys().map(String::as_str)
    }

    /// The backend a caller named for a new key: its exact name, or a kind of backend
    /// (`pkcs11`) when exactly one backend of that kind (`pkcs11`, `pkcs11:line-1`) is
    /// configured. `None` when the name matches none, or several (the caller must
    /// choose).
    pub fn resolve(&self, name: &str) -> Option<&Arc<dyn KeyBackend>> {
        if let Some(b) = self.by_name.get(name) {
            return Some(b);
        }
        if name.contains(':') {
            return None;
        }
        let mut of_kind = self
            .by_name
            .iter()
            .filter(|(n, _)| n.split_once(':').is_some_and(|(kind, _)| kind == name));
        match (of_kind.next(), of_kind.next()) {
            (Some((_, b)), None) => Some(b),
            _ => None,
        }
    }

    /// Where `key` lives, for its audit records: `backend` and what its backend adds
    /// (vault, key, version).
    pub fn describe(&self, key: &impl BackendKey) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("backend".into(), key.backend_name().into());
        if let Ok(b) = self.for_key(key) {
            m.extend(b.describe(key.handle()));
        }
        m
    }

    /// Sign with the backend that holds `key`.
    pub async fn sign(
        &self,
        key: &impl BackendKey,
        digest: &Digest,
    ) -> Result<Vec<u8>, BackendError> {
        self.for_key(key)?
            .sign(key.key_id(), key.key_type(), key.handle(), digest)
            .await
    }

    /// Bind another version of `key` with the backend that holds it.
    pub async fn rotate(
        &self,
        key: &impl BackendKey,
        version: Option<&str>,
    ) -> Result<BoundKey, BackendError> {
        self.for_key(key)?
            .rotate(key.key_id(), key.key_type(), key.handle(), version)
            .await
    }

    /// Check `key` with the backend that holds it.
    pub async fn check(&self, key: &impl BackendKey) -> Result<(), BackendError> {
        self.for_key(key)?
            .check(key.key_id(), key.key_type(), key.handle())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(&'static str);

    #[async_trait::async_trait]
    impl KeyBackend for Named {
        fn name(&self) -> &'static str {
            self.0
        }
        async fn generate(&self, _: &str, t: KeyType) -> Result<GeneratedKey, BackendError> {
            Err(BackendError::Unsupported(t))
        }
        async fn sign(
            &self,
            _: &str,
            _: KeyType,
            _: &[u8],
            _: &Digest,
        ) -> Result<Vec<u8>, BackendError> {
            Ok(self.0.as_bytes().to_vec())
        }
        async fn check(&self, _: &str, _: KeyType, _: &[u8]) -> Result<(), BackendError> {
            Ok(())
        }
    }

    struct Key(&'static str);

    impl BackendKey for Key {
        fn backend_name(&self) -> &str {
            self.0
        }
        fn key_id(&self) -> &str {
            "id"
        }
        fn key_type(&self) -> KeyType {
            KeyType::EcP256
        }
        fn handle(&self) -> &[u8] {
            b""
        }
    }

    #[tokio::test]
    async fn each_key_goes_to_the_backend_it_names() {
        let b = Backends::new(Arc::new(Named("software"))).with(Arc::new(Named("pkcs11")));
        let d = Digest::new(crate::SignAlgorithm::Es256, vec![0; 32]).unwrap();
        assert_eq!(b.sign(&Key("pkcs11"), &d).await.unwrap(), b"pkcs11");
        assert_eq!(b.sign(&Key("software"), &d).await.unwrap(), b"software");
        assert_eq!(b.default_backend().name(), "software");
        assert_eq!(b.names().collect::<Vec<_>>(), ["pkcs11", "software"]);
        assert_eq!(b.resolve("pkcs11").map(|b| b.name()), Some("pkcs11"));
        assert!(matches!(
            b.sign(&Key("azure-keyvault"), &d).await,
            Err(BackendError::Unavailable(m)) if m.contains("azure-keyvault")
        ));
        assert!(matches!(
            b.check(&Key("azure-keyvault")).await,
            Err(BackendError::Unavailable(_))
        ));
    }

    #[test]
    fn a_kind_of_backend_resolves_to_its_only_one() {
        let one = Backends::new(Arc::new(Named("software"))).with(Arc::new(Named("pkcs11:line-1")));
        assert_eq!(
            one.resolve("pkcs11").map(|b| b.name()),
            Some("pkcs11:line-1")
        );
        assert_eq!(
            one.resolve("pkcs11:line-1").map(|b| b.name()),
            Some("pkcs11:line-1")
        );
        assert!(one.resolve("pkcs11:line-2").is_none());
        assert!(one.resolve("pkcs").is_none());
        let two = one.with(Arc::new(Named("pkcs11:line-2")));
        assert!(
            two.resolve("pkcs11").is_none(),
            "two tokens: the caller must choose"
        );
        assert_eq!(
            two.resolve("pkcs11:line-2").map(|b| b.name()),
            Some("pkcs11:line-2")
        );
    }
}
