//! The operations behind the API, each in one function that builds the record and its
//! audit event and stores both in one transaction. HTTP handlers call them after
//! authorising the caller and validating the request; the bootstrap admin and
//! `influxion dev` call the same functions, so a key, subject or CA made at start is
//! made exactly as one made over the API.

pub mod keys;
pub mod pki;
pub mod subjects;
