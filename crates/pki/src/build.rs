//! Building CA certificates, device certificates and CRLs with rcgen, signed by a key
//! that may live in any backend (the signer is a callback).

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CrlDistributionPoint,
    DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod,
    KeyUsagePurpose, PublicKeyData, RevocationReason, RevokedCertParams, SanType, SerialNumber,
    SignatureAlgorithm, SigningKey,
};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::profile::{CertSpec, ExtKeyUsage, KeyUsage};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("CA keys must be ECDSA P-256/P-384 or RSA; {0} is not supported")]
    UnsupportedCaKey(String),
    #[error("the CA key could not sign: {0}")]
    Sign(String),
    #[error("certificate encoding failed: {0}")]
    Encode(String),
    #[error("invalid name: {0}")]
    Name(String),
    #[error("the certificate is not usable as this CA's certificate: {0}")]
    BadCaCertificate(String),
    #[error("the certificate chain is not usable for this key: {0}")]
    BadKeyCertificate(String),
}

impl From<rcgen::Error> for BuildError {
    fn from(e: rcgen::Error) -> Self {
        BuildError::Encode(e.to_string())
    }
}

/// How a CA key signs: the hash applied to the to-be-signed bytes before the backend
/// signs the digest, and the X.509 signature algorithm that results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaKeyAlg {
    EcdsaP256Sha256,
    EcdsaP384Sha384,
    RsaPkcs1Sha256,
}

impl CaKeyAlg {
    fn rcgen(self) -> &'static SignatureAlgorithm {
        match self {
            Self::EcdsaP256Sha256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::EcdsaP384Sha384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Self::RsaPkcs1Sha256 => &rcgen::PKCS_RSA_SHA256,
        }
    }

    /// The digest the backend signs.
    pub fn digest(self, msg: &[u8]) -> Vec<u8> {
        match self {
            Self::EcdsaP256Sha256 | Self::RsaPkcs1Sha256 => sha2::Sha256::digest(msg).to_vec(),
            Self::EcdsaP384Sha384 => sha2::Sha384::digest(msg).to_vec(),
        }
    }
}

type SignFn<'a> = dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync + 'a;

/// A CA key seen through its public key and a signing callback. The callback receives
/// the digest (see [`CaKeyAlg::digest`]) and returns the X.509 signature value
/// (DER ECDSA-Sig-Value, or the RSA PKCS#1 v1.5 signature).
pub struct CaKey<'a> {
    alg: CaKeyAlg,
    /// subjectPublicKey bits (not the whole SPKI), as rcgen wants them.
    public_key: Vec<u8>,
    spki_der: Vec<u8>,
    sign: Box<SignFn<'a>>,
}

impl<'a> CaKey<'a> {
    pub fn new(
        alg: CaKeyAlg,
        spki_der: &[u8],
        sign: impl Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync + 'a,
    ) -> Result<Self, BuildError> {
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|e| BuildError::UnsupportedCaKey(e.to_string()))?;
        Ok(Self {
            alg,
            public_key: spki.subject_public_key.data.to_vec(),
            spki_der: spki_der.to_vec(),
            sign: Box::new(sign),
        })
    }
}

impl PublicKeyData for CaKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg.rcgen()
    }
}

impl SigningKey for CaKey<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        (self.sign)(&self.alg.digest(msg)).map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// Subject of a CA certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaSubject {
    pub common_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organizational_unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

impl CaSubject {
    pub fn validate(&self) -> Result<(), BuildError> {
        let ok =
            |v: &str| !v.is_empty() && v.chars().count() <= 64 && !v.chars().any(char::is_control);
        if !ok(&self.common_name) {
            return Err(BuildError::Name(
                "common_name must be 1 to 64 printable characters".into(),
            ));
        }
        for v in [&self.organization, &self.organizational_unit]
            .into_iter()
            .flatten()
        {
            if !ok(v) {
                return Err(BuildError::Name(
                    "organization/organizational_unit must be 1 to 64 printable characters".into(),
                ));
            }
        }
        if let Some(c) = &self.country {
            if c.len() != 2 || !c.chars().all(|c| c.is_ascii_uppercase()) {
                return Err(BuildError::Name(
                    "country must be two upper-case letters".into(),
                ));
            }
        }
        Ok(())
    }

