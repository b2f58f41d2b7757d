//! Firmware signature formats, on the client side.
//!
//! Each format is one module behind one interface, [`Format`]: *prepare* reads and
//! checks the input and computes the digest the keyserver is asked to sign (streaming:
//! an image of gigabytes is read in chunks, never held whole), the caller asks the
//! keyserver's sign API for a signature over that digest (or waits for a signing
//! request's approvals), and [`Prepared::assemble`] writes the output. The keyserver
//! learns the format's name, never the file. [`Format::verify`] checks an output
//! offline and says what it checked. Authenticode and CMS can carry an RFC 3161
//! timestamp of the signature: the caller asks a TSA with [`tsp::request`], checks the
//! answer with [`tsp::token_from_response`] and hands the token to
//! [`Prepared::set_timestamp`] before assembling.
//!
//! A new format (U-Boot FIT, ESP32 Secure Boot v2, TF-M, UEFI capsules) is a new module
//! implementing [`Format`] and a line in [`by_name`]; nothing else changes.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use influxion_core::{Digest, KeyType, SignAlgorithm};

pub mod authenticode;
pub mod cms;
pub mod mcuboot;
pub mod raw;
mod signed_data;
pub mod tsp;

/// Why a format could not prepare, assemble or verify. Every variant is a refusal the
/// CLI prints and exits non-zero for, with nothing written and no request sent.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The input is not what the format takes (not a PE, a truncated header, sizes
    /// that disagree with the file).
    #[error("{0}")]
    Invalid(String),
    /// The key cannot be used with this format (its type, or a missing certificate).
    #[error("{0}")]
    KeyUnfit(String),
    /// A checked output does not verify; says which check failed.
    #[error("does not verify: {0}")]
    Verify(String),
}

impl FormatError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// What the client knows of the key it signs with: its type, public key and, for the
/// formats that carry one, its certificate chain.
#[derive(Debug, Clone)]
pub struct SignerKey {
    pub key_type: KeyType,
    /// DER SubjectPublicKeyInfo.
    pub public_key_der: Vec<u8>,
    /// DER certificates, leaf first; empty when the key has none.
    pub chain: Vec<Vec<u8>>,
}

/// A file made ready for signing: the digest to ask the keyserver for, and how to
/// write the output once the signature is back.
pub trait Prepared: Send {
    /// The algorithm and digest for the keyserver's sign API.
    fn to_sign(&self) -> &Digest;

    /// Write the signed output to `out`. `signature` is what the sign API returned
    /// (DER for ECDSA) and has been verified against the key by the caller.
    fn assemble(self: Box<Self>, signature: &[u8], out: &Path) -> Result<(), FormatError>;

    /// Embed an RFC 3161 timestamp token (from [`tsp::token_from_response`]) over the
    /// signature that `assemble` is then given. Formats without timestamps refuse.
    fn set_timestamp(&mut self, token: Vec<u8>) -> Result<(), FormatError> {
        let _ = token;
        Err(FormatError::Invalid(
            "this format carries no timestamp: --timestamp-url is for authenticode and cms".into(),
        ))
    }
}

/// One signature format.
pub trait Format {
    /// The name the CLI takes (`--format`) and the keyserver audits.
    fn name(&self) -> &'static str;

    /// Read and check `input`, and compute what the key is asked to sign.
    /// `progress` is told how many bytes were read, for a progress bar.
    fn prepare(
        &self,
        input: &Path,
        key: &SignerKey,
        progress: &dyn Fn(u64),
    ) -> Result<Box<dyn Prepared>, FormatError>;

    /// Check `signed` (and, for detached formats, `content`) against `key` offline.
    /// Returns the checks that passed, in the words the CLI prints.
    fn verify(
        &self,
        signed: &Path,
        content: Option<&Path>,
        key: &SignerKey,
        progress: &dyn Fn(u64),
    ) -> Result<Vec<String>, FormatError>;
}

/// The format names the CLI and the keyserver accept.
pub const NAMES: [&str; 4] = ["raw", "cms", "mcuboot", "authenticode"];

/// How much is read or written at a time: memory stays constant whatever the file's size.
pub(crate) const CHUNK: usize = 1 << 20;

pub(crate) fn open(path: &Path) -> Result<File, FormatError> {
    File::open(path).map_err(|e| FormatError::io(path, e))
}

/// The file at `path`, open, and its length.
pub(crate) fn open_sized(path: &Path) -> Result<(File, u64), FormatError> {
    let file = open(path)?;
    let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
    Ok((file, len))
}

/// A temporary file next to the output, removed unless it was renamed into place.
pub(crate) struct TempOut {
    path: PathBuf,
    done: bool,
}

