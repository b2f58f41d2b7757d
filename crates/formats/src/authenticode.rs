//! Authenticode: a PKCS#7 SignedData embedded in a Windows PE file or UEFI PE image, as
//! `signtool sign` and `osslsigncode sign` write it and Windows, `osslsigncode verify`,
//! `sbverify` and UEFI Secure Boot check it.
//!
//! The image hash is osslsigncode's: the file from its start, less the 4-byte checksum
//! field and the 8-byte certificate table directory entry, up to the certificate table
//! (or the end of the file), then zero bytes that pad it to 8 bytes. For a well-formed
//! image this is the Authenticode specification's hash (headers, sections in file
//! order, trailing data); the padding is written to the output too, so the certificate
//! table starts aligned. The hash goes into an `SpcIndirectDataContent`, whose DER
//! contents (without its outer tag and length) the messageDigest attribute covers; the
//! keyserver signs the digest of the signed attributes. The output is the input with the
//! certificate table (one `WIN_CERTIFICATE` holding the SignedData) appended, its
//! directory entry set and the PE checksum recomputed. A signature already at the end
//! of the file is replaced, as signtool and osslsigncode do. The SignedData carries the
//! key's chain less its self-signed root, as signtool writes it.
//!
//! ECDSA (P-256 with SHA-256, P-384 with SHA-384) and RSA PKCS#1 v1.5 (SHA-256/384/512).
//! Ed25519 is no Authenticode algorithm, and RSA-PSS is refused: osslsigncode and
//! signtool write PKCS#1 v1.5, and osslsigncode cannot verify PSS. UEFI tools (sbverify,
//! shim) check SHA-256 only.

use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use cms::content_info::ContentInfo;
use cms::signed_data::{EncapsulatedContentInfo, SignedAttributes};
use const_oid::db::{rfc5911, rfc5912};
use der::asn1::OctetString;
use der::{Any, Decode, Encode, Reader, Tag, Tagged};
use influxion_core::{Digest, KeyType, SignAlgorithm};
use spki::{AlgorithmIdentifierOwned, ObjectIdentifier};
use x509_cert::Certificate;

use crate::signed_data::{
    attribute, attrs_digest, check_signer_cert, content_attrs, der_err, hash_alg_with_null, leaf,
    SignedDataParts, RSA_PKCS1,
};
use crate::{FormatError, Hasher, Prepared, SignerKey, CHUNK};

/// Authenticode signing of PE files, with the algorithm to sign with.
pub struct Authenticode {
    pub algorithm: SignAlgorithm,
}

/// The largest certificate table `verify` reads: a signature with a few certificates is
/// kilobytes.
const MAX_CERT_TABLE: u64 = 16 << 20;

const SPC_INDIRECT_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.4");
const SPC_PE_IMAGE_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.15");
const SPC_STATEMENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.11");
const SPC_INDIVIDUAL_SP_KEY_PURPOSE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.21");
const SPC_SP_OPUS_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.12");

/// `SpcPeImageData` as signtool writes it: no flags, and the file as the SpcLink
/// `[2] { [0] BMPString "<<<Obsolete>>>" }`.
const PE_IMAGE_DATA: [u8; 39] = [
    0x30, 0x25, 0x03, 0x01, 0x00, 0xa0, 0x20, 0xa2, 0x1e, 0x80, 0x1c, 0x00, 0x3c, 0x00, 0x3c, 0x00,
    0x3c, 0x00, 0x4f, 0x00, 0x62, 0x00, 0x73, 0x00, 0x6f, 0x00, 0x6c, 0x00, 0x65, 0x00, 0x74, 0x00,
    0x65, 0x00, 0x3e, 0x00, 0x3e, 0x00, 0x3e,
];
/// An empty `SpcSpOpusInfo` (no program name, no URL), as signtool writes by default.
const EMPTY_OPUS_INFO: [u8; 2] = [0x30, 0x00];

const WIN_CERT_REVISION_2_0: u16 = 0x0200;
const WIN_CERT_TYPE_PKCS_SIGNED_DATA: u16 = 0x0002;

#[derive(Clone, Debug, Eq, PartialEq, der::Sequence)]
struct SpcAttributeTypeAndOptionalValue {
    value_type: ObjectIdentifier,
    #[asn1(optional = "true")]
    value: Option<Any>,
}

#[derive(Clone, Debug, Eq, PartialEq, der::Sequence)]
struct DigestInfo {
    digest_algorithm: AlgorithmIdentifierOwned,
    digest: OctetString,
}

#[derive(Clone, Debug, Eq, PartialEq, der::Sequence)]
struct SpcIndirectDataContent {
    data: SpcAttributeTypeAndOptionalValue,
    message_digest: DigestInfo,
}

/// Where the fields Authenticode touches are in a PE file, checked against its length.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PeLayout {
    file_len: u64,
    pe32plus: bool,
    subsystem: u16,
    sections: u16,
    /// Offset of the 4-byte CheckSum field of the optional header.
    checksum_off: u64,
    checksum: u32,
    /// Offset of the 8-byte certificate table entry (data directory 4).
    cert_dir_off: u64,
    /// The certificate table (file offset, size) when the directory entry names one;
    /// it ends the file.
    cert_table: Option<(u64, u64)>,
}

impl PeLayout {
    /// The bytes before the certificate table: what is hashed and kept.
    fn content_end(&self) -> u64 {
        self.cert_table.map_or(self.file_len, |(off, _)| off)
    }

    fn skips(&self) -> [(u64, u64); 2] {
        [
            (self.checksum_off, self.checksum_off + 4),
            (self.cert_dir_off, self.cert_dir_off + 8),
        ]
    }