    fn to_dn(&self) -> Result<DistinguishedName, BuildError> {
        self.validate()?;
        let mut attrs = Vec::new();
        if let Some(c) = &self.country {
            attrs.push(("C".to_owned(), c.clone()));
        }
        if let Some(o) = &self.organization {
            attrs.push(("O".to_owned(), o.clone()));
        }
        if let Some(ou) = &self.organizational_unit {
            attrs.push(("OU".to_owned(), ou.clone()));
        }
        attrs.push(("CN".to_owned(), self.common_name.clone()));
        dn(&attrs)
    }
}

fn dn(attrs: &[(String, String)]) -> Result<DistinguishedName, BuildError> {
    let mut dn = DistinguishedName::new();
    for (name, value) in attrs {
        let ty = match name.as_str() {
            "C" => DnType::CountryName,
            "ST" => DnType::StateOrProvinceName,
            "L" => DnType::LocalityName,
            "O" => DnType::OrganizationName,
            "OU" => DnType::OrganizationalUnitName,
            "CN" => DnType::CommonName,
            "serialNumber" => DnType::CustomDnType(vec![2, 5, 4, 5]),
            other => {
                return Err(BuildError::Name(format!(
                    "attribute {other} is not supported"
                )))
            }
        };
        // countryName and serialNumber are PrintableString by definition (RFC 5280
        // appendix A); the rest are UTF8String.
        let value = if matches!(name.as_str(), "C" | "serialNumber") {
            DnValue::PrintableString(
                value
                    .as_str()
                    .try_into()
                    .map_err(|_| BuildError::Name(format!("{name} must be printable")))?,
            )
        } else {
            DnValue::Utf8String(value.clone())
        };
        dn.push(ty, value);
    }
    Ok(dn)
}

/// RFC 7093 section 2 method 1: the leftmost 160 bits of the SHA-256 hash of the
/// subjectPublicKey BIT STRING value (what linters and other CAs recognise).
pub fn key_id(spki_der: &[u8]) -> Result<Vec<u8>, BuildError> {
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|e| BuildError::Encode(format!("public key: {e}")))?;
    Ok(sha2::Sha256::digest(&spki.subject_public_key.data)[..20].to_vec())
}

/// A positive serial of 16 octets: the time of issue in milliseconds (6 octets), then
/// 80 random bits (RFC 5280 allows 20 octets; the CA/Browser Forum asks for at least 64
/// bits from a CSPRNG and no sequence, which the random part gives).
///
/// Why the time first: the store indexes every certificate by serial. Fully random
/// serials put each new one on a random page of that index, and every such page is
/// written to the WAL and checkpointed again; serials that grow with time land on the
/// index's last page, as the audit records do (11–13 % more certificates a second,
/// BENCHMARKS.md, issue 19).
pub fn random_serial() -> [u8; 16] {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    serial_at(ms, rand::random())
}

/// The serial of [`random_serial`] for the time `ms` and the random part `random`.
fn serial_at(ms: u64, random: [u8; 10]) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    s[6..].copy_from_slice(&random);
    // Positive and never a leading zero octet, so the encoding is always 16 octets.
    // The two bits taken are the time's top ones, zero until the year 4200 or so.
    s[0] &= 0x3f;
    s[0] |= 0x40;
    s
}

fn ca_params(
    subject: &CaSubject,
    spki_der: &[u8],
    not_before: OffsetDateTime,
    validity_days: u32,
    path_len: Option<u8>,
) -> Result<CertificateParams, BuildError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = subject.to_dn()?;
    p.not_before = not_before;
    p.not_after = not_before + Duration::days(i64::from(validity_days));
    p.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.key_identifier_method = KeyIdMethod::PreSpecified(key_id(spki_der)?);
    Ok(p)
}

