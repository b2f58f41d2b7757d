//! MCUboot signed images, byte for byte as `imgtool sign` (mcu-tools/mcuboot,
//! scripts/imgtool) writes them without `--pad`, encryption or compression.
//!
//! An image is a 32-byte header at the start of a `--header-size` region, the image
//! body, the protected TLV area (here: the security counter) and the TLV area (image
//! hash, key hash, signature). The image hash covers the header, the body and the
//! protected TLVs; the keyserver signs that hash, as imgtool does by default: ECDSA
//! P-256 over SHA-256, ECDSA P-384 over SHA-384, RSA-3072 PSS (MGF1-SHA-256, salt 32)
//! over SHA-256, and Ed25519 with the 32-byte SHA-256 hash as its message (not `--pure`).

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use influxion_core::{Digest, KeyType, SignAlgorithm};
use p256::pkcs8::{DecodePublicKey, EncodePublicKey};

use crate::{hash_bytes, open, FormatError, Hasher, Prepared, SignerKey, CHUNK};

/// The first word of an MCUboot image header.
pub const IMAGE_MAGIC: u32 = 0x96f3_b83d;
const HEADER_LEN: usize = 32;
const TLV_INFO_MAGIC: u16 = 0x6907;
const TLV_PROT_INFO_MAGIC: u16 = 0x6908;
const TLV_INFO_LEN: usize = 4;

const TLV_KEYHASH: u16 = 0x01;
const TLV_PUBKEY: u16 = 0x02;
const TLV_SHA256: u16 = 0x10;
const TLV_SHA384: u16 = 0x11;
const TLV_SHA512: u16 = 0x12;
const TLV_ECDSA_SIG: u16 = 0x22;
const TLV_RSA2048: u16 = 0x20;
const TLV_RSA3072: u16 = 0x23;
const TLV_ED25519: u16 = 0x24;
const TLV_SIG_PURE: u16 = 0x25;
const TLV_SEC_CNT: u16 = 0x50;

const F_RAM_LOAD: u32 = 0x20;
const F_ENCRYPTED: u32 = 0x04 | 0x08;
const F_COMPRESSED: u32 = 0x200 | 0x400 | 0x800;

/// What `--pad-header` fills the header region with: imgtool fills it with the
/// erased-flash value, 0xff unless `--erased-val 0`, not with zeros.
const ERASED_VAL: u8 = 0xff;
/// imgtool's `--max-sectors` default, which sizes the trailer of the slot-size check.
const MAX_SECTORS: u64 = 128;
/// The `--align` values imgtool takes.
pub const ALIGNS: [u8; 6] = [1, 2, 4, 8, 16, 32];

/// The options of `imgtool sign` that Influxion supports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McubootOptions {
    /// `--header-size`: the header region, at least 32 bytes.
    pub header_size: u32,
    /// `--pad-header`: the input is a raw binary; the header region is added in front.
    pub pad_header: bool,
    /// `--slot-size`: refuse an image that, with the swap trailer, does not fit.
    pub slot_size: Option<u32>,
    /// `--align`: the flash write size (1, 2, 4, 8, 16 or 32), which sizes the trailer.
    pub align: u8,
    /// `--version` as (major, minor, revision, build); see [`parse_version`].
    pub version: (u8, u8, u16, u32),
    /// `--security-counter`, written as a protected TLV; see [`parse_security_counter`].
    pub security_counter: Option<u32>,
    /// `--load-addr`: a non-zero address marks the image for loading into RAM.
    pub load_addr: Option<u32>,
    /// Accept an already signed image: its TLVs are dropped and its body signed again.
    pub replace_signature: bool,
}

/// The MCUboot format.
pub struct Mcuboot {
    pub options: McubootOptions,
}

