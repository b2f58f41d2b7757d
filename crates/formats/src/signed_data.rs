//! The SignedData (RFC 5652, PKCS#7) that CMS, Authenticode and RFC 3161 tokens share:
//! DER helpers, signed attributes, the SignedData of one signer named by issuer and
//! serial number, and the checks of that signer. What differs between the formats (the
//! content, the signature algorithm, the certificates carried, the words of a refusal)
//! the callers pass in.

use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedAttributes, SignedData, SignerIdentifier,
    SignerInfo, SignerInfos,
};
use const_oid::db::{rfc5911, rfc5912};
use der::asn1::{OctetString, SetOfVec};
use der::{Any, Decode, Encode};
use influxion_core::key::HashAlg;
use influxion_core::{Digest, SignAlgorithm};
use spki::{AlgorithmIdentifierOwned, ObjectIdentifier};
use x509_cert::attr::Attribute;
use x509_cert::ext::pkix::SubjectKeyIdentifier;
use x509_cert::Certificate;

use crate::{FormatError, SignerKey};

/// The signature algorithms that name RSA PKCS#1 v1.5: rsaEncryption (signtool,
/// osslsigncode) or shaNWithRSAEncryption; the digest algorithm gives the hash.
pub(crate) const RSA_PKCS1: [ObjectIdentifier; 4] = [
    rfc5912::RSA_ENCRYPTION,
    rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
    rfc5912::SHA_384_WITH_RSA_ENCRYPTION,
    rfc5912::SHA_512_WITH_RSA_ENCRYPTION,
];

pub(crate) fn der_err(e: der::Error) -> FormatError {
    FormatError::Invalid(format!("CMS encoding: {e}"))
}

pub(crate) fn hash_oid(hash: HashAlg) -> ObjectIdentifier {
    match hash {
        HashAlg::Sha256 => rfc5912::ID_SHA_256,
        HashAlg::Sha384 => rfc5912::ID_SHA_384,
        HashAlg::Sha512 => rfc5912::ID_SHA_512,
    }
}

pub(crate) fn hash_of(oid: ObjectIdentifier) -> Option<HashAlg> {
    match oid {
        o if o == rfc5912::ID_SHA_256 => Some(HashAlg::Sha256),
        o if o == rfc5912::ID_SHA_384 => Some(HashAlg::Sha384),
        o if o == rfc5912::ID_SHA_512 => Some(HashAlg::Sha512),
        _ => None,
    }
}

/// A hash AlgorithmIdentifier with NULL parameters, as signtool, osslsigncode and
/// `openssl ts -query` write them.
pub(crate) fn hash_alg_with_null(hash: HashAlg) -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: hash_oid(hash),
        parameters: Some(Any::from(der::asn1::Null)),
    }
}

pub(crate) fn attribute(oid: ObjectIdentifier, value: Any) -> Result<Attribute, FormatError> {
    let mut values = SetOfVec::new();
    values.insert(value).map_err(der_err)?;
    Ok(Attribute { oid, values })
}

/// The first value of the attribute `oid` in `attrs`.
pub(crate) fn attr_value(attrs: &SignedAttributes, oid: ObjectIdentifier) -> Option<&Any> {
    attrs
        .iter()
        .find(|a| a.oid == oid)
        .and_then(|a| a.values.get(0))
}

/// Now, for a signingTime attribute: UTCTime through 2049, GeneralizedTime after
/// (RFC 5652 11.3). x509-cert's `Time::try_from(SystemTime)` always gives
/// GeneralizedTime, which osslsigncode, reading a UTCTime, rejects.
pub(crate) fn signing_time() -> Result<x509_cert::time::Time, FormatError> {
    use x509_cert::time::Time;
    let now = std::time::SystemTime::now();
    match der::asn1::UtcTime::from_system_time(now) {
        Ok(t) => Ok(Time::UtcTime(t)),
        Err(_) => Ok(Time::GeneralTime(
            der::asn1::GeneralizedTime::from_system_time(now).map_err(der_err)?,
        )),
    }
}

/// Signed attributes: content type, signing time (now), message digest and `extra`, in
/// DER SET OF order.
pub(crate) fn signed_attrs(
    content_type: ObjectIdentifier,
    message_digest: &[u8],
    extra: Vec<Attribute>,
) -> Result<SignedAttributes, FormatError> {
    let time = signing_time()?;
    let mut attrs = SignedAttributes::new();
    for a in [
        attribute(
            rfc5911::ID_CONTENT_TYPE,
            Any::encode_from(&content_type).map_err(der_err)?,
        )?,
        attribute(
            rfc5911::ID_SIGNING_TIME,
            Any::encode_from(&time).map_err(der_err)?,
        )?,
        attribute(
            rfc5911::ID_MESSAGE_DIGEST,
            Any::encode_from(&OctetString::new(message_digest).map_err(der_err)?)
                .map_err(der_err)?,
        )?,
    ]
    .into_iter()
    .chain(extra)
    {
        attrs.insert(a).map_err(der_err)?;
    }
    Ok(attrs)
}