    fn describe(&self) -> String {
        let kind = match self.subsystem {
            10 => "EFI application",
            11 => "EFI boot service driver",
            12 => "EFI runtime driver",
            13 => "EFI ROM",
            1 => "native",
            2 => "Windows GUI",
            3 => "Windows console",
            _ => "PE",
        };
        format!(
            "{} {} image, {} section(s)",
            if self.pe32plus { "PE32+" } else { "PE32" },
            kind,
            self.sections
        )
    }
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn len64(n: usize) -> u64 {
    // usize is at most 64 bits wide on every target Rust supports.
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Read `len` bytes at `off`; the caller has checked they lie within the file.
fn read_at<R: Read + Seek>(
    r: &mut R,
    off: u64,
    len: usize,
    path: &Path,
) -> Result<Vec<u8>, FormatError> {
    let mut buf = vec![0u8; len];
    r.seek(SeekFrom::Start(off))
        .and_then(|_| r.read_exact(&mut buf))
        .map_err(|e| FormatError::io(path, e))?;
    Ok(buf)
}

/// Parse and check the PE headers of a file of `file_len` bytes.
fn parse_pe<R: Read + Seek>(
    r: &mut R,
    file_len: u64,
    path: &Path,
) -> Result<PeLayout, FormatError> {
    let name = path.display();
    let not_pe = |why: String| FormatError::Invalid(format!("{name} is not a PE file ({why})"));
    let truncated =
        |what: String| FormatError::Invalid(format!("{name} is a truncated PE file: {what}"));
    // Every field read below lies in a buffer whose length was checked first.
    let short = || FormatError::Invalid(format!("{name}: the PE headers are inconsistent"));

    if file_len < 2 {
        return Err(not_pe("shorter than an MS-DOS header".into()));
    }
    let dos = read_at(
        r,
        0,
        usize::try_from(file_len.min(64)).map_err(|_| short())?,
        path,
    )?;
    if dos.get(..2) != Some(b"MZ".as_slice()) {
        return Err(not_pe("no MZ signature".into()));
    }
    if file_len < 64 {
        return Err(truncated(format!(
            "the MS-DOS header ends at byte {file_len}, before its 64 bytes"
        )));
    }
    let e_lfanew = u64::from(u32_at(&dos, 0x3c).ok_or_else(short)?);
    if e_lfanew + 4 > file_len {
        return Err(not_pe(format!(
            "an MS-DOS executable: its PE header offset 0x{e_lfanew:x} is beyond the end of \
             the file"
        )));
    }
    if read_at(r, e_lfanew, 4, path)? != b"PE\0\0" {
        return Err(not_pe(format!(
            "an MS-DOS executable: no PE signature at 0x{e_lfanew:x}"
        )));
    }
    let coff_off = e_lfanew + 4;
    if coff_off + 20 > file_len {
        return Err(truncated(format!(
            "the COFF file header at 0x{coff_off:x} is cut off"
        )));
    }
    let coff = read_at(r, coff_off, 20, path)?;
    let sections = u16_at(&coff, 2).ok_or_else(short)?;
    let opt_size = u16_at(&coff, 16).ok_or_else(short)?;
    let opt_off = coff_off + 20;
    if opt_size < 2 {
        return Err(FormatError::Invalid(format!(
            "{name} has no optional header: an object file, not an image"
        )));
    }
    if opt_off + u64::from(opt_size) > file_len {
        return Err(truncated(format!(
            "the optional header (0x{opt_size:x} bytes at 0x{opt_off:x}) is cut off"
        )));
    }
    let opt = read_at(r, opt_off, usize::from(opt_size), path)?;
    let magic = u16_at(&opt, 0).ok_or_else(short)?;
    let pe32plus = match magic {
        0x10b => false,
        0x20b => true,
        _ => {
            return Err(FormatError::Invalid(format!(
                "{name}: optional header magic 0x{magic:04x} is neither PE32 (0x10b) nor \
                 PE32+ (0x20b)"
            )))
        }
    };
    // The data directories follow NumberOfRvaAndSizes; the certificate table is entry 4.
    let dirs: usize = if pe32plus { 112 } else { 96 };
    let cert_dir = dirs + 4 * 8;
    if usize::from(opt_size) < cert_dir + 8 {
        return Err(FormatError::Invalid(format!(
            "{name}: its optional header (0x{opt_size:x} bytes) is too short for the \
             certificate table directory entry"
        )));
    }
    let rvas = u32_at(&opt, dirs - 4).ok_or_else(short)?;
    if rvas < 5 {
        return Err(FormatError::Invalid(format!(
            "{name} has {rvas} data directory entries, none for the certificate table"
        )));
    }
    let size_of_headers = u64::from(u32_at(&opt, 60).ok_or_else(short)?);
    let checksum = u32_at(&opt, 64).ok_or_else(short)?;
    let subsystem = u16_at(&opt, 68).ok_or_else(short)?;
    let table_va = u64::from(u32_at(&opt, cert_dir).ok_or_else(short)?);
    let table_size = u64::from(u32_at(&opt, cert_dir + 4).ok_or_else(short)?);

    let sect_off = opt_off + u64::from(opt_size);
    let sect_len = 40 * u64::from(sections);
    if sect_off + sect_len > file_len {
        return Err(truncated(format!(
            "the section table ({sections} sections at 0x{sect_off:x}) is cut off"
        )));
    }
    if size_of_headers > file_len {
        return Err(truncated(format!(
            "the headers (SizeOfHeaders 0x{size_of_headers:x}) are cut off at 0x{file_len:x}"
        )));
    }
    if size_of_headers < sect_off + sect_len {
        return Err(FormatError::Invalid(format!(
            "{name}: SizeOfHeaders 0x{size_of_headers:x} is smaller than the headers \
             (0x{:x} bytes)",
            sect_off + sect_len
        )));
    }
    let cert_table = match (table_va, table_size) {
        (0, 0) => None,
        // Since MS12-024 the table ends the file; osslsigncode and Windows expect it so.
        (va, size) if va >= size_of_headers && size >= 8 && va + size == file_len => {
            Some((va, size))
        }
        (va, size) => {
            return Err(FormatError::Invalid(format!(
                "{name}: its certificate table entry (0x{size:x} bytes at 0x{va:x}) is not a \
                 table at the end of the file, where Authenticode has it"
            )))
        }
    };
    let content_end = cert_table.map_or(file_len, |(off, _)| off);
    let table = read_at(
        r,
        sect_off,
        usize::try_from(sect_len).map_err(|_| short())?,
        path,
    )?;
    for s in table.chunks_exact(40) {
        let raw_size = u64::from(u32_at(s, 16).ok_or_else(short)?);
        let raw_ptr = u64::from(u32_at(s, 20).ok_or_else(short)?);
        if raw_size == 0 {
            continue;
        }
        let section = String::from_utf8_lossy(s.get(..8).ok_or_else(short)?)
            .trim_end_matches('\0')
            .to_owned();
        let end = raw_ptr + raw_size;
        if end > file_len {
            return Err(truncated(format!(
                "section {section:?} (raw data 0x{raw_ptr:x}..0x{end:x}) extends beyond the \
                 end of the file at 0x{file_len:x}"
            )));
        }
        if end > content_end {
            return Err(FormatError::Invalid(format!(
                "{name}: section {section:?} (raw data 0x{raw_ptr:x}..0x{end:x}) overlaps the \
                 certificate table at 0x{content_end:x}"
            )));
        }
    }
    Ok(PeLayout {
        file_len,
        pe32plus,
        subsystem,
        sections,
        checksum_off: opt_off + 64,
        checksum,
        cert_dir_off: opt_off + len64(cert_dir),
        cert_table,
    })
}

/// `x` as an offset into a chunk of `n` bytes at `pos`, clamped to the chunk.
fn rel(x: u64, pos: u64, n: usize) -> usize {
    usize::try_from(x.saturating_sub(pos)).map_or(n, |v| v.min(n))
}

/// The Authenticode image hash: bytes before `end`, less the skipped fields.
struct ImageHasher {
    hasher: Hasher,
    end: u64,
    skips: [(u64, u64); 2],
}

impl ImageHasher {
    fn new(alg: SignAlgorithm, layout: &PeLayout) -> Self {
        ImageHasher {
            hasher: Hasher::new(alg.hash()),
            end: layout.content_end(),
            skips: layout.skips(),
        }
    }

    /// Hash what of `chunk`, found at `pos` in the file, the image hash covers.
    fn update(&mut self, pos: u64, chunk: &[u8]) {
        let n = chunk.len();
        let end = rel(self.end, pos, n);
        let mut cur = 0;
        for (s, e) in self.skips {
            let (s, e) = (rel(s, pos, n).min(end), rel(e, pos, n).min(end));
            if s > cur {
                self.hasher.update(chunk.get(cur..s).unwrap_or_default());
            }
            cur = cur.max(e);
        }
        if cur < end {
            self.hasher.update(chunk.get(cur..end).unwrap_or_default());
        }
    }

    /// Hash the zero padding that follows the content in the output.
    fn pad(&mut self, zeros: &[u8]) {
        self.hasher.update(zeros);
    }

    fn finish(self) -> Vec<u8> {
        self.hasher.finish()
    }
}

/// Overwrite the bytes of `chunk` (found at `pos`) that `value`, at `at`, covers.
fn patch(chunk: &mut [u8], pos: u64, at: u64, value: &[u8]) {
    for (abs, b) in (at..).zip(value) {
        if let Some(slot) = abs
            .checked_sub(pos)
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|o| chunk.get_mut(o))
        {
            *slot = *b;
        }
    }
}

/// The PE checksum (imagehlp's CheckSumMappedFile): the 16-bit one's-complement-style
/// sum of the file's little-endian words, folded, plus the file length. The caller
/// zeroes the CheckSum field first.
struct PeChecksum {
    sum: u32,
    len: u64,
    odd: Option<u8>,
}

impl PeChecksum {
    fn new() -> Self {
        PeChecksum {
            sum: 0,
            len: 0,
            odd: None,
        }
    }

    fn add(&mut self, word: u16) {
        self.sum += u32::from(word);
        self.sum = (self.sum & 0xffff) + (self.sum >> 16);
    }

    fn update(&mut self, mut data: &[u8]) {
        self.len += len64(data.len());
        if let Some(lo) = self.odd.take() {
            match data.split_first() {
                Some((hi, rest)) => {
                    self.add(u16::from_le_bytes([lo, *hi]));
                    data = rest;
                }
                None => {
                    self.odd = Some(lo);
                    return;
                }
            }
        }
        let mut words = data.chunks_exact(2);
        for w in &mut words {
            self.add(u16::from_le_bytes([w[0], w[1]]));
        }
        if let [b] = words.remainder() {
            self.odd = Some(*b);
        }
    }

    fn finish(mut self) -> u32 {
        if let Some(lo) = self.odd.take() {
            self.add(u16::from(lo));
        }
        let folded = (self.sum & 0xffff) + (self.sum >> 16);
        // The length of a PE file fits 32 bits (its certificate table offset does).
        folded.wrapping_add(u32::try_from(self.len & 0xffff_ffff).unwrap_or(0))
    }
}

/// Read the first `len` bytes of `r` in chunks, handing each to `f` with its offset.
/// Fewer bytes than that means the file changed since it was measured.
fn stream<R: Read + Seek>(
    r: &mut R,
    path: &Path,
    len: u64,
    mut f: impl FnMut(u64, &mut [u8]) -> Result<(), FormatError>,
) -> Result<(), FormatError> {
    r.seek(SeekFrom::Start(0))
        .map_err(|e| FormatError::io(path, e))?;
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos < len {
        let n = usize::try_from(len - pos).map_or(CHUNK, |left| left.min(CHUNK));
        let chunk = buf.get_mut(..n).unwrap_or_default();
        r.read_exact(chunk).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                FormatError::Invalid(format!(
                    "{} became shorter while it was read",
                    path.display()
                ))
            } else {
                FormatError::io(path, e)
            }
        })?;
        f(pos, chunk)?;
        pos += len64(n);
    }
    Ok(())
}

/// The image hash of a file to be signed: its bytes before any certificate table, less
/// the skipped fields, then the padding the output will carry.
fn image_hash<R: Read + Seek>(
    r: &mut R,
    path: &Path,
    layout: &PeLayout,
    alg: SignAlgorithm,
    progress: &dyn Fn(u64),
) -> Result<Vec<u8>, FormatError> {
    let end = layout.content_end();
    let mut hasher = ImageHasher::new(alg, layout);
    stream(r, path, end, |pos, chunk| {
        hasher.update(pos, chunk);
        progress(len64(chunk.len()));
        Ok(())
    })?;
    hasher.pad(&vec![0u8; padding(end)]);
    Ok(hasher.finish())
}