/// Parse `maj.min.rev+build` with later parts optional, as imgtool's `--version` does
/// (no leading zeros, the build only after a revision).
pub fn parse_version(s: &str) -> Result<(u8, u8, u16, u32), FormatError> {
    let bad = || {
        FormatError::Invalid(format!(
            "version {s:?}: expected maj.min.rev+build with later parts optional"
        ))
    };
    let (core, build) = match s.split_once('+') {
        Some((core, build)) => (core, Some(build)),
        None => (s, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() > 3 || (build.is_some() && parts.len() != 3) {
        return Err(bad());
    }
    let number = |p: &str| -> Result<u64, FormatError> {
        let canonical = !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && (p == "0" || !p.starts_with('0'));
        if !canonical {
            return Err(bad());
        }
        p.parse::<u64>().map_err(|_| bad())
    };
    let part = |i: usize| parts.get(i).map_or(Ok(0), |p| number(p));
    let too_big = |what: &str, max: u64| {
        FormatError::Invalid(format!("version {s:?}: the {what} is at most {max}"))
    };
    let major = u8::try_from(part(0)?).map_err(|_| too_big("major", 255))?;
    let minor = u8::try_from(part(1)?).map_err(|_| too_big("minor", 255))?;
    let revision = u16::try_from(part(2)?).map_err(|_| too_big("revision", 65535))?;
    let build = match build {
        Some(b) => u32::try_from(number(b)?).map_err(|_| too_big("build", 4294967295))?,
        None => 0,
    };
    Ok((major, minor, revision, build))
}

/// The security counter imgtool derives from the version for `--security-counter auto`.
pub fn auto_security_counter(version: (u8, u8, u16, u32)) -> u32 {
    let (major, minor, revision, _) = version;
    (u32::from(major) << 24) | (u32::from(minor) << 16) | u32::from(revision)
}

/// Parse `--security-counter`: `auto` (derived from `version`) or an integer literal
/// as imgtool reads one (decimal, or with a 0x, 0o or 0b prefix).
pub fn parse_security_counter(s: &str, version: (u8, u8, u16, u32)) -> Result<u32, FormatError> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("auto") {
        return Ok(auto_security_counter(version));
    }
    let bad = || {
        FormatError::Invalid(format!(
            "security counter {s:?}: expected auto or an integer (0x, 0o, 0b prefixes allowed)"
        ))
    };
    let lower = t.to_ascii_lowercase();
    let (digits, radix) = if let Some(d) = lower.strip_prefix("0x") {
        (d, 16)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (d, 8)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (d, 2)
    } else {
        // Python's int(s, 0) refuses decimal literals with leading zeros.
        if t.len() > 1 && t.starts_with('0') && !t.bytes().all(|b| b == b'0') {
            return Err(bad());
        }
        (lower.as_str(), 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(bad());
    }
    u32::from_str_radix(digits, radix).map_err(|_| {
        FormatError::Invalid(format!("security counter {s:?} does not fit in 32 bits"))
    })
}

/// How one key type signs an MCUboot image.
#[derive(Debug, Clone, Copy)]
struct Profile {
    alg: SignAlgorithm,
    hash_tlv: u16,
    sig_tlv: u16,
    name: &'static str,
    /// The shortest and longest signature the TLV may hold.
    sig_len: (usize, usize),
}

fn profile(key_type: KeyType) -> Result<Profile, FormatError> {
    Ok(match key_type {
        KeyType::EcP256 => Profile {
            alg: SignAlgorithm::Es256,
            hash_tlv: TLV_SHA256,
            sig_tlv: TLV_ECDSA_SIG,
            name: "ECDSA P-256",
            sig_len: (8, 72),
        },
        KeyType::EcP384 => Profile {
            alg: SignAlgorithm::Es384,
            hash_tlv: TLV_SHA384,
            sig_tlv: TLV_ECDSA_SIG,
            name: "ECDSA P-384",
            sig_len: (8, 104),
        },
        KeyType::Ed25519 => Profile {
            alg: SignAlgorithm::EdDsa,
            hash_tlv: TLV_SHA256,
            sig_tlv: TLV_ED25519,
            name: "Ed25519",
            sig_len: (64, 64),
        },
        KeyType::Rsa2048 => Profile {
            alg: SignAlgorithm::Ps256,
            hash_tlv: TLV_SHA256,
            sig_tlv: TLV_RSA2048,
            name: "RSA-2048 PSS",
            sig_len: (256, 256),
        },
        KeyType::Rsa3072 => Profile {
            alg: SignAlgorithm::Ps256,
            hash_tlv: TLV_SHA256,
            sig_tlv: TLV_RSA3072,
            name: "RSA-3072 PSS",
            sig_len: (384, 384),
        },
        KeyType::Rsa4096 => {
            return Err(FormatError::KeyUnfit(format!(
                "MCUboot cannot take a {key_type} key: it verifies ec-p256, ec-p384, \
                 ed25519, rsa-2048 and rsa-3072 keys"
            )))
        }
    })
}

fn hash_name(tlv: u16) -> &'static str {
    match tlv {
        TLV_SHA256 => "SHA-256",
        TLV_SHA384 => "SHA-384",
        TLV_SHA512 => "SHA-512",
        _ => "unknown",
    }
}

/// The public key bytes imgtool hashes into the KEYHASH TLV: the DER
/// SubjectPublicKeyInfo for ECDSA and Ed25519, the PKCS#1 RSAPublicKey for RSA.
/// Re-encoded from the parsed key so that the bytes are canonical, as imgtool's are.
fn public_bytes(key: &SignerKey) -> Result<Vec<u8>, FormatError> {
    let unfit = || {
        FormatError::KeyUnfit(format!(
            "the public key does not parse as an {} key",
            key.key_type
        ))
    };
    let der = &key.public_key_der;
    let doc = match key.key_type {
        KeyType::EcP256 => p256::PublicKey::from_public_key_der(der)
            .map_err(|_| unfit())?
            .to_public_key_der()
            .map_err(|_| unfit())?,
        KeyType::EcP384 => p384::PublicKey::from_public_key_der(der)
            .map_err(|_| unfit())?
            .to_public_key_der()
            .map_err(|_| unfit())?,
        KeyType::Ed25519 => ed25519_dalek::VerifyingKey::from_public_key_der(der)
            .map_err(|_| unfit())?
            .to_public_key_der()
            .map_err(|_| unfit())?,
        KeyType::Rsa2048 | KeyType::Rsa3072 => {
            use rsa::pkcs1::EncodeRsaPublicKey;
            use rsa::traits::PublicKeyParts;
            let k = rsa::RsaPublicKey::from_public_key_der(der).map_err(|_| unfit())?;
            let bytes = if key.key_type == KeyType::Rsa2048 {
                256
            } else {
                384
            };
            if k.size() != bytes {
                return Err(unfit());
            }
            let pkcs1 = k.to_pkcs1_der().map_err(|_| unfit())?;
            return Ok(pkcs1.as_bytes().to_vec());
        }
        KeyType::Rsa4096 => return Err(unfit()),
    };
    Ok(doc.as_bytes().to_vec())
}

/// The image header, little endian as imgtool writes it (`--endian little`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    load_addr: u32,
    hdr_size: u16,
    /// The protected TLV area with its info header; 0 when there is none.
    protect_tlv_size: u16,
    /// The body, without the header region.
    img_size: u32,
    flags: u32,
    version: (u8, u8, u16, u32),
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Header {
    fn to_bytes(self) -> [u8; HEADER_LEN] {
        let (major, minor, revision, build) = self.version;
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&IMAGE_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.load_addr.to_le_bytes());
        b[8..10].copy_from_slice(&self.hdr_size.to_le_bytes());
        b[10..12].copy_from_slice(&self.protect_tlv_size.to_le_bytes());
        b[12..16].copy_from_slice(&self.img_size.to_le_bytes());
        b[16..20].copy_from_slice(&self.flags.to_le_bytes());
        b[20] = major;
        b[21] = minor;
        b[22..24].copy_from_slice(&revision.to_le_bytes());
        b[24..28].copy_from_slice(&build.to_le_bytes());
        // 28..32: pad, zero.
        b
    }

    /// `None` when the magic is not MCUboot's.
    fn parse(b: &[u8; HEADER_LEN]) -> Option<Header> {
        if le32(b, 0) != IMAGE_MAGIC {
            return None;
        }
        Some(Header {
            load_addr: le32(b, 4),
            hdr_size: le16(b, 8),
            protect_tlv_size: le16(b, 10),
            img_size: le32(b, 12),
            flags: le32(b, 16),
            version: (b[20], b[21], le16(b, 22), le32(b, 24)),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Tlv {
    kind: u16,
    value: Vec<u8>,
}

/// A signed image's structure, as the bootloader walks it.
#[derive(Debug)]
struct Layout {
    header: Header,
    /// The protected TLVs, empty if there are none.
    protected: Vec<Tlv>,
    /// Where the (unprotected) TLV area starts: the end of what the image hash covers.
    hashed_len: u64,
    tlvs: Vec<Tlv>,
    /// The end of the TLV area; a padded image (`imgtool --pad`) has its trailer beyond.
    end: u64,
}

/// Serialise a TLV area with its info header; empty when there are no entries, as
/// imgtool omits an empty protected area.
fn tlv_area(magic: u16, entries: &[(u16, &[u8])]) -> Result<Vec<u8>, FormatError> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let too_big = || FormatError::Invalid("the TLV area exceeds 64 KiB".into());
    let mut out = vec![0u8; TLV_INFO_LEN];
    for (kind, value) in entries {
        let len = u16::try_from(value.len()).map_err(|_| too_big())?;
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(value);
    }
    let total = u16::try_from(out.len()).map_err(|_| too_big())?;
    out[0..2].copy_from_slice(&magic.to_le_bytes());
    out[2..4].copy_from_slice(&total.to_le_bytes());
    Ok(out)
}

fn parse_entries(area: &[u8], what: &str) -> Result<Vec<Tlv>, String> {
    let mut tlvs = Vec::new();
    let mut at = 0usize;
    while at < area.len() {
        let head = area
            .get(at..at + 4)
            .ok_or_else(|| format!("the {what} ends inside a TLV header"))?;
        let kind = le16(head, 0);
        let len = usize::from(le16(head, 2));
        let value = area
            .get(at + 4..at + 4 + len)
            .ok_or_else(|| format!("TLV 0x{kind:02x} runs past the end of the {what}"))?;
        tlvs.push(Tlv {
            kind,
            value: value.to_vec(),
        });
        at += 4 + len;
    }
    Ok(tlvs)
}

/// Read a TLV area (info header and entries) at `off`. `None` when fewer than four
/// bytes are left.
fn read_area<R: Read + Seek>(
    r: &mut R,
    off: u64,
    file_len: u64,
    path: &Path,
) -> Result<Option<(u16, Vec<u8>)>, FormatError> {
    if off.saturating_add(4) > file_len {
        return Ok(None);
    }
    let io = |e| FormatError::io(path, e);
    r.seek(SeekFrom::Start(off)).map_err(io)?;
    let mut info = [0u8; TLV_INFO_LEN];
    r.read_exact(&mut info).map_err(io)?;
    let (magic, total) = (le16(&info, 0), le16(&info, 2));
    if usize::from(total) < TLV_INFO_LEN || off + u64::from(total) > file_len {
        return Err(FormatError::Invalid(format!(
            "the TLV area at 0x{off:x} is 0x{total:x} bytes long, which does not fit the file \
             (0x{file_len:x} bytes)"
        )));
    }
    let mut body = vec![0u8; usize::from(total) - TLV_INFO_LEN];
    r.read_exact(&mut body).map_err(io)?;
    Ok(Some((magic, body)))
}

/// Parse an image's header and TLV areas, checking that they agree with each other
/// and with the file's length.
fn read_layout<R: Read + Seek>(
    r: &mut R,
    file_len: u64,
    path: &Path,
) -> Result<Layout, FormatError> {
    let invalid = |m: String| FormatError::Invalid(format!("{}: {m}", path.display()));
    if file_len < 32 {
        return Err(invalid(format!(
            "{file_len} bytes is shorter than the 32-byte MCUboot header"
        )));
    }
    let mut hb = [0u8; HEADER_LEN];
    r.seek(SeekFrom::Start(0))
        .and_then(|_| r.read_exact(&mut hb))
        .map_err(|e| FormatError::io(path, e))?;
    let header = Header::parse(&hb)
        .ok_or_else(|| invalid("no MCUboot image magic (0x96f3b83d): not a signed image".into()))?;
    if usize::from(header.hdr_size) < HEADER_LEN {
        return Err(invalid(format!(
            "the header size 0x{:x} is smaller than the header itself",
            header.hdr_size
        )));
    }
    let body_end = u64::from(header.hdr_size) + u64::from(header.img_size);
    let disagree = |m: String| invalid(format!("header sizes disagree with the file: {m}"));
    if body_end > file_len {
        return Err(disagree(format!(
            "header 0x{:x} + image 0x{:x} bytes run past the end of the file (0x{file_len:x} bytes)",
            header.hdr_size, header.img_size
        )));
    }
    let no_area = || disagree(format!("no TLV area follows the image at 0x{body_end:x}"));
    let first = read_area(r, body_end, file_len, path)?.ok_or_else(no_area)?;
    let (protected, hashed_len, area) = if first.0 == TLV_PROT_INFO_MAGIC {
        let size = first.1.len() + TLV_INFO_LEN;
        if size != usize::from(header.protect_tlv_size) {
            return Err(disagree(format!(
                "the protected TLV area is 0x{size:x} bytes, the header says 0x{:x}",
                header.protect_tlv_size
            )));
        }
        let protected = parse_entries(&first.1, "protected TLV area").map_err(invalid)?;
        let hashed_len = body_end + u64::from(header.protect_tlv_size);
        let area = read_area(r, hashed_len, file_len, path)?.ok_or_else(no_area)?;
        (protected, hashed_len, area)
    } else {
        if header.protect_tlv_size != 0 {
            return Err(disagree(format!(
                "the header announces 0x{:x} bytes of protected TLVs, none follow the image",
                header.protect_tlv_size
            )));
        }
        (Vec::new(), body_end, first)
    };
    if area.0 != TLV_INFO_MAGIC {
        return Err(disagree(format!(
            "no TLV area (magic 0x6907) at 0x{hashed_len:x}, found 0x{:04x}",
            area.0
        )));
    }
    let tlvs = parse_entries(&area.1, "TLV area").map_err(invalid)?;
    // read_area checked that the area fits the file.
    let end = hashed_len + u64::try_from(area.1.len() + TLV_INFO_LEN).unwrap_or(u64::MAX);
    Ok(Layout {
        header,
        protected,
        hashed_len,
        tlvs,
        end,
    })
}

/// The swap-status trailer imgtool reserves at the end of the slot when it checks
/// `--slot-size` (swap mode, no encryption, `--max-sectors` 128, `--max-align` unset).
fn trailer_size(align: u8) -> u64 {
    let align = u64::from(align);
    let max_align = align.max(8);
    let magic_align = 16u64.div_ceil(max_align) * max_align;
    MAX_SECTORS * 3 * align + max_align * 4 + magic_align
}

fn check_slot(options: &McubootOptions, image_len: u64) -> Result<(), FormatError> {
    // imgtool skips the check for a slot size of 0.
    let Some(slot) = options.slot_size.filter(|s| *s > 0) else {
        return Ok(());
    };
    let trailer = trailer_size(options.align);
    if image_len + trailer > u64::from(slot) {
        return Err(FormatError::Invalid(format!(
            "image size (0x{image_len:x}) + trailer (0x{trailer:x}) exceeds --slot-size 0x{slot:x}"
        )));
    }
    Ok(())
}

/// The unprotected TLV area's length for a signature of `sig_len` bytes.
fn tlv_area_len(profile: &Profile, sig_len: usize) -> u64 {
    let hash = profile.alg.digest_len();
    let len = TLV_INFO_LEN + (4 + hash) + (4 + hash) + (4 + sig_len);
    u64::try_from(len).unwrap_or(u64::MAX)
}

/// Feed `len` bytes of `file` from `off` to `sink` in chunks.
fn stream(
    file: &mut File,
    path: &Path,
    off: u64,
    len: u64,
    mut sink: impl FnMut(&[u8]) -> Result<(), FormatError>,
) -> Result<(), FormatError> {
    let io = |e| FormatError::io(path, e);
    file.seek(SeekFrom::Start(off)).map_err(io)?;
    let mut reader = file.take(len);
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    loop {
        let n = reader.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        sink(&buf[..n])?;
        left = left.saturating_sub(u64::try_from(n).unwrap_or(u64::MAX));
    }
    if left != 0 {
        return Err(FormatError::Invalid(format!(
            "{} ended 0x{left:x} bytes early: did it change while being read?",
            path.display()
        )));
    }
    Ok(())
}

/// Where the image body comes from, and what fills the header region after the
/// 32-byte header.
struct Source {
    fill: Vec<u8>,
    body_off: u64,
    body_len: u64,
}

impl Mcuboot {
    fn check_options(&self) -> Result<u16, FormatError> {
        let o = &self.options;
        let header_size = u16::try_from(o.header_size)
            .ok()
            .filter(|h| usize::from(*h) >= HEADER_LEN)
            .ok_or_else(|| {
                FormatError::Invalid(format!(
                    "--header-size 0x{:x}: MCUboot takes 0x20 to 0xffff bytes",
                    o.header_size
                ))
            })?;
        if !ALIGNS.contains(&o.align) {
            return Err(FormatError::Invalid(format!(
                "--align {}: imgtool takes 1, 2, 4, 8, 16 or 32",
                o.align
            )));
        }
        Ok(header_size)
    }

    /// Decide what part of `input` is the image body.
    fn source(
        &self,
        file: &mut File,
        input: &Path,
        file_len: u64,
        header_size: u16,
    ) -> Result<Source, FormatError> {
        let o = &self.options;
        let io = |e| FormatError::io(input, e);
        let hs = usize::from(header_size);
        let mut lead = [0u8; 4];
        if file_len >= 4 {
            file.read_exact(&mut lead).map_err(io)?;
        }
        if u32::from_le_bytes(lead) == IMAGE_MAGIC {
            if !o.replace_signature {
                return Err(FormatError::Invalid(format!(
                    "{} is already a signed MCUboot image; pass --replace-signature to sign \
                     its image again",
                    input.display()
                )));
            }
            let layout = read_layout(file, file_len, input)?;
            let h = layout.header;
            if layout.end != file_len {
                return Err(FormatError::Invalid(format!(
                    "{}: header sizes disagree with the file: its TLV area ends at 0x{:x}, the \
                     file is 0x{file_len:x} bytes (a padded image cannot be re-signed)",
                    input.display(),
                    layout.end
                )));
            }
            if h.hdr_size != header_size {
                return Err(FormatError::Invalid(format!(
                    "{}: the signed image's header is 0x{:x} bytes, --header-size says 0x{hs:x}",
                    input.display(),
                    h.hdr_size
                )));
            }
            if h.flags & (F_ENCRYPTED | F_COMPRESSED) != 0 {
                return Err(FormatError::Invalid(format!(
                    "{}: the image is encrypted or compressed (flags 0x{:x}) and cannot be \
                     re-signed",
                    input.display(),
                    h.flags
                )));
            }
            // Keep the old header region's fill: zeros, or 0xff from --pad-header.
            let mut fill = vec![0u8; hs - HEADER_LEN];
            file.seek(SeekFrom::Start(32))
                .and_then(|_| file.read_exact(&mut fill))
                .map_err(io)?;
            return Ok(Source {
                fill,
                body_off: u64::from(h.hdr_size),
                body_len: u64::from(h.img_size),
            });
        }
        if o.pad_header {
            return Ok(Source {
                fill: vec![ERASED_VAL; hs - HEADER_LEN],
                body_off: 0,
                body_len: file_len,
            });
        }
        if file_len < u64::from(header_size) {
            return Err(FormatError::Invalid(format!(
                "{} is 0x{file_len:x} bytes, shorter than the 0x{hs:x}-byte header region \
                 (--header-size); pass --pad-header to add a header to a raw binary",
                input.display()
            )));
        }
        let mut region = vec![0u8; hs];
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.read_exact(&mut region))
            .map_err(io)?;
        if region.iter().any(|b| *b != 0) {
            return Err(FormatError::Invalid(format!(
                "{} does not start with 0x{hs:x} zero bytes for the MCUboot header; pass \
                 --pad-header to add a header to a raw binary",
                input.display()
            )));
        }
        Ok(Source {
            fill: vec![0u8; hs - HEADER_LEN],
            body_off: u64::from(header_size),
            body_len: file_len - u64::from(header_size),
        })
    }
}

struct PreparedMcuboot {
    input: PathBuf,
    options: McubootOptions,
    profile: Profile,
    header: [u8; HEADER_LEN],
    source: Source,
    protected: Vec<u8>,
    key_hash: Vec<u8>,
    digest: Digest,
}

impl PreparedMcuboot {
    fn image_len(&self, sig_len: usize) -> u64 {
        let fixed = HEADER_LEN + self.source.fill.len() + self.protected.len();
        u64::try_from(fixed).unwrap_or(u64::MAX)
            + self.source.body_len
            + tlv_area_len(&self.profile, sig_len)
    }

    fn write(&self, tlvs: &[u8], w: &mut impl Write, out: &Path) -> Result<(), FormatError> {
        let wio = |e| FormatError::io(out, e);
        let mut file = open(&self.input)?;
        let mut hasher = Hasher::new(self.profile.alg.hash());
        hasher.update(&self.header);
        hasher.update(&self.source.fill);
        w.write_all(&self.header).map_err(wio)?;
        w.write_all(&self.source.fill).map_err(wio)?;
        stream(
            &mut file,
            &self.input,
            self.source.body_off,
            self.source.body_len,
            |chunk| {
                hasher.update(chunk);
                w.write_all(chunk).map_err(wio)
            },
        )?;
        hasher.update(&self.protected);
        // The signature is over the input as prepared; refuse one that changed since.
        if hasher.finish() != self.digest.as_bytes() {
            return Err(FormatError::Invalid(format!(
                "{} changed after it was prepared: the signature is over its old content",
                self.input.display()
            )));
        }
        w.write_all(&self.protected).map_err(wio)?;
        w.write_all(tlvs).map_err(wio)?;
        w.flush().map_err(wio)
    }
}

impl Prepared for PreparedMcuboot {
    fn to_sign(&self) -> &Digest {
        &self.digest
    }

    fn assemble(self: Box<Self>, signature: &[u8], out: &Path) -> Result<(), FormatError> {
        let p = self.profile;
        let (min, max) = p.sig_len;
        if !(min..=max).contains(&signature.len()) {
            return Err(FormatError::Invalid(format!(
                "a {} signature of {} bytes does not fit MCUboot's {}-{} bytes",
                p.name,
                signature.len(),
                min,
                max
            )));
        }
        let tlvs = tlv_area(
            TLV_INFO_MAGIC,
            &[
                (p.hash_tlv, self.digest.as_bytes()),
                (TLV_KEYHASH, &self.key_hash),
                (p.sig_tlv, signature),
            ],
        )?;
        check_slot(&self.options, self.image_len(signature.len()))?;
        let (tmp, file) = crate::temp_next_to(out)?;
        let mut w = BufWriter::with_capacity(CHUNK, file);
        self.write(&tlvs, &mut w, out)?;
        let file = w
            .into_inner()
            .map_err(|e| FormatError::io(out, e.into_error()))?;
        tmp.persist(file, out)
    }
}

impl crate::Format for Mcuboot {
    fn name(&self) -> &'static str {
        "mcuboot"
    }

    fn prepare(
        &self,
        input: &Path,
        key: &SignerKey,
        progress: &dyn Fn(u64),
    ) -> Result<Box<dyn Prepared>, FormatError> {
        let profile = profile(key.key_type)?;
        let key_hash = hash_bytes(profile.alg.hash(), &public_bytes(key)?);
        let header_size = self.check_options()?;
        let o = &self.options;
        let (mut file, file_len) = crate::open_sized(input)?;
        let source = self.source(&mut file, input, file_len, header_size)?;
        let img_size = u32::try_from(source.body_len).map_err(|_| {
            FormatError::Invalid(format!(
                "{}: an image of 0x{:x} bytes exceeds MCUboot's 32-bit image size",
                input.display(),
                source.body_len
            ))
        })?;
        let counter = o.security_counter.map(u32::to_le_bytes);
        let protected_entries: Vec<(u16, &[u8])> = counter
            .as_ref()
            .map(|c| (TLV_SEC_CNT, c.as_slice()))
            .into_iter()
            .collect();
        let protected = tlv_area(TLV_PROT_INFO_MAGIC, &protected_entries)?;
        let load_addr = o.load_addr.unwrap_or(0);
        let header = Header {
            load_addr,
            hdr_size: header_size,
            protect_tlv_size: u16::try_from(protected.len())
                .map_err(|_| FormatError::Invalid("protected TLVs exceed 64 KiB".into()))?,
            img_size,
            flags: if load_addr != 0 { F_RAM_LOAD } else { 0 },
            version: o.version,
        }
        .to_bytes();
        // Refuse early what cannot fit even with the shortest signature; assemble checks
        // again with the signature's real length, as imgtool does.
        let fixed =
            u64::try_from(HEADER_LEN + source.fill.len() + protected.len()).unwrap_or(u64::MAX);
        check_slot(
            o,
            fixed + source.body_len + tlv_area_len(&profile, profile.sig_len.0),
        )?;

        let mut hasher = Hasher::new(profile.alg.hash());
        hasher.update(&header);
        hasher.update(&source.fill);
        stream(
            &mut file,
            input,
            source.body_off,
            source.body_len,
            |chunk| {
                hasher.update(chunk);
                progress(u64::try_from(chunk.len()).unwrap_or(0));
                Ok(())
            },
        )?;
        hasher.update(&protected);
        let digest = Digest::new(profile.alg, hasher.finish())
            .map_err(|e| FormatError::Invalid(e.to_string()))?;
        let prepared = PreparedMcuboot {
            input: input.to_path_buf(),
            options: o.clone(),
            profile,
            header,
            source,
            protected,
            key_hash,
            digest,
        };
        Ok(Box::new(prepared))
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
                "an MCUboot image carries its signature: verify takes no content file".into(),
            ));
        }
        let p = profile(key.key_type)?;
        let public = public_bytes(key)?;
        let (mut file, file_len) = crate::open_sized(signed)?;
        let layout = read_layout(&mut file, file_len, signed)?;
        let h = layout.header;
        let (major, minor, revision, build) = h.version;
        let counter = layout
            .protected
            .iter()
            .find(|t| t.kind == TLV_SEC_CNT && t.value.len() == 4)
            .map(|t| format!(", security counter {}", le32(&t.value, 0)))
            .unwrap_or_default();
        let mut checks = vec![format!(
            "MCUboot header and TLV areas agree with the file (version \
             {major}.{minor}.{revision}+{build}, image {} bytes{counter})",
            h.img_size
        )];
        let find = |kind: u16| layout.tlvs.iter().filter(move |t| t.kind == kind);

        if find(TLV_SIG_PURE).next().is_some() {
            return Err(FormatError::Verify(
                "the image has a pure signature (imgtool --pure), which is not checked here".into(),
            ));
        }
        let Some(hash_tlv) = layout
            .tlvs
            .iter()
            .find(|t| matches!(t.kind, TLV_SHA256 | TLV_SHA384 | TLV_SHA512))
        else {
            return Err(FormatError::Verify(
                "image hash: the image has no hash TLV".into(),
            ));
        };
        if hash_tlv.kind != p.hash_tlv {
            return Err(FormatError::Verify(format!(
                "image hash: the image is hashed with {}, a {} key signs {}",
                hash_name(hash_tlv.kind),
                p.name,
                hash_name(p.hash_tlv)
            )));
        }
        let mut hasher = Hasher::new(p.alg.hash());
        stream(&mut file, signed, 0, layout.hashed_len, |chunk| {
            hasher.update(chunk);
            progress(u64::try_from(chunk.len()).unwrap_or(0));
            Ok(())
        })?;
        let image_hash = hasher.finish();
        if image_hash != hash_tlv.value {
            let encrypted = if h.flags & F_ENCRYPTED != 0 {
                " (the image is encrypted: its hash covers the plaintext)"
            } else {
                ""
            };
            return Err(FormatError::Verify(format!(
                "image hash {}: the image hashes to {}, its hash TLV says {}{encrypted}",
                hash_name(p.hash_tlv),
                hex::encode(&image_hash),
                hex::encode(&hash_tlv.value)
            )));
        }
        checks.push(format!(
            "image hash {} {} matches the header, image and protected TLVs",
            hash_name(p.hash_tlv),
            hex::encode(&image_hash)
        ));

        let key_hash = hash_bytes(p.alg.hash(), &public);
        if let Some(t) = find(TLV_KEYHASH).next() {
            if t.value != key_hash {
                return Err(FormatError::Verify(format!(
                    "key hash: the image names key hash {}, the key's is {}",
                    hex::encode(&t.value),
                    hex::encode(&key_hash)
                )));
            }
            checks.push(format!(
                "key hash {} matches the key",
                hex::encode(&key_hash)
            ));
        } else if let Some(t) = find(TLV_PUBKEY).next() {
            if t.value != public {
                return Err(FormatError::Verify(
                    "public key: the image carries another public key".into(),
                ));
            }
            checks.push("public key TLV matches the key".into());
        } else {
            return Err(FormatError::Verify(
                "key hash: the image names no key (no KEYHASH or PUBKEY TLV)".into(),
            ));
        }

        let digest =
            Digest::new(p.alg, image_hash).map_err(|e| FormatError::Verify(e.to_string()))?;
        let mut found = false;
        for t in find(p.sig_tlv) {
            found = true;
            let mut sig = t.value.as_slice();
            // imgtool --pad-sig pads ECDSA signatures with zeros after the DER.
            if p.sig_tlv == TLV_ECDSA_SIG && sig.len() >= 2 && sig[0] == 0x30 {
                let der_len = usize::from(sig[1]) + 2;
                sig = sig.get(..der_len).unwrap_or(sig);
            }
            if crate::signature_verifies(key, &digest, sig)? {
                checks.push(format!(
                    "{} signature verifies with the key's public key",
                    p.name
                ));
                return Ok(checks);
            }
        }
        Err(FormatError::Verify(if found {
            format!(
                "signature: the {} signature does not verify with the key",
                p.name
            )
        } else {
            format!(
                "signature: the image has no {} signature TLV (type 0x{:02x})",
                p.name, p.sig_tlv
            )
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::Format;
    use influxion_core::key::HashAlg;
    use proptest::prelude::*;
    use std::io::Cursor;
    use std::sync::OnceLock;

    enum TestKey {
        P256(p256::ecdsa::SigningKey),
        P384(p384::ecdsa::SigningKey),
        Ed(ed25519_dalek::SigningKey),
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

    fn ed_key() -> TestKey {
        let seed: [u8; 32] = core::array::from_fn(|i| u8::try_from(i).unwrap());
        TestKey::Ed(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    fn rsa_key() -> TestKey {
        static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
        let k = KEY.get_or_init(|| rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 3072).unwrap());
        TestKey::Rsa(k.clone())
    }

    impl TestKey {
        fn signer(&self) -> SignerKey {
            let (key_type, der) = match self {
                TestKey::P256(k) => (KeyType::EcP256, k.verifying_key().to_public_key_der()),
                TestKey::P384(k) => (KeyType::EcP384, k.verifying_key().to_public_key_der()),
                TestKey::Ed(k) => (KeyType::Ed25519, k.verifying_key().to_public_key_der()),
                TestKey::Rsa(k) => (
                    KeyType::Rsa3072,
                    rsa::RsaPublicKey::from(k).to_public_key_der(),
                ),
            };
            SignerKey {
                key_type,
                public_key_der: der.unwrap().as_bytes().to_vec(),
                chain: vec![],
            }
        }

        /// Sign as the keyserver does: DER ECDSA over the prehash, Ed25519 with the
        /// digest as message, RSA PSS with a salt of the digest's length.
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
                TestKey::Ed(k) => {
                    use ed25519_dalek::Signer;
                    k.sign(d.as_bytes()).to_bytes().to_vec()
                }
                TestKey::Rsa(k) => k
                    .sign_with_rng(
                        &mut rand::rngs::OsRng,
                        rsa::Pss::new::<sha2::Sha256>(),
                        d.as_bytes(),
                    )
                    .unwrap(),
            }
        }
    }

    /// imgtool `--header-size 0x200 --pad-header --version 1.2.3+4 -s auto
    /// --load-addr 0x20000000 --slot-size 0x10000 --align 8`.
    fn options_a() -> McubootOptions {
        McubootOptions {
            header_size: 0x200,
            pad_header: true,
            slot_size: Some(0x10000),
            align: 8,
            version: (1, 2, 3, 4),
            security_counter: Some(auto_security_counter((1, 2, 3, 4))),
            load_addr: Some(0x2000_0000),
            replace_signature: false,
        }
    }

    /// imgtool `--header-size 0x100 --version 0 --slot-size 0x10000`.
    fn options_b() -> McubootOptions {
        McubootOptions {
            header_size: 0x100,
            pad_header: false,
            slot_size: Some(0x10000),
            align: 1,
            version: (0, 0, 0, 0),
            security_counter: None,
            load_addr: None,
            replace_signature: false,
        }
    }

    /// The raw binary the golden outputs were made from.
    fn raw_data() -> Vec<u8> {
        (0..3000u32)
            .map(|i| u8::try_from((i * 31 + 7) % 256).unwrap())
            .collect()
    }

    fn zero_header_data() -> Vec<u8> {
        let mut d = vec![0u8; 0x100];
        d.extend(raw_data());
        d
    }

    fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    fn sign_file(
        options: McubootOptions,
        key: &TestKey,
        input: &Path,
        out: &Path,
    ) -> Result<Digest, FormatError> {
        let fmt = Mcuboot { options };
        let prepared = fmt.prepare(input, &key.signer(), &|_| {})?;
        let digest = prepared.to_sign().clone();
        let sig = key.sign(&digest);
        prepared.assemble(&sig, out)?;
        Ok(digest)
    }

    fn verify_file(key: &TestKey, signed: &Path) -> Result<Vec<String>, FormatError> {
        Mcuboot {
            options: options_b(),
        }
        .verify(signed, None, &key.signer(), &|_| {})
    }

    fn sha256_hex(data: &[u8]) -> String {
        hex::encode(hash_bytes(HashAlg::Sha256, data))
    }

    #[test]
    fn parse_version_takes_imgtool_forms() {
        assert_eq!(parse_version("0").unwrap(), (0, 0, 0, 0));
        assert_eq!(parse_version("1.2").unwrap(), (1, 2, 0, 0));
        assert_eq!(parse_version("1.2.3").unwrap(), (1, 2, 3, 0));
        assert_eq!(
            parse_version("255.255.65535+4294967295").unwrap(),
            (255, 255, 65535, u32::MAX)
        );
        for bad in [
            "",
            "1.",
            "01.2",
            "1.2+3",
            "1.2.3.4",
            "a",
            "1.2.3+",
            "256",
            "1.2.65536",
        ] {
            assert!(parse_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parse_security_counter_takes_auto_and_literals() {
        let v = (1, 2, 3, 4);
        assert_eq!(parse_security_counter("auto", v).unwrap(), 0x0102_0003);
        assert_eq!(parse_security_counter("AUTO", v).unwrap(), 0x0102_0003);
        assert_eq!(parse_security_counter("42", v).unwrap(), 42);
        assert_eq!(parse_security_counter("0x2A", v).unwrap(), 42);
        assert_eq!(parse_security_counter("0o52", v).unwrap(), 42);
        assert_eq!(parse_security_counter("0b101010", v).unwrap(), 42);
        assert_eq!(parse_security_counter("0", v).unwrap(), 0);
        for bad in ["", "042", "-1", "+1", "0x", "x", "4294967296", "1.5"] {
            assert!(parse_security_counter(bad, v).is_err(), "{bad}");
        }
    }

    /// imgtool 2.5.0 `sign -k ed.pem` with options_a on raw_data(): Ed25519 is
    /// deterministic, so the whole file must be identical.
    #[test]
    fn ed25519_output_matches_imgtool_with_pad_header() {
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), "raw.bin", &raw_data());
        let out = dir.path().join("signed.bin");
        let digest = sign_file(options_a(), &ed_key(), &input, &out).unwrap();
        assert_eq!(
            digest.to_hex(),
            "6e4b1f6b4b8cb8bc998b555560b23d8362c7b53f201bf021eeab8fd42b0fbded"
        );
        let signed = std::fs::read(&out).unwrap();
        assert_eq!(signed.len(), 3668);
        assert_eq!(
            sha256_hex(&signed),
            "bdd10c41bac876e8ba42588ade930e11458e030e62900abadec37ce78b93ff01"
        );
        let checks = verify_file(&ed_key(), &out).unwrap();
        assert_eq!(checks.len(), 4, "{checks:?}");
        assert!(
            checks[1].contains("image hash SHA-256 6e4b1f6b"),
            "{checks:?}"
        );
        assert!(
            checks[3].contains("Ed25519 signature verifies"),
            "{checks:?}"
        );
    }

    /// imgtool 2.5.0 `sign -k ed.pem --header-size 0x100 --version 0 --slot-size 0x10000`
    /// on an input with a zeroed header region.
    #[test]
    fn ed25519_output_matches_imgtool_with_zero_header() {
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), "zero.bin", &zero_header_data());
        let out = dir.path().join("signed.bin");
        let digest = sign_file(options_b(), &ed_key(), &input, &out).unwrap();
        assert_eq!(
            digest.to_hex(),
            "1d103e66c346b713f5830fad28efb2c8362389fd5b79c3cee261512d5e5106d9"
        );
        let signed = std::fs::read(&out).unwrap();
        assert_eq!(signed.len(), 3400);
        assert_eq!(
            sha256_hex(&signed),
            "65a8e9424dc735f9c14e443a830b6d811140d1bbc5794e5c9506147c5295f095"
        );
    }

    /// The digests imgtool exports with `--vector-to-sign digest` (`--sha 384` for
    /// P-384) and its key hashes (`getpubhash`; SHA-384 of the SPKI for P-384).
    #[test]
    fn digests_and_key_hashes_match_imgtool() {
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), "raw.bin", &raw_data());
        let fmt = Mcuboot {
            options: options_a(),
        };
        let p256 = fmt.prepare(&input, &p256_key().signer(), &|_| {}).unwrap();
        assert_eq!(p256.to_sign().algorithm(), SignAlgorithm::Es256);
        assert_eq!(
            p256.to_sign().to_hex(),
            "6e4b1f6b4b8cb8bc998b555560b23d8362c7b53f201bf021eeab8fd42b0fbded"
        );
        let p384 = fmt.prepare(&input, &p384_key().signer(), &|_| {}).unwrap();
        assert_eq!(p384.to_sign().algorithm(), SignAlgorithm::Es384);
        assert_eq!(
            p384.to_sign().to_hex(),
            "3ad2735c26e16c4fc832b578b8b20ce704b200daa603e6d6cf63c11234da349846fb432673cb55933e8632b7539e4827"
        );

        let key_hash = |k: &SignerKey, h| hex::encode(hash_bytes(h, &public_bytes(k).unwrap()));
        assert_eq!(
            key_hash(&p256_key().signer(), HashAlg::Sha256),
            "f1d59449b727165de732bf283338122b99628a615918fedc67d878fffcf47da7"
        );
        assert_eq!(
            key_hash(&p384_key().signer(), HashAlg::Sha384),
            "c97159e3d9980005643ec6e1159e9eee3937e725e6a1a25b89410f7ef02e644ee0a63852304a703e98defeec04c674fc"
        );
        assert_eq!(
            key_hash(&ed_key().signer(), HashAlg::Sha256),
            "a050837d85070582ccf7394b0988847cc312cb88259b894899f6f239cf1791a5"
        );
        // imgtool hashes an RSA key's PKCS#1 RSAPublicKey, not its SPKI.
        let rsa = SignerKey {
            key_type: KeyType::Rsa3072,
            public_key_der: influxion_verify::from_pem(RSA_PUB_PEM).unwrap(),
            chain: vec![],
        };
        assert_eq!(
            key_hash(&rsa, HashAlg::Sha256),
            "7a00941ff681dbd88392e586282323f358896546b67935bd045692cd51ac0691"
        );
    }

    const RSA_PUB_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBojANBgkqhkiG9w0BAQEFAAOCAY8AMIIBigKCAYEArIE9pg/xufiXPqq5xERH
