//! Domain types and traits of the Influxion keyserver.
//!
//! This crate does no I/O. Everything above it (token validation, key backends, the
//! store, the HTTP layer) speaks in these types, so that a value validated once at the
//! edge cannot be confused with another afterwards.

pub mod access;
pub mod actor;
pub mod backend;
pub mod key;
pub mod policy;
pub mod principal;

pub use access::{CallerRule, Grant, Permissions, Role, SubjectRules};
pub use actor::{display_text, Actor};
pub use backend::{
    BackendError, BackendKey, Backends, BoundKey, ExistingKey, GeneratedKey, KeyBackend,
};
pub use key::{Digest, KeyName, KeyStatus, KeyType, ParseError, SignAlgorithm};
pub use policy::{KeyPolicy, Weakening};
pub use principal::{CallerKind, Principal};
