//! The seam between the keyserver and wherever private keys live.

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
}

/// A place private keys live. Object safe so the HTTP layer holds `Arc<dyn KeyBackend>`
/// and never knows which implementation runs.
#[async_trait::async_trait]
pub trait KeyBackend: Send + Sync {
    /// A short name stored beside each key (`software`, `pkcs11`, `azure-keyvault`).
    fn name(&self) -> &'static str;

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
}
