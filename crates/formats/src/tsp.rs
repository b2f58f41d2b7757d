//! RFC 3161 timestamps: the request the CLI sends a Time-Stamping Authority (TSA), the
//! checks of its answer, and the checks of a token embedded in a signature. The token's
//! message imprint is the hash of a SignerInfo's signature value, so it proves the
//! signature existed at the TSA's time: what `signtool sign /tr`, `osslsigncode -ts`
//! and RFC 3161 appendix A (CMS) embed as an unsigned attribute. No HTTP here: the
//! CLI posts the request.

use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerInfo, UnsignedAttributes};
use const_oid::db::{rfc5911, rfc5912};
use der::asn1::{AnyRef, BitString, Int, OctetString, SetOfVec};
use der::{Any, Decode, Encode, Reader, Tag, TagNumber, Tagged};
use influxion_core::key::HashAlg;
use spki::{AlgorithmIdentifierOwned, ObjectIdentifier};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::Extensions;
use x509_cert::Certificate;

use crate::signed_data::{
    attr_value, attribute, der_err, hash_alg_with_null, hash_of, signer_cert, RSA_PKCS1,
};
use crate::{hash_bytes, FormatError};

/// The largest TSA answer taken: a token with a certificate chain is a few kilobytes.
pub const MAX_RESPONSE: usize = 64 * 1024;

/// id-ct-TSTInfo, the content type of a timestamp token (RFC 3161 2.4.2).
const ID_CT_TST_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.1.4");
/// id-aa-timeStampToken: the unsigned attribute of a CMS SignerInfo (RFC 3161 appendix A).
pub const ID_AA_TIME_STAMP_TOKEN: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.2.14");
/// SPC_RFC3161_OBJID: the unsigned attribute signtool /tr and osslsigncode -ts write.
pub const SPC_RFC3161: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.3.3.1");

#[derive(Clone, Debug, Eq, PartialEq, der::Sequence)]
struct MessageImprint {
    hash_algorithm: AlgorithmIdentifierOwned,
    hashed_message: OctetString,
}

#[derive(Clone, Debug, Eq, PartialEq, der::Sequence)]
struct TimeStampReq {
    version: u8,
    message_imprint: MessageImprint,
    #[asn1(optional = "true")]
    req_policy: Option<ObjectIdentifier>,
    #[asn1(optional = "true")]
    nonce: Option<Int>,
    #[asn1(default = "Default::default")]
    cert_req: bool,
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", optional = "true")]
    extensions: Option<Extensions>,
}

/// PKIStatusInfo (RFC 3161 2.4.2), defined here: cmpv2 0.2's failInfo flags (what
/// x509-tsp 0.1 uses) are masks, not bit numbers, and refuse most failInfo values.
#[derive(Clone, Debug, Eq, PartialEq, der::Sequence)]
struct PkiStatusInfo {
    status: u32,
    #[asn1(optional = "true")]
    status_string: Option<Vec<String>>,
    #[asn1(optional = "true")]
    fail_info: Option<BitString>,
}

/// The token is kept as it came (`Any`): it is embedded byte for byte.
#[derive(Clone, Debug, Eq, PartialEq, der::Sequence)]
struct TimeStampResp {
    status: PkiStatusInfo,
    #[asn1(optional = "true")]
    time_stamp_token: Option<Any>,
}

#[derive(Clone, Debug, Eq, PartialEq, der::Sequence)]
struct Accuracy {
    #[asn1(optional = "true")]
    seconds: Option<Int>,
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", optional = "true")]
    millis: Option<Int>,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    micros: Option<Int>,
}

#[derive(Clone, Debug, Eq, PartialEq, der::Sequence)]
struct TstInfo {
    version: u8,
    policy: ObjectIdentifier,
    message_imprint: MessageImprint,
    serial_number: Int,
    /// A GeneralizedTime, read raw: der's type refuses the fractional seconds TSAs write.
    gen_time: Any,
    #[asn1(optional = "true")]
    accuracy: Option<Accuracy>,
    #[asn1(default = "Default::default")]
    ordering: bool,
    #[asn1(optional = "true")]
    nonce: Option<Int>,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    tsa: Option<GeneralName>,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    extensions: Option<Extensions>,
}