olgeLw63ZQYu9MnAxooz3KZsNCzP4UwNM+o6jnuZV1yaQrk/UeEz+5/3DIbcJAG8
y/dH2OFkJ+KhYMEkhYMZ9tGF9DFfn9jJcTa9jfMPnEHU4e+uYDB3tsvzuEUZ34nq
VMUj/wWaeYZ832kEX/OSBRpwmkRF5woj5pq2KqrJnOKaHQAI0Zgq8eJ4qfllKkzx
nvwuPlBb83RrsvlWm8XbUExOP9sAlnJxr/bQjSQm3QhVObKuWh2TOkaKs9QEqxOI
7kjmpE2i+zZBYwWlkUt3qBFDM70FVmfKIV7JwxylloPcUM6Wt+s7yIrnaBnPp7Es
xHBgUNK2s40CmX8HuN/KG7fL+a5WPeG8D6W9r+W+Iz1iblJOUc0vslgVTWnNRm3y
4FfxTn0tfX7jBCzLvZAGSBGfDUXRfcSZUxJFnxTHhpqHXzhRUICiPoRdblYw/dvM
dWkkV4IvSpvwcduBxwqR+OS/1DqSBaRn7FFtU71MZW/tAgMBAAE=
-----END PUBLIC KEY-----
";

    #[test]
    fn every_key_type_signs_and_verifies_and_tampering_fails() {
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), "raw.bin", &raw_data());
        for (key, name) in [
            (p256_key(), "ECDSA P-256"),
            (p384_key(), "ECDSA P-384"),
            (ed_key(), "Ed25519"),
            (rsa_key(), "RSA-3072 PSS"),
        ] {
            let out = dir.path().join("signed.bin");
            sign_file(options_a(), &key, &input, &out).unwrap();
            let checks = verify_file(&key, &out).unwrap();
            assert!(checks.iter().any(|c| c.contains("key hash")), "{checks:?}");
            assert!(
                checks
                    .last()
                    .unwrap()
                    .starts_with(&format!("{name} signature verifies")),
                "{checks:?}"
            );
            let good = std::fs::read(&out).unwrap();

            // A flipped byte in the body breaks the image hash.
            let mut bad = good.clone();
            bad[0x300] ^= 1;
            std::fs::write(&out, &bad).unwrap();
            let err = verify_file(&key, &out).unwrap_err();
            assert!(
                matches!(&err, FormatError::Verify(m) if m.starts_with("image hash")),
                "{err}"
            );

            // A flipped byte in the signature breaks the signature.
            let mut bad = good.clone();
            let last = bad.len() - 10;
            bad[last] ^= 1;
            std::fs::write(&out, &bad).unwrap();
            let err = verify_file(&key, &out).unwrap_err();
            assert!(
                matches!(&err, FormatError::Verify(m) if m.starts_with("signature")),
                "{err}"
            );
        }
    }

    #[test]
    fn another_key_fails_the_key_hash() {
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), "raw.bin", &raw_data());
        let out = dir.path().join("signed.bin");
        sign_file(options_a(), &p256_key(), &input, &out).unwrap();
        let other = TestKey::P256(p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap());
        let err = verify_file(&other, &out).unwrap_err();
        assert!(
            matches!(&err, FormatError::Verify(m) if m.starts_with("key hash")),
            "{err}"
        );
        // An Ed25519 key does not match an image signed with ECDSA.
        let err = verify_file(&ed_key(), &out).unwrap_err();
        assert!(matches!(err, FormatError::Verify(_)), "{err}");
    }

    fn invalid_message(r: Result<Box<dyn Prepared>, FormatError>) -> String {
        match r {
            Err(FormatError::Invalid(m)) => m,
            Err(e) => panic!("expected Invalid, got {e}"),
            Ok(_) => panic!("expected Invalid, got a prepared image"),
        }
    }

    #[test]
    fn refuses_a_header_region_that_is_not_zero_without_pad_header() {
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), "raw.bin", &raw_data());
        let fmt = Mcuboot {
            options: options_b(),
        };
        let m = invalid_message(fmt.prepare(&input, &ed_key().signer(), &|_| {}));
        assert!(m.contains("--pad-header"), "{m}");
    }

    #[test]
    fn refuses_an_input_shorter_than_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), "short.bin", &[0u8; 0x80]);
        let fmt = Mcuboot {
            options: options_b(),
        };
        let m = invalid_message(fmt.prepare(&input, &ed_key().signer(), &|_| {}));
        assert!(m.contains("shorter than"), "{m}");
        // A signed image truncated inside its header.
        let mut short = IMAGE_MAGIC.to_le_bytes().to_vec();
        short.extend([0u8; 10]);
        let input = write(dir.path(), "trunc.bin", &short);
        let fmt = Mcuboot {
            options: McubootOptions {
                replace_signature: true,
                ..options_b()
            },
        };
        let m = invalid_message(fmt.prepare(&input, &ed_key().signer(), &|_| {}));
        assert!(m.contains("shorter than the 32-byte"), "{m}");
    }

    #[test]
    fn refuses_a_signed_input_unless_replacing_the_signature() {
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), "raw.bin", &raw_data());
        let first = dir.path().join("first.bin");
        sign_file(options_a(), &ed_key(), &input, &first).unwrap();

        let fmt = Mcuboot {
            options: options_a(),
        };
        let m = invalid_message(fmt.prepare(&first, &ed_key().signer(), &|_| {}));
        assert!(m.contains("--replace-signature"), "{m}");

        // Re-signing with the same options gives the same image (Ed25519 is
        // deterministic), header fill (0xff from --pad-header) included.
        let again = dir.path().join("again.bin");
        let replace = McubootOptions {
            replace_signature: true,
            ..options_a()
        };
        sign_file(replace.clone(), &ed_key(), &first, &again).unwrap();
        assert_eq!(
            std::fs::read(&first).unwrap(),
            std::fs::read(&again).unwrap()
        );

        // New options and a new key: the old TLVs go, the body stays.
        let other = dir.path().join("other.bin");
        let changed = McubootOptions {
            version: (2, 0, 0, 0),
            security_counter: None,
            ..replace.clone()
        };
        sign_file(changed, &p256_key(), &first, &other).unwrap();
        verify_file(&p256_key(), &other).unwrap();
        let (a, b) = (
            std::fs::read(&first).unwrap(),
            std::fs::read(&other).unwrap(),
        );
        assert_eq!(a[0x200..0x200 + 3000], b[0x200..0x200 + 3000]);
        assert_eq!(&b[20..24], &[2, 0, 0, 0]);

        // Sizes that disagree with the file: bytes appended, or the TLVs cut short.
        let mut longer = a.clone();
        longer.push(0xff);
        let longer = write(dir.path(), "longer.bin", &longer);
        let fmt = Mcuboot { options: replace };
        let m = invalid_message(fmt.prepare(&longer, &ed_key().signer(), &|_| {}));
        assert!(m.contains("header sizes disagree with the file"), "{m}");
        let shorter = write(dir.path(), "shorter.bin", &a[..a.len() - 1]);
        let m = invalid_message(fmt.prepare(&shorter, &ed_key().signer(), &|_| {}));
        assert!(m.contains("does not fit the file"), "{m}");
        let body_cut = write(dir.path(), "cut.bin", &a[..0x300]);
        let m = invalid_message(fmt.prepare(&body_cut, &ed_key().signer(), &|_| {}));
        assert!(m.contains("header sizes disagree with the file"), "{m}");
    }

    #[test]
    fn slot_size_check_is_imgtools() {
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), "zero.bin", &zero_header_data());
        let out = dir.path().join("signed.bin");
        // The image is 3400 bytes, imgtool's trailer for --align 1 is 0x1b0 (432): the
        // image fits 3832 bytes exactly and not 3831 (checked against imgtool 2.5.0).
        let fits = McubootOptions {
            slot_size: Some(3400 + 432),
            ..options_b()
        };
        sign_file(fits, &ed_key(), &input, &out).unwrap();
        let tight = McubootOptions {
            slot_size: Some(3400 + 431),
            ..options_b()
        };
        let err = sign_file(tight, &ed_key(), &input, &out).unwrap_err();
        assert!(
            matches!(&err, FormatError::Invalid(m) if m.contains("exceeds --slot-size")),
            "{err}"
        );
        assert_eq!(trailer_size(32), 0x30a0);
        assert_eq!(trailer_size(8), 128 * 3 * 8 + 32 + 16);
    }

    #[test]
    fn refuses_unfit_keys_and_bad_options() {
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), "raw.bin", &raw_data());
        let rsa4096 = SignerKey {
            key_type: KeyType::Rsa4096,
            public_key_der: vec![],
            chain: vec![],
        };
        let fmt = Mcuboot {
            options: options_a(),
        };
        match fmt.prepare(&input, &rsa4096, &|_| {}) {
            Err(FormatError::KeyUnfit(m)) => assert!(m.contains("rsa-3072"), "{m}"),
            _ => panic!("rsa-4096 must be refused"),
        }
        // A key whose type says P-256 but whose public key is Ed25519.
        let mismatched = SignerKey {
            key_type: KeyType::EcP256,
            ..ed_key().signer()
        };
        assert!(matches!(
            fmt.prepare(&input, &mismatched, &|_| {}),
            Err(FormatError::KeyUnfit(_))
        ));
        for options in [
            McubootOptions {
                align: 3,
                ..options_a()
            },
            McubootOptions {
                header_size: 16,
                ..options_a()
            },
            McubootOptions {
                header_size: 0x10000,
                ..options_a()
            },
        ] {
            let m =
                invalid_message(Mcuboot { options }.prepare(&input, &ed_key().signer(), &|_| {}));
            assert!(m.contains("--align") || m.contains("--header-size"), "{m}");
        }
    }

    #[test]
    fn assemble_leaves_nothing_behind_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), "raw.bin", &raw_data());
        let key = ed_key();
        let fmt = Mcuboot {
            options: options_a(),
        };

        // The input changed between prepare and assemble.
        let prepared = fmt.prepare(&input, &key.signer(), &|_| {}).unwrap();
        let sig = key.sign(prepared.to_sign());
        let mut changed = raw_data();
        changed[100] ^= 1;
        std::fs::write(&input, &changed).unwrap();
        let out = dir.path().join("signed.bin");
        let err = prepared.assemble(&sig, &out).unwrap_err();
        assert!(
            matches!(&err, FormatError::Invalid(m) if m.contains("changed")),
            "{err}"
        );

        // A signature of the wrong length.
        let prepared = fmt.prepare(&input, &key.signer(), &|_| {}).unwrap();
        assert!(prepared.assemble(&[0u8; 10], &out).is_err());

        // Nothing is left in the directory but the input.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("raw.bin")]);

        // An output directory that does not exist.
        let prepared = fmt.prepare(&input, &key.signer(), &|_| {}).unwrap();
        let sig = key.sign(prepared.to_sign());
        assert!(prepared
            .assemble(&sig, &dir.path().join("missing/signed.bin"))
            .is_err());
    }

    #[test]
    fn verify_reports_structural_damage() {
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), "raw.bin", &raw_data());
        let key = ed_key();
        let out = dir.path().join("signed.bin");
        sign_file(options_a(), &key, &input, &out).unwrap();
        let good = std::fs::read(&out).unwrap();
        // img_size one larger: the protected TLV area is no longer where it should be.
        let mut bad = good.clone();
        bad[12] = bad[12].wrapping_add(1);
        std::fs::write(&out, &bad).unwrap();
        assert!(matches!(
            verify_file(&key, &out),
            Err(FormatError::Invalid(_))
        ));
        // Not an image at all.
        std::fs::write(&out, raw_data()).unwrap();
        assert!(matches!(
            verify_file(&key, &out),
            Err(FormatError::Invalid(_))
        ));
        // The image without its TLVs.
        std::fs::write(&out, &good[..0x200 + 3000]).unwrap();
        assert!(matches!(
            verify_file(&key, &out),
            Err(FormatError::Invalid(_))
        ));
        // A padded image (trailer after the TLVs) still verifies, as with imgtool.
        let mut padded = good.clone();
        padded.extend([0xffu8; 512]);
        std::fs::write(&out, &padded).unwrap();
        verify_file(&key, &out).unwrap();
    }

    /// A header with small sizes, so that the fuzzed tail reaches the TLV parsing.
    fn plausible_image() -> impl Strategy<Value = Vec<u8>> {
        (
            32u16..48,
            0u32..32,
            prop_oneof![Just(0u16), 0u16..40],
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..200),
            0u16..80,
        )
            .prop_map(|(hdr, img, prot, prot_magic, tail, tot)| {
                let header = Header {
                    load_addr: 0,
                    hdr_size: hdr,
                    protect_tlv_size: prot,
                    img_size: img,
                    flags: 0,
                    version: (0, 0, 0, 0),
                };
                let mut b = header.to_bytes().to_vec();
                b.resize(usize::from(hdr) + usize::try_from(img).unwrap(), 0);
                let magic = if prot_magic {
                    TLV_PROT_INFO_MAGIC
                } else {
                    TLV_INFO_MAGIC
                };
                b.extend(magic.to_le_bytes());
                b.extend(tot.to_le_bytes());
                b.extend(tail);
                b
            })
    }

    proptest! {
        #[test]
        fn layout_parser_never_panics_on_arbitrary_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let len = u64::try_from(bytes.len()).unwrap();
            let _ = read_layout(&mut Cursor::new(&bytes), len, Path::new("fuzz"));
        }

        #[test]
        fn layout_parser_never_panics_on_damaged_images(bytes in plausible_image()) {
            let len = u64::try_from(bytes.len()).unwrap();
            if let Ok(layout) = read_layout(&mut Cursor::new(&bytes), len, Path::new("fuzz")) {
                prop_assert!(layout.end <= len);
                prop_assert!(layout.hashed_len <= layout.end);
            }
        }
    }
}