/// Zero bytes that bring `end` to a multiple of 8, as osslsigncode pads the file before
/// the certificate table (and hashes the padding).
fn padding(end: u64) -> usize {
    usize::try_from((8 - end % 8) % 8).unwrap_or(0)
}

/// The `WIN_CERTIFICATE` holding `der`: dwLength (the header, the DER and the padding,
/// as osslsigncode writes it), revision 2.0, type PKCS_SIGNED_DATA, padded to 8 bytes.
fn win_certificate(der: &[u8]) -> Result<Vec<u8>, FormatError> {
    let total = 8 + der.len() + padding(len64(der.len()));
    let len = u32::try_from(total)
        .map_err(|_| FormatError::Invalid("the signature is too large for a PE file".into()))?;
    let mut t = Vec::with_capacity(total);
    t.extend_from_slice(&len.to_le_bytes());
    t.extend_from_slice(&WIN_CERT_REVISION_2_0.to_le_bytes());
    t.extend_from_slice(&WIN_CERT_TYPE_PKCS_SIGNED_DATA.to_le_bytes());
    t.extend_from_slice(der);
    t.resize(total, 0);
    Ok(t)
}

/// A digest AlgorithmIdentifier with NULL parameters, as signtool and osslsigncode
/// write them.
fn digest_alg(alg: SignAlgorithm) -> AlgorithmIdentifierOwned {
    hash_alg_with_null(alg.hash())
}

/// The SignerInfo's signatureAlgorithm: ecdsa-with-SHAn for ECDSA, and for RSA
/// PKCS#1 v1.5 rsaEncryption, what signtool and osslsigncode (OpenSSL's PKCS7) write.
fn signature_alg(alg: SignAlgorithm) -> Result<AlgorithmIdentifierOwned, FormatError> {
    let oid = match alg {
        SignAlgorithm::Es256 => rfc5912::ECDSA_WITH_SHA_256,
        SignAlgorithm::Es384 => rfc5912::ECDSA_WITH_SHA_384,
        SignAlgorithm::Rs256 | SignAlgorithm::Rs384 | SignAlgorithm::Rs512 => {
            return Ok(AlgorithmIdentifierOwned {
                oid: rfc5912::RSA_ENCRYPTION,
                parameters: Some(Any::from(der::asn1::Null)),
            })
        }
        _ => return Err(unfit(alg)),
    };
    Ok(AlgorithmIdentifierOwned {
        oid,
        parameters: None,
    })
}

fn unfit(alg: SignAlgorithm) -> FormatError {
    match alg {
        SignAlgorithm::EdDsa => FormatError::KeyUnfit(
            "Authenticode has no Ed25519: Windows and UEFI verify ECDSA and RSA signatures; \
             use an ECDSA or RSA key"
                .into(),
        ),
        _ => FormatError::KeyUnfit(format!(
            "Authenticode signs RSA with PKCS#1 v1.5 (signtool, osslsigncode and UEFI verify \
             that, osslsigncode no PSS): sign with RS256, RS384 or RS512 rather than {alg}"
        )),
    }
}

fn check_key(key: &SignerKey, alg: SignAlgorithm) -> Result<(), FormatError> {
    if key.key_type == KeyType::Ed25519 {
        return Err(unfit(SignAlgorithm::EdDsa));
    }
    signature_alg(alg)?;
    crate::check_allows(key, alg)
}

/// The DER of the SpcIndirectDataContent carrying the image hash.
fn indirect_data(alg: SignAlgorithm, image_hash: &[u8]) -> Result<Vec<u8>, FormatError> {
    SpcIndirectDataContent {
        data: SpcAttributeTypeAndOptionalValue {
            value_type: SPC_PE_IMAGE_DATA,
            value: Some(Any::from_der(&PE_IMAGE_DATA).map_err(der_err)?),
        },
        message_digest: DigestInfo {
            digest_algorithm: digest_alg(alg),
            digest: OctetString::new(image_hash).map_err(der_err)?,
        },
    }
    .to_der()
    .map_err(der_err)
}

/// The hash of an encoded SEQUENCE's contents, without its tag and length: what an
/// Authenticode messageDigest covers.
fn contents_hash(alg: SignAlgorithm, der: &[u8]) -> Result<Vec<u8>, FormatError> {
    let any = Any::from_der(der).map_err(der_err)?;
    Ok(crate::hash_bytes(alg.hash(), any.value()))
}

/// The signed attributes: content type, signing time, statement type (individual code
/// signing), opus info and message digest, as osslsigncode writes them by default.
fn signed_attrs(alg: SignAlgorithm, idc_der: &[u8]) -> Result<SignedAttributes, FormatError> {
    let md = contents_hash(alg, idc_der)?;
    // The signing time is not trusted by Windows (a countersignature or RFC 3161
    // timestamp is), but a record.
    crate::signed_data::signed_attrs(
        SPC_INDIRECT_DATA,
        &md,
        vec![
            attribute(
                SPC_STATEMENT_TYPE,
                Any::encode_from(&vec![SPC_INDIVIDUAL_SP_KEY_PURPOSE]).map_err(der_err)?,
            )?,
            attribute(
                SPC_SP_OPUS_INFO,
                Any::from_der(&EMPTY_OPUS_INFO).map_err(der_err)?,
            )?,
        ],
    )
}

struct PreparedAuthenticode {
    input: PathBuf,
    layout: PeLayout,
    algorithm: SignAlgorithm,
    image_hash: Vec<u8>,
    idc_der: Vec<u8>,
    signed_attrs: SignedAttributes,
    to_sign: Digest,
    leaf: Certificate,
    chain: Vec<Vec<u8>>,
    /// An RFC 3161 timestamp token over the signature, for the unsigned attributes.
    timestamp: Option<Vec<u8>>,
}

impl PreparedAuthenticode {
    /// The ContentInfo DER of the SignedData around `signature`.
    fn pkcs7(&self, signature: &[u8]) -> Result<Vec<u8>, FormatError> {
        SignedDataParts {
            leaf: &self.leaf,
            chain: &self.chain,
            // The root stays out, as signtool leaves it: a verifier has its own trust
            // anchor, and sbverify refuses a self-signed certificate it was not given.
            omit_root: true,
            digest_alg: digest_alg(self.algorithm),
            signature_alg: signature_alg(self.algorithm)?,
            signed_attrs: self.signed_attrs.clone(),
            // Attached: the SpcIndirectDataContent carrying the image hash.
            content: EncapsulatedContentInfo {
                econtent_type: SPC_INDIRECT_DATA,
                econtent: Some(Any::from_der(&self.idc_der).map_err(der_err)?),
            },
            // The RFC 3161 timestamp, where signtool /tr and osslsigncode -ts put it.
            timestamp_oid: crate::tsp::SPC_RFC3161,
            timestamp: self.timestamp.as_deref(),
        }
        .encode(signature)
    }

    /// Copy the input before its old certificate table, patching the checksum and the
    /// certificate table entry, then the padding and `table`; return the checksum.
    fn write(&self, table: &[u8], w: &mut impl Write, out: &Path) -> Result<u32, FormatError> {
        let wio = |e| FormatError::io(out, e);
        let l = &self.layout;
        let end = l.content_end();
        let table_off = end + len64(padding(end));
        let bad_size = || {
            FormatError::Invalid(format!(
                "{}: a signed PE file must stay under 4 GiB",
                self.input.display()
            ))
        };
        let mut entry = [0u8; 8];
        entry[..4].copy_from_slice(
            &u32::try_from(table_off)
                .map_err(|_| bad_size())?
                .to_le_bytes(),
        );
        entry[4..].copy_from_slice(
            &u32::try_from(table.len())
                .map_err(|_| bad_size())?
                .to_le_bytes(),
        );
        u32::try_from(table_off + len64(table.len())).map_err(|_| bad_size())?;

        let (mut file, len) = crate::open_sized(&self.input)?;
        let changed = || {
            FormatError::Invalid(format!(
                "{} changed after it was prepared: the signature is over its old content",
                self.input.display()
            ))
        };
        if len != l.file_len {
            return Err(changed());
        }
        let mut hasher = ImageHasher::new(self.algorithm, l);
        let mut sum = PeChecksum::new();
        stream(&mut file, &self.input, end, |pos, chunk| {
            hasher.update(pos, chunk);
            patch(chunk, pos, l.checksum_off, &[0; 4]);
            patch(chunk, pos, l.cert_dir_off, &entry);
            sum.update(chunk);
            w.write_all(chunk).map_err(wio)
        })?;
        let pad = vec![0u8; padding(end)];
        hasher.pad(&pad);
        if hasher.finish() != self.image_hash {
            return Err(changed());
        }
        for part in [pad.as_slice(), table] {
            sum.update(part);
            w.write_all(part).map_err(wio)?;
        }
        w.flush().map_err(wio)?;
        Ok(sum.finish())
    }
}