/// A DER TimeStampReq for the `hash` of `signature` (a SignerInfo's signature value),
/// with `nonce`, asking for the TSA's certificate in the token. The hash algorithm has
/// NULL parameters, as `openssl ts -query` writes them.
pub fn request(hash: HashAlg, signature: &[u8], nonce: u64) -> Result<Vec<u8>, FormatError> {
    let enc = |e: der::Error| FormatError::Invalid(format!("timestamp request encoding: {e}"));
    TimeStampReq {
        version: 1,
        message_imprint: MessageImprint {
            hash_algorithm: hash_alg_with_null(hash),
            hashed_message: OctetString::new(hash_bytes(hash, signature)).map_err(enc)?,
        },
        req_policy: None,
        // An unsigned INTEGER encoding is a valid (positive) signed one.
        nonce: Some(Int::from_der(&nonce.to_der().map_err(enc)?).map_err(enc)?),
        cert_req: true,
        extensions: None,
    }
    .to_der()
    .map_err(enc)
}

/// The PKIStatus names of RFC 3161 2.4.2.
fn status_name(status: u32) -> &'static str {
    match status {
        0 => "granted",
        1 => "grantedWithMods",
        2 => "rejection",
        3 => "waiting",
        4 => "revocationWarning",
        5 => "revocationNotification",
        _ => "unknown status",
    }
}

/// The PKIFailureInfo bits set, by their RFC 3161 names.
fn fail_names(bits: &BitString) -> Vec<String> {
    bits.bits()
        .enumerate()
        .filter(|(_, set)| *set)
        .map(|(i, _)| match i {
            0 => "badAlg".to_owned(),
            2 => "badRequest".to_owned(),
            5 => "badDataFormat".to_owned(),
            14 => "timeNotAvailable".to_owned(),
            15 => "unacceptedPolicy".to_owned(),
            16 => "unacceptedExtension".to_owned(),
            17 => "addInfoNotAvailable".to_owned(),
            25 => "systemFailure".to_owned(),
            n => format!("bit {n}"),
        })
        .collect()
}

/// The timestamp token in a DER TimeStampResp answering `request` (from [`request`]):
/// the status must grant it, and its TSTInfo must carry the request's imprint and
/// nonce and be signed by the TSA certificate it includes. Returns the token (a
/// ContentInfo) as the TSA encoded it, to be embedded unchanged.
pub fn token_from_response(response: &[u8], request: &[u8]) -> Result<Vec<u8>, FormatError> {
    let invalid = |what: String| FormatError::Invalid(format!("the TSA's answer {what}"));
    if response.len() > MAX_RESPONSE {
        return Err(invalid(format!(
            "is {} bytes, more than the {} KiB a timestamp takes",
            response.len(),
            MAX_RESPONSE / 1024
        )));
    }
    let req = TimeStampReq::from_der(request)
        .map_err(|e| FormatError::Invalid(format!("the timestamp request does not parse ({e})")))?;
    let resp = TimeStampResp::from_der(response)
        .map_err(|e| invalid(format!("is not an RFC 3161 TimeStampResp ({e})")))?;
    let status = &resp.status;
    if status.status > 1 {
        let mut why = format!(
            "refuses the request: PKIStatus {} ({})",
            status_name(status.status),
            status.status
        );
        if let Some(bits) = &status.fail_info {
            why.push_str(&format!(", failInfo {}", fail_names(bits).join(", ")));
        }
        if let Some(text) = &status.status_string {
            // The TSA's words, shown as text: no control characters reach the terminal.
            let text: String = text
                .join("; ")
                .chars()
                .filter(|c| !c.is_control())
                .collect();
            why.push_str(&format!(": {text:?}"));
        }
        return Err(invalid(why));
    }
    let token = resp
        .time_stamp_token
        .ok_or_else(|| invalid("grants the request but carries no timestamp token".into()))?;
    let der = token
        .to_der()
        .map_err(|e| invalid(format!("has a token that does not encode ({e})")))?;
    let parsed = parse_token(&der).map_err(|e| invalid(format!("has a token that {e}")))?;
    let (asked, got) = (&req.message_imprint, &parsed.tst.message_imprint);
    if asked.hash_algorithm.oid != got.hash_algorithm.oid
        || asked.hashed_message != got.hashed_message
    {
        return Err(invalid(
            "is a timestamp of another message imprint than the one asked for".into(),
        ));
    }
    if req.nonce != parsed.tst.nonce {
        return Err(invalid(
            "does not carry the request's nonce: a replayed or mixed-up answer".into(),
        ));
    }
    tsa_signature(&der, &parsed).map_err(|e| invalid(format!("has a token that {e}")))?;
    Ok(der)
}

