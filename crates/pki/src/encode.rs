//! Encodings handed to devices and provisioning tools: PEM, PKCS#7 certs-only (EST,
//! `.p7b`), PKCS#12, and server-side generated device keys.

use der::{Decode, Encode};
use zeroize::Zeroizing;

use crate::csr::DeviceKeyType;

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("encoding failed: {0}")]
    Der(String),
    #[error("key generation failed: {0}")]
    KeyGen(String),
    #[error("invalid password: {0}")]
    Password(&'static str),
}

pub fn cert_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

pub fn crl_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("X509 CRL", der.to_vec()))
}

/// Parse one or more PEM certificates (or a single DER certificate) into DER.
pub fn certs_from_pem_or_der(input: &[u8]) -> Result<Vec<Vec<u8>>, EncodeError> {
    let trimmed = input.trim_ascii_start();
    if trimmed.starts_with(b"-----BEGIN") {
        let all = pem::parse_many(trimmed).map_err(|e| EncodeError::Der(e.to_string()))?;
        let certs: Vec<Vec<u8>> = all
            .into_iter()
            .filter(|p| p.tag() == "CERTIFICATE")
            .map(pem::Pem::into_contents)
            .collect();
        if certs.is_empty() {
            return Err(EncodeError::Der("no CERTIFICATE blocks".into()));
        }
        Ok(certs)
    } else {
        Ok(vec![input.to_vec()])
    }
}

/// A degenerate ("certs-only") CMS SignedData holding `certs`, as EST (RFC 7030 4.1.3)
/// and `.p7b` files use.
pub fn pkcs7_certs_only(certs: &[Vec<u8>]) -> Result<Vec<u8>, EncodeError> {
    use cms::cert::CertificateChoices;
    use cms::content_info::{CmsVersion, ContentInfo};
    use cms::signed_data::{CertificateSet, EncapsulatedContentInfo, SignedData, SignerInfos};
    use der::asn1::SetOfVec;
    let e = |e: der::Error| EncodeError::Der(e.to_string());

    let mut set = SetOfVec::new();
    for c in certs {
        let cert = x509_cert::Certificate::from_der(c).map_err(e)?;
        set.insert(CertificateChoices::Certificate(cert))
            .map_err(e)?;
    }
    let sd = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::new(),
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: const_oid::db::rfc5911::ID_DATA,
            econtent: None,
        },
        certificates: Some(CertificateSet(set)),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::new()),
    };
    let ci = ContentInfo {
        content_type: const_oid::db::rfc5911::ID_SIGNED_DATA,
        content: der::Any::encode_from(&sd).map_err(e)?,
    };
    ci.to_der().map_err(e)
}

/// A freshly generated device key: PKCS#8 (zeroized on drop) and its public key.
pub struct DeviceKey {
    pub pkcs8_der: Zeroizing<Vec<u8>>,
    pub spki_der: Vec<u8>,
}

impl DeviceKey {
    pub fn pkcs8_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(pem::encode(&pem::Pem::new(
            "PRIVATE KEY",
            self.pkcs8_der.to_vec(),
        )))
    }
}

pub fn generate_device_key(kt: DeviceKeyType) -> Result<DeviceKey, EncodeError> {
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey};
    let kg = |e: &dyn std::fmt::Display| EncodeError::KeyGen(e.to_string());
    let mut rng = rand::thread_rng();
    let (pkcs8, spki) = match kt {
        DeviceKeyType::EcP256 => {
            let k = p256::SecretKey::random(&mut rng);
            (
                k.to_pkcs8_der().map_err(|e| kg(&e))?,
                k.public_key().to_public_key_der().map_err(|e| kg(&e))?,
            )
        }
        DeviceKeyType::EcP384 => {
            let k = p384::SecretKey::random(&mut rng);
            (
                k.to_pkcs8_der().map_err(|e| kg(&e))?,
                k.public_key().to_public_key_der().map_err(|e| kg(&e))?,
            )
        }
        DeviceKeyType::Ed25519 => {
            let k = ed25519_dalek::SigningKey::generate(&mut rng);
            (
                k.to_pkcs8_der().map_err(|e| kg(&e))?,
                k.verifying_key().to_public_key_der().map_err(|e| kg(&e))?,
            )
        }
        DeviceKeyType::Rsa2048 | DeviceKeyType::Rsa3072 | DeviceKeyType::Rsa4096 => {
            let bits = match kt {
                DeviceKeyType::Rsa2048 => 2048,
                DeviceKeyType::Rsa3072 => 3072,
                _ => 4096,
            };
            let k = rsa::RsaPrivateKey::new(&mut rng, bits).map_err(|e| kg(&e))?;
            (
                k.to_pkcs8_der().map_err(|e| kg(&e))?,
                k.to_public_key().to_public_key_der().map_err(|e| kg(&e))?,
            )
        }
    };
    Ok(DeviceKey {
        pkcs8_der: Zeroizing::new(pkcs8.as_bytes().to_vec()),
        spki_der: spki.into_vec(),
    })
}

