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

use aws_lc_rs::digest as lcd;
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self as sig, KeyPair as _};
use influxion_core::{BackendError, Digest, GeneratedKey, KeyBackend, KeyType, SignAlgorithm};
use zeroize::Zeroizing;

pub use envelope::{Kek, KekError};

/// A parsed private key, held by AWS-LC (aws-lc-rs): its memory is wiped when freed.
/// AWS-LC signs a digest computed elsewhere (the keyserver receives digests, never
/// files), for ECDSA and RSA as for Ed25519, at the speed of the machine's own
/// OpenSSL-class code.
enum PrivateKey {
    P256(sig::EcdsaKeyPair),
    P384(sig::EcdsaKeyPair),
    Ed25519(sig::Ed25519KeyPair),
    Rsa(sig::RsaKeyPair),
}

fn crypto(what: &str) -> impl Fn(aws_lc_rs::error::Unspecified) -> BackendError + '_ {
    move |_| BackendError::Crypto(format!("{what} failed"))
}

impl PrivateKey {
    fn generate(key_type: KeyType) -> Result<Self, BackendError> {
        let e = crypto("key generation");
        Ok(match key_type {
            KeyType::EcP256 => PrivateKey::P256(
                sig::EcdsaKeyPair::generate(&sig::ECDSA_P256_SHA256_ASN1_SIGNING).map_err(e)?,
            ),
            KeyType::EcP384 => PrivateKey::P384(
                sig::EcdsaKeyPair::generate(&sig::ECDSA_P384_SHA384_ASN1_SIGNING).map_err(e)?,
            ),
            KeyType::Ed25519 => PrivateKey::Ed25519(sig::Ed25519KeyPair::generate().map_err(e)?),
            KeyType::Rsa2048 => {
                PrivateKey::Rsa(sig::RsaKeyPair::generate(KeySize::Rsa2048).map_err(e)?)
            }
            KeyType::Rsa3072 => {
                PrivateKey::Rsa(sig::RsaKeyPair::generate(KeySize::Rsa3072).map_err(e)?)
            }
            KeyType::Rsa4096 => {
                PrivateKey::Rsa(sig::RsaKeyPair::generate(KeySize::Rsa4096).map_err(e)?)
            }
        })
    }