impl Prepared for PreparedAuthenticode {
    fn to_sign(&self) -> &Digest {
        &self.to_sign
    }

    fn set_timestamp(&mut self, token: Vec<u8>) -> Result<(), FormatError> {
        crate::tsp::check_shape(&token)?;
        self.timestamp = Some(token);
        Ok(())
    }

    fn assemble(self: Box<Self>, signature: &[u8], out: &Path) -> Result<(), FormatError> {
        let table = win_certificate(&self.pkcs7(signature)?)?;
        let (tmp, file) = crate::temp_next_to(out)?;
        let mut w = BufWriter::with_capacity(CHUNK, file);
        let checksum = self.write(&table, &mut w, out)?;
        let mut file = w
            .into_inner()
            .map_err(|e| FormatError::io(out, e.into_error()))?;
        // The checksum covers the whole output, so it goes in last.
        file.seek(SeekFrom::Start(self.layout.checksum_off))
            .and_then(|_| file.write_all(&checksum.to_le_bytes()))
            .map_err(|e| FormatError::io(out, e))?;
        // An executable stays executable; nothing else carries over (no setuid or
        // setgid, nothing writable by others).
        if let Ok(meta) = std::fs::metadata(&self.input) {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = 0o644 | (meta.permissions().mode() & 0o111);
            let _ = file.set_permissions(std::fs::Permissions::from_mode(mode));
        }
        tmp.persist(file, out)
    }
}

