//! The keyserver API's request and response bodies as serde types: the server
//! serializes them, the CLI deserializes them, so both agree on every field by
//! construction. No I/O and no behaviour here, only shapes (and `crates/server/
//! openapi.json` documents the same shapes for everyone else).
//!
//! Field order is the order the server writes them in; optional fields that the
//! server leaves out carry `skip_serializing_if`, the others are written as `null`.
//! Response types do not refuse unknown fields, so a newer server's additions do not
//! break an older CLI; request types do, as the server always has.

pub mod audit;
pub mod keys;
pub mod pki;
pub mod requests;
pub mod subjects;

pub use audit::{AuditEntry, AuditPage, AuditRecordView, Chain, RecordChecks};
pub use influxion_core::Actor;
pub use keys::{
    CertifyKey, CreateKey, ImportKey, KeyCertificate, KeyList, KeyView, PolicyRequest, RotateKey,
};
pub use requests::{
    Approval, ChangeList, ChangeView, Decision, PendingChange, PendingResponse, RequestList,
    RequestView, SignRequest, SignResponse, VerifyRequest, VerifyResponse, SIGNATURE_FORMATS,
};
pub use subjects::{GrantBody, Subject, SubjectBody, SubjectList, UpdateBody};
