//! Certificate signing requests: parse, check proof of possession, and describe what
//! the CSR asks for so a profile can vet it. Nothing from a CSR reaches a certificate
//! except the public key and values a profile has accepted.

use serde::{Deserialize, Serialize};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{self as oids, Oid};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// Largest CSR accepted (PEM or DER). An RSA-4096 CSR with a few names is about 2 KiB.
pub const MAX_CSR_BYTES: usize = 8 * 1024;

/// Key types a device certificate may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKeyType {
    EcP256,
    EcP384,
    Ed25519,
    // Spelled as the keyserver's key types are (`rsa-3072`); kebab-case alone would
    // give `rsa3072`, still read for profiles stored that way.
    #[serde(rename = "rsa-2048", alias = "rsa2048")]
    Rsa2048,
    #[serde(rename = "rsa-3072", alias = "rsa3072")]
    Rsa3072,
    #[serde(rename = "rsa-4096", alias = "rsa4096")]
    Rsa4096,
}

impl DeviceKeyType {
    pub const ALL: [DeviceKeyType; 6] = [
        Self::EcP256,
        Self::EcP384,
        Self::Ed25519,
        Self::Rsa2048,
        Self::Rsa3072,
        Self::Rsa4096,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcP256 => "ec-p256",
            Self::EcP384 => "ec-p384",
            Self::Ed25519 => "ed25519",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa3072 => "rsa-3072",
            Self::Rsa4096 => "rsa-4096",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096)
    }
}

impl std::fmt::Display for DeviceKeyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("the CSR is larger than {MAX_CSR_BYTES} bytes")]
    TooLarge,
    #[error("the CSR is not a valid PKCS#10 request: {0}")]
    Malformed(String),
    #[error("the CSR's self-signature does not verify: {0}")]
    BadSignature(String),
    #[error("the CSR's key is not accepted: {0}")]
    KeyNotAllowed(String),
}

/// One attribute of the CSR's subject, as `(short name, value)`; unknown attribute
/// types keep their dotted OID as the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectAttr {
    pub name: String,
    pub value: String,
}

/// What the CSR asks for in its extensionRequest attribute.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requested {
    pub dns_names: Vec<String>,
    pub uris: Vec<String>,
    /// Key usage names (`digital_signature`, …) if a keyUsage extension is present.
    pub key_usage: Vec<String>,
    /// Extended key usage names or dotted OIDs.
    pub extended_key_usage: Vec<String>,
    /// A basicConstraints extension asking for cA=TRUE.
    pub ca: bool,
    /// Every other requested extension (and SAN kinds other than DNS/URI), by OID or kind.
    pub other: Vec<String>,
}

/// A parsed CSR whose self-signature has been verified.
#[derive(Debug, Clone)]
pub struct Csr {
    /// DER SubjectPublicKeyInfo: the only thing a certificate takes from the CSR as is.
    pub spki_der: Vec<u8>,
    pub key_type: DeviceKeyType,
    pub subject: Vec<SubjectAttr>,
    /// The subject had an RDN with more than one attribute (`CN=a+O=b`).
    pub multi_valued_rdn: bool,
    pub requested: Requested,
}

impl Csr {
    pub fn common_name(&self) -> Option<&str> {
        self.subject
            .iter()
            .find(|a| a.name == "CN")
            .map(|a| a.value.as_str())
    }
}