/// A self-signed root CA certificate (DER).
pub fn root_certificate(
    subject: &CaSubject,
    validity_days: u32,
    key: &CaKey<'_>,
) -> Result<Vec<u8>, BuildError> {
    let now = OffsetDateTime::now_utc();
    let p = ca_params(
        subject,
        key.spki_der(),
        now - Duration::minutes(5),
        validity_days,
        None,
    )?;
    Ok(p.self_signed(key)?.der().to_vec())
}

/// A PKCS#10 request for an intermediate CA, to be signed by an external root (PEM).
pub fn intermediate_csr(subject: &CaSubject, key: &CaKey<'_>) -> Result<String, BuildError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = subject.to_dn()?;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(p.serialize_request(key)?.pem()?)
}

/// An intermediate CA certificate signed by a CA this keyserver holds.
pub fn intermediate_certificate(
    subject: &CaSubject,
    validity_days: u32,
    child_spki_der: &[u8],
    parent_cert_der: &[u8],
    parent_key: &CaKey<'_>,
) -> Result<Vec<u8>, BuildError> {
    let now = OffsetDateTime::now_utc();
    let parent = facts(parent_cert_der)?;
    // The child's pathLenConstraint is one less than the parent's (0 under a root
    // without one), so every chain it makes stays valid.
    let path_len = match parent.path_len {
        None => 0,
        Some(0) => {
            return Err(BuildError::Name(
                "the parent CA has pathLenConstraint 0 and cannot sign CA certificates".into(),
            ))
        }
        Some(n) => u8::try_from(n - 1).unwrap_or(u8::MAX),
    };
    let parent_not_after = parent.not_after;
    let mut p = ca_params(
        subject,
        child_spki_der,
        now - Duration::minutes(5),
        validity_days,
        Some(path_len),
    )?;
    p.not_after = p.not_after.min(parent_not_after);
    p.use_authority_key_identifier_extension = true;
    let issuer = Issuer::from_ca_cert_der(&parent_cert_der.into(), parent_key)?;
    let child = rcgen::SubjectPublicKeyInfo::from_der(child_spki_der)?;
    Ok(p.signed_by(&child, &issuer)?.der().to_vec())
}

/// Facts about a certificate that the store keeps beside it.
#[derive(Debug, Clone)]
pub struct CertFacts {
    pub subject: String,
    pub issuer: String,
    pub serial_hex: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub spki_der: Vec<u8>,
    pub is_ca: bool,
    /// pathLenConstraint of a CA certificate (None: unconstrained or not a CA).
    pub path_len: Option<u32>,
    pub self_signed: bool,
    /// DER of the subject and issuer names, for exact comparisons.
    pub subject_der: Vec<u8>,
    pub issuer_der: Vec<u8>,
}

pub fn facts(cert_der: &[u8]) -> Result<CertFacts, BuildError> {
    let (rest, c) = X509Certificate::from_der(cert_der)
        .map_err(|e| BuildError::BadCaCertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(BuildError::BadCaCertificate("trailing bytes".into()));
    }
    let bc = c.basic_constraints().ok().flatten();
    let is_ca = bc.as_ref().is_some_and(|bc| bc.value.ca);
    let path_len = bc.and_then(|bc| bc.value.path_len_constraint);
    Ok(CertFacts {
        subject: c.subject().to_string(),
        issuer: c.issuer().to_string(),
        serial_hex: hex::encode(c.raw_serial()),
        not_before: c.validity().not_before.to_datetime(),
        not_after: c.validity().not_after.to_datetime(),
        spki_der: c.public_key().raw.to_vec(),
        is_ca,
        path_len,
        self_signed: c.subject() == c.issuer(),
        subject_der: c.subject().as_raw().to_vec(),
        issuer_der: c.issuer().as_raw().to_vec(),
    })
}