/// The digest the signature covers: the DER of the signed attributes as a SET OF.
pub(crate) fn attrs_digest(
    attrs: &SignedAttributes,
    alg: SignAlgorithm,
) -> Result<Digest, FormatError> {
    let der = attrs.to_der().map_err(der_err)?;
    Digest::new(alg, crate::hash_bytes(alg.hash(), &der))
        .map_err(|e| FormatError::Invalid(e.to_string()))
}

/// The leaf of `key`'s chain, which must carry the key's public key. `format` names
/// the format that needs it, for the refusal.
pub(crate) fn leaf(key: &SignerKey, format: &str) -> Result<Certificate, FormatError> {
    let der = key.chain.first().ok_or_else(|| {
        FormatError::KeyUnfit(format!(
            "{format} carries the signer's certificate, and this key has none: give it one with \
             `influxion keys certificate NAME --chain chain.pem` or `keys certify NAME`"
        ))
    })?;
    let cert = Certificate::from_der(der)
        .map_err(|e| FormatError::KeyUnfit(format!("the key's certificate does not parse: {e}")))?;
    if !carries_key(&cert, key)? {
        return Err(FormatError::KeyUnfit(
            "the key's certificate is for another public key".into(),
        ));
    }
    Ok(cert)
}

fn carries_key(cert: &Certificate, key: &SignerKey) -> Result<bool, FormatError> {
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(der_err)?;
    Ok(spki == key.public_key_der)
}

pub(crate) fn issuer_and_serial(cert: &Certificate) -> SignerIdentifier {
    SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
        issuer: cert.tbs_certificate.issuer.clone(),
        serial_number: cert.tbs_certificate.serial_number.clone(),
    })
}

/// A SignedData (version 1) of one signer, `leaf`'s key, less the signature value.
pub(crate) struct SignedDataParts<'a> {
    pub(crate) leaf: &'a Certificate,
    /// The key's chain, leaf first.
    pub(crate) chain: &'a [Vec<u8>],
    /// Leave a self-signed root of `chain` out of the certificates.
    pub(crate) omit_root: bool,
    pub(crate) digest_alg: AlgorithmIdentifierOwned,
    pub(crate) signature_alg: AlgorithmIdentifierOwned,
    pub(crate) signed_attrs: SignedAttributes,
    pub(crate) content: EncapsulatedContentInfo,
    /// The unsigned attribute an RFC 3161 timestamp token goes under.
    pub(crate) timestamp_oid: ObjectIdentifier,
    /// The token, which must cover the signature value.
    pub(crate) timestamp: Option<&'a [u8]>,
}

impl SignedDataParts<'_> {
    /// The DER ContentInfo of the SignedData around `signature`.
    pub(crate) fn encode(self, signature: &[u8]) -> Result<Vec<u8>, FormatError> {
        let signer = SignerInfo {
            version: CmsVersion::V1,
            sid: issuer_and_serial(self.leaf),
            digest_alg: self.digest_alg.clone(),
            signed_attrs: Some(self.signed_attrs),
            signature_algorithm: self.signature_alg,
            signature: OctetString::new(signature).map_err(der_err)?,
            unsigned_attrs: crate::tsp::unsigned_attrs(
                self.timestamp_oid,
                self.timestamp,
                signature,
            )?,
        };
        let mut certs = SetOfVec::new();
        for (i, c) in self.chain.iter().enumerate() {
            let cert = Certificate::from_der(c).map_err(der_err)?;
            let tbs = &cert.tbs_certificate;
            if self.omit_root && i > 0 && tbs.subject == tbs.issuer {
                continue;
            }
            certs
                .insert(CertificateChoices::Certificate(cert))
                .map_err(der_err)?;
        }
        let mut digest_algs = SetOfVec::new();
        digest_algs.insert(self.digest_alg).map_err(der_err)?;
        let mut signers = SetOfVec::new();
        signers.insert(signer).map_err(der_err)?;
        // Version 1 also for Authenticode's content, which is not id-data: PKCS#7 v1.5.
        let sd = SignedData {
            version: CmsVersion::V1,
            digest_algorithms: digest_algs,
            encap_content_info: self.content,
            certificates: Some(CertificateSet(certs)),
            crls: None,
            signer_infos: SignerInfos(signers),
        };
        ContentInfo {
            content_type: rfc5911::ID_SIGNED_DATA,
            content: Any::encode_from(&sd).map_err(der_err)?,
        }
        .to_der()
        .map_err(der_err)
    }
}

