//! CMS (PKCS#7) detached SignedData (RFC 5652) with signed attributes: content type,
//! message digest and signing time, and the signer's certificate chain. The client
//! hashes the firmware and builds the signed attributes; the keyserver signs their
//! digest. `openssl cms -verify -binary -inform DER -content fw.bin` checks the output.
//!
//! ECDSA (P-256 with SHA-256, P-384 with SHA-384) and RSA (PKCS#1 v1.5 or PSS). Ed25519
//! is refused: CMS signs signed attributes with pure EdDSA (RFC 8419), while the
//! keyserver signs digests.

use std::path::Path;

use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedAttributes, SignedData, SignerIdentifier,
    SignerInfo, SignerInfos,
};
use const_oid::db::{rfc5911, rfc5912};
use der::asn1::{OctetString, SetOfVec};
use der::{Any, Decode, Encode};
use influxion_core::{Digest, KeyType, SignAlgorithm};
use spki::{AlgorithmIdentifierOwned, ObjectIdentifier};
use x509_cert::attr::Attribute;
use x509_cert::Certificate;

use crate::{FormatError, Prepared, SignerKey};

/// CMS detached SignedData, signed with `algorithm`.
pub struct Cms {
    pub algorithm: SignAlgorithm,
}

pub(crate) fn der_err(e: der::Error) -> FormatError {
    FormatError::Invalid(format!("CMS encoding: {e}"))
}

pub(crate) fn digest_oid(alg: SignAlgorithm) -> ObjectIdentifier {
    match alg.hash() {
        influxion_core::key::HashAlg::Sha256 => rfc5912::ID_SHA_256,
        influxion_core::key::HashAlg::Sha384 => rfc5912::ID_SHA_384,
        influxion_core::key::HashAlg::Sha512 => rfc5912::ID_SHA_512,
    }
}

/// The signatureAlgorithm of a SignerInfo for `alg`; EdDSA is refused (see above).
fn signature_algorithm(alg: SignAlgorithm) -> Result<AlgorithmIdentifierOwned, FormatError> {
    let null = || Some(Any::from(der::asn1::Null));
    let pss = |params: Result<Any, der::Error>| -> Result<AlgorithmIdentifierOwned, FormatError> {
        Ok(AlgorithmIdentifierOwned {
            oid: rfc5912::ID_RSASSA_PSS,
            parameters: Some(params.map_err(der_err)?),
        })
    };
    use rsa::pkcs1::RsaPssParams;
    Ok(match alg {
        SignAlgorithm::Es256 => AlgorithmIdentifierOwned {
            oid: rfc5912::ECDSA_WITH_SHA_256,
            parameters: None,
        },
        SignAlgorithm::Es384 => AlgorithmIdentifierOwned {
            oid: rfc5912::ECDSA_WITH_SHA_384,
            parameters: None,
        },
        SignAlgorithm::Rs256 => AlgorithmIdentifierOwned {
            oid: rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
            parameters: null(),
        },
        SignAlgorithm::Rs384 => AlgorithmIdentifierOwned {
            oid: rfc5912::SHA_384_WITH_RSA_ENCRYPTION,
            parameters: null(),
        },
        SignAlgorithm::Rs512 => AlgorithmIdentifierOwned {
            oid: rfc5912::SHA_512_WITH_RSA_ENCRYPTION,
            parameters: null(),
        },
        // The keyserver's PSS: MGF1 with the same hash, salt as long as the hash.
        SignAlgorithm::Ps256 => pss(Any::encode_from(&RsaPssParams::new::<rsa::sha2::Sha256>(
            32,
        )))?,
        SignAlgorithm::Ps384 => pss(Any::encode_from(&RsaPssParams::new::<rsa::sha2::Sha384>(
            48,
        )))?,
        SignAlgorithm::Ps512 => pss(Any::encode_from(&RsaPssParams::new::<rsa::sha2::Sha512>(
            64,
        )))?,
        SignAlgorithm::EdDsa => {
            return Err(FormatError::KeyUnfit(
                "CMS signs with Ed25519 over the signed attributes themselves (RFC 8419), \
                 and the keyserver signs digests: use an ECDSA or RSA key for CMS"
                    .into(),
            ))
        }
    })
}

