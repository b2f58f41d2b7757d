//! The software keystore: private keys envelope-encrypted at rest.
//!
//! Each key gets a fresh 256-bit data-encryption key (DEK); the PKCS#8 private key is
//! sealed with AES-256-GCM under the DEK, and the DEK is sealed under the
//! key-encryption key (KEK) that the operator supplies. The key id is bound into both
//! seals as associated data, so a handle copied onto another key row does not open.
//! Decrypted keys are cached in memory (they zeroize on drop) so that signing does not
//! pay for unwrapping on every request.

mod envelope;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use influxion_core::{BackendError, Digest, GeneratedKey, KeyBackend, KeyType, SignAlgorithm};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use rand::rngs::OsRng;
use zeroize::Zeroizing;

pub use envelope::{Kek, KekError};

/// A parsed private key. Every variant zeroizes its secret on drop.
enum PrivateKey {
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
    Rsa(Box<rsa::RsaPrivateKey>),
}

impl PrivateKey {
    fn generate(key_type: KeyType) -> Result<Self, BackendError> {
        let crypto = |e: rsa::Error| BackendError::Crypto(e.to_string());
        Ok(match key_type {
            KeyType::EcP256 => PrivateKey::P256(p256::ecdsa::SigningKey::random(&mut OsRng)),
            KeyType::EcP384 => PrivateKey::P384(p384::ecdsa::SigningKey::random(&mut OsRng)),
            KeyType::Ed25519 => {
                PrivateKey::Ed25519(ed25519_dalek::SigningKey::generate(&mut OsRng))
            }
            KeyType::Rsa2048 => PrivateKey::Rsa(Box::new(
                rsa::RsaPrivateKey::new(&mut OsRng, 2048).map_err(crypto)?,
            )),
            KeyType::Rsa3072 => PrivateKey::Rsa(Box::new(
                rsa::RsaPrivateKey::new(&mut OsRng, 3072).map_err(crypto)?,
            )),
            KeyType::Rsa4096 => PrivateKey::Rsa(Box::new(
                rsa::RsaPrivateKey::new(&mut OsRng, 4096).map_err(crypto)?,
            )),
        })
    }

    fn from_pkcs8(key_type: KeyType, der: &[u8]) -> Result<Self, BackendError> {
        let bad = |_| BackendError::Unwrap;
        Ok(match key_type {
            KeyType::EcP256 => {
                PrivateKey::P256(p256::ecdsa::SigningKey::from_pkcs8_der(der).map_err(bad)?)
            }
            KeyType::EcP384 => {
                PrivateKey::P384(p384::ecdsa::SigningKey::from_pkcs8_der(der).map_err(bad)?)
            }
            KeyType::Ed25519 => {
                PrivateKey::Ed25519(ed25519_dalek::SigningKey::from_pkcs8_der(der).map_err(bad)?)
            }
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => PrivateKey::Rsa(Box::new(
                rsa::RsaPrivateKey::from_pkcs8_der(der).map_err(bad)?,
            )),
        })
    }

    /// The key type this key is, whatever its record says.
    fn key_type(&self) -> Option<KeyType> {
        use rsa::traits::PublicKeyParts;
        Some(match self {
            PrivateKey::P256(_) => KeyType::EcP256,
            PrivateKey::P384(_) => KeyType::EcP384,
            PrivateKey::Ed25519(_) => KeyType::Ed25519,
            PrivateKey::Rsa(k) => match k.size() * 8 {
                2048 => KeyType::Rsa2048,
                3072 => KeyType::Rsa3072,
                4096 => KeyType::Rsa4096,
                _ => return None,
            },
        })
    }

    fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let e = |e: p256::pkcs8::Error| BackendError::Crypto(e.to_string());
        let doc = match self {
            PrivateKey::P256(k) => k.to_pkcs8_der().map_err(e)?,
            PrivateKey::P384(k) => k.to_pkcs8_der().map_err(e)?,
            PrivateKey::Ed25519(k) => k.to_pkcs8_der().map_err(e)?,
            PrivateKey::Rsa(k) => k.to_pkcs8_der().map_err(e)?,
        };
        Ok(Zeroizing::new(doc.as_bytes().to_vec()))
    }

    fn public_key_der(&self) -> Result<Vec<u8>, BackendError> {
        let e = |e: p256::pkcs8::spki::Error| BackendError::Crypto(e.to_string());
        let doc = match self {
            PrivateKey::P256(k) => k.verifying_key().to_public_key_der().map_err(e)?,
            PrivateKey::P384(k) => k.verifying_key().to_public_key_der().map_err(e)?,
            PrivateKey::Ed25519(k) => k.verifying_key().to_public_key_der().map_err(e)?,
            PrivateKey::Rsa(k) => k.to_public_key().to_public_key_der().map_err(e)?,
        };
        Ok(doc.into_vec())
    }

    fn sign(&self, digest: &Digest) -> Result<Vec<u8>, BackendError> {
        use signature::hazmat::PrehashSigner;
        use signature::Signer;
        let crypto = |e: signature::Error| BackendError::Crypto(e.to_string());
        let d = digest.as_bytes();
        match (self, digest.algorithm()) {
            (PrivateKey::P256(k), SignAlgorithm::Es256) => {
                let sig: p256::ecdsa::Signature = k.sign_prehash(d).map_err(crypto)?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
            (PrivateKey::P384(k), SignAlgorithm::Es384) => {
                let sig: p384::ecdsa::Signature = k.sign_prehash(d).map_err(crypto)?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
            (PrivateKey::Ed25519(k), SignAlgorithm::EdDsa) => Ok(k.sign(d).to_bytes().to_vec()),
            (PrivateKey::Rsa(k), alg) => rsa_sign(k, alg, d),
            _ => Err(BackendError::AlgorithmMismatch),
        }
    }
}

/// A private key held in memory only, for backends that receive key material from
/// elsewhere (a Key Vault certificate's secret) and must never store it. Zeroized on
/// drop, like the keystore's own cached keys.
pub struct MemoryKey(PrivateKey);

impl MemoryKey {
    /// Parse a PKCS#8 private key of whatever supported type it is.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, BackendError> {
        for kt in [
            KeyType::EcP256,
            KeyType::EcP384,
            KeyType::Ed25519,
            KeyType::Rsa3072,
        ] {
            if let Ok(k) = PrivateKey::from_pkcs8(kt, der) {
                return Ok(Self(k));
            }
        }
        Err(BackendError::Unwrap)
    }

    /// `None` for a key of a type Influxion has no use for (RSA-1024, P-521).
    pub fn key_type(&self) -> Option<KeyType> {
        self.0.key_type()
    }

    pub fn public_key_der(&self) -> Result<Vec<u8>, BackendError> {
        self.0.public_key_der()
    }

    pub fn sign(&self, digest: &Digest) -> Result<Vec<u8>, BackendError> {
        self.0.sign(digest)
    }
}

fn rsa_sign(
    key: &rsa::RsaPrivateKey,
    alg: SignAlgorithm,
    d: &[u8],
) -> Result<Vec<u8>, BackendError> {
    use rsa::{Pkcs1v15Sign, Pss};
    use sha2::{Sha256, Sha384, Sha512};
    let r = match alg {
        // sign_with_rng blinds the private operation (the plain `sign` does not), which
        // matters when callers choose the digest.
        SignAlgorithm::Rs256 => key.sign_with_rng(&mut OsRng, Pkcs1v15Sign::new::<Sha256>(), d),
        SignAlgorithm::Rs384 => key.sign_with_rng(&mut OsRng, Pkcs1v15Sign::new::<Sha384>(), d),
        SignAlgorithm::Rs512 => key.sign_with_rng(&mut OsRng, Pkcs1v15Sign::new::<Sha512>(), d),
        // Salt length equals the digest length: what openssl and JOSE expect.
        SignAlgorithm::Ps256 => key.sign_with_rng(&mut OsRng, Pss::new::<Sha256>(), d),
        SignAlgorithm::Ps384 => key.sign_with_rng(&mut OsRng, Pss::new::<Sha384>(), d),
        SignAlgorithm::Ps512 => key.sign_with_rng(&mut OsRng, Pss::new::<Sha512>(), d),
        _ => return Err(BackendError::AlgorithmMismatch),
    };
    r.map_err(|e| BackendError::Crypto(e.to_string()))
}

/// The envelope-encrypted software keystore.
pub struct SoftwareKeystore {
    kek: Kek,
    cache: RwLock<HashMap<String, Arc<PrivateKey>>>,
}

impl SoftwareKeystore {
    pub fn new(kek: Kek) -> Self {
        Self {
            kek,
            cache: RwLock::new(HashMap::new()),
        }
    }

    fn cached(&self, key_id: &str) -> Option<Arc<PrivateKey>> {
        self.cache.read().ok()?.get(key_id).cloned()
    }

    fn unwrap_key(
        &self,
        key_id: &str,
        key_type: KeyType,
        handle: &[u8],
    ) -> Result<Arc<PrivateKey>, BackendError> {
        // A record whose key type is not its key's (an edited or corrupted row) signs
        // nothing: the signature would not be what the record promises.
        let of_type = |k: Arc<PrivateKey>| {
            if k.key_type() == Some(key_type) {
                Ok(k)
            } else {
                Err(BackendError::Unwrap)
            }
        };
        if let Some(k) = self.cached(key_id) {
            return of_type(k);
        }
        let der = self
            .kek
            .open(key_id, handle)
            .map_err(|_| BackendError::Unwrap)?;
        let key = of_type(Arc::new(PrivateKey::from_pkcs8(key_type, &der)?))?;
        if let Ok(mut cache) = self.cache.write() {
            cache.insert(key_id.to_owned(), key.clone());
        }
        Ok(key)
    }