/// What the checks of an embedded timestamp found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timestamp {
    /// The TSA: its certificate's subject, else the TSTInfo's tsa name.
    pub tsa: String,
    /// genTime, as `YYYY-MM-DDTHH:MM:SS[.f]Z`.
    pub time: String,
    /// The imprint's hash.
    pub hash: HashAlg,
    /// How the TSA's signature was checked, or why it was not.
    pub tsa_signature: String,
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RFC 3161 timestamp by {} at {} over the signature: its {} imprint is the \
             signature value's, {}; the TSA's chain is not checked against a trust anchor here",
            self.tsa,
            self.time,
            self.hash.as_str(),
            self.tsa_signature
        )
    }
}

/// Check a timestamp token against the `signature` value it should cover: its TSTInfo,
/// its imprint and the TSA's signature. Errors say which check failed.
pub fn check_token(token: &[u8], signature: &[u8]) -> Result<Timestamp, String> {
    let parsed = parse_token(token)?;
    let imprint = &parsed.tst.message_imprint;
    let hash = hash_of(imprint.hash_algorithm.oid).ok_or_else(|| {
        format!(
            "has an imprint hashed with {}, not SHA-2",
            imprint.hash_algorithm.oid
        )
    })?;
    if imprint.hashed_message.as_bytes() != hash_bytes(hash, signature).as_slice() {
        return Err(format!(
            "is over another signature: its {} imprint is not the signature value's",
            hash.as_str()
        ));
    }
    let (cert, checked) = tsa_signature(token, &parsed)?;
    let tsa = match (cert, &parsed.tst.tsa) {
        (Some(c), _) => c.tbs_certificate.subject.to_string(),
        (None, Some(GeneralName::DirectoryName(n))) => n.to_string(),
        _ => "an unnamed TSA".to_owned(),
    };
    Ok(Timestamp {
        tsa,
        time: gen_time(&parsed.tst.gen_time)?,
        hash,
        tsa_signature: checked,
    })
}

/// The unsigned attributes carrying `token` (under `oid`) for a SignerInfo whose
/// signature value is `signature`; the token must cover that signature.
pub(crate) fn unsigned_attrs(
    oid: ObjectIdentifier,
    token: Option<&[u8]>,
    signature: &[u8],
) -> Result<Option<UnsignedAttributes>, FormatError> {
    let Some(token) = token else {
        return Ok(None);
    };
    check_token(token, signature)
        .map_err(|e| FormatError::Invalid(format!("the timestamp token {e}")))?;
    let value = Any::from_der(token).map_err(der_err)?;
    let mut attrs = SetOfVec::new();
    attrs.insert(attribute(oid, value)?).map_err(der_err)?;
    Ok(Some(attrs))
}

/// The timestamp under `oid` in `signer`'s unsigned attributes, checked against its
/// signature value; `None` when there is none.
pub(crate) fn find(
    signer: &SignerInfo,
    oid: ObjectIdentifier,
) -> Result<Option<Timestamp>, String> {
    let Some(value) = signer
        .unsigned_attrs
        .as_ref()
        .and_then(|attrs| attrs.iter().find(|a| a.oid == oid))
        .map(|a| a.values.iter().collect::<Vec<_>>())
    else {
        return Ok(None);
    };
    let [token] = value.as_slice() else {
        return Err("the timestamp attribute does not hold exactly one token".into());
    };
    let der = token
        .to_der()
        .map_err(|e| format!("the timestamp token does not encode ({e})"))?;
    check_token(&der, signer.signature.as_bytes())
        .map(Some)
        .map_err(|e| format!("the RFC 3161 timestamp token {e}"))
}

/// Check a token before it is kept: it must at least be a timestamp token.
pub(crate) fn check_shape(token: &[u8]) -> Result<(), FormatError> {
    parse_token(token)
        .map(|_| ())
        .map_err(|e| FormatError::Invalid(format!("the timestamp token {e}")))
}

struct Token {
    sd: SignedData,
    tst: TstInfo,
    /// The DER of the TSTInfo, which the TSA's messageDigest covers.
    tst_der: Vec<u8>,
}

