//! A Key Vault certificate's secret: the certificate chain and, when the certificate's
//! key is exportable, its private key, as PKCS#12 (`application/x-pkcs12`, base64, no
//! password) or PEM (`application/x-pem-file`: the key, then the certificates).
//!
//! The private key is parsed into a [`MemoryKey`] (zeroized on drop) and every copy
//! Influxion makes is zeroized; the HTTP client's receive buffer and the PKCS#12
//! parser's intermediate copy are freed without being overwritten (neither crate
//! offers more), which `docs/keyvault.md` states as part of the secret mode's trade-off.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use influxion_core::BackendError;
use influxion_keystore::MemoryKey;
use x509_cert::der::{Decode as _, Encode as _};
use zeroize::Zeroizing;

/// What a certificate's secret holds.
pub(crate) struct SecretContents {
    /// `None` when the certificate's key is not exportable (the secret has only
    /// certificates).
    pub key: Option<MemoryKey>,
    /// DER certificates, leaf first.
    pub chain: Vec<Vec<u8>>,
}

fn unfit(m: impl Into<String>) -> BackendError {
    BackendError::Unfit(m.into())
}

/// Parse a secret's `value` by its `contentType`.
pub(crate) fn parse(content_type: &str, value: &str) -> Result<SecretContents, BackendError> {
    match content_type {
        "application/x-pkcs12" => pkcs12(value),
        "application/x-pem-file" => pem_file(value),
        other => Err(unfit(format!(
            "the secret's content type is {other:?}; a certificate's secret is application/x-pkcs12 or application/x-pem-file"
        ))),
    }
}

fn pkcs12(value: &str) -> Result<SecretContents, BackendError> {
    let der = Zeroizing::new(
        B64.decode(value.trim())
            .map_err(|_| unfit("the certificate's PKCS#12 secret is not base64"))?,
    );
    // Key Vault exports PKCS#12 without a password.
    let store = p12_keystore::KeyStore::from_pkcs12(&der, "").map_err(|e| {
        unfit(format!(
            "the certificate's PKCS#12 secret does not parse: {e}"
        ))
    })?;
    if let Some((_, chain)) = store.private_key_chain() {
        let key = MemoryKey::from_pkcs8(&Zeroizing::new(chain.key().to_vec()))
            .map_err(|_| unfit("the PKCS#12 secret's private key is of no supported type"))?;
        return Ok(SecretContents {
            key: Some(key),
            chain: chain.chain().iter().map(|c| c.as_der().to_vec()).collect(),
        });
    }
    let chain = store
        .entries()
        .filter_map(|(_, e)| match e {
            p12_keystore::KeyStoreEntry::Certificate(c) => Some(c.as_der().to_vec()),
            _ => None,
        })
        .collect();
    Ok(SecretContents { key: None, chain })
}

fn pem_file(value: &str) -> Result<SecretContents, BackendError> {
    let blocks =
        pem::parse_many(value).map_err(|_| unfit("the certificate's PEM secret does not parse"))?;
    let mut key = None;
    let mut chain = Vec::new();
    for b in blocks {
        let is_certificate = b.tag() == "CERTIFICATE";
        let is_key = b.tag().ends_with("PRIVATE KEY");
        let contents = Zeroizing::new(b.into_contents());
        if is_certificate {
            chain.push(contents.to_vec());
        } else if is_key && key.is_none() {
            key = Some(MemoryKey::from_pkcs8(&contents).map_err(|_| {
                unfit("the PEM secret's private key is not PKCS#8 of a supported type")
            })?);
        }
    }
    Ok(SecretContents { key, chain })
}

/// The DER SubjectPublicKeyInfo of a DER certificate.
pub(crate) fn certificate_spki(der: &[u8]) -> Result<Vec<u8>, BackendError> {
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|_| unfit("the vault's certificate does not parse"))?;
    cert.tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| BackendError::Crypto(e.to_string()))
}