    /// Forget a decrypted key, for example when it is disabled.
    pub fn evict(&self, key_id: &str) {
        if let Ok(mut cache) = self.cache.write() {
            cache.remove(key_id);
        }
    }

    /// Sign synchronously; used by benchmarks to measure raw signing of the same key.
    pub fn sign_blocking(
        &self,
        key_id: &str,
        key_type: KeyType,
        handle: &[u8],
        digest: &Digest,
    ) -> Result<Vec<u8>, BackendError> {
        self.unwrap_key(key_id, key_type, handle)?.sign(digest)
    }
}

#[async_trait::async_trait]
impl KeyBackend for SoftwareKeystore {
    fn name(&self) -> &'static str {
        "software"
    }

    async fn generate(
        &self,
        key_id: &str,
        key_type: KeyType,
    ) -> Result<GeneratedKey, BackendError> {
        // RSA generation takes seconds: keep it off the async workers.
        let key = tokio::task::spawn_blocking(move || PrivateKey::generate(key_type))
            .await
            .map_err(|e| BackendError::Crypto(e.to_string()))??;
        let der = key.to_pkcs8()?;
        let handle = self
            .kek
            .seal(key_id, &der)
            .map_err(|e| BackendError::Crypto(e.to_string()))?;
        Ok(GeneratedKey {
            handle,
            public_key_der: key.public_key_der()?,
        })
    }

    async fn sign(
        &self,
        key_id: &str,
        key_type: KeyType,
        handle: &[u8],
        digest: &Digest,
    ) -> Result<Vec<u8>, BackendError> {
        let key = self.unwrap_key(key_id, key_type, handle)?;
        if matches!(*key, PrivateKey::Rsa(_)) {
            // An RSA private operation takes milliseconds; do not stall the reactor.
            let digest = digest.clone();
            tokio::task::spawn_blocking(move || key.sign(&digest))
                .await
                .map_err(|e| BackendError::Crypto(e.to_string()))?
        } else {
            key.sign(digest)
        }
    }

    /// The key-encryption key opens the stored key (and the key is of its type).
    async fn check(
        &self,
        key_id: &str,
        key_type: KeyType,
        handle: &[u8],
    ) -> Result<(), BackendError> {
        self.unwrap_key(key_id, key_type, handle).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use influxion_backend_conformance as conformance;

    #[tokio::test]
    async fn software_keystore_conforms() {
        conformance::run(
            Arc::new(SoftwareKeystore::new(Kek::generate())),
            &KeyType::ALL,
        )
        .await;
    }

    #[tokio::test]
    async fn every_key_type_signs_from_a_cold_cache() {
        let ks = SoftwareKeystore::new(Kek::generate());
        for kt in [KeyType::EcP256, KeyType::Ed25519, KeyType::Rsa3072] {
            let g = ks.generate("k1", kt).await.unwrap();
            ks.evict("k1");
            let d = conformance::digest_for(kt.default_algorithm(), b"firmware");
            let sig = ks.sign("k1", kt, &g.handle, &d).await.unwrap();
            assert_eq!(
                influxion_verify::verify(kt, &g.public_key_der, &d, &sig).ok(),
                Some(true),
                "{kt}"
            );
            ks.evict("k1");
        }
    }

    #[tokio::test]
    async fn handle_is_bound_to_key_id_and_kek() {
        let ks = SoftwareKeystore::new(Kek::generate());
        let g = ks.generate("a", KeyType::EcP256).await.unwrap();
        let d = conformance::digest_for(SignAlgorithm::Es256, b"x");
        assert!(matches!(
            ks.sign("b", KeyType::EcP256, &g.handle, &d).await,
            Err(BackendError::Unwrap)
        ));
        let other = SoftwareKeystore::new(Kek::generate());
        assert!(matches!(
            other.sign("a", KeyType::EcP256, &g.handle, &d).await,
            Err(BackendError::Unwrap)
        ));
        assert!(matches!(
            other.check("a", KeyType::EcP256, &g.handle).await,
            Err(BackendError::Unwrap)
        ));
    }

    #[tokio::test]
    async fn a_record_of_the_wrong_key_type_signs_nothing() {
        let ks = SoftwareKeystore::new(Kek::generate());
        let g = ks.generate("r", KeyType::Rsa3072).await.unwrap();
        let d = conformance::digest_for(SignAlgorithm::Rs256, b"x");
        // Cold (unwrapped from the handle) and warm (from the cache) alike.
        ks.evict("r");
        assert!(matches!(
            ks.sign("r", KeyType::Rsa4096, &g.handle, &d).await,
            Err(BackendError::Unwrap)
        ));
        ks.sign("r", KeyType::Rsa3072, &g.handle, &d).await.unwrap();
        assert!(matches!(
            ks.sign("r", KeyType::Rsa4096, &g.handle, &d).await,
            Err(BackendError::Unwrap)
        ));
    }
}