/// The SignedData in `ci`; `not_signed_data` is the refusal of another content type,
/// `bad` words the refusals.
pub(crate) fn decode_signed_data(
    ci: &ContentInfo,
    not_signed_data: &str,
    bad: &dyn Fn(&str) -> FormatError,
) -> Result<SignedData, FormatError> {
    if ci.content_type != rfc5911::ID_SIGNED_DATA {
        return Err(bad(not_signed_data));
    }
    ci.content
        .decode_as()
        .map_err(|e| bad(&format!("SignedData does not parse ({e})")))
}

/// The certificate `sid` names among `sd`'s certificates.
pub(crate) fn signer_cert<'a>(
    sd: &'a SignedData,
    sid: &SignerIdentifier,
) -> Option<&'a Certificate> {
    sd.certificates.as_ref()?.0.iter().find_map(|c| {
        let CertificateChoices::Certificate(c) = c else {
            return None;
        };
        let tbs = &c.tbs_certificate;
        let matches = match sid {
            SignerIdentifier::IssuerAndSerialNumber(i) => {
                tbs.issuer == i.issuer && tbs.serial_number == i.serial_number
            }
            SignerIdentifier::SubjectKeyIdentifier(ski) => tbs
                .extensions
                .iter()
                .flatten()
                .filter(|e| e.extn_id == rfc5912::ID_CE_SUBJECT_KEY_IDENTIFIER)
                .any(|e| {
                    SubjectKeyIdentifier::from_der(e.extn_value.as_bytes()).is_ok_and(|k| k == *ski)
                }),
        };
        matches.then_some(c)
    })
}

/// Check that `signer` is named by issuer and serial number, that `sd` includes that
/// certificate and that it carries `key`'s public key. Returns what was checked.
pub(crate) fn check_signer_cert(
    sd: &SignedData,
    signer: &SignerInfo,
    key: &SignerKey,
    bad: &dyn Fn(&str) -> FormatError,
) -> Result<String, FormatError> {
    if !matches!(signer.sid, SignerIdentifier::IssuerAndSerialNumber(_)) {
        return Err(bad("the signer is not named by issuer and serial number"));
    }
    let cert = signer_cert(sd, &signer.sid)
        .ok_or_else(|| bad("the signer's certificate is not included"))?;
    if !carries_key(cert, key)? {
        return Err(bad(
            "the signer's certificate is not for the key's public key",
        ));
    }
    Ok(format!(
        "the signer's certificate ({}) carries the key's public key",
        cert.tbs_certificate.subject
    ))
}

/// `signer`'s signed attributes and its message-digest attribute, once its
/// content-type attribute is `content_type` (else the refusal `wrong_type`).
pub(crate) fn content_attrs<'a>(
    signer: &'a SignerInfo,
    content_type: ObjectIdentifier,
    wrong_type: &str,
    bad: &dyn Fn(&str) -> FormatError,
) -> Result<(&'a SignedAttributes, OctetString), FormatError> {
    let attrs = signer
        .signed_attrs
        .as_ref()
        .ok_or_else(|| bad("no signed attributes"))?;
    let ct: ObjectIdentifier = attr_value(attrs, rfc5911::ID_CONTENT_TYPE)
        .ok_or_else(|| bad("no content-type attribute"))?
        .decode_as()
        .map_err(|_| bad("the content-type attribute does not parse"))?;
    if ct != content_type {
        return Err(bad(wrong_type));
    }
    let md: OctetString = attr_value(attrs, rfc5911::ID_MESSAGE_DIGEST)
        .ok_or_else(|| bad("no message-digest attribute"))?
        .decode_as()
        .map_err(|_| bad("the message-digest attribute does not parse"))?;
    Ok((attrs, md))
}

/// Whether `signer`'s signature over `attrs` verifies with `key` as `alg`; one that
/// cannot be checked does not.
pub(crate) fn attrs_signature_verifies(
    key: &SignerKey,
    signer: &SignerInfo,
    attrs: &SignedAttributes,
    alg: SignAlgorithm,
) -> Result<bool, FormatError> {
    let digest = attrs_digest(attrs, alg)?;
    Ok(crate::signature_verifies(key, &digest, signer.signature.as_bytes()).unwrap_or(false))
}