pub(crate) fn attribute(oid: ObjectIdentifier, value: Any) -> Result<Attribute, FormatError> {
    let mut values = SetOfVec::new();
    values.insert(value).map_err(der_err)?;
    Ok(Attribute { oid, values })
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
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(der_err)?;
    if spki != key.public_key_der {
        return Err(FormatError::KeyUnfit(
            "the key's certificate is for another public key".into(),
        ));
    }
    Ok(cert)
}

struct PreparedCms {
    algorithm: SignAlgorithm,
    to_sign: Digest,
    signed_attrs: SignedAttributes,
    leaf: Certificate,
    chain: Vec<Vec<u8>>,
    /// An RFC 3161 timestamp token over the signature, for the unsigned attributes.
    timestamp: Option<Vec<u8>>,
}

impl Prepared for PreparedCms {
    fn to_sign(&self) -> &Digest {
        &self.to_sign
    }

    fn set_timestamp(&mut self, token: Vec<u8>) -> Result<(), FormatError> {
        crate::tsp::check_shape(&token)?;
        self.timestamp = Some(token);
        Ok(())
    }

    fn assemble(self: Box<Self>, signature: &[u8], out: &Path) -> Result<(), FormatError> {
        let digest_alg = AlgorithmIdentifierOwned {
            oid: digest_oid(self.algorithm),
            parameters: None,
        };
        let signer = SignerInfo {
            version: CmsVersion::V1,
            sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
                issuer: self.leaf.tbs_certificate.issuer.clone(),
                serial_number: self.leaf.tbs_certificate.serial_number.clone(),
            }),
            digest_alg: digest_alg.clone(),
            signed_attrs: Some(self.signed_attrs),
            signature_algorithm: signature_algorithm(self.algorithm)?,
            signature: OctetString::new(signature).map_err(der_err)?,
            // RFC 3161 appendix A: the timestamp of the signature value.
            unsigned_attrs: crate::tsp::unsigned_attrs(
                crate::tsp::ID_AA_TIME_STAMP_TOKEN,
                self.timestamp.as_deref(),
                signature,
            )?,
        };
        let mut certs = SetOfVec::new();
        for c in &self.chain {
            let cert = Certificate::from_der(c).map_err(der_err)?;
            certs
                .insert(CertificateChoices::Certificate(cert))
                .map_err(der_err)?;
        }
        let mut digest_algs = SetOfVec::new();
        digest_algs.insert(digest_alg).map_err(der_err)?;
        let mut signers = SetOfVec::new();
        signers.insert(signer).map_err(der_err)?;
        let sd = SignedData {
            version: CmsVersion::V1,
            digest_algorithms: digest_algs,
            encap_content_info: EncapsulatedContentInfo {
                econtent_type: rfc5911::ID_DATA,
                econtent: None,
            },
            certificates: Some(CertificateSet(certs)),
            crls: None,
            signer_infos: SignerInfos(signers),
        };
        let ci = ContentInfo {
            content_type: rfc5911::ID_SIGNED_DATA,
            content: Any::encode_from(&sd).map_err(der_err)?,
        };
        let der = ci.to_der().map_err(der_err)?;
        std::fs::write(out, der).map_err(|e| FormatError::io(out, e))
    }
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

/// The digest the signature covers: the DER of the signed attributes as a SET OF.
pub(crate) fn attrs_digest(
    attrs: &SignedAttributes,
    alg: SignAlgorithm,
) -> Result<Digest, FormatError> {
    let der = attrs.to_der().map_err(der_err)?;
    let mut h = crate::Hasher::new(alg.hash());
    h.update(&der);
    Digest::new(alg, h.finish()).map_err(|e| FormatError::Invalid(e.to_string()))
}