/// Parse a CSR given as PEM (`CERTIFICATE REQUEST`) or DER, check its key type and its
/// self-signature (proof of possession of the private key).
pub fn parse(input: &[u8]) -> Result<Csr, CsrError> {
    if input.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge);
    }
    let der = to_der(input)?;
    let (rest, req) = X509CertificationRequest::from_der(&der)
        .map_err(|e| CsrError::Malformed(short(&e.to_string())))?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed(
            "trailing bytes after the request".into(),
        ));
    }
    let info = &req.certification_request_info;
    let key_type = key_type(&info.subject_pki)?;

    let sig_alg = &req.signature_algorithm.algorithm;
    if *sig_alg == oids::OID_PKCS1_SHA1WITHRSA || *sig_alg == oids::OID_SHA1_WITH_RSA {
        return Err(CsrError::BadSignature(
            "SHA-1 signatures are not accepted".into(),
        ));
    }
    req.verify_signature()
        .map_err(|e| CsrError::BadSignature(short(&e.to_string())))?;

    let mut subject = Vec::new();
    let mut multi_valued_rdn = false;
    for rdn in info.subject.iter() {
        if rdn.iter().count() != 1 {
            multi_valued_rdn = true;
        }
        for atv in rdn.iter() {
            let value = atv
                .as_str()
                .map_err(|_| CsrError::Malformed("a subject attribute is not a string".into()))?;
            subject.push(SubjectAttr {
                name: attr_name(atv.attr_type()),
                value: value.to_owned(),
            });
        }
    }

    let mut requested = Requested::default();
    for attr in info.iter_attributes() {
        if let ParsedCriAttribute::ExtensionRequest(ext) = attr.parsed_attribute() {
            for e in &ext.extensions {
                describe_extension(e.oid.to_id_string(), e.parsed_extension(), &mut requested);
            }
        }
    }

    Ok(Csr {
        spki_der: info.subject_pki.raw.to_vec(),
        key_type,
        subject,
        multi_valued_rdn,
        requested,
    })
}

fn to_der(input: &[u8]) -> Result<Vec<u8>, CsrError> {
    let trimmed = input.trim_ascii_start();
    if trimmed.starts_with(b"-----BEGIN") {
        let p = pem::parse(trimmed).map_err(|e| CsrError::Malformed(short(&e.to_string())))?;
        if p.tag() != "CERTIFICATE REQUEST" && p.tag() != "NEW CERTIFICATE REQUEST" {
            return Err(CsrError::Malformed(format!(
                "PEM label is {:?}, expected CERTIFICATE REQUEST",
                short(p.tag())
            )));
        }
        Ok(p.into_contents())
    } else {
        Ok(input.to_vec())
    }
}

fn key_type(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<DeviceKeyType, CsrError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == oids::OID_PKCS1_RSAENCRYPTION {
        let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err(CsrError::Malformed("RSA public key does not parse".into()));
        };
        let exponent = rsa
            .try_exponent()
            .map_err(|_| CsrError::KeyNotAllowed("RSA exponent too large".into()))?;
        if exponent < 65537 || exponent % 2 == 0 {
            return Err(CsrError::KeyNotAllowed(format!("RSA exponent {exponent}")));
        }
        return match rsa.key_size() {
            2048 => Ok(DeviceKeyType::Rsa2048),
            3072 => Ok(DeviceKeyType::Rsa3072),
            4096 => Ok(DeviceKeyType::Rsa4096),
            bits => Err(CsrError::KeyNotAllowed(format!(
                "RSA {bits}-bit keys are not supported (2048, 3072 or 4096)"
            ))),
        };
    }
    if *alg == oids::OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == oids::OID_EC_P256 => Ok(DeviceKeyType::EcP256),
            Some(c) if c == oids::OID_NIST_EC_P384 => Ok(DeviceKeyType::EcP384),
            Some(c) => Err(CsrError::KeyNotAllowed(format!(
                "elliptic curve {} is not supported (P-256 or P-384)",
                c.to_id_string()
            ))),
            None => Err(CsrError::KeyNotAllowed(
                "EC key without a named curve".into(),
            )),
        };
    }
    if *alg == oids::OID_SIG_ED25519 {
        return Ok(DeviceKeyType::Ed25519);
    }
    Err(CsrError::KeyNotAllowed(format!(
        "public key algorithm {} is not supported",
        alg.to_id_string()
    )))
}

fn attr_name(oid: &Oid<'_>) -> String {
    let known = [
        (oids::OID_X509_COMMON_NAME, "CN"),
        (oids::OID_X509_ORGANIZATION_NAME, "O"),
        (oids::OID_X509_ORGANIZATIONAL_UNIT, "OU"),
        (oids::OID_X509_COUNTRY_NAME, "C"),
        (oids::OID_X509_LOCALITY_NAME, "L"),
        (oids::OID_X509_STATE_OR_PROVINCE_NAME, "ST"),
        (oids::OID_X509_SERIALNUMBER, "serialNumber"),
    ];
    known
        .iter()
        .find(|(k, _)| k == oid)
        .map(|(_, n)| (*n).to_owned())
        .unwrap_or_else(|| oid.to_id_string())
}