/// A ContentInfo SignedData holding a TSTInfo, signed by one signer (the TSA).
fn parse_token(der: &[u8]) -> Result<Token, String> {
    let ci = ContentInfo::from_der(der).map_err(|e| format!("is not CMS ({e})"))?;
    if ci.content_type != rfc5911::ID_SIGNED_DATA {
        return Err("is not SignedData".into());
    }
    let sd: SignedData = ci
        .content
        .decode_as()
        .map_err(|e| format!("is not SignedData ({e})"))?;
    if sd.encap_content_info.econtent_type != ID_CT_TST_INFO {
        return Err("does not hold a TSTInfo".into());
    }
    let octets: OctetString = sd
        .encap_content_info
        .econtent
        .as_ref()
        .ok_or("has no TSTInfo content")?
        .decode_as()
        .map_err(|e| format!("has TSTInfo content that is not an OCTET STRING ({e})"))?;
    let tst_der = octets.into_bytes();
    let tst = TstInfo::from_der(&tst_der)
        .map_err(|e| format!("has a TSTInfo that does not parse ({e})"))?;
    if tst.version != 1 {
        return Err(format!("has TSTInfo version {}, not 1", tst.version));
    }
    if sd.signer_infos.0.len() != 1 {
        return Err(format!(
            "has {} signers, where RFC 3161 has the TSA alone",
            sd.signer_infos.0.len()
        ));
    }
    Ok(Token { sd, tst, tst_der })
}

/// genTime as `YYYY-MM-DDTHH:MM:SS[.f]Z`.
fn gen_time(t: &Any) -> Result<String, String> {
    let bad = || "has a genTime that is not a GeneralizedTime in UTC".to_owned();
    if t.tag() != Tag::GeneralizedTime {
        return Err(bad());
    }
    let s = std::str::from_utf8(t.value()).map_err(|_| bad())?;
    let body = s.strip_suffix('Z').ok_or_else(bad)?;
    let (whole, frac) = body.split_once('.').unwrap_or((body, ""));
    if whole.len() != 14
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let p = |r: std::ops::Range<usize>| whole.get(r).unwrap_or_default();
    let frac = if frac.is_empty() {
        String::new()
    } else {
        format!(".{frac}")
    };
    Ok(format!(
        "{}-{}-{}T{}:{}:{}{frac}Z",
        p(0..4),
        p(4..6),
        p(6..8),
        p(8..10),
        p(10..12),
        p(12..14)
    ))
}

/// The DER of the first SignerInfo's signed attributes as the TSA encoded them (what
/// it signed), whatever their order: the cms types sort a SET OF when they decode it.
fn raw_signed_attrs(token: &[u8]) -> Result<Vec<u8>, der::Error> {
    fn children(value: &[u8]) -> Result<Vec<AnyRef<'_>>, der::Error> {
        let mut r = der::SliceReader::new(value)?;
        let mut out = Vec::new();
        while !r.is_finished() {
            out.push(AnyRef::decode(&mut r)?);
        }
        Ok(out)
    }
    let missing = || der::Error::from(der::ErrorKind::Failed);
    let ci = AnyRef::from_der(token)?;
    let content = children(ci.value())?.get(1).copied().ok_or_else(missing)?;
    let sd = children(content.value())?
        .first()
        .copied()
        .ok_or_else(missing)?;
    let signer_infos = children(sd.value())?.last().copied().ok_or_else(missing)?;
    let signer = children(signer_infos.value())?
        .first()
        .copied()
        .ok_or_else(missing)?;
    let signed_attrs_tag = Tag::ContextSpecific {
        constructed: true,
        number: TagNumber::N0,
    };
    let attrs = children(signer.value())?
        .into_iter()
        .find(|a| a.tag() == signed_attrs_tag)
        .ok_or_else(missing)?;
    Any::new(Tag::Set, attrs.value())?.to_der()
}