fn ski(cert_der: &[u8]) -> Result<Option<Vec<u8>>, BuildError> {
    let (_, c) = X509Certificate::from_der(cert_der)
        .map_err(|e| BuildError::BadCaCertificate(e.to_string()))?;
    for ext in c.extensions() {
        if let x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) =
            ext.parsed_extension()
        {
            return Ok(Some(id.0.to_vec()));
        }
    }
    Ok(None)
}

/// Check a certificate an operator imports for an intermediate CA: it must carry this
/// CA's public key, be a CA certificate allowed to sign certificates and CRLs, be
/// valid now, and verify under the first certificate of `chain` (its issuer).
pub fn check_imported(
    cert_der: &[u8],
    expected_spki: &[u8],
    chain: &[Vec<u8>],
) -> Result<CertFacts, BuildError> {
    let bad = |m: &str| BuildError::BadCaCertificate(m.to_owned());
    let f = facts(cert_der)?;
    if f.spki_der != expected_spki {
        return Err(bad("its public key is not this CA's key"));
    }
    if !f.is_ca {
        return Err(bad("basicConstraints cA is not TRUE"));
    }
    let (_, c) = X509Certificate::from_der(cert_der).map_err(|e| bad(&e.to_string()))?;
    let ku = c
        .key_usage()
        .ok()
        .flatten()
        .ok_or_else(|| bad("no keyUsage"))?;
    if !ku.value.key_cert_sign() || !ku.value.crl_sign() {
        return Err(bad("keyUsage must include keyCertSign and cRLSign"));
    }
    if !c.validity().is_valid() {
        return Err(bad("it is not valid now"));
    }
    let parent = chain
        .first()
        .ok_or_else(|| bad("the issuer's certificate (chain) is missing"))?;
    let (_, p) = X509Certificate::from_der(parent).map_err(|e| bad(&format!("chain: {e}")))?;
    if p.subject() != c.issuer() {
        return Err(bad("the chain's first certificate is not its issuer"));
    }
    c.verify_signature(Some(p.public_key()))
        .map_err(|_| bad("its signature does not verify under the chain's first certificate"))?;
    for c in chain {
        facts(c)?;
    }
    check_issuer_name_round_trip(cert_der)?;
    Ok(f)
}

/// Check a certificate chain an operator gives a signing key (`keys certificate NAME
/// --chain`), leaf first: 1 to 8 certificates, the leaf carries `expected_spki`, is not
/// a CA and is valid now, and each certificate verifies under the next one (its
/// issuer). The last may be a root or an intermediate: trust anchors are the
/// verifier's choice. Returns the leaf's facts.
pub fn check_signer_chain(
    chain: &[Vec<u8>],
    expected_spki: &[u8],
) -> Result<CertFacts, BuildError> {
    let bad = |m: String| BuildError::BadKeyCertificate(m);
    let leaf_der = match chain {
        [] => return Err(bad("no certificate given".into())),
        c if c.len() > 8 => return Err(bad("at most 8 certificates".into())),
        [leaf, ..] => leaf,
    };
    let leaf = facts(leaf_der).map_err(|e| bad(format!("the first certificate: {e}")))?;
    if leaf.spki_der != expected_spki {
        return Err(bad(
            "the first certificate's public key is not this key's public key".into(),
        ));
    }
    if leaf.is_ca {
        return Err(bad(
            "the first certificate is a CA certificate, not a signer's".into(),
        ));
    }
    for (i, pair) in chain.windows(2).enumerate() {
        let (_, c) = X509Certificate::from_der(&pair[0]).map_err(|e| bad(e.to_string()))?;
        let (_, p) = X509Certificate::from_der(&pair[1])
            .map_err(|e| bad(format!("certificate {}: {e}", i + 2)))?;
        if p.subject() != c.issuer() {
            return Err(bad(format!(
                "certificate {} is not the issuer of certificate {} (order the chain leaf first)",
                i + 2,
                i + 1
            )));
        }
        c.verify_signature(Some(p.public_key())).map_err(|_| {
            bad(format!(
                "certificate {} does not verify under certificate {}",
                i + 1,
                i + 2
            ))
        })?;
    }
    let (_, c) = X509Certificate::from_der(leaf_der).map_err(|e| bad(e.to_string()))?;
    if !c.validity().is_valid() {
        return Err(bad("the first certificate is not valid now".into()));
    }
    Ok(leaf)
}

