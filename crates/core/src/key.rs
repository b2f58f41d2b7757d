//! Keys, algorithms and digests, each validated on construction.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a value from outside could not become a domain type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("key name must be 1-64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit")]
    KeyName,
    #[error("unknown key type {0:?}")]
    KeyType(String),
    #[error("unknown signing algorithm {0:?}")]
    Algorithm(String),
    #[error("digest must be hex encoded")]
    DigestEncoding,
    #[error("algorithm {algorithm} needs a {expected}-byte digest, got {actual} bytes")]
    DigestLength {
        algorithm: SignAlgorithm,
        expected: usize,
        actual: usize,
    },
}

/// The name of a key, unique in one keyserver.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct KeyName(String);

impl KeyName {
    pub const MAX_LEN: usize = 64;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for KeyName {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok_first = s
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let ok_rest = s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
        if ok_first && ok_rest && s.len() <= Self::MAX_LEN {
            Ok(Self(s.to_owned()))
        } else {
            Err(ParseError::KeyName)
        }
    }
}

impl<'de> Deserialize<'de> for KeyName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// Key types the keyserver can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyType {
    #[serde(rename = "ec-p256")]
    EcP256,
    #[serde(rename = "ec-p384")]
    EcP384,
    #[serde(rename = "ed25519")]
    Ed25519,
    /// For devices whose boot ROM or bootloader verifies RSA-2048 only (MCUboot's
    /// RSA2048_PSS, older Secure Boot chains): 112-bit strength, NIST-acceptable
    /// through 2030. Prefer ec-p256 or rsa-3072 for new keys.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

impl KeyType {
    pub const ALL: [KeyType; 6] = [
        KeyType::EcP256,
        KeyType::EcP384,
        KeyType::Ed25519,
        KeyType::Rsa2048,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcP256 => "ec-p256",
            KeyType::EcP384 => "ec-p384",
            KeyType::Ed25519 => "ed25519",
            KeyType::Rsa2048 => "rsa-2048",
            KeyType::Rsa3072 => "rsa-3072",
            KeyType::Rsa4096 => "rsa-4096",
        }
    }

    /// The algorithms this key may sign with; the first is the default.
    pub fn algorithms(self) -> &'static [SignAlgorithm] {
        use SignAlgorithm::*;
        match self {
            KeyType::EcP256 => &[Es256],
            KeyType::EcP384 => &[Es384],
            KeyType::Ed25519 => &[EdDsa],
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
                &[Rs256, Rs384, Rs512, Ps256, Ps384, Ps512]
            }
        }
    }

    pub fn default_algorithm(self) -> SignAlgorithm {
        self.algorithms()[0]
    }

    pub fn allows(self, alg: SignAlgorithm) -> bool {
        self.algorithms().contains(&alg)
    }
}

impl FromStr for KeyType {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| ParseError::KeyType(s.to_owned()))
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Signing algorithms, named as in JOSE (RFC 7518) so that they read the same everywhere.
///
/// The keyserver signs a digest computed by the client. ECDSA signatures are DER
/// encoded (what `openssl dgst -verify` expects); RSA signatures are the raw modulus-sized
/// value; `EdDSA` signs the 32-byte SHA-256 digest as its message, as MCUboot's imgtool does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SignAlgorithm {
    #[serde(rename = "ES256")]
    Es256,
    #[serde(rename = "ES384")]
    Es384,
    #[serde(rename = "EdDSA")]
    EdDsa,
    #[serde(rename = "RS256")]
    Rs256,
    #[serde(rename = "RS384")]
    Rs384,
    #[serde(rename = "RS512")]
    Rs512,
    #[serde(rename = "PS256")]
    Ps256,
    #[serde(rename = "PS384")]
    Ps384,
    #[serde(rename = "PS512")]
    Ps512,
}

/// The hash a digest was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlg {
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    pub fn output_len(self) -> usize {
        match self {
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
            HashAlg::Sha512 => "sha512",
        }
    }
}