/// Check the TSA's SignerInfo: content type TSTInfo, message digest of the TSTInfo, and
/// its signature with the certificate it names, for the algorithms Influxion verifies
/// (ECDSA P-256/P-384, RSA PKCS#1 v1.5, with SHA-2). Returns that certificate, if
/// included, and what was checked.
fn tsa_signature<'a>(
    token: &[u8],
    t: &'a Token,
) -> Result<(Option<&'a Certificate>, String), String> {
    let signer = t.sd.signer_infos.0.get(0).ok_or("has no signer")?;
    let cert = signer_cert(&t.sd, &signer.sid);
    let attrs = signer
        .signed_attrs
        .as_ref()
        .ok_or("has no signed attributes")?;
    let ct: ObjectIdentifier = attr_value(attrs, rfc5911::ID_CONTENT_TYPE)
        .ok_or("has no content-type attribute")?
        .decode_as()
        .map_err(|_| "has a content-type attribute that does not parse")?;
    if ct != ID_CT_TST_INFO {
        return Err("has a content-type attribute other than TSTInfo".into());
    }
    let md: OctetString = attr_value(attrs, rfc5911::ID_MESSAGE_DIGEST)
        .ok_or("has no message-digest attribute")?
        .decode_as()
        .map_err(|_| "has a message-digest attribute that does not parse")?;
    // A timestamp whose signature cannot be checked is refused, not passed on.
    let Some(hash) = hash_of(signer.digest_alg.oid) else {
        return Err(format!(
            "is signed with digest {}, which Influxion does not check (SHA-2 only)",
            signer.digest_alg.oid
        ));
    };
    if md.as_bytes() != hash_bytes(hash, &t.tst_der).as_slice() {
        return Err("has a message digest that is not the hash of its TSTInfo".into());
    }
    let cert = cert.ok_or("does not include the TSA's certificate")?;
    let raw = raw_signed_attrs(token)
        .map_err(|e| format!("has signed attributes that do not parse ({e})"))?;
    let hashed = hash_bytes(hash, &raw);
    let spki = &cert.tbs_certificate.subject_public_key_info;
    let spki_der = spki
        .to_der()
        .map_err(|e| format!("has a TSA certificate that does not encode ({e})"))?;
    let sig = signer.signature.as_bytes();
    let sig_oid = signer.signature_algorithm.oid;
    let verified = match spki.algorithm.oid {
        o if o == rfc5912::ID_EC_PUBLIC_KEY => {
            use p256::ecdsa::signature::hazmat::PrehashVerifier;
            use p256::pkcs8::DecodePublicKey;
            if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(&spki_der) {
                (
                    "ECDSA P-256",
                    p256::ecdsa::Signature::from_der(sig)
                        .is_ok_and(|s| k.verify_prehash(&hashed, &s).is_ok()),
                )
            } else if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_der(&spki_der) {
                (
                    "ECDSA P-384",
                    p384::ecdsa::Signature::from_der(sig)
                        .is_ok_and(|s| k.verify_prehash(&hashed, &s).is_ok()),
                )
            } else {
                return Err(
                    "is signed on an elliptic curve other than P-256 and P-384, which \
                     Influxion does not check"
                        .into(),
                );
            }
        }
        o if o == rfc5912::RSA_ENCRYPTION && RSA_PKCS1.contains(&sig_oid) => {
            use rsa::pkcs8::DecodePublicKey;
            let k = rsa::RsaPublicKey::from_public_key_der(&spki_der)
                .map_err(|e| format!("has a TSA RSA key that does not parse ({e})"))?;
            let scheme = match hash {
                HashAlg::Sha256 => rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
                HashAlg::Sha384 => rsa::Pkcs1v15Sign::new::<sha2::Sha384>(),
                HashAlg::Sha512 => rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
            };
            ("RSA PKCS#1 v1.5", k.verify(scheme, &hashed, sig).is_ok())
        }
        o => {
            return Err(format!(
                "is signed with key {o} and algorithm {sig_oid}, which Influxion does not \
                 check (ECDSA P-256/P-384, RSA PKCS#1 v1.5)"
            ))
        }
    };
    match verified {
        (alg, true) => Ok((
            Some(cert),
            format!(
                "the TSA's {alg} {} signature over the TSTInfo verifies with its certificate",
                hash.as_str()
            ),
        )),
        (alg, false) => Err(format!(
            "has a TSA {alg} signature that does not verify with its certificate"
        )),
    }
}

#[cfg(test)]
pub(crate) mod test_tsa {
    //! A TSA for the tests: a P-256 key certified for timeStamping by a test CA, and
    //! the tokens and answers it makes.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use cms::cert::CertificateChoices;
    use cms::content_info::CmsVersion;
    use cms::signed_data::{
        CertificateSet, EncapsulatedContentInfo, SignedAttributes, SignerInfos,
    };
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    use std::sync::OnceLock;

    /// The TSA's P-256 key and a certificate for it (timeStamping), issued by a test CA.
    pub(crate) struct Tsa {
        key: p256::ecdsa::SigningKey,
        cert: Certificate,
    }

    /// A P-256 public key (its point) for rcgen to certify.
    pub(crate) struct Public(pub(crate) Vec<u8>);