    /// Keys written by earlier versions (RustCrypto's PKCS#8: v2 for Ed25519) load
    /// unchanged.
    fn from_pkcs8(key_type: KeyType, der: &[u8]) -> Result<Self, BackendError> {
        let bad = |_| BackendError::Unwrap;
        Ok(match key_type {
            KeyType::EcP256 => PrivateKey::P256(
                sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_ASN1_SIGNING, der)
                    .map_err(bad)?,
            ),
            KeyType::EcP384 => PrivateKey::P384(
                sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P384_SHA384_ASN1_SIGNING, der)
                    .map_err(bad)?,
            ),
            KeyType::Ed25519 => {
                PrivateKey::Ed25519(sig::Ed25519KeyPair::from_pkcs8(der).map_err(bad)?)
            }
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
                PrivateKey::Rsa(sig::RsaKeyPair::from_pkcs8(der).map_err(bad)?)
            }
        })
    }

    /// The key type this key is, whatever its record says.
    fn key_type(&self) -> Option<KeyType> {
        Some(match self {
            PrivateKey::P256(_) => KeyType::EcP256,
            PrivateKey::P384(_) => KeyType::EcP384,
            PrivateKey::Ed25519(_) => KeyType::Ed25519,
            PrivateKey::Rsa(k) => match k.public_modulus_len() * 8 {
                2048 => KeyType::Rsa2048,
                3072 => KeyType::Rsa3072,
                4096 => KeyType::Rsa4096,
                _ => return None,
            },
        })
    }

    /// PKCS#8 v1, the form every earlier version reads too.
    fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let e = crypto("PKCS#8 encoding");
        Ok(Zeroizing::new(match self {
            PrivateKey::P256(k) | PrivateKey::P384(k) => {
                k.to_pkcs8v1().map_err(e)?.as_ref().to_vec()
            }
            PrivateKey::Ed25519(k) => k.to_pkcs8v1().map_err(e)?.as_ref().to_vec(),
            PrivateKey::Rsa(k) => {
                let der: Pkcs8V1Der<'static> = k.as_der().map_err(e)?;
                der.as_ref().to_vec()
            }
        }))
    }

    fn public_key_der(&self) -> Result<Vec<u8>, BackendError> {
        let e = crypto("public key encoding");
        Ok(match self {
            PrivateKey::P256(k) | PrivateKey::P384(k) => {
                k.public_key().as_der().map_err(e)?.as_ref().to_vec()
            }
            PrivateKey::Ed25519(k) => k.public_key().as_der().map_err(e)?.as_ref().to_vec(),
            PrivateKey::Rsa(k) => k.public_key().as_der().map_err(e)?.as_ref().to_vec(),
        })
    }

    fn sign(&self, digest: &Digest) -> Result<Vec<u8>, BackendError> {
        let e = crypto("signing");
        let d = digest.as_bytes();
        // The digest as computed by the client, of the hash the algorithm names (its
        // length was checked when the Digest was made).
        let imported = |h: &'static lcd::Algorithm| {
            lcd::Digest::import_less_safe(d, h).map_err(crypto("digest import"))
        };
        match (self, digest.algorithm()) {
            (PrivateKey::P256(k), SignAlgorithm::Es256) => Ok(k
                .sign_digest(&imported(&lcd::SHA256)?)
                .map_err(e)?
                .as_ref()
                .to_vec()),
            (PrivateKey::P384(k), SignAlgorithm::Es384) => Ok(k
                .sign_digest(&imported(&lcd::SHA384)?)
                .map_err(e)?
                .as_ref()
                .to_vec()),
            // Ed25519 signs the digest bytes themselves, as it always did here.
            (PrivateKey::Ed25519(k), SignAlgorithm::EdDsa) => {
                Ok(k.try_sign(d).map_err(e)?.as_ref().to_vec())
            }
            (PrivateKey::Rsa(k), alg) => {
                // AWS-LC blinds the private operation. PSS salt length = hash length:
                // what openssl and JOSE expect.
                let (enc, h): (&'static dyn sig::RsaEncoding, &'static lcd::Algorithm) = match alg {
                    SignAlgorithm::Rs256 => (&sig::RSA_PKCS1_SHA256, &lcd::SHA256),
                    SignAlgorithm::Rs384 => (&sig::RSA_PKCS1_SHA384, &lcd::SHA384),
                    SignAlgorithm::Rs512 => (&sig::RSA_PKCS1_SHA512, &lcd::SHA512),
                    SignAlgorithm::Ps256 => (&sig::RSA_PSS_SHA256, &lcd::SHA256),
                    SignAlgorithm::Ps384 => (&sig::RSA_PSS_SHA384, &lcd::SHA384),
                    SignAlgorithm::Ps512 => (&sig::RSA_PSS_SHA512, &lcd::SHA512),
                    _ => return Err(BackendError::AlgorithmMismatch),
                };
                let mut out = vec![0u8; k.public_modulus_len()];
                k.sign_digest(enc, &imported(h)?, &mut out).map_err(e)?;
                Ok(out)
            }
            _ => Err(BackendError::AlgorithmMismatch),
        }
    }
}

/// A private key held in memory only, for backends that receive key material from
/// elsewhere (a Key Vault certificate's secret) and must never store it. Wiped when
/// dropped, like the keystore's own cached keys.
pub struct MemoryKey(PrivateKey);

impl MemoryKey {
    /// Parse a PKCS#8 private key of whatever supported type it is. RSA keys under
    /// 2048 bits and curves other than P-256 and P-384 are refused.
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

