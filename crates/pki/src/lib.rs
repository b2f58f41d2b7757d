//! The device certificate authority, without I/O: CSR vetting ([`csr`]), certificate
//! profiles ([`profile`]), certificate and CRL building with a key in any backend
//! ([`build`]), and the encodings devices receive ([`encode`]).

pub mod build;
pub mod csr;
pub mod encode;
pub mod profile;

pub use build::{BuildError, CaKey, CaKeyAlg, CaSubject, CertFacts, Reason, RevokedEntry};
pub use csr::{Csr, CsrError, DeviceKeyType, MAX_CSR_BYTES};
pub use encode::{DeviceKey, EncodeError};
pub use profile::{CertSpec, PolicyError, PolicyRule, ProfileError, ProfileSpec};