/// rcgen rebuilds the issuer name from the parsed CA certificate; names it cannot
/// reproduce byte for byte (repeated attribute types such as `DC=…,DC=…`, multi-valued
/// RDNs, other string types) would make certificates whose issuer does not match the
/// CA's subject. Refuse such a CA certificate at import with a throwaway key.
fn check_issuer_name_round_trip(ca_cert_der: &[u8]) -> Result<(), BuildError> {
    let bad = |m: String| BuildError::BadCaCertificate(m);
    let ca = facts(ca_cert_der)?;
    let probe = std::panic::catch_unwind(|| -> Result<Vec<u8>, BuildError> {
        let throwaway = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let issuer = Issuer::from_ca_cert_der(&ca_cert_der.into(), &throwaway)?;
        let mut p = CertificateParams::default();
        p.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        Ok(p.signed_by(&throwaway, &issuer)?.der().to_vec())
    })
    .map_err(|_| bad("its subject name cannot be reproduced".into()))?
    .map_err(|e| bad(format!("its subject name cannot be reproduced: {e}")))?;
    if facts(&probe)?.issuer_der != ca.subject_der {
        return Err(bad(
            "its subject name uses an encoding this CA cannot reproduce exactly (repeated attribute types or multi-valued RDNs); issue it with a simpler subject".into(),
        ));
    }
    Ok(())
}

/// Issue a device certificate described by `spec` under the CA `ca_cert_der`.
pub fn device_certificate(
    spec: &CertSpec,
    serial: &[u8],
    ca_cert_der: &[u8],
    ca_key: &CaKey<'_>,
    crl_url: Option<&str>,
) -> Result<(Vec<u8>, CertFacts), BuildError> {
    let now = OffsetDateTime::now_utc();
    let ca = facts(ca_cert_der)?;
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(&spec.subject)?;
    p.serial_number = Some(SerialNumber::from_slice(serial));
    // Back-dated a little for devices with slightly slow clocks; never past the CA.
    p.not_before = now - Duration::minutes(5);
    p.not_after = (now + Duration::days(i64::from(spec.validity_days))).min(ca.not_after);
    p.is_ca = IsCa::ExplicitNoCa;
    p.use_authority_key_identifier_extension = true;
    p.key_identifier_method = KeyIdMethod::PreSpecified(key_id(&spec.spki_der)?);
    p.key_usages = spec
        .key_usage
        .iter()
        .map(|k| match k {
            KeyUsage::DigitalSignature => KeyUsagePurpose::DigitalSignature,
            KeyUsage::ContentCommitment => KeyUsagePurpose::ContentCommitment,
            KeyUsage::KeyEncipherment => KeyUsagePurpose::KeyEncipherment,
            KeyUsage::DataEncipherment => KeyUsagePurpose::DataEncipherment,
            KeyUsage::KeyAgreement => KeyUsagePurpose::KeyAgreement,
        })
        .collect();
    p.extended_key_usages = spec
        .extended_key_usage
        .iter()
        .map(|k| match k {
            ExtKeyUsage::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
            ExtKeyUsage::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
            ExtKeyUsage::CodeSigning => ExtendedKeyUsagePurpose::CodeSigning,
            ExtKeyUsage::EmailProtection => ExtendedKeyUsagePurpose::EmailProtection,
            ExtKeyUsage::TimeStamping => ExtendedKeyUsagePurpose::TimeStamping,
        })
        .collect();
    for d in &spec.dns_names {
        p.subject_alt_names.push(SanType::DnsName(
            d.as_str()
                .try_into()
                .map_err(|_| BuildError::Name(d.clone()))?,
        ));
    }
    for u in &spec.uris {
        p.subject_alt_names.push(SanType::URI(
            u.as_str()
                .try_into()
                .map_err(|_| BuildError::Name(u.clone()))?,
        ));
    }
    if let (true, Some(url)) = (spec.crl_distribution_point, crl_url) {
        p.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec![url.to_owned()],
        }];
    }
    let issuer = Issuer::from_ca_cert_der(&ca_cert_der.into(), ca_key)?;
    let subject = rcgen::SubjectPublicKeyInfo::from_der(&spec.spki_der)?;
    let der = p.signed_by(&subject, &issuer)?.der().to_vec();
    let leaf = facts(&der)?;
    if leaf.issuer_der != ca.subject_der {
        return Err(BuildError::BadCaCertificate(
            "the issued certificate's issuer does not match the CA's subject".into(),
        ));
    }
    Ok((der, leaf))
}