impl Drop for TempOut {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl TempOut {
    /// Sync `file` (this temporary file, written) and rename it to `out`.
    pub(crate) fn persist(mut self, file: File, out: &Path) -> Result<(), FormatError> {
        file.sync_all().map_err(|e| FormatError::io(out, e))?;
        drop(file);
        std::fs::rename(&self.path, out).map_err(|e| FormatError::io(out, e))?;
        self.done = true;
        Ok(())
    }
}

/// A new temporary file in `out`'s directory, so that the rename is atomic.
pub(crate) fn temp_next_to(out: &Path) -> Result<(TempOut, File), FormatError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = out
        .file_name()
        .ok_or_else(|| FormatError::Invalid(format!("{}: not a file name", out.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".{}-{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let path = out.with_file_name(tmp_name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| FormatError::io(&path, e))?;
    Ok((TempOut { path, done: false }, file))
}

/// Write `bytes` to `out` through a new file beside it (never through a file or link
/// already there), synced and renamed into place.
pub(crate) fn write_atomically(out: &Path, bytes: &[u8]) -> Result<(), FormatError> {
    use std::io::Write as _;
    let (tmp, mut file) = temp_next_to(out)?;
    file.write_all(bytes).map_err(|e| FormatError::io(out, e))?;
    tmp.persist(file, out)
}

/// Refuse a key whose type cannot sign with `alg`.
pub(crate) fn check_allows(key: &SignerKey, alg: SignAlgorithm) -> Result<(), FormatError> {
    if !key.key_type.allows(alg) {
        return Err(FormatError::KeyUnfit(format!(
            "a {} key cannot sign with {alg}",
            key.key_type
        )));
    }
    Ok(())
}

/// Whether `signature` over `digest` verifies with `key`'s public key; a key or
/// signature that cannot be checked is a [`FormatError::Verify`].
pub(crate) fn signature_verifies(
    key: &SignerKey,
    digest: &Digest,
    signature: &[u8],
) -> Result<bool, FormatError> {
    influxion_verify::verify(key.key_type, &key.public_key_der, digest, signature)
        .map_err(|e| FormatError::Verify(e.to_string()))
}

/// The SHA-2 hash of `data`.
pub(crate) fn hash_bytes(hash: influxion_core::key::HashAlg, data: &[u8]) -> Vec<u8> {
    let mut h = Hasher::new(hash);
    h.update(data);
    h.finish()
}

/// The digest of everything `reader` yields for signing with `alg`.
pub fn hash_reader(
    reader: impl Read,
    alg: SignAlgorithm,
    path: &Path,
    progress: &dyn Fn(u64),
) -> Result<Digest, FormatError> {
    let bytes = hash_stream(reader, alg.hash(), path, progress)?;
    Digest::new(alg, bytes).map_err(|e| FormatError::Invalid(e.to_string()))
}

/// The SHA-2 hash of everything `reader` yields, read in 1 MiB chunks: constant
/// memory whatever the file's size.
pub fn hash_stream(
    mut reader: impl Read,
    hash: influxion_core::key::HashAlg,
    path: &Path,
    progress: &dyn Fn(u64),
) -> Result<Vec<u8>, FormatError> {
    let mut buf = vec![0u8; CHUNK];
    let mut hasher = Hasher::new(hash);
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FormatError::io(path, e)),
        };
        hasher.update(&buf[..n]);
        progress(n as u64);
    }
    Ok(hasher.finish())
}

/// A SHA-2 hasher of the algorithm's hash.
pub struct Hasher(HasherInner);

enum HasherInner {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(hash: influxion_core::key::HashAlg) -> Self {
        use sha2::Digest as _;
        Hasher(match hash {
            influxion_core::key::HashAlg::Sha256 => HasherInner::Sha256(sha2::Sha256::new()),
            influxion_core::key::HashAlg::Sha384 => HasherInner::Sha384(sha2::Sha384::new()),
            influxion_core::key::HashAlg::Sha512 => HasherInner::Sha512(sha2::Sha512::new()),
        })
    }

    pub fn update(&mut self, data: &[u8]) {
        use sha2::Digest as _;
        match &mut self.0 {
            HasherInner::Sha256(h) => h.update(data),
            HasherInner::Sha384(h) => h.update(data),
            HasherInner::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Vec<u8> {
        use sha2::Digest as _;
        match self.0 {
            HasherInner::Sha256(h) => h.finalize().to_vec(),
            HasherInner::Sha384(h) => h.finalize().to_vec(),
            HasherInner::Sha512(h) => h.finalize().to_vec(),
        }
    }
}