/// A key made on the provisioning station and a CSR for it, for devices that take a
/// key file (the private key never crosses the network). EC and Ed25519 only: RSA key
/// generation belongs to the device or the server.
pub fn local_key_and_csr(
    kt: DeviceKeyType,
    common_name: &str,
) -> Result<(Zeroizing<String>, String), EncodeError> {
    let alg = match kt {
        DeviceKeyType::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        DeviceKeyType::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        DeviceKeyType::Ed25519 => &rcgen::PKCS_ED25519,
        other => {
            return Err(EncodeError::KeyGen(format!(
                "{other} keys are not generated locally; use ec-p256, ec-p384 or ed25519"
            )))
        }
    };
    let key = rcgen::KeyPair::generate_for(alg).map_err(|e| EncodeError::KeyGen(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| EncodeError::Der(e.to_string()))?;
    Ok((Zeroizing::new(key.serialize_pem()), csr))
}

/// PKCS#12 passwords: 8 to 128 characters, no control characters (they do not survive
/// the tools that read the file).
pub fn check_password(password: &str) -> Result<(), EncodeError> {
    let n = password.chars().count();
    if n < 8 {
        return Err(EncodeError::Password("at least 8 characters"));
    }
    if n > 128 {
        return Err(EncodeError::Password("at most 128 characters"));
    }
    if password.chars().any(char::is_control) {
        return Err(EncodeError::Password("no control characters"));
    }
    Ok(())
}

/// A PKCS#12 file with the key and its chain (leaf first), encrypted with PBES2
/// (PBKDF2-HMAC-SHA256, AES-256-CBC) and MACed with HMAC-SHA256, which OpenSSL 3 reads
/// without the legacy provider.
pub fn pkcs12(
    key: &DeviceKey,
    chain: &[Vec<u8>],
    alias: &str,
    password: &str,
) -> Result<Vec<u8>, EncodeError> {
    check_password(password)?;
    let certs = chain
        .iter()
        .map(|c| p12_keystore::Certificate::from_der(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| EncodeError::Der(e.to_string()))?;
    let local_key_id = <sha2::Sha256 as sha2::Digest>::digest(&key.spki_der);
    let entry = p12_keystore::PrivateKeyChain::new(&*key.pkcs8_der, &local_key_id[..20], certs);
    let mut ks = p12_keystore::KeyStore::new();
    ks.add_entry(alias, p12_keystore::KeyStoreEntry::PrivateKeyChain(entry));
    ks.writer(password)
        .encryption_iterations(100_000)
        .mac_iterations(100_000)
        .write()
        .map_err(|e| EncodeError::Der(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn passwords() {
        assert!(check_password("short").is_err());
        assert!(check_password("with\nnewline").is_err());
        assert!(check_password(&"x".repeat(129)).is_err());
        check_password("correct horse").unwrap();
    }

    #[test]
    fn generated_keys_have_matching_public_keys() {
        for kt in [
            DeviceKeyType::EcP256,
            DeviceKeyType::EcP384,
            DeviceKeyType::Ed25519,
        ] {
            let k = generate_device_key(kt).unwrap();
            assert!(!k.spki_der.is_empty());
            assert!(k.pkcs8_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
        }
    }
}
