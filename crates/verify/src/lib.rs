//! Public-key operations: signature verification and export (PEM, JWK).
//!
//! Verification needs only the public key a key record keeps, never the backend that
//! holds the private half, so it lives here for the server (`/verify`, the check after
//! every signature), the CLI (`verify`, provisioning) and the backend conformance suite.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use influxion_core::{Digest, KeyType, SignAlgorithm};
use p256::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;

#[derive(Debug, thiserror::Error)]
pub enum PublicKeyError {
    #[error("the public key does not parse as {0}")]
    Parse(KeyType),
    #[error("the algorithm does not fit the key")]
    AlgorithmMismatch,
    #[error("PEM encoding failed")]
    Pem,
}

/// Verify a signature over a digest. `Ok(false)` means the signature is wrong.
pub fn verify(
    key_type: KeyType,
    spki: &[u8],
    digest: &Digest,
    sig: &[u8],
) -> Result<bool, PublicKeyError> {
    use signature::hazmat::PrehashVerifier;
    use signature::Verifier;
    let parse = |_| PublicKeyError::Parse(key_type);
    if !key_type.allows(digest.algorithm()) {
        return Err(PublicKeyError::AlgorithmMismatch);
    }
    let d = digest.as_bytes();
    Ok(match key_type {
        KeyType::EcP256 => {
            let k = p256::ecdsa::VerifyingKey::from_public_key_der(spki).map_err(parse)?;
            p256::ecdsa::Signature::from_der(sig).is_ok_and(|s| k.verify_prehash(d, &s).is_ok())
        }
        KeyType::EcP384 => {
            let k = p384::ecdsa::VerifyingKey::from_public_key_der(spki).map_err(parse)?;
            p384::ecdsa::Signature::from_der(sig).is_ok_and(|s| k.verify_prehash(d, &s).is_ok())
        }
        KeyType::Ed25519 => {
            let k = ed25519_dalek::VerifyingKey::from_public_key_der(spki).map_err(parse)?;
            ed25519_dalek::Signature::from_slice(sig).is_ok_and(|s| k.verify(d, &s).is_ok())
        }
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            use rsa::{Pkcs1v15Sign, Pss};
            use sha2::{Sha256, Sha384, Sha512};
            let k = rsa::RsaPublicKey::from_public_key_der(spki).map_err(parse)?;
            let r = match digest.algorithm() {
                SignAlgorithm::Rs256 => k.verify(Pkcs1v15Sign::new::<Sha256>(), d, sig),
                SignAlgorithm::Rs384 => k.verify(Pkcs1v15Sign::new::<Sha384>(), d, sig),
                SignAlgorithm::Rs512 => k.verify(Pkcs1v15Sign::new::<Sha512>(), d, sig),
                SignAlgorithm::Ps256 => k.verify(Pss::new::<Sha256>(), d, sig),
                SignAlgorithm::Ps384 => k.verify(Pss::new::<Sha384>(), d, sig),
                SignAlgorithm::Ps512 => k.verify(Pss::new::<Sha512>(), d, sig),
                _ => return Err(PublicKeyError::AlgorithmMismatch),
            };
            r.is_ok()
        }
    })
}

/// SubjectPublicKeyInfo DER as a `PUBLIC KEY` PEM block (what openssl reads).
/// An ECDSA signature as IEEE P1363 r‖s (what Key Vault and PKCS#11 tokens return) in
/// DER (what the API and the formats carry). `None` if it is not r‖s of the curve's
/// size, or the key type is not ECDSA.
pub fn ecdsa_raw_to_der(key_type: KeyType, rs: &[u8]) -> Option<Vec<u8>> {
    match key_type {
        KeyType::EcP256 => p256::ecdsa::Signature::from_slice(rs)
            .ok()
            .map(|s| s.to_der().as_bytes().to_vec()),
        KeyType::EcP384 => p384::ecdsa::Signature::from_slice(rs)
            .ok()
            .map(|s| s.to_der().as_bytes().to_vec()),
        _ => None,
    }
}

pub fn to_pem(spki: &[u8]) -> Result<String, PublicKeyError> {
    p256::pkcs8::der::pem::encode_string("PUBLIC KEY", p256::pkcs8::LineEnding::LF, spki)
        .map_err(|_| PublicKeyError::Pem)
}

/// Parse a `PUBLIC KEY` PEM block back to DER.
pub fn from_pem(pem: &str) -> Result<Vec<u8>, PublicKeyError> {
    let (label, der) = p256::pkcs8::der::pem::decode_vec(pem.trim().as_bytes())
        .map_err(|_| PublicKeyError::Pem)?;
    if label != "PUBLIC KEY" {
        return Err(PublicKeyError::Pem);
    }
    Ok(der)
}

/// Guess the key type of a SubjectPublicKeyInfo, for verifying with a bare PEM file.
pub fn detect_key_type(spki: &[u8]) -> Option<KeyType> {
    if p256::PublicKey::from_public_key_der(spki).is_ok() {
        return Some(KeyType::EcP256);
    }
    if p384::PublicKey::from_public_key_der(spki).is_ok() {
        return Some(KeyType::EcP384);
    }
    if ed25519_dalek::VerifyingKey::from_public_key_der(spki).is_ok() {
        return Some(KeyType::Ed25519);
    }
    let k = rsa::RsaPublicKey::from_public_key_der(spki).ok()?;
    match k.size() * 8 {
        2048 => Some(KeyType::Rsa2048),
        3072 => Some(KeyType::Rsa3072),
        4096 => Some(KeyType::Rsa4096),
        _ => None,
    }
}

/// The public key as a JWK (RFC 7517) without `kid`; callers add their own.
pub fn to_jwk(key_type: KeyType, spki: &[u8]) -> Result<serde_json::Value, PublicKeyError> {
    let parse = |_| PublicKeyError::Parse(key_type);
    let v = match key_type {
        KeyType::EcP256 => {
            let k = p256::PublicKey::from_public_key_der(spki).map_err(parse)?;
            serde_json::from_str(&k.to_jwk_string()).map_err(|_| PublicKeyError::Parse(key_type))?
        }
        KeyType::EcP384 => {
            let k = p384::PublicKey::from_public_key_der(spki).map_err(parse)?;
            serde_json::from_str(&k.to_jwk_string()).map_err(|_| PublicKeyError::Parse(key_type))?
        }
        KeyType::Ed25519 => {
            let k = ed25519_dalek::VerifyingKey::from_public_key_der(spki).map_err(parse)?;
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": B64URL.encode(k.as_bytes())})
        }
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            let k = rsa::RsaPublicKey::from_public_key_der(spki).map_err(parse)?;
            serde_json::json!({
                "kty": "RSA",
                "n": B64URL.encode(k.n().to_bytes_be()),
                "e": B64URL.encode(k.e().to_bytes_be()),
            })
        }
    };
    Ok(v)
}
