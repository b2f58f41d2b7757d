//! AES-256-GCM envelope encryption of private keys.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error("the key-encryption key must be 32 bytes, given as base64 or hex ({0} bytes found)")]
    Length(usize),
    #[error("the handle was sealed under another key-encryption key")]
    WrongKek,
    #[error("the handle is malformed or was tampered with")]
    Corrupt,
}

/// HKDF info label of the audit MAC key; a new label means a new, unrelated key.
const AUDIT_MAC_INFO: &[u8] = b"influxion audit mac v1";

/// The key-encryption key. Never printed; zeroized on drop.
pub struct Kek {
    key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek([redacted])")
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    v: u8,
    /// First 8 bytes of SHA-256 of the KEK: tells "wrong KEK" from "corrupt record".
    kek: String,
    dek: String,
    key: String,
}

impl Kek {
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        Self { key }
    }

    /// Parse a KEK written as base64 or hex text (whitespace ignored).
    pub fn from_text(text: &str) -> Result<Self, KekError> {
        let t = Zeroizing::new(text.trim().to_owned());
        let bytes = Zeroizing::new(
            hex_decode(&t)
                .or_else(|| B64.decode(t.as_bytes()).ok())
                .unwrap_or_default(),
        );
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KekError::Length(bytes.len()))?;
        Ok(Self {
            key: Zeroizing::new(arr),
        })
    }

    /// The KEK as base64 text, for writing a freshly generated development KEK to a file.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(B64.encode(self.key.as_ref()))
    }

    /// The key that MACs the audit chain, derived from the KEK (HKDF-SHA256 with its own
    /// label), so rewriting audit rows needs the KEK but the KEK itself never keys a MAC.
    pub fn audit_mac_key(&self) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
        let _ =
            hkdf::Hkdf::<Sha256>::new(None, self.key.as_ref()).expand(AUDIT_MAC_INFO, out.as_mut());
        out
    }

    fn id(&self) -> String {
        let h = Sha256::digest(self.key.as_ref());
        h[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(crate) fn seal(&self, key_id: &str, plaintext: &[u8]) -> Result<Vec<u8>, KekError> {
        let mut dek = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(dek.as_mut());
        let sealed_key = seal_with(dek.as_ref(), key_id, plaintext)?;
        let sealed_dek = seal_with(self.key.as_ref(), key_id, dek.as_ref())?;
        let env = Envelope {
            v: 1,
            kek: self.id(),
            dek: B64.encode(sealed_dek),
            key: B64.encode(sealed_key),
        };
        serde_json::to_vec(&env).map_err(|_| KekError::Corrupt)
    }

    pub(crate) fn open(&self, key_id: &str, handle: &[u8]) -> Result<Zeroizing<Vec<u8>>, KekError> {
        let env: Envelope = serde_json::from_slice(handle).map_err(|_| KekError::Corrupt)?;
        if env.v != 1 {
            return Err(KekError::Corrupt);
        }
        if env.kek != self.id() {
            return Err(KekError::WrongKek);
        }
        let sealed_dek = B64.decode(env.dek).map_err(|_| KekError::Corrupt)?;
        let sealed_key = B64.decode(env.key).map_err(|_| KekError::Corrupt)?;
        let dek = open_with(self.key.as_ref(), key_id, &sealed_dek)?;
        open_with(&dek, key_id, &sealed_key)
    }
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

fn seal_with(key: &[u8], aad: &str, plaintext: &[u8]) -> Result<Vec<u8>, KekError> {
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| KekError::Corrupt)?;
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| KekError::Corrupt)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open_with(key: &[u8], aad: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KekError> {
    if sealed.len() < 12 + 16 {
        return Err(KekError::Corrupt);
    }
    let (nonce, ct) = sealed.split_at(12);
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| KekError::Corrupt)?;
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| KekError::Corrupt)?;
    cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: ct,
                aad: aad.as_bytes(),
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| KekError::Corrupt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let kek = Kek::generate();
        let h = kek.seal("id", b"secret").unwrap();
        assert_eq!(kek.open("id", &h).unwrap().as_slice(), b"secret");
        assert!(matches!(kek.open("other", &h), Err(KekError::Corrupt)));
        let mut env: Envelope = serde_json::from_slice(&h).unwrap();
        let mut k = B64.decode(&env.key).unwrap();
        k[20] ^= 1;
        env.key = B64.encode(k);
        assert!(matches!(
            kek.open("id", &serde_json::to_vec(&env).unwrap()),
            Err(KekError::Corrupt)
        ));
    }

    #[test]
    fn audit_mac_key_is_derived_not_the_kek() {
        let k = Kek::generate();
        let a = k.audit_mac_key();
        assert_eq!(*a, *Kek::from_text(&k.to_base64()).unwrap().audit_mac_key());
        assert_ne!(*a, *k.key);
        assert_ne!(*a, *Kek::generate().audit_mac_key());
        // The label and algorithm docs/audit.md documents; changing either is a new key.
        let fixed = Kek::from_text(&"00".repeat(32)).unwrap();
        let expected = hkdf::Hkdf::<Sha256>::new(None, &[0u8; 32]);
        let mut okm = [0u8; 32];
        expected
            .expand(b"influxion audit mac v1", &mut okm)
            .unwrap();
        assert_eq!(*fixed.audit_mac_key(), okm);
    }

    #[test]
    fn kek_text_forms() {
        let k = Kek::generate();
        let again = Kek::from_text(&k.to_base64()).unwrap();
        assert_eq!(k.id(), again.id());
        assert!(Kek::from_text(&"ab".repeat(32)).is_ok());
        assert!(matches!(
            Kek::from_text("c2hvcnQ="),
            Err(KekError::Length(5))
        ));
        assert_eq!(format!("{k:?}"), "Kek([redacted])");
    }
}