/// RFC 5280 reason codes accepted for revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::KeyCompromise => "key_compromise",
            Self::CaCompromise => "ca_compromise",
            Self::AffiliationChanged => "affiliation_changed",
            Self::Superseded => "superseded",
            Self::CessationOfOperation => "cessation_of_operation",
            Self::PrivilegeWithdrawn => "privilege_withdrawn",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Unspecified,
            Self::KeyCompromise,
            Self::CaCompromise,
            Self::AffiliationChanged,
            Self::Superseded,
            Self::CessationOfOperation,
            Self::PrivilegeWithdrawn,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }

    fn rcgen(self) -> RevocationReason {
        match self {
            Self::Unspecified => RevocationReason::Unspecified,
            Self::KeyCompromise => RevocationReason::KeyCompromise,
            Self::CaCompromise => RevocationReason::CaCompromise,
            Self::AffiliationChanged => RevocationReason::AffiliationChanged,
            Self::Superseded => RevocationReason::Superseded,
            Self::CessationOfOperation => RevocationReason::CessationOfOperation,
            Self::PrivilegeWithdrawn => RevocationReason::PrivilegeWithdrawn,
        }
    }
}

/// One revoked certificate for a CRL.
#[derive(Debug, Clone)]
pub struct RevokedEntry {
    pub serial: Vec<u8>,
    pub revoked_at: OffsetDateTime,
    pub reason: Reason,
}

/// A CRL (DER) for the CA, valid from now for `validity`.
pub fn crl(
    ca_cert_der: &[u8],
    ca_key: &CaKey<'_>,
    number: u64,
    revoked: &[RevokedEntry],
    validity: Duration,
) -> Result<Vec<u8>, BuildError> {
    let now = OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + validity,
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|r| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&r.serial),
                revocation_time: r.revoked_at,
                // RFC 5280 5.3.1: omit the extension rather than say "unspecified".
                reason_code: (r.reason != Reason::Unspecified).then(|| r.reason.rcgen()),
                invalidity_date: None,
            })
            .collect(),
        // The CRL's authorityKeyIdentifier must equal the CA certificate's SKI, however
        // that was computed (an external root may have used SHA-1).
        key_identifier_method: KeyIdMethod::PreSpecified(match ski(ca_cert_der)? {
            Some(id) => id,
            None => key_id(ca_key.spki_der())?,
        }),
    };
    let issuer = Issuer::from_ca_cert_der(&ca_cert_der.into(), ca_key)?;
    Ok(params.signed_by(&issuer)?.der().to_vec())
}