    impl rcgen::PublicKeyData for Public {
        fn der_bytes(&self) -> &[u8] {
            &self.0
        }

        fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
            &rcgen::PKCS_ECDSA_P256_SHA256
        }
    }

    pub(crate) fn tsa() -> &'static Tsa {
        static TSA: OnceLock<Tsa> = OnceLock::new();
        TSA.get_or_init(|| {
            let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut ca = rcgen::CertificateParams::new(vec![]).unwrap();
            ca.distinguished_name
                .push(rcgen::DnType::CommonName, "Influxion test TSA CA");
            ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let issuer = rcgen::Issuer::new(ca, ca_key);
            let key = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
            let point = key
                .verifying_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec();
            let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "Influxion test TSA");
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::TimeStamping];
            let cert = params.signed_by(&Public(point), &issuer).unwrap();
            Tsa {
                key,
                cert: Certificate::from_der(cert.der()).unwrap(),
            }
        })
    }

    pub(crate) fn int(n: u64) -> Int {
        Int::from_der(&n.to_der().unwrap()).unwrap()
    }

    /// The TSTInfo a TSA makes for `req`, before `edit`.
    pub(super) fn tst_for(req: &[u8]) -> TstInfo {
        let req = TimeStampReq::from_der(req).unwrap();
        TstInfo {
            version: 1,
            policy: ObjectIdentifier::new_unwrap("1.2.3.4.1"),
            message_imprint: req.message_imprint,
            serial_number: int(42),
            gen_time: Any::new(Tag::GeneralizedTime, b"20250102030405.5Z".to_vec()).unwrap(),
            accuracy: Some(Accuracy {
                seconds: Some(int(1)),
                millis: Some(int(500)),
                micros: None,
            }),
            ordering: false,
            nonce: req.nonce,
            tsa: None,
            extensions: None,
        }
    }

    /// A TSA's token over `tst`, signed with ES256 over DER-sorted signed attributes.
    pub(super) fn token(tst: &TstInfo) -> Vec<u8> {
        let tsa = tsa();
        let tst_der = tst.to_der().unwrap();
        let mut attrs = SignedAttributes::new();
        for a in [
            attribute(
                rfc5911::ID_CONTENT_TYPE,
                Any::encode_from(&ID_CT_TST_INFO).unwrap(),
            )
            .unwrap(),
            attribute(
                rfc5911::ID_MESSAGE_DIGEST,
                Any::encode_from(&OctetString::new(hash_bytes(HashAlg::Sha256, &tst_der)).unwrap())
                    .unwrap(),
            )
            .unwrap(),
        ] {
            attrs.insert(a).unwrap();
        }
        let hashed = hash_bytes(HashAlg::Sha256, &attrs.to_der().unwrap());
        let sig: p256::ecdsa::Signature = tsa.key.sign_prehash(&hashed).unwrap();
        let sha256 = AlgorithmIdentifierOwned {
            oid: rfc5912::ID_SHA_256,
            parameters: None,
        };
        let signer = SignerInfo {
            version: CmsVersion::V1,
            sid: crate::signed_data::issuer_and_serial(&tsa.cert),
            digest_alg: sha256.clone(),
            signed_attrs: Some(attrs),
            signature_algorithm: AlgorithmIdentifierOwned {
                oid: rfc5912::ECDSA_WITH_SHA_256,
                parameters: None,
            },
            signature: OctetString::new(sig.to_der().as_bytes()).unwrap(),
            unsigned_attrs: None,
        };
        let mut certs = SetOfVec::new();
        certs
            .insert(CertificateChoices::Certificate(tsa.cert.clone()))
            .unwrap();
        let mut algs = SetOfVec::new();
        algs.insert(sha256).unwrap();
        let mut signers = SetOfVec::new();
        signers.insert(signer).unwrap();
        let sd = SignedData {
            version: CmsVersion::V3,
            digest_algorithms: algs,
            encap_content_info: EncapsulatedContentInfo {
                econtent_type: ID_CT_TST_INFO,
                econtent: Some(Any::encode_from(&OctetString::new(tst_der).unwrap()).unwrap()),
            },
            certificates: Some(CertificateSet(certs)),
            crls: None,
            signer_infos: SignerInfos(signers),
        };
        ContentInfo {
            content_type: rfc5911::ID_SIGNED_DATA,
            content: Any::encode_from(&sd).unwrap(),
        }
        .to_der()
        .unwrap()
    }

    pub(super) fn response(status: u32, token: Option<&[u8]>) -> Vec<u8> {
        TimeStampResp {
            status: PkiStatusInfo {
                status,
                status_string: None,
                fail_info: None,
            },
            time_stamp_token: token.map(|t| Any::from_der(t).unwrap()),
        }
        .to_der()
        .unwrap()
    }

    /// A token over `signature`, hashed with `hash`, as a TSA grants it.
    pub(crate) fn token_over(hash: HashAlg, signature: &[u8]) -> Vec<u8> {
        token(&tst_for(&request(hash, signature, 1).unwrap()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::test_tsa::*;
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    const SIG: &[u8] = b"a signature value";

    #[test]
    fn the_request_is_what_openssl_ts_query_writes() {
        // `openssl ts -query -data abc.txt -sha256` with nonce 0x314CFCE4E0651827 (the
        // x509-tsp test vector), plus certReq TRUE (`-cert`): 01 01 ff.
        let req = request(HashAlg::Sha256, b"abc", 0x314C_FCE4_E065_1827).unwrap();
        assert_eq!(
            hex::encode(&req),
            "30430201013031300d060960864801650304020105000420ba7816bf8f01cfea414140de5dae2223\
             b00361a396177a9cb410ff61f20015ad0208314cfce4e06518270101ff"
        );
        let back = TimeStampReq::from_der(&req).unwrap();
        assert!(back.cert_req);
        assert_eq!(back.to_der().unwrap(), req);
        // A nonce with its top bit set stays positive; other hashes.
        for (hash, oid) in [
            (HashAlg::Sha384, rfc5912::ID_SHA_384),
            (HashAlg::Sha512, rfc5912::ID_SHA_512),
        ] {
            let req = request(hash, SIG, u64::MAX).unwrap();
            let back = TimeStampReq::from_der(&req).unwrap();
            assert_eq!(back.message_imprint.hash_algorithm.oid, oid);
            assert_eq!(
                back.message_imprint.hashed_message.as_bytes(),
                hash_bytes(hash, SIG).as_slice()
            );
            assert_eq!(
                back.nonce.unwrap().as_bytes(),
                &[0, 255, 255, 255, 255, 255, 255, 255, 255]
            );
        }
    }

    #[test]
    fn a_granted_response_gives_its_token() {
        let req = request(HashAlg::Sha256, SIG, 7).unwrap();
        let tok = token(&tst_for(&req));
        for status in [0, 1] {
            let got = token_from_response(&response(status, Some(&tok)), &req).unwrap();
            assert_eq!(got, tok);
        }
        let ts = check_token(&tok, SIG).unwrap();
        assert_eq!(ts.tsa, "CN=Influxion test TSA");
        assert_eq!(ts.time, "2025-01-02T03:04:05.5Z");
        assert_eq!(ts.hash, HashAlg::Sha256);
        assert!(
            ts.to_string().starts_with(
                "RFC 3161 timestamp by CN=Influxion test TSA at 2025-01-02T03:04:05.5Z over the \
                 signature"
            ),
            "{ts}"
        );
        assert!(
            ts.tsa_signature
                .contains("ECDSA P-256 sha256 signature over the TSTInfo verifies"),
            "{ts}"
        );
        // Over another signature value.
        let err = check_token(&tok, b"another signature").unwrap_err();
        assert!(err.contains("over another signature"), "{err}");
    }

    fn refused(resp: &[u8], req: &[u8], needle: &str) {
        match token_from_response(resp, req) {
            Err(FormatError::Invalid(m)) => assert!(m.contains(needle), "{needle}: {m}"),
            other => panic!("{needle}: {other:?}"),
        }
    }

    #[test]
    fn wrong_answers_are_refused() {
        let req = request(HashAlg::Sha256, SIG, 7).unwrap();
        let mut tst = tst_for(&req);
        tst.nonce = Some(int(8));
        refused(&response(0, Some(&token(&tst))), &req, "nonce");
        tst.nonce = None;
        refused(&response(0, Some(&token(&tst))), &req, "nonce");
        let mut tst = tst_for(&req);
        tst.message_imprint.hashed_message =
            OctetString::new(hash_bytes(HashAlg::Sha256, b"other")).unwrap();
        refused(
            &response(0, Some(&token(&tst))),
            &req,
            "another message imprint",
        );
        let mut tst = tst_for(&req);
        tst.message_imprint.hash_algorithm.oid = rfc5912::ID_SHA_384;
        refused(
            &response(0, Some(&token(&tst))),
            &req,
            "another message imprint",
        );
        refused(&response(0, None), &req, "no timestamp token");
        refused(b"<html>busy</html>", &req, "not an RFC 3161 TimeStampResp");
        refused(&vec![0x30; MAX_RESPONSE + 1], &req, "more than the 64 KiB");

        // A rejection names its status, failInfo and text.
        let rejected = TimeStampResp {
            status: PkiStatusInfo {
                status: 2,
                status_string: Some(vec!["no time\x1b[31m".into()]),
                // badAlg (0) and timeNotAvailable (14).
                fail_info: Some(BitString::new(1, vec![0x80, 0x02]).unwrap()),
            },
            time_stamp_token: None,
        }
        .to_der()
        .unwrap();
        refused(
            &rejected,
            &req,
            "refuses the request: PKIStatus rejection (2), failInfo badAlg, timeNotAvailable: \
             \"no time[31m\"",
        );
        refused(&response(3, None), &req, "PKIStatus waiting (3)");

        // A token whose TSA signature or TSTInfo was changed.
        let tok = token(&tst_for(&req));
        let mut bad = tok.clone();
        let n = bad.len();
        bad[n - 3] ^= 1;
        refused(
            &response(0, Some(&bad)),
            &req,
            "signature that does not verify",
        );
        let tst_der = tst_for(&req).to_der().unwrap();
        let at = tok
            .windows(tst_der.len())
            .position(|w| w == tst_der.as_slice())
            .unwrap();
        let mut bad = tok.clone();
        // The serial number (INTEGER 42) inside the embedded TSTInfo.
        let serial = at + tst_der.windows(3).position(|w| w == [2, 1, 42]).unwrap() + 2;
        assert_eq!(bad[serial], 42);
        bad[serial] = 43;
        refused(
            &response(0, Some(&bad)),
            &req,
            "message digest that is not the hash",
        );
    }

    #[test]
    fn unsigned_attrs_refuse_a_token_for_another_signature() {
        let req = request(HashAlg::Sha256, SIG, 1).unwrap();
        let tok = token(&tst_for(&req));
        let attrs = unsigned_attrs(SPC_RFC3161, Some(&tok), SIG)
            .unwrap()
            .unwrap();
        assert_eq!(attrs.len(), 1);
        assert_eq!(
            attrs
                .get(0)
                .unwrap()
                .values
                .get(0)
                .unwrap()
                .to_der()
                .unwrap(),
            tok
        );
        assert!(unsigned_attrs(SPC_RFC3161, None, SIG).unwrap().is_none());
        let err = unsigned_attrs(SPC_RFC3161, Some(&tok), b"other").unwrap_err();
        assert!(matches!(err, FormatError::Invalid(m) if m.contains("over another signature")));
        assert!(check_shape(&tok).is_ok());
        assert!(check_shape(b"\x30\x00").is_err());
    }

    #[test]
    fn gen_time_formats() {
        let t = |s: &str| gen_time(&Any::new(Tag::GeneralizedTime, s.as_bytes().to_vec()).unwrap());
        assert_eq!(t("20250102030405Z").unwrap(), "2025-01-02T03:04:05Z");
        assert_eq!(
            t("20250102030405.123Z").unwrap(),
            "2025-01-02T03:04:05.123Z"
        );
        for bad in [
            "20250102030405",
            "2025010203040Z",
            "2025010203040aZ",
            "20250102030405.xZ",
        ] {
            assert!(t(bad).is_err(), "{bad}");
        }
        assert!(gen_time(&Any::new(Tag::UtcTime, b"250102030405Z".to_vec()).unwrap()).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn token_from_response_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let req = request(HashAlg::Sha256, SIG, 7).unwrap();
            let _ = token_from_response(&bytes, &req);
            let _ = token_from_response(&bytes, &bytes);
            let _ = check_token(&bytes, SIG);
        }

        #[test]
        fn damaged_responses_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            static RESP: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
            let (req, resp) = RESP.get_or_init(|| {
                let req = request(HashAlg::Sha256, SIG, 7).unwrap();
                let resp = response(0, Some(&token(&tst_for(&req))));
                (req, resp)
            });
            let mut bytes = resp.clone();
            for (at, b) in edits {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            bytes.truncate(cut.index(bytes.len() + 1).max(1));
            let _ = token_from_response(&bytes, req);
        }
    }
}