fn describe_extension(oid: String, ext: &ParsedExtension<'_>, out: &mut Requested) {
    match ext {
        ParsedExtension::SubjectAlternativeName(san) => {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(d) => out.dns_names.push((*d).to_owned()),
                    GeneralName::URI(u) => out.uris.push((*u).to_owned()),
                    other => out.other.push(
                        format!("subjectAltName {other:?}")
                            .chars()
                            .take(80)
                            .collect(),
                    ),
                }
            }
        }
        ParsedExtension::KeyUsage(ku) => {
            let names = [
                (ku.digital_signature(), "digital_signature"),
                (ku.non_repudiation(), "content_commitment"),
                (ku.key_encipherment(), "key_encipherment"),
                (ku.data_encipherment(), "data_encipherment"),
                (ku.key_agreement(), "key_agreement"),
                (ku.key_cert_sign(), "key_cert_sign"),
                (ku.crl_sign(), "crl_sign"),
                (ku.encipher_only(), "encipher_only"),
                (ku.decipher_only(), "decipher_only"),
            ];
            out.key_usage.extend(
                names
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, n)| (*n).to_owned()),
            );
        }
        ParsedExtension::ExtendedKeyUsage(eku) => {
            let names = [
                (eku.any, "any"),
                (eku.server_auth, "server_auth"),
                (eku.client_auth, "client_auth"),
                (eku.code_signing, "code_signing"),
                (eku.email_protection, "email_protection"),
                (eku.time_stamping, "time_stamping"),
                (eku.ocsp_signing, "ocsp_signing"),
            ];
            out.extended_key_usage.extend(
                names
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, n)| (*n).to_owned()),
            );
            out.extended_key_usage
                .extend(eku.other.iter().map(|o| o.to_id_string()));
        }
        ParsedExtension::BasicConstraints(bc) => out.ca |= bc.ca,
        _ => out.other.push(oid),
    }
}

fn short(s: &str) -> String {
    s.chars().take(160).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn device_key_types_are_spelled_as_key_types() {
        for t in DeviceKeyType::ALL {
            let json = serde_json::to_value(t).unwrap();
            assert_eq!(json, t.as_str());
            assert_eq!(serde_json::from_value::<DeviceKeyType>(json).unwrap(), t);
        }
        let old: DeviceKeyType = serde_json::from_str("\"rsa3072\"").unwrap();
        assert_eq!(old, DeviceKeyType::Rsa3072);
    }

    fn csr_with(params: rcgen::CertificateParams, key: &rcgen::KeyPair) -> Vec<u8> {
        params.serialize_request(key).unwrap().der().to_vec()
    }

    #[test]
    fn parses_p256_csr_with_names() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["dev-1.example".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "dev-1");
        let csr = parse(&csr_with(params, &key)).unwrap();
        assert_eq!(csr.key_type, DeviceKeyType::EcP256);
        assert_eq!(csr.common_name(), Some("dev-1"));
        assert_eq!(csr.requested.dns_names, vec!["dev-1.example".to_string()]);
        assert!(!csr.multi_valued_rdn);
    }

    #[test]
    fn pem_with_wrong_label_is_malformed() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(parse(pem.as_bytes()), Err(CsrError::Malformed(_))));
    }

    #[test]
    fn flipped_signature_bit_fails() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let mut der = csr_with(rcgen::CertificateParams::default(), &key);
        let n = der.len();
        der[n - 3] ^= 0x01;
        assert!(matches!(parse(&der), Err(CsrError::BadSignature(_))));
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_input(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&bytes);
        }

        /// Every byte of the signed part (what a certificate can take from a CSR) is
        /// bound by the self-signature: changing any of it is refused. Changes
        /// elsewhere only have to be handled without a panic.
        #[test]
        fn any_change_to_the_signed_part_is_refused(pos in 0usize..400, byte in any::<u8>()) {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let original = csr_with(rcgen::CertificateParams::new(vec!["a.example".into()]).unwrap(), &key);
            let (_, req) = X509CertificationRequest::from_der(&original).unwrap();
            let cri = req.certification_request_info.raw;
            let start = cri.as_ptr() as usize - original.as_ptr() as usize;
            let mut der = original.clone();
            let i = pos % der.len();
            der[i] = byte;
            let r = parse(&der);
            if der != original && (start..start + cri.len()).contains(&i) {
                prop_assert!(r.is_err());
            }
        }
    }
}
