//! CMS (PKCS#7) detached SignedData (RFC 5652) with signed attributes: content type,
//! message digest and signing time, and the signer's certificate chain. The client
//! hashes the firmware and builds the signed attributes; the keyserver signs their
//! digest. `openssl cms -verify -binary -inform DER -content fw.bin` checks the output.
//!
//! ECDSA (P-256 with SHA-256, P-384 with SHA-384) and RSA (PKCS#1 v1.5 or PSS). Ed25519
//! is refused: CMS signs signed attributes with pure EdDSA (RFC 8419), while the
//! keyserver signs digests.

use std::path::Path;

use cms::content_info::ContentInfo;
use cms::signed_data::{EncapsulatedContentInfo, SignedAttributes};
use const_oid::db::{rfc5911, rfc5912};
use der::{Any, Decode};
use influxion_core::{Digest, KeyType, SignAlgorithm};
use spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;

use crate::signed_data::{
    attr_value, attrs_digest, check_signer_cert, content_attrs, der_err, hash_oid, SignedDataParts,
};
use crate::{FormatError, Prepared, SignerKey};

/// CMS detached SignedData, signed with `algorithm`.
pub struct Cms {
    pub algorithm: SignAlgorithm,
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
        let der = SignedDataParts {
            leaf: &self.leaf,
            chain: &self.chain,
            omit_root: false,
            digest_alg: AlgorithmIdentifierOwned {
                oid: hash_oid(self.algorithm.hash()),
                parameters: None,
            },
            signature_alg: signature_algorithm(self.algorithm)?,
            signed_attrs: self.signed_attrs,
            // Detached: the content is the file beside the signature.
            content: EncapsulatedContentInfo {
                econtent_type: rfc5911::ID_DATA,
                econtent: None,
            },
            // RFC 3161 appendix A: the timestamp of the signature value.
            timestamp_oid: crate::tsp::ID_AA_TIME_STAMP_TOKEN,
            timestamp: self.timestamp.as_deref(),
        }
        .encode(signature)?;
        crate::write_atomically(out, &der)
    }
}

fn check_key(key: &SignerKey, alg: SignAlgorithm) -> Result<(), FormatError> {
    if key.key_type == KeyType::Ed25519 {
        signature_algorithm(SignAlgorithm::EdDsa)?;
    }
    crate::check_allows(key, alg)
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
        let leaf = crate::signed_data::leaf(key, "CMS")?;
        signature_algorithm(self.algorithm)?;
        let content = crate::hash_reader(crate::open(input)?, self.algorithm, input, progress)?;
        let attrs = crate::signed_data::signed_attrs(rfc5911::ID_DATA, content.as_bytes(), vec![])?;
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
        let sd = crate::signed_data::decode_signed_data(&ci, "not SignedData", &bad)?;
        if sd.encap_content_info.econtent.is_some() {
            return Err(bad("the content is attached, not detached"));
        }
        let [signer] = sd.signer_infos.0.as_slice() else {
            return Err(bad("not exactly one signer"));
        };
        let mut checked = vec![check_signer_cert(&sd, signer, key, &bad)?];
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
        if signer.digest_alg.oid != hash_oid(alg.hash()) {
            return Err(bad(
                "the digest algorithm does not match the signature algorithm",
            ));
        }
        let (attrs, md) = content_attrs(
            signer,
            rfc5911::ID_DATA,
            "the content type is not id-data",
            &bad,
        )?;
        let actual = crate::hash_reader(crate::open(content)?, alg, content, progress)?;
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
        if !crate::signed_data::attrs_signature_verifies(key, signer, attrs, alg)? {
            return Err(bad(&format!(
                "the {alg} signature over the signed attributes does not verify"
            )));
        }
        checked.push(format!(
            "the {alg} signature over the signed attributes (content type, message digest{}) \
             verifies with the key's public key",
            if attr_value(attrs, rfc5911::ID_SIGNING_TIME).is_some() {
                ", signing time"
            } else {
                ""
            }
        ));
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
    use crate::tsp::test_tsa::Public;
    use crate::Format;
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    use p256::pkcs8::EncodePublicKey;

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