impl CaKey<'_> {
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    use p256::pkcs8::EncodePublicKey;

    pub(crate) fn software_ca_key(sk: &p256::ecdsa::SigningKey) -> CaKey<'_> {
        let spki = sk.verifying_key().to_public_key_der().unwrap();
        CaKey::new(CaKeyAlg::EcdsaP256Sha256, spki.as_bytes(), move |digest| {
            let sig: p256::ecdsa::Signature = sk.sign_prehash(digest).map_err(|e| e.to_string())?;
            Ok(sig.to_der().as_bytes().to_vec())
        })
        .unwrap()
    }

    #[test]
    fn root_and_device_chain_verify() {
        let sk = p256::ecdsa::SigningKey::random(&mut rand::thread_rng());
        let key = software_ca_key(&sk);
        let subject = CaSubject {
            common_name: "Test Root".into(),
            organization: Some("Acme".into()),
            organizational_unit: None,
            country: Some("DE".into()),
        };
        let root = root_certificate(&subject, 3650, &key).unwrap();
        let f = facts(&root).unwrap();
        assert!(f.is_ca && f.self_signed);

        let device = p256::ecdsa::SigningKey::random(&mut rand::thread_rng());
        let spec = CertSpec {
            device_id: "d1".into(),
            subject: vec![("CN".into(), "d1".into())],
            dns_names: vec!["d1.example".into()],
            uris: vec![],
            key_usage: vec![KeyUsage::DigitalSignature],
            extended_key_usage: vec![ExtKeyUsage::ClientAuth],
            validity_days: 30,
            crl_distribution_point: true,
            spki_der: device
                .verifying_key()
                .to_public_key_der()
                .unwrap()
                .into_vec(),
        };
        let serial = random_serial();
        let (cert, _) =
            device_certificate(&spec, &serial, &root, &key, Some("http://x/crl")).unwrap();
        let (_, c) = X509Certificate::from_der(&cert).unwrap();
        let (_, r) = X509Certificate::from_der(&root).unwrap();
        c.verify_signature(Some(r.public_key())).unwrap();
        assert_eq!(c.raw_serial(), serial);
        assert!(!f.subject.is_empty());

        let crl_der = crl(
            &root,
            &key,
            1,
            &[RevokedEntry {
                serial: serial.to_vec(),
                revoked_at: OffsetDateTime::now_utc(),
                reason: Reason::KeyCompromise,
            }],
            Duration::days(7),
        )
        .unwrap();
        let (_, parsed) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&crl_der).unwrap();
        assert_eq!(parsed.iter_revoked_certificates().count(), 1);
    }

    #[test]
    fn serials_are_positive_16_bytes() {
        for _ in 0..1000 {
            let s = random_serial();
            assert!(s[0] & 0x80 == 0 && s[0] != 0);
        }
    }

    /// Later serials sort after earlier ones (as hex, as the store keeps them), the
    /// random part is kept whole, and serials of one millisecond differ by it alone.
    #[test]
    fn serials_grow_with_time_and_keep_80_random_bits() {
        let now = 1_796_000_000_000_u64; // December 2026, in ms
        let r = [0xa5; 10];
        let earlier = serial_at(now, r);
        let later = serial_at(now + 1, [0; 10]);
        assert!(hex::encode(later) > hex::encode(earlier));
        assert_eq!(&earlier[6..], &r);
        assert_eq!(earlier[..6], serial_at(now, [0; 10])[..6]);
        assert_ne!(serial_at(now, [1; 10]), serial_at(now, [2; 10]));
        for ms in [0, now, (1u64 << 46) - 1] {
            let s = serial_at(ms, [0xff; 10]);
            assert_eq!(
                s[0] & 0xc0,
                0x40,
                "positive, no leading zero octet, at {ms}"
            );
        }
        // A fresh serial carries the present time.
        let fresh = random_serial();
        let mut t = [0u8; 8];
        t[2..].copy_from_slice(&fresh[..6]);
        t[2] &= 0x3f;
        assert!(u64::from_be_bytes(t) >= now);
    }
}