    /// `None` for a key of a type Influxion has no use for (an RSA size other than
    /// 2048, 3072 or 4096 bits).
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

    /// Sign on the calling thread, any key type: inline signing, and benchmarks
    /// measuring raw signing of the same key.
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
        if self.signs_inline(key_type) {
            return self.sign_inline(key_id, key_type, handle, digest);
        }
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

    /// EC and Ed25519 signatures take tens of microseconds; RSA ones milliseconds. A
    /// key type added later signs on a blocking thread until it is listed here.
    fn signs_inline(&self, key_type: KeyType) -> bool {
        matches!(
            key_type,
            KeyType::EcP256 | KeyType::EcP384 | KeyType::Ed25519
        )
    }

    fn sign_inline(
        &self,
        key_id: &str,
        key_type: KeyType,
        handle: &[u8],
        digest: &Digest,
    ) -> Result<Vec<u8>, BackendError> {
        if !self.signs_inline(key_type) {
            return Err(BackendError::Unfit(format!(
                "{key_type} keys sign on a blocking thread, not inline"
            )));
        }
        self.sign_blocking(key_id, key_type, handle, digest)
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

    /// Keys stored by versions before AWS-LC (RustCrypto's PKCS#8, v2 for Ed25519)
    /// load, keep their public key byte for byte, and sign what the verifier accepts.
    #[test]
    fn keys_written_by_earlier_versions_load_and_sign() {
        use p256::pkcs8::{EncodePrivateKey, EncodePublicKey};
        let mut rng = rand::rngs::OsRng;
        let p256k = p256::ecdsa::SigningKey::random(&mut rng);
        let p384k = p384::ecdsa::SigningKey::random(&mut rng);
        let edk = ed25519_dalek::SigningKey::generate(&mut rng);
        let rsak = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
        let cases: Vec<(KeyType, Vec<u8>, Vec<u8>, SignAlgorithm)> = vec![
            (
                KeyType::EcP256,
                p256k.to_pkcs8_der().unwrap().as_bytes().to_vec(),
                p256k
                    .verifying_key()
                    .to_public_key_der()
                    .unwrap()
                    .into_vec(),
                SignAlgorithm::Es256,
            ),
            (
                KeyType::EcP384,
                p384k.to_pkcs8_der().unwrap().as_bytes().to_vec(),
                p384k
                    .verifying_key()
                    .to_public_key_der()
                    .unwrap()
                    .into_vec(),
                SignAlgorithm::Es384,
            ),
            (
                KeyType::Ed25519,
                edk.to_pkcs8_der().unwrap().as_bytes().to_vec(),
                edk.verifying_key().to_public_key_der().unwrap().into_vec(),
                SignAlgorithm::EdDsa,
            ),
            (
                KeyType::Rsa2048,
                rsak.to_pkcs8_der().unwrap().as_bytes().to_vec(),
                rsak.to_public_key().to_public_key_der().unwrap().into_vec(),
                SignAlgorithm::Ps256,
            ),
        ];
        for (kt, pkcs8, spki, alg) in cases {
            let k = PrivateKey::from_pkcs8(kt, &pkcs8).unwrap();
            assert_eq!(k.key_type(), Some(kt));
            assert_eq!(k.public_key_der().unwrap(), spki, "{kt:?}");
            let len = if alg == SignAlgorithm::Es384 { 48 } else { 32 };
            let digest = Digest::new(alg, vec![0x5a; len]).unwrap();
            let signature = k.sign(&digest).unwrap();
            assert!(
                influxion_verify::verify(kt, &spki, &digest, &signature).unwrap(),
                "{kt:?}"
            );
            // And what AWS-LC writes back reads as the same key.
            let again = PrivateKey::from_pkcs8(kt, &k.to_pkcs8().unwrap()).unwrap();
            assert_eq!(again.public_key_der().unwrap(), spki);
        }
    }

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