impl SignAlgorithm {
    pub const ALL: [SignAlgorithm; 9] = [
        SignAlgorithm::Es256,
        SignAlgorithm::Es384,
        SignAlgorithm::EdDsa,
        SignAlgorithm::Rs256,
        SignAlgorithm::Rs384,
        SignAlgorithm::Rs512,
        SignAlgorithm::Ps256,
        SignAlgorithm::Ps384,
        SignAlgorithm::Ps512,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SignAlgorithm::Es256 => "ES256",
            SignAlgorithm::Es384 => "ES384",
            SignAlgorithm::EdDsa => "EdDSA",
            SignAlgorithm::Rs256 => "RS256",
            SignAlgorithm::Rs384 => "RS384",
            SignAlgorithm::Rs512 => "RS512",
            SignAlgorithm::Ps256 => "PS256",
            SignAlgorithm::Ps384 => "PS384",
            SignAlgorithm::Ps512 => "PS512",
        }
    }

    pub fn hash(self) -> HashAlg {
        use SignAlgorithm::*;
        match self {
            Es256 | EdDsa | Rs256 | Ps256 => HashAlg::Sha256,
            Es384 | Rs384 | Ps384 => HashAlg::Sha384,
            Rs512 | Ps512 => HashAlg::Sha512,
        }
    }

    pub fn digest_len(self) -> usize {
        self.hash().output_len()
    }
}

impl FromStr for SignAlgorithm {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SignAlgorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| ParseError::Algorithm(s.to_owned()))
    }
}

impl fmt::Display for SignAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A message digest whose length has been checked against the algorithm that will sign it.
#[derive(Clone, PartialEq, Eq)]
pub struct Digest {
    alg: SignAlgorithm,
    bytes: Vec<u8>,
}

impl Digest {
    pub fn new(alg: SignAlgorithm, bytes: Vec<u8>) -> Result<Self, ParseError> {
        if bytes.len() != alg.digest_len() {
            return Err(ParseError::DigestLength {
                algorithm: alg,
                expected: alg.digest_len(),
                actual: bytes.len(),
            });
        }
        Ok(Self { alg, bytes })
    }

    pub fn algorithm(&self) -> SignAlgorithm {
        self.alg
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn to_hex(&self) -> String {
        hex::encode(&self.bytes)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({}:{})", self.alg, self.to_hex())
    }
}

/// Whether a key may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Disabled,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Disabled => "disabled",
        }
    }
}

impl FromStr for KeyStatus {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(KeyStatus::Active),
            "disabled" => Ok(KeyStatus::Disabled),
            other => Err(ParseError::KeyType(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names() {
        assert!("demo".parse::<KeyName>().is_ok());
        assert!("fw-2024.prod_1".parse::<KeyName>().is_ok());
        for bad in ["", "-x", "Demo", "a/b", "a b", "../etc", &"a".repeat(65)] {
            assert_eq!(bad.parse::<KeyName>(), Err(ParseError::KeyName), "{bad:?}");
        }
    }

    #[test]
    fn digest_length_is_checked() {
        assert!(Digest::new(SignAlgorithm::Es256, vec![0; 32]).is_ok());
        assert_eq!(
            Digest::new(SignAlgorithm::Es384, vec![0; 32]),
            Err(ParseError::DigestLength {
                algorithm: SignAlgorithm::Es384,
                expected: 48,
                actual: 32
            })
        );
    }

    #[test]
    fn algorithms_round_trip() {
        for a in SignAlgorithm::ALL {
            assert_eq!(a.as_str().parse::<SignAlgorithm>(), Ok(a));
        }
        for t in KeyType::ALL {
            assert_eq!(t.as_str().parse::<KeyType>(), Ok(t));
            assert!(t.allows(t.default_algorithm()));
        }
        assert!(!KeyType::EcP256.allows(SignAlgorithm::Rs256));
    }
}
