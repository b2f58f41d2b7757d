//! Raw: a detached signature over the file's digest, as the sign API returns it (DER
//! for ECDSA, the bare signature for RSA and Ed25519). `openssl dgst -verify` checks it.

use std::path::{Path, PathBuf};

use influxion_core::{Digest, SignAlgorithm};

use crate::{FormatError, Prepared, SignerKey};

/// The raw format, with the algorithm to sign with.
pub struct Raw {
    pub algorithm: SignAlgorithm,
}

struct PreparedRaw {
    digest: Digest,
}

impl Prepared for PreparedRaw {
    fn to_sign(&self) -> &Digest {
        &self.digest
    }

    fn assemble(self: Box<Self>, signature: &[u8], out: &Path) -> Result<(), FormatError> {
        crate::write_atomically(out, signature)
    }
}

impl crate::Format for Raw {
    fn name(&self) -> &'static str {
        "raw"
    }

    fn prepare(
        &self,
        input: &Path,
        key: &SignerKey,
        progress: &dyn Fn(u64),
    ) -> Result<Box<dyn Prepared>, FormatError> {
        crate::check_allows(key, self.algorithm)?;
        let digest = crate::hash_reader(crate::open(input)?, self.algorithm, input, progress)?;
        Ok(Box::new(PreparedRaw { digest }))
    }

    fn verify(
        &self,
        signed: &Path,
        content: Option<&Path>,
        key: &SignerKey,
        progress: &dyn Fn(u64),
    ) -> Result<Vec<String>, FormatError> {
        let content: PathBuf = content
            .map(Path::to_path_buf)
            .ok_or_else(|| FormatError::Invalid("a raw signature needs the signed file".into()))?;
        let sig = std::fs::read(signed).map_err(|e| FormatError::io(signed, e))?;
        let digest =
            crate::hash_reader(crate::open(&content)?, self.algorithm, &content, progress)?;
        if !crate::signature_verifies(key, &digest, &sig)? {
            return Err(FormatError::Verify(format!(
                "the {} signature does not match {} and the key",
                self.algorithm,
                content.display()
            )));
        }
        Ok(vec![format!(
            "{} signature over the {} of {} ({}) verifies with the key's public key",
            self.algorithm,
            self.algorithm.hash().as_str(),
            content.display(),
            hex::encode(digest.as_bytes())
        )])
    }
}