fn check_key(key: &SignerKey, alg: SignAlgorithm) -> Result<(), FormatError> {
    if key.key_type == KeyType::Ed25519 {
        signature_algorithm(SignAlgorithm::EdDsa)?;
    }
    if !key.key_type.allows(alg) {
        return Err(FormatError::KeyUnfit(format!(
            "a {} key cannot sign with {alg}",
            key.key_type
        )));
    }
    Ok(())
}

impl crate::Format for Cms {
    fn name(&self) -> &'static str {
        "cms"
    }

    fn prepare(
        &self,
        input: &Path,
        key: &SignerKey,
        progress: &dyn Fn(u64),
    ) -> Result<Box<dyn Prepared>, FormatError> {
        check_key(key, self.algorithm)?;
        let leaf = leaf(key, "CMS")?;
        signature_algorithm(self.algorithm)?;
        let file = std::fs::File::open(input).map_err(|e| FormatError::io(input, e))?;
        let content = crate::hash_reader(file, self.algorithm, input, progress)?;
        let time = signing_time()?;
        let mut attrs = SignedAttributes::new();
        for a in [
            attribute(
                rfc5911::ID_CONTENT_TYPE,
                Any::encode_from(&rfc5911::ID_DATA).map_err(der_err)?,
            )?,
            attribute(
                rfc5911::ID_SIGNING_TIME,
                Any::encode_from(&time).map_err(der_err)?,
            )?,
            attribute(
                rfc5911::ID_MESSAGE_DIGEST,
                Any::encode_from(&OctetString::new(content.as_bytes()).map_err(der_err)?)
                    .map_err(der_err)?,
            )?,
        ] {
            attrs.insert(a).map_err(der_err)?;
        }
        let to_sign = attrs_digest(&attrs, self.algorithm)?;
        Ok(Box::new(PreparedCms {
            algorithm: self.algorithm,
            to_sign,
            signed_attrs: attrs,
            leaf,
            chain: key.chain.clone(),
            timestamp: None,
        }))
    }

    fn verify(
        &self,
        signed: &Path,
        content: Option<&Path>,
        key: &SignerKey,
        progress: &dyn Fn(u64),
    ) -> Result<Vec<String>, FormatError> {
        let content = content
            .ok_or_else(|| FormatError::Invalid("detached CMS needs the signed file".into()))?;
        let der = std::fs::read(signed).map_err(|e| FormatError::io(signed, e))?;
        let bad = |what: &str| FormatError::Verify(format!("{}: {what}", signed.display()));
        let ci = ContentInfo::from_der(&der).map_err(|e| bad(&format!("not CMS ({e})")))?;
        if ci.content_type != rfc5911::ID_SIGNED_DATA {
            return Err(bad("not SignedData"));
        }
        let sd: SignedData = ci
            .content
            .decode_as()
            .map_err(|e| bad(&format!("SignedData does not parse ({e})")))?;
        if sd.encap_content_info.econtent.is_some() {
            return Err(bad("the content is attached, not detached"));
        }
        let [signer] = sd.signer_infos.0.as_slice() else {
            return Err(bad("not exactly one signer"));
        };
        let mut checked = Vec::new();
        // The signer's certificate: the one its identifier names, with the key's
        // public key.
        let SignerIdentifier::IssuerAndSerialNumber(sid) = &signer.sid else {
            return Err(bad("the signer is not named by issuer and serial number"));
        };
        let cert = sd
            .certificates
            .as_ref()
            .and_then(|cs| {
                cs.0.iter().find_map(|c| match c {
                    CertificateChoices::Certificate(c)
                        if c.tbs_certificate.issuer == sid.issuer
                            && c.tbs_certificate.serial_number == sid.serial_number =>
                    {
                        Some(c)
                    }
                    _ => None,
                })
            })
            .ok_or_else(|| bad("the signer's certificate is not included"))?;
        let spki = cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(der_err)?;
        if spki != key.public_key_der {
            return Err(bad(
                "the signer's certificate is not for the key's public key",
            ));
        }
        checked.push(format!(
            "the signer's certificate ({}) carries the key's public key",
            cert.tbs_certificate.subject
        ));
        let alg = match (key.key_type, signer.signature_algorithm.oid) {
            (_, o) if o == rfc5912::ECDSA_WITH_SHA_256 => SignAlgorithm::Es256,
            (_, o) if o == rfc5912::ECDSA_WITH_SHA_384 => SignAlgorithm::Es384,
            (_, o) if o == rfc5912::SHA_256_WITH_RSA_ENCRYPTION => SignAlgorithm::Rs256,
            (_, o) if o == rfc5912::SHA_384_WITH_RSA_ENCRYPTION => SignAlgorithm::Rs384,
            (_, o) if o == rfc5912::SHA_512_WITH_RSA_ENCRYPTION => SignAlgorithm::Rs512,
            (_, o) if o == rfc5912::ID_RSASSA_PSS => match signer.digest_alg.oid {
                d if d == rfc5912::ID_SHA_256 => SignAlgorithm::Ps256,
                d if d == rfc5912::ID_SHA_384 => SignAlgorithm::Ps384,
                _ => SignAlgorithm::Ps512,
            },
            (_, o) => {
                return Err(bad(&format!(
                    "signature algorithm {o} is not one Influxion makes"
                )))
            }
        };
        if signer.digest_alg.oid != digest_oid(alg) {
            return Err(bad(
                "the digest algorithm does not match the signature algorithm",
            ));
        }
        let attrs = signer
            .signed_attrs
            .as_ref()
            .ok_or_else(|| bad("no signed attributes"))?;
        let find = |oid: ObjectIdentifier| {
            attrs
                .iter()
                .find(|a| a.oid == oid)
                .and_then(|a| a.values.get(0))
        };
        let ct: ObjectIdentifier = find(rfc5911::ID_CONTENT_TYPE)
            .ok_or_else(|| bad("no content-type attribute"))?
            .decode_as()
            .map_err(|_| bad("the content-type attribute does not parse"))?;
        if ct != rfc5911::ID_DATA {
            return Err(bad("the content type is not id-data"));
        }
        let md: OctetString = find(rfc5911::ID_MESSAGE_DIGEST)
            .ok_or_else(|| bad("no message-digest attribute"))?
            .decode_as()
            .map_err(|_| bad("the message-digest attribute does not parse"))?;
        let file = std::fs::File::open(content).map_err(|e| FormatError::io(content, e))?;
        let actual = crate::hash_reader(file, alg, content, progress)?;
        if md.as_bytes() != actual.as_bytes() {
            return Err(FormatError::Verify(format!(
                "the message digest in {} is not the {} of {}",
                signed.display(),
                alg.hash().as_str(),
                content.display()
            )));
        }
        checked.push(format!(
            "the message digest is the {} of {} ({})",
            alg.hash().as_str(),
            content.display(),
            hex::encode(actual.as_bytes())
        ));
        let digest = attrs_digest(attrs, alg)?;
        match influxion_verify::verify(key.key_type, &key.public_key_der, &digest, signer.signature.as_bytes()) {
            Ok(true) => checked.push(format!(
                "the {alg} signature over the signed attributes (content type, message digest{}) verifies with the key's public key",
                if find(rfc5911::ID_SIGNING_TIME).is_some() { ", signing time" } else { "" }
            )),
            _ => return Err(bad(&format!("the {alg} signature over the signed attributes does not verify"))),
        }
        if let Some(ts) =
            crate::tsp::find(signer, crate::tsp::ID_AA_TIME_STAMP_TOKEN).map_err(|e| bad(&e))?
        {
            checked.push(ts.to_string());
        }
        checked.push(format!(
            "{} certificate(s) included; the chain is not checked against a trust anchor here (openssl cms -verify -CAfile does)",
            sd.certificates.map(|c| c.0.len()).unwrap_or(0)
        ));
        Ok(checked)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::Format;
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    use p256::pkcs8::EncodePublicKey;

    struct Public(Vec<u8>);

    impl rcgen::PublicKeyData for Public {
        fn der_bytes(&self) -> &[u8] {
            &self.0
        }

        fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
            &rcgen::PKCS_ECDSA_P256_SHA256
        }
    }

    /// A P-256 key with a self-made chain: a leaf issued by a test root.
    fn signer() -> (p256::ecdsa::SigningKey, SignerKey) {
        let key = p256::ecdsa::SigningKey::from_slice(&[5u8; 32]).unwrap();
        let root_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut root = rcgen::CertificateParams::new(vec![]).unwrap();
        root.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root_cert = root.self_signed(&root_key).unwrap();
        let issuer = rcgen::Issuer::new(root, root_key);
        let point = key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        let leaf = rcgen::CertificateParams::new(vec![])
            .unwrap()
            .signed_by(&Public(point), &issuer)
            .unwrap();
        let signer = SignerKey {
            key_type: KeyType::EcP256,
            public_key_der: key
                .verifying_key()
                .to_public_key_der()
                .unwrap()
                .as_bytes()
                .to_vec(),
            chain: vec![leaf.der().to_vec(), root_cert.der().to_vec()],
        };
        (key, signer)
    }

    #[test]
    fn a_timestamp_is_embedded_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let content = dir.path().join("fw.bin");
        std::fs::write(&content, b"firmware").unwrap();
        let out = dir.path().join("fw.bin.p7s");
        let (key, signer) = signer();
        let cms = Cms {
            algorithm: SignAlgorithm::Es256,
        };
        let mut prepared = cms.prepare(&content, &signer, &|_| {}).unwrap();
        let sig: p256::ecdsa::Signature = key.sign_prehash(prepared.to_sign().as_bytes()).unwrap();
        let sig = sig.to_der().as_bytes().to_vec();
        let token = crate::tsp::test_tsa::token_over(influxion_core::key::HashAlg::Sha256, &sig);
        prepared.set_timestamp(token).unwrap();
        prepared.assemble(&sig, &out).unwrap();
        let checks = cms.verify(&out, Some(&content), &signer, &|_| {}).unwrap();
        assert!(
            checks.iter().any(|c| c.starts_with(
                "RFC 3161 timestamp by CN=Influxion test TSA at 2025-01-02T03:04:05.5Z"
            )),
            "{checks:#?}"
        );
        // Without a timestamp, no such line.
        let prepared = cms.prepare(&content, &signer, &|_| {}).unwrap();
        let sig: p256::ecdsa::Signature = key.sign_prehash(prepared.to_sign().as_bytes()).unwrap();
        prepared.assemble(sig.to_der().as_bytes(), &out).unwrap();
        let checks = cms.verify(&out, Some(&content), &signer, &|_| {}).unwrap();
        assert!(
            !checks.iter().any(|c| c.contains("RFC 3161")),
            "{checks:#?}"
        );
    }

    #[test]
    fn raw_signatures_carry_no_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        let content = dir.path().join("fw.bin");
        std::fs::write(&content, b"firmware").unwrap();
        let (_, signer) = signer();
        let mut prepared = crate::raw::Raw {
            algorithm: SignAlgorithm::Es256,
        }
        .prepare(&content, &signer, &|_| {})
        .unwrap();
        let err = prepared.set_timestamp(vec![0x30, 0]).unwrap_err();
        assert!(
            matches!(&err, FormatError::Invalid(m) if m.contains("carries no timestamp")),
            "{err}"
        );
    }
}