impl crate::Format for Authenticode {
    fn name(&self) -> &'static str {
        "authenticode"
    }

    fn prepare(
        &self,
        input: &Path,
        key: &SignerKey,
        progress: &dyn Fn(u64),
    ) -> Result<Box<dyn Prepared>, FormatError> {
        let alg = self.algorithm;
        check_key(key, alg)?;
        let leaf = leaf(key, "Authenticode")?;
        let (mut file, file_len) = crate::open_sized(input)?;
        let layout = parse_pe(&mut file, file_len, input)?;
        let end = layout.content_end();
        // The table offset is 32 bits; leave room for the signature.
        if end + len64(padding(end)) + (1 << 20) > u64::from(u32::MAX) {
            return Err(FormatError::Invalid(format!(
                "{} is too large to sign: a signed PE file must stay under 4 GiB",
                input.display()
            )));
        }
        let image_hash = image_hash(&mut file, input, &layout, alg, progress)?;
        let idc_der = indirect_data(alg, &image_hash)?;
        let signed_attrs = signed_attrs(alg, &idc_der)?;
        let to_sign = attrs_digest(&signed_attrs, alg)?;
        Ok(Box::new(PreparedAuthenticode {
            input: input.to_path_buf(),
            layout,
            algorithm: alg,
            image_hash,
            idc_der,
            signed_attrs,
            to_sign,
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
        if content.is_some() {
            return Err(FormatError::Invalid(
                "an Authenticode signature is embedded in the PE file: verify takes the signed \
                 file alone"
                    .into(),
            ));
        }
        let name = signed.display();
        let bad = |what: &str| FormatError::Verify(format!("{name}: {what}"));
        let (mut file, file_len) = crate::open_sized(signed)?;
        let layout = parse_pe(&mut file, file_len, signed)?;
        let (table_off, table_len) = layout
            .cert_table
            .ok_or_else(|| bad("not signed: its certificate table is empty"))?;
        if table_len > MAX_CERT_TABLE {
            return Err(bad(&format!(
                "its certificate table of 0x{table_len:x} bytes is implausibly large"
            )));
        }
        let mut checked = vec![format!(
            "{name} is a {} with a certificate table of {table_len} bytes at 0x{table_off:x}, \
             ending the file",
            layout.describe()
        )];

        // The first WIN_CERTIFICATE: a PKCS#7 SignedData, then zero padding.
        let table = read_at(
            &mut file,
            table_off,
            usize::try_from(table_len).map_err(|_| bad("certificate table too large"))?,
            signed,
        )?;
        let entry_len = u32_at(&table, 0)
            .and_then(|l| usize::try_from(l).ok())
            .unwrap_or(0);
        let (rev, kind) = (u16_at(&table, 4), u16_at(&table, 6));
        if entry_len < 8 || entry_len > table.len() {
            return Err(bad(&format!(
                "the certificate table's first entry has length {entry_len}, outside the table"
            )));
        }
        if rev != Some(WIN_CERT_REVISION_2_0) || kind != Some(WIN_CERT_TYPE_PKCS_SIGNED_DATA) {
            return Err(bad(
                "the certificate table's first entry is not a PKCS#7 SignedData \
                 (WIN_CERTIFICATE revision 2.0, type 2)",
            ));
        }
        let body = table.get(8..entry_len).unwrap_or_default();
        let ci = decode_padded(body).map_err(|e| bad(&format!("not PKCS#7 ({e})")))?;
        let sd = crate::signed_data::decode_signed_data(&ci, "the PKCS#7 is not SignedData", &bad)?;
        if sd.encap_content_info.econtent_type != SPC_INDIRECT_DATA {
            return Err(bad("the signed content is not SpcIndirectDataContent"));
        }
        let econtent = sd
            .encap_content_info
            .econtent
            .as_ref()
            .filter(|a| a.tag() == Tag::Sequence)
            .ok_or_else(|| bad("the SpcIndirectDataContent is missing"))?;
        let idc: SpcIndirectDataContent = econtent
            .decode_as()
            .map_err(|e| bad(&format!("the SpcIndirectDataContent does not parse ({e})")))?;
        if idc.data.value_type != SPC_PE_IMAGE_DATA {
            return Err(bad(
                "the signed content is not for a PE image (SpcPeImageData)",
            ));
        }
        let [signer] = sd.signer_infos.0.as_slice() else {
            return Err(bad("not exactly one signer"));
        };
        checked.push(check_signer_cert(&sd, signer, key, &bad)?);

        let (sig_oid, hash_oid) = (signer.signature_algorithm.oid, signer.digest_alg.oid);
        let alg = match sig_oid {
            o if o == rfc5912::ECDSA_WITH_SHA_256 => SignAlgorithm::Es256,
            o if o == rfc5912::ECDSA_WITH_SHA_384 => SignAlgorithm::Es384,
            o if RSA_PKCS1.contains(&o) && hash_oid == rfc5912::ID_SHA_256 => SignAlgorithm::Rs256,
            o if RSA_PKCS1.contains(&o) && hash_oid == rfc5912::ID_SHA_384 => SignAlgorithm::Rs384,
            o if RSA_PKCS1.contains(&o) && hash_oid == rfc5912::ID_SHA_512 => SignAlgorithm::Rs512,
            o => {
                return Err(bad(&format!(
                    "signature algorithm {o} with digest {hash_oid} is not one Influxion makes \
                     for Authenticode"
                )))
            }
        };
        let want = crate::signed_data::hash_oid(alg.hash());
        if signer.digest_alg.oid != want || idc.message_digest.digest_algorithm.oid != want {
            return Err(bad(
                "the digest algorithms do not match the signature algorithm",
            ));
        }

        // One pass over the file: the image hash and the checksum.
        let mut hasher = ImageHasher::new(alg, &layout);
        let mut sum = PeChecksum::new();
        stream(&mut file, signed, file_len, |pos, chunk| {
            hasher.update(pos, chunk);
            patch(chunk, pos, layout.checksum_off, &[0; 4]);
            sum.update(chunk);
            progress(len64(chunk.len()));
            Ok(())
        })?;
        let image_hash = hasher.finish();
        let hash_name = alg.hash().as_str();
        if idc.message_digest.digest.as_bytes() != image_hash.as_slice() {
            return Err(FormatError::Verify(format!(
                "the Authenticode image hash in {name} is not the {hash_name} of the file \
                 (signed {}, file {})",
                hex::encode(idc.message_digest.digest.as_bytes()),
                hex::encode(&image_hash)
            )));
        }
        checked.push(format!(
            "the Authenticode {hash_name} image hash ({}) matches the file: all of it before \
             the certificate table, less the checksum and certificate table entry",
            hex::encode(&image_hash)
        ));

        let (attrs, md) = content_attrs(
            signer,
            SPC_INDIRECT_DATA,
            "the content-type attribute is not SpcIndirectDataContent",
            &bad,
        )?;
        // The messageDigest covers the content's value, without its tag and length.
        if md.as_bytes() != crate::hash_bytes(alg.hash(), econtent.value()).as_slice() {
            return Err(bad(&format!(
                "the message-digest attribute is not the {hash_name} of the SpcIndirectDataContent"
            )));
        }
        checked.push(format!(
            "the message-digest attribute is the {hash_name} of the SpcIndirectDataContent"
        ));

        let names: Vec<&str> = attrs
            .iter()
            .map(|a| match a.oid {
                o if o == rfc5911::ID_CONTENT_TYPE => "content type",
                o if o == rfc5911::ID_MESSAGE_DIGEST => "message digest",
                o if o == rfc5911::ID_SIGNING_TIME => "signing time",
                o if o == SPC_STATEMENT_TYPE => "statement type",
                o if o == SPC_SP_OPUS_INFO => "opus info",
                _ => "other",
            })
            .collect();
        if !crate::signed_data::attrs_signature_verifies(key, signer, attrs, alg)? {
            return Err(bad(&format!(
                "the {alg} signature over the signed attributes does not verify with the key's \
                 public key"
            )));
        }
        checked.push(format!(
            "the {alg} signature over the signed attributes ({}) verifies with the key's public \
             key",
            names.join(", ")
        ));
        if let Some(ts) = crate::tsp::find(signer, crate::tsp::SPC_RFC3161).map_err(|e| bad(&e))? {
            checked.push(ts.to_string());
        }

        let actual = sum.finish();
        if actual != layout.checksum {
            return Err(bad(&format!(
                "the PE checksum is 0x{:08x}, not the file's 0x{actual:08x}",
                layout.checksum
            )));
        }
        checked.push(format!("the PE checksum 0x{actual:08x} is the file's"));
        checked.push(format!(
            "{} certificate(s) included; the chain is not checked against a trust anchor here \
             (osslsigncode verify -CAfile, sbverify --cert and Windows do)",
            sd.certificates.map(|c| c.0.len()).unwrap_or(0)
        ));
        Ok(checked)
    }
}

/// A DER ContentInfo followed by nothing but the zero padding of its WIN_CERTIFICATE.
fn decode_padded(body: &[u8]) -> Result<ContentInfo, der::Error> {
    let mut reader = der::SliceReader::new(body)?;
    let ci = ContentInfo::decode(&mut reader)?;
    let rest_len = reader.remaining_len();
    let rest = reader.read_slice(rest_len)?;
    if rest.len() >= 8 || rest.iter().any(|b| *b != 0) {
        return Err(der::ErrorKind::TrailingData {
            decoded: reader.position(),
            remaining: rest_len,
        }
        .into());
    }
    Ok(ci)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::Format;
    use cms::cert::CertificateChoices;
    use cms::content_info::CmsVersion;
    use cms::signed_data::SignedData;
    use p256::pkcs8::EncodePublicKey;
    use proptest::prelude::*;
    use std::io::Cursor;
    use std::sync::OnceLock;

    fn put16(f: &mut [u8], off: usize, v: u16) {
        f[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put32(f: &mut [u8], off: usize, v: u32) {
        f[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn up(n: usize, align: usize) -> usize {
        n.div_ceil(align) * align
    }

    /// A minimal well-formed PE image: MS-DOS header, PE32 or PE32+ headers, the given
    /// sections (file alignment 0x200) and `trailing` bytes after them.
    fn pe_image(
        pe32plus: bool,
        subsystem: u16,
        sections: &[(&str, &[u8])],
        trailing: &[u8],
    ) -> Vec<u8> {
        let e_lfanew = 0x80;
        let opt_size: usize = if pe32plus { 240 } else { 224 };
        let sect_off = e_lfanew + 24 + opt_size;
        let headers = up(sect_off + 40 * sections.len(), 0x200);
        let mut f = vec![0u8; headers];
        f[..2].copy_from_slice(b"MZ");
        put32(&mut f, 0x3c, u32::try_from(e_lfanew).unwrap());
        f[0x40..0x40 + 16].copy_from_slice(b"not a DOS stub\r\n");
        f[e_lfanew..e_lfanew + 4].copy_from_slice(b"PE\0\0");
        let coff = e_lfanew + 4;
        put16(&mut f, coff, if pe32plus { 0x8664 } else { 0x14c });
        put16(&mut f, coff + 2, u16::try_from(sections.len()).unwrap());
        put16(&mut f, coff + 16, u16::try_from(opt_size).unwrap());
        put16(&mut f, coff + 18, if pe32plus { 0x22 } else { 0x102 });
        let opt = coff + 20;
        put16(&mut f, opt, if pe32plus { 0x20b } else { 0x10b });
        put32(&mut f, opt + 16, 0x1000); // AddressOfEntryPoint
        put32(&mut f, opt + 20, 0x1000); // BaseOfCode
        if pe32plus {
            f[opt + 24..opt + 32].copy_from_slice(&0x1_4000_0000u64.to_le_bytes());
        } else {
            put32(&mut f, opt + 28, 0x40_0000);
        }
        put32(&mut f, opt + 32, 0x1000); // SectionAlignment
        put32(&mut f, opt + 36, 0x200); // FileAlignment
        put16(&mut f, opt + 48, 6); // MajorSubsystemVersion
        put32(&mut f, opt + 60, u32::try_from(headers).unwrap());
        put16(&mut f, opt + 68, subsystem);
        put32(&mut f, opt + if pe32plus { 108 } else { 92 }, 16);
        let mut raw = headers;
        let mut va = 0x1000;
        for (i, (name, data)) in sections.iter().enumerate() {
            let h = sect_off + 40 * i;
            f[h..h + name.len()].copy_from_slice(name.as_bytes());
            put32(&mut f, h + 8, u32::try_from(data.len()).unwrap());
            put32(&mut f, h + 12, va);
            let raw_size = up(data.len(), 0x200);
            put32(&mut f, h + 16, u32::try_from(raw_size).unwrap());
            put32(&mut f, h + 20, u32::try_from(raw).unwrap());
            put32(
                &mut f,
                h + 36,
                if i == 0 { 0x6000_0020 } else { 0x4000_0040 },
            );
            f.extend_from_slice(data);
            f.resize(raw + raw_size, 0);
            raw += raw_size;
            va += u32::try_from(up(data.len().max(1), 0x1000)).unwrap();
        }
        put32(&mut f, opt + 56, va); // SizeOfImage
        f.extend_from_slice(trailing);
        f
    }

    fn sections() -> Vec<(&'static str, Vec<u8>)> {
        let text: Vec<u8> = (0..700u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let data: Vec<u8> = b"Influxion Authenticode test data".repeat(9);
        vec![(".text", text), (".data", data)]
    }

    /// A PE32+ console program whose length is not a multiple of 8.
    fn exe() -> Vec<u8> {
        let s = sections();
        let refs: Vec<(&str, &[u8])> = s.iter().map(|(n, d)| (*n, d.as_slice())).collect();
        pe_image(true, 3, &refs, b"trailing debug data")
    }

    fn efi() -> Vec<u8> {
        let s = sections();
        let refs: Vec<(&str, &[u8])> = s.iter().map(|(n, d)| (*n, d.as_slice())).collect();
        pe_image(true, 10, &refs, b"")
    }

    fn pe32() -> Vec<u8> {
        let s = sections();
        let refs: Vec<(&str, &[u8])> = s.iter().map(|(n, d)| (*n, d.as_slice())).collect();
        pe_image(false, 2, &refs[..1], b"x")
    }

    enum TestKey {
        P256(p256::ecdsa::SigningKey),
        P384(p384::ecdsa::SigningKey),
        Rsa(rsa::RsaPrivateKey),
    }

    fn p256_key() -> TestKey {
        let scalar: Vec<u8> = (1..=32).collect();
        TestKey::P256(p256::ecdsa::SigningKey::from_slice(&scalar).unwrap())
    }

    fn p384_key() -> TestKey {
        let scalar: Vec<u8> = (1..=48).collect();
        TestKey::P384(p384::ecdsa::SigningKey::from_slice(&scalar).unwrap())
    }

    fn rsa_key() -> TestKey {
        static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
        let k = KEY.get_or_init(|| rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 3072).unwrap());
        TestKey::Rsa(k.clone())
    }

    /// A public key for rcgen to certify: the key's bits and the algorithm naming it.
    struct Public(Vec<u8>, &'static rcgen::SignatureAlgorithm);

    impl rcgen::PublicKeyData for Public {
        fn der_bytes(&self) -> &[u8] {
            &self.0
        }

        fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
            self.1
        }
    }

    /// A test PKI: a root, and an intermediate CA that certifies leaves.
    struct Ca {
        root: rcgen::Certificate,
        intermediate: rcgen::Certificate,
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    fn ca_params(name: &str) -> rcgen::CertificateParams {
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params
    }

    fn ca() -> &'static Ca {
        static CA: OnceLock<Ca> = OnceLock::new();
        CA.get_or_init(|| {
            let root_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let root_params = ca_params("Influxion test root CA");
            let root = root_params.self_signed(&root_key).unwrap();
            let root_issuer = rcgen::Issuer::new(root_params, root_key);
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let params = ca_params("Influxion test code signing CA");
            let intermediate = params.signed_by(&key, &root_issuer).unwrap();
            Ca {
                root,
                intermediate,
                issuer: rcgen::Issuer::new(params, key),
            }
        })
    }

    impl TestKey {
        fn spki(&self) -> Vec<u8> {
            match self {
                TestKey::P256(k) => k.verifying_key().to_public_key_der(),
                TestKey::P384(k) => k.verifying_key().to_public_key_der(),
                TestKey::Rsa(k) => rsa::RsaPublicKey::from(k).to_public_key_der(),
            }
            .unwrap()
            .as_bytes()
            .to_vec()
        }

        fn key_type(&self) -> KeyType {
            match self {
                TestKey::P256(_) => KeyType::EcP256,
                TestKey::P384(_) => KeyType::EcP384,
                TestKey::Rsa(_) => KeyType::Rsa3072,
            }
        }

        /// A code signing certificate for the key, issued by the test CA.
        fn leaf(&self) -> rcgen::Certificate {
            use rsa::pkcs1::EncodeRsaPublicKey;
            let public = match self {
                TestKey::P256(k) => Public(
                    k.verifying_key()
                        .to_encoded_point(false)
                        .as_bytes()
                        .to_vec(),
                    &rcgen::PKCS_ECDSA_P256_SHA256,
                ),
                TestKey::P384(k) => Public(
                    k.verifying_key()
                        .to_encoded_point(false)
                        .as_bytes()
                        .to_vec(),
                    &rcgen::PKCS_ECDSA_P384_SHA384,
                ),
                TestKey::Rsa(k) => Public(
                    rsa::RsaPublicKey::from(k)
                        .to_pkcs1_der()
                        .unwrap()
                        .as_bytes()
                        .to_vec(),
                    &rcgen::PKCS_RSA_SHA256,
                ),
            };
            let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
            params.distinguished_name.push(
                rcgen::DnType::CommonName,
                format!("Influxion test signer {}", self.key_type()),
            );
            params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning];
            params.signed_by(&public, &ca().issuer).unwrap()
        }

        fn signer(&self) -> SignerKey {
            SignerKey {
                key_type: self.key_type(),
                public_key_der: self.spki(),
                chain: vec![
                    self.leaf().der().to_vec(),
                    ca().intermediate.der().to_vec(),
                    ca().root.der().to_vec(),
                ],
            }
        }

        /// Sign as the keyserver does: DER ECDSA over the prehash, RSA PKCS#1 v1.5.
        fn sign(&self, d: &Digest) -> Vec<u8> {
            use p256::ecdsa::signature::hazmat::PrehashSigner;
            match self {
                TestKey::P256(k) => {
                    let s: p256::ecdsa::Signature = k.sign_prehash(d.as_bytes()).unwrap();
                    s.to_der().as_bytes().to_vec()
                }
                TestKey::P384(k) => {
                    let s: p384::ecdsa::Signature = k.sign_prehash(d.as_bytes()).unwrap();
                    s.to_der().as_bytes().to_vec()
                }
                TestKey::Rsa(k) => {
                    let scheme = match d.algorithm() {
                        SignAlgorithm::Rs256 => rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
                        SignAlgorithm::Rs384 => rsa::Pkcs1v15Sign::new::<sha2::Sha384>(),
                        _ => rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
                    };
                    k.sign(scheme, d.as_bytes()).unwrap()
                }
            }
        }
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn sign_file(
        alg: SignAlgorithm,
        key: &TestKey,
        input: &Path,
        out: &Path,
    ) -> Result<(), FormatError> {
        let prepared = Authenticode { algorithm: alg }.prepare(input, &key.signer(), &|_| {})?;
        let sig = key.sign(prepared.to_sign());
        prepared.assemble(&sig, out)
    }

    fn verify(
        alg: SignAlgorithm,
        key: &TestKey,
        signed: &Path,
    ) -> Result<Vec<String>, FormatError> {
        Authenticode { algorithm: alg }.verify(signed, None, &key.signer(), &|_| {})
    }

    fn layout_of(bytes: &[u8]) -> PeLayout {
        parse_pe(
            &mut Cursor::new(bytes),
            len64(bytes.len()),
            Path::new("t.exe"),
        )
        .unwrap()
    }

    #[test]
    fn signs_and_verifies_a_pe32plus_image() {
        let dir = tempfile::tempdir().unwrap();
        let input_bytes = exe();
        assert_ne!(input_bytes.len() % 8, 0, "the test wants padding");
        let input = write(dir.path(), "app.exe", &input_bytes);
        let out = dir.path().join("signed.exe");
        let key = p256_key();
        sign_file(SignAlgorithm::Es256, &key, &input, &out).unwrap();
        let checks = verify(SignAlgorithm::Es256, &key, &out).unwrap();
        assert_eq!(checks.len(), 7, "{checks:#?}");
        assert!(
            checks[0].contains("PE32+ Windows console image, 2 section(s)"),
            "{checks:#?}"
        );
        // In DER SET OF order.
        assert!(
            checks[4].contains(
                "ES256 signature over the signed attributes (opus info, content type, signing \
                 time, statement type, message digest) verifies"
            ),
            "{checks:#?}"
        );

        // The output is the input, padded to 8 bytes, then the table; only the checksum
        // and the certificate table entry differ.
        let signed = std::fs::read(&out).unwrap();
        let l = layout_of(&signed);
        let (off, size) = l.cert_table.unwrap();
        let table_off = usize::try_from(off).unwrap();
        assert_eq!(table_off, up(input_bytes.len(), 8));
        assert_eq!(usize::try_from(off + size).unwrap(), signed.len());
        assert_eq!(size % 8, 0);
        let mut expect = input_bytes.clone();
        let (cs, cd) = (
            usize::try_from(l.checksum_off).unwrap(),
            usize::try_from(l.cert_dir_off).unwrap(),
        );
        expect[cs..cs + 4].copy_from_slice(&signed[cs..cs + 4]);
        expect[cd..cd + 8].copy_from_slice(&signed[cd..cd + 8]);
        expect.resize(table_off, 0);
        assert_eq!(&signed[..table_off], expect.as_slice());
        assert_ne!(l.checksum, 0);
        // WIN_CERTIFICATE: dwLength (with its padding), revision 2.0, PKCS_SIGNED_DATA.
        assert_eq!(
            u32_at(&signed, table_off),
            Some(u32::try_from(size).unwrap())
        );
        assert_eq!(u16_at(&signed, table_off + 4), Some(0x0200));
        assert_eq!(u16_at(&signed, table_off + 6), Some(0x0002));
    }

    #[test]
    fn signs_and_verifies_with_each_algorithm() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(SignAlgorithm, TestKey, Vec<u8>); 5] = [
            (SignAlgorithm::Es384, p384_key(), efi()),
            (SignAlgorithm::Rs256, rsa_key(), exe()),
            (SignAlgorithm::Rs384, rsa_key(), pe32()),
            (SignAlgorithm::Rs512, rsa_key(), efi()),
            (SignAlgorithm::Es256, p256_key(), pe32()),
        ];
        for (alg, key, image) in cases {
            let input = write(dir.path(), "in.efi", &image);
            let out = dir.path().join("out.efi");
            sign_file(alg, &key, &input, &out).unwrap();
            let checks = verify(alg, &key, &out).unwrap();
            assert!(
                checks
                    .iter()
                    .any(|c| c.contains(&format!("the {alg} signature"))),
                "{checks:#?}"
            );
            assert!(
                checks.iter().any(|c| c.contains(alg.hash().as_str())),
                "{checks:#?}"
            );
        }
    }

    #[test]
    fn the_pkcs7_has_authenticode_structure() {
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), "app.exe", &exe());
        let out = dir.path().join("signed.exe");
        let key = rsa_key();
        sign_file(SignAlgorithm::Rs256, &key, &input, &out).unwrap();
        let signed = std::fs::read(&out).unwrap();
        let (off, size) = layout_of(&signed).cert_table.unwrap();
        let body = &signed[usize::try_from(off).unwrap() + 8..usize::try_from(off + size).unwrap()];
        let ci = decode_padded(body).unwrap();
        let sd: SignedData = ci.content.decode_as().unwrap();
        assert_eq!(sd.version, CmsVersion::V1);
        assert_eq!(sd.encap_content_info.econtent_type, SPC_INDIRECT_DATA);
        let idc_any = sd.encap_content_info.econtent.unwrap();
        let idc: SpcIndirectDataContent = idc_any.decode_as().unwrap();
        assert_eq!(idc.data.value.unwrap().to_der().unwrap(), PE_IMAGE_DATA);
        assert_eq!(
            idc.message_digest.digest_algorithm,
            digest_alg(SignAlgorithm::Rs256)
        );
        let signer = &sd.signer_infos.0.as_slice()[0];
        assert_eq!(signer.signature_algorithm.oid, rfc5912::RSA_ENCRYPTION);
        // The leaf and the intermediate, not the self-signed root.
        let certs = sd.certificates.unwrap().0;
        assert_eq!(certs.len(), 2);
        assert!(certs
            .iter()
            .all(|c| matches!(c, CertificateChoices::Certificate(c)
            if c.tbs_certificate.subject != c.tbs_certificate.issuer)));
        let attrs = signer.signed_attrs.as_ref().unwrap();
        let oids: Vec<_> = attrs.iter().map(|a| a.oid).collect();
        for o in [
            rfc5911::ID_CONTENT_TYPE,
            rfc5911::ID_MESSAGE_DIGEST,
            SPC_STATEMENT_TYPE,
            SPC_SP_OPUS_INFO,
        ] {
            assert!(oids.contains(&o), "{o}");
        }
        // signingTime as UTCTime, which osslsigncode reads (RFC 5652: until 2049).
        let time = attrs
            .iter()
            .find(|a| a.oid == rfc5911::ID_SIGNING_TIME)
            .unwrap();
        assert_eq!(time.values.get(0).unwrap().tag(), Tag::UtcTime);
        // The statement type is individual code signing, as osslsigncode writes it.
        let st = attrs.iter().find(|a| a.oid == SPC_STATEMENT_TYPE).unwrap();
        assert_eq!(
            st.values.get(0).unwrap().to_der().unwrap(),
            [0x30, 0x0c, 0x06, 0x0a, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x01, 0x15]
        );
    }

    #[test]
    fn image_hash_skips_the_checksum_and_certificate_entry() {
        let bytes = exe();
        let l = layout_of(&bytes);
        let hash = |b: &[u8]| {
            image_hash(
                &mut Cursor::new(b),
                Path::new("t"),
                &layout_of(b),
                SignAlgorithm::Es256,
                &|_| {},
            )
            .unwrap()
        };
        let h = hash(&bytes);
        assert_eq!(
            h,
            image_hash(
                &mut Cursor::new(&bytes),
                Path::new("t"),
                &l,
                SignAlgorithm::Es256,
                &|_| {}
            )
            .unwrap()
        );
        // The hash is of the bytes less the two fields, plus the zero padding.
        let mut expect = Vec::new();
        let (cs, cd) = (
            usize::try_from(l.checksum_off).unwrap(),
            usize::try_from(l.cert_dir_off).unwrap(),
        );
        expect.extend_from_slice(&bytes[..cs]);
        expect.extend_from_slice(&bytes[cs + 4..cd]);
        expect.extend_from_slice(&bytes[cd + 8..]);
        expect.resize(expect.len() + padding(len64(bytes.len())), 0);
        let mut hasher = Hasher::new(influxion_core::key::HashAlg::Sha256);
        hasher.update(&expect);
        assert_eq!(h, hasher.finish());
        // Changing the checksum does not change the hash; changing a section does.
        let mut other = bytes.clone();
        other[usize::try_from(l.checksum_off).unwrap()] ^= 0xff;
        assert_eq!(hash(&other), h);
        other[0x300] ^= 1;
        assert_ne!(hash(&other), h);
    }

    /// The image hashes osslsigncode 2.9 computes for these images when it signs them
    /// (`osslsigncode sign -h sha256|sha384`, then `osslsigncode verify`: "Current
    /// message digest"), and its checksums ("Calculated PE checksum") of even-length
    /// files: it ignores an odd last byte, where imagehlp (and this module) count it; a
    /// signed file is always a multiple of 8 bytes.
    #[test]
    fn image_hash_and_checksum_match_osslsigncode() {
        let cases = [
            (
                exe(),
                "b899a6f7eef3d7d2c9b1d1555438706f560646adcc657849b360ca844753f2b5",
                "0d02bf9d725c7782de96f075a56f065dff6995f35e570816ca1d3996f2e6369c\
                 15d1b21a4cb23c2f9446e92fe2eca195",
            ),
            (
                efi(),
                "7088402a6966bc354d798ca71b83b0550edec84b429091f5af22385c92bdf956",
                "737aeb86f40e38464352be7efea1e456a3f983dd35509e88cdf41ab94dd8117c\
                 2d84a97066ad0a486c58ab8439a72b0c",
            ),
            (
                pe32(),
                "4d20eaf31fb666736a20014db282d549690c6c385b1167e48935bdf3ef653963",
                "c7b33de13852bd08d209aee31c2a261f7e5a763f3c2ecfc700233a3e87d66206\
                 05356122433a7d528e7628eeccf9423e",
            ),
        ];
        for (bytes, sha256, sha384) in cases {
            let l = layout_of(&bytes);
            for (alg, expect) in [
                (SignAlgorithm::Es256, sha256),
                (SignAlgorithm::Es384, sha384),
            ] {
                let h =
                    image_hash(&mut Cursor::new(&bytes), Path::new("t"), &l, alg, &|_| {}).unwrap();
                assert_eq!(hex::encode(h), expect);
            }
        }
        let mut padded = exe();
        padded.resize(up(padded.len(), 8), 0);
        for (bytes, expect) in [(efi(), 0xf140), (padded, 0xa4e0)] {
            let mut sum = PeChecksum::new();
            sum.update(&bytes);
            assert_eq!(sum.finish(), expect);
        }
    }

    #[test]
    fn checksum_and_hash_do_not_depend_on_chunking() {
        let bytes = exe();
        let l = layout_of(&bytes);
        let mut whole = PeChecksum::new();
        whole.update(&bytes);
        let whole = whole.finish();
        let mut h = ImageHasher::new(SignAlgorithm::Es256, &l);
        h.update(0, &bytes);
        let whole_hash = h.finish();
        for step in [1, 3, 7, 64, 0x99] {
            let mut sum = PeChecksum::new();
            let mut h = ImageHasher::new(SignAlgorithm::Es256, &l);
            for (i, c) in bytes.chunks(step).enumerate() {
                sum.update(c);
                h.update(len64(i * step), c);
            }
            assert_eq!(sum.finish(), whole, "step {step}");
            assert_eq!(h.finish(), whole_hash, "step {step}");
        }
    }

    #[test]
    fn tampering_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), "app.exe", &exe());
        let out = dir.path().join("signed.exe");
        let key = p256_key();
        sign_file(SignAlgorithm::Es256, &key, &input, &out).unwrap();
        let signed = std::fs::read(&out).unwrap();
        let l = layout_of(&signed);

        // A byte of a section.
        let mut bad = signed.clone();
        bad[0x400] ^= 1;
        let p = write(dir.path(), "bad1.exe", &bad);
        let err = verify(SignAlgorithm::Es256, &key, &p).unwrap_err();
        assert!(
            matches!(&err, FormatError::Verify(m) if m.contains("image hash")),
            "{err}"
        );

        // The checksum alone: the image hash still matches, the checksum does not.
        let mut bad = signed.clone();
        bad[usize::try_from(l.checksum_off).unwrap()] ^= 1;
        let p = write(dir.path(), "bad2.exe", &bad);
        let err = verify(SignAlgorithm::Es256, &key, &p).unwrap_err();
        assert!(
            matches!(&err, FormatError::Verify(m) if m.contains("PE checksum")),
            "{err}"
        );

        // The signature, near the end of the DER.
        let mut bad = signed.clone();
        let (off, size) = l.cert_table.unwrap();
        let der_len = u32_at(&bad, usize::try_from(off).unwrap()).unwrap();
        assert_eq!(u64::from(der_len), size);
        let last = signed.len() - 1 - signed.iter().rev().take_while(|b| **b == 0).count();
        bad[last - 2] ^= 1;
        let p = write(dir.path(), "bad3.exe", &bad);
        assert!(verify(SignAlgorithm::Es256, &key, &p).is_err());

        // Another key.
        let err = verify(SignAlgorithm::Es256, &rsa_key(), &out).unwrap_err();
        assert!(
            matches!(&err, FormatError::Verify(m) if m.contains("not for the key")),
            "{err}"
        );

        // Unsigned, and a detached content argument.
        let err = verify(SignAlgorithm::Es256, &key, &input).unwrap_err();
        assert!(
            matches!(&err, FormatError::Verify(m) if m.contains("not signed")),
            "{err}"
        );
        let err = Authenticode {
            algorithm: SignAlgorithm::Es256,
        }
        .verify(&out, Some(&input), &key.signer(), &|_| {})
        .unwrap_err();
        assert!(matches!(err, FormatError::Invalid(_)));
    }

    #[test]
    fn resigning_replaces_the_signature() {
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), "app.exe", &exe());
        let first = dir.path().join("first.exe");
        let second = dir.path().join("second.exe");
        sign_file(SignAlgorithm::Es256, &p256_key(), &input, &first).unwrap();
        sign_file(SignAlgorithm::Rs256, &rsa_key(), &first, &second).unwrap();
        verify(SignAlgorithm::Rs256, &rsa_key(), &second).unwrap();
        assert!(verify(SignAlgorithm::Es256, &p256_key(), &second).is_err());
        let (a, b) = (
            std::fs::read(&first).unwrap(),
            std::fs::read(&second).unwrap(),
        );
        let (la, lb) = (layout_of(&a), layout_of(&b));
        assert_eq!(la.content_end(), lb.content_end());
        // Signing in place works too.
        sign_file(SignAlgorithm::Es256, &p256_key(), &second, &second).unwrap();
        verify(SignAlgorithm::Es256, &p256_key(), &second).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn a_timestamp_is_embedded_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), "app.exe", &exe());
        let out = dir.path().join("ts.exe");
        for (alg, key) in [
            (SignAlgorithm::Es256, p256_key()),
            (SignAlgorithm::Rs384, rsa_key()),
        ] {
            let mut prepared = Authenticode { algorithm: alg }
                .prepare(&input, &key.signer(), &|_| {})
                .unwrap();
            let sig = key.sign(prepared.to_sign());
            let token = crate::tsp::test_tsa::token_over(alg.hash(), &sig);
            prepared.set_timestamp(token.clone()).unwrap();
            prepared.assemble(&sig, &out).unwrap();
            let checks = verify(alg, &key, &out).unwrap();
            assert!(
                checks.iter().any(|c| c.starts_with(
                    "RFC 3161 timestamp by CN=Influxion test TSA at 2025-01-02T03:04:05.5Z \
                     over the signature"
                )),
                "{checks:#?}"
            );
            // The token is in the file as the TSA made it.
            let signed = std::fs::read(&out).unwrap();
            assert!(signed.windows(token.len()).any(|w| w == token.as_slice()));

            // A token over another signature is refused when assembling.
            let mut prepared = Authenticode { algorithm: alg }
                .prepare(&input, &key.signer(), &|_| {})
                .unwrap();
            let sig = key.sign(prepared.to_sign());
            prepared
                .set_timestamp(crate::tsp::test_tsa::token_over(alg.hash(), b"other"))
                .unwrap();
            let err = prepared
                .assemble(&sig, &dir.path().join("no.exe"))
                .unwrap_err();
            assert!(
                matches!(&err, FormatError::Invalid(m) if m.contains("over another signature")),
                "{err}"
            );
            assert!(!dir.path().join("no.exe").exists());
        }
        // Not a token at all.
        let mut prepared = Authenticode {
            algorithm: SignAlgorithm::Es256,
        }
        .prepare(&input, &p256_key().signer(), &|_| {})
        .unwrap();
        assert!(prepared.set_timestamp(b"\x30\x00".to_vec()).is_err());
    }

    #[test]
    fn assemble_refuses_an_input_changed_since_prepare() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = exe();
        let input = write(dir.path(), "app.exe", &bytes);
        let key = p256_key();
        let prepared = Authenticode {
            algorithm: SignAlgorithm::Es256,
        }
        .prepare(&input, &key.signer(), &|_| {})
        .unwrap();
        let sig = key.sign(prepared.to_sign());
        let mut changed = bytes.clone();
        changed[0x300] ^= 1;
        std::fs::write(&input, &changed).unwrap();
        let out = dir.path().join("signed.exe");
        let err = prepared.assemble(&sig, &out).unwrap_err();
        assert!(
            matches!(&err, FormatError::Invalid(m) if m.contains("changed")),
            "{err}"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("app.exe")]);
    }

    fn prepare_err(bytes: &[u8]) -> FormatError {
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), "in.exe", bytes);
        match (Authenticode {
            algorithm: SignAlgorithm::Es256,
        })
        .prepare(&input, &p256_key().signer(), &|_| {})
        {
            Err(e) => e,
            Ok(_) => panic!("prepared"),
        }
    }

    fn invalid(bytes: &[u8], needle: &str) {
        let err = prepare_err(bytes);
        assert!(
            matches!(&err, FormatError::Invalid(m) if m.contains(needle)),
            "{needle}: {err}"
        );
    }

    #[test]
    fn refuses_what_is_not_a_complete_pe_file() {
        let good = exe();
        let l = layout_of(&good);
        invalid(b"", "is not a PE file");
        invalid(
            b"\x7fELF and so on, not a PE file at all, long enough to be read",
            "is not a PE file (no MZ",
        );
        invalid(b"MZ", "truncated PE file: the MS-DOS header");
        // An MS-DOS program: MZ, no PE header.
        let mut dos = good[..0x80].to_vec();
        dos.extend_from_slice(&[0u8; 0x80]);
        invalid(&dos, "not a PE file (an MS-DOS executable: no PE signature");
        invalid(&good[..0x80], "PE header offset 0x80 is beyond the end");
        // Cut inside the headers.
        invalid(&good[..0x90], "truncated PE file: the COFF file header");
        invalid(&good[..0x100], "truncated PE file: the optional header");
        invalid(&good[..0x1a0], "truncated PE file: the section table");
        invalid(
            &good[..0x1f0],
            "truncated PE file: the headers (SizeOfHeaders 0x200)",
        );
        // Sections beyond the end.
        invalid(&good[..0x500], "truncated PE file: section \".text\"");
        invalid(&good[..0x700], "truncated PE file: section \".data\"");
        // A wrong magic, no certificate table entry.
        let opt = usize::try_from(l.checksum_off).unwrap() - 64;
        let mut bad = good.clone();
        put16(&mut bad, opt, 0x107);
        invalid(&bad, "neither PE32");
        let mut bad = good.clone();
        put32(&mut bad, opt + 108, 4);
        invalid(&bad, "none for the certificate table");
        // A certificate table that does not end the file.
        let mut bad = good.clone();
        let cd = usize::try_from(l.cert_dir_off).unwrap();
        put32(&mut bad, cd, 0x400);
        put32(&mut bad, cd + 4, 0x10);
        invalid(&bad, "is not a table at the end of the file");
        // A section reaching into the certificate table.
        let mut bad = good.clone();
        let end = u32::try_from(bad.len()).unwrap();
        put32(&mut bad, cd, end - 0x20);
        put32(&mut bad, cd + 4, 0x20);
        let data_hdr = opt + 240 + 40;
        put32(&mut bad, data_hdr + 16, end - 0x20 - 0x600 + 0x10);
        invalid(&bad, "overlaps the certificate table");
    }

    #[test]
    fn refuses_unfit_keys() {
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), "app.exe", &exe());
        let key_unfit = |alg: SignAlgorithm, key: &SignerKey, needle: &str| match (Authenticode {
            algorithm: alg,
        })
        .prepare(&input, key, &|_| {})
        {
            Err(FormatError::KeyUnfit(m)) => assert!(m.contains(needle), "{m}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("prepared"),
        };
        let ed = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let ed = SignerKey {
            key_type: KeyType::Ed25519,
            public_key_der: ed
                .verifying_key()
                .to_public_key_der()
                .unwrap()
                .as_bytes()
                .to_vec(),
            chain: p256_key().signer().chain,
        };
        key_unfit(SignAlgorithm::EdDsa, &ed, "no Ed25519");
        key_unfit(SignAlgorithm::Ps256, &rsa_key().signer(), "PKCS#1 v1.5");
        key_unfit(
            SignAlgorithm::Rs256,
            &p256_key().signer(),
            "cannot sign with RS256",
        );
        let mut no_chain = p256_key().signer();
        no_chain.chain.clear();
        key_unfit(
            SignAlgorithm::Es256,
            &no_chain,
            "Authenticode carries the signer's certificate, and this key has none: give it one with \
             `influxion keys certificate NAME --chain chain.pem` or `keys certify NAME`",
        );
        let mut other = p256_key().signer();
        other.chain = p384_key().signer().chain;
        key_unfit(SignAlgorithm::Es256, &other, "another public key");
    }

    /// With INFLUXION_AUTHENTICODE_OUT set to a directory, sign generated images and any
    /// `*.exe`/`*.efi` there (not `signed-*`) with P-256 and RSA keys, and write the CA
    /// and leaf certificates, for checking with osslsigncode and sbverify by hand.
    #[test]
    fn signs_files_for_external_tools() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::env::var_os("INFLUXION_AUTHENTICODE_OUT")
            .map_or_else(|| tmp.path().to_path_buf(), PathBuf::from);
        std::fs::write(dir.join("root.pem"), ca().root.pem()).unwrap();
        std::fs::write(dir.join("intermediate.pem"), ca().intermediate.pem()).unwrap();
        write(&dir, "gen.exe", &exe());
        write(&dir, "gen.efi", &efi());
        write(&dir, "gen32.exe", &pe32());
        let keys = [
            ("es256", SignAlgorithm::Es256, p256_key()),
            ("rs256", SignAlgorithm::Rs256, rsa_key()),
        ];
        for (tag, _, key) in &keys {
            std::fs::write(dir.join(format!("leaf-{tag}.pem")), key.leaf().pem()).unwrap();
        }
        let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy().into_owned();
                (n.ends_with(".exe") || n.ends_with(".efi")) && !n.starts_with("signed-")
            })
            .collect();
        inputs.sort();
        assert!(inputs.len() >= 3);
        for input in inputs {
            for (tag, alg, key) in &keys {
                let name = input.file_name().unwrap().to_string_lossy().into_owned();
                let out = dir.join(format!("signed-{tag}-{name}"));
                sign_file(*alg, key, &input, &out).unwrap();
                verify(*alg, key, &out).unwrap();
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn the_parser_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
            let _ = parse_pe(&mut Cursor::new(&bytes), len64(bytes.len()), Path::new("p"));
        }

        #[test]
        fn the_parser_never_panics_on_damaged_images(
            edits in proptest::collection::vec((0usize..0x300, any::<u8>()), 1..12),
            cut in 0usize..0x1000,
        ) {
            let mut bytes = exe();
            for (at, b) in edits {
                bytes[at] = b;
            }
            bytes.truncate(cut.max(2));
            if let Ok(l) = parse_pe(&mut Cursor::new(&bytes), len64(bytes.len()), Path::new("p")) {
                // What parses can be hashed without reading past the end.
                image_hash(&mut Cursor::new(&bytes), Path::new("p"), &l, SignAlgorithm::Es256, &|_| {}).unwrap();
            }
        }
    }
}
