//! The operations the writer applies, each with its audit record: data only, so that
//! the facade that builds them and the writer that applies them do not import each
//! other.

use influxion_core::{Grant, KeyName, KeyPolicy, KeyStatus};

use crate::access::{Decision, SigningRequest, SubjectRecord};
use crate::pki::{CaRecord, CaStatus, CertRecord, ProfileRecord};
use crate::policy_changes::PolicyChange;
use crate::{KeyRecord, Rebind};

pub(crate) enum Op {
    None,
    /// A key was used without approval: commit only if, at commit time, the key is
    /// still active, still needs no approval and is still bound to the backend key
    /// that signed. So a signature made while a `key.disable`, a policy change or a
    /// rotation committed (or from a cached record another replica has since changed)
    /// is never handed out.
    KeyUse {
        key_id: String,
        handle: Vec<u8>,
    },
    InsertKey(Box<KeyRecord>),
    Pki(Box<PkiOp>),
    SetKeyStatus(KeyName, KeyStatus),
    RebindKey(Box<Rebind>),
    /// Key id, the policy the change was decided against, the new policy.
    SetKeyPolicy(String, Box<(KeyPolicy, KeyPolicy)>),
    CreateSubject(Box<SubjectRecord>),
    UpdateSubject(Box<SubjectRecord>),
    DeleteSubject(String),
    AddGrant(String, Grant),
    RemoveGrant(String, String),
    CreateRequest(Box<SigningRequest>),
    CreatePolicyChange(Box<PolicyChange>),
    DecidePolicyChange(Box<Decision>),
    Decide(Box<Decision>),
    Cancel {
        request_id: String,
        requester: String,
        now: i64,
    },
}

pub(crate) enum PkiOp {
    CreateCa(Box<KeyRecord>, Box<CaRecord>),
    ActivateCa {
        name: String,
        certificate: Vec<u8>,
        chain_pem: String,
        not_after: String,
    },
    SetCaStatus(String, CaStatus),
    PutProfile {
        record: ProfileRecord,
        create: bool,
    },
    DeleteProfile(String),
    Issue {
        cert: Box<CertRecord>,
        ca_key_id: String,
        max_per_device: u32,
    },
    Revoke {
        serial: String,
        at: String,
        reason: String,
    },
    /// Revoke an intermediate's certificate under its parent and disable the CA.
    RevokeCa {
        name: String,
        serial: String,
        at: String,
        reason: String,
    },
    StoreCrl {
        ca: String,
        number: i64,
        der: Vec<u8>,
        next_update: String,
    },
}

impl Op {
    /// The certificate an issuance inserts, and the per-device quota it is checked
    /// against (0: none).
    pub(crate) fn certificate(&self) -> Option<(&CertRecord, u32)> {
        match self {
            Op::Pki(op) => match &**op {
                PkiOp::Issue {
                    cert,
                    max_per_device,
                    ..
                } => Some((cert, *max_per_device)),
                _ => None,
            },
            _ => None,
        }
    }

    /// Issuance caches CA, profile and key records; certificates themselves (Issue,
    /// Revoke) do not change them.
    pub(crate) fn changes_pki(&self) -> bool {
        match self {
            Op::SetKeyStatus(..) | Op::RebindKey(_) => true,
            Op::Pki(op) => !matches!(**op, PkiOp::Issue { .. } | PkiOp::Revoke { .. }),
            _ => false,
        }
    }

    /// Key records are cached by every reader ([`crate::Store::get_key`]): any
    /// operation not known to leave them alone invalidates the cache.
    pub(crate) fn changes_keys(&self) -> bool {
        match self {
            Op::None
            | Op::KeyUse { .. }
            | Op::CreateSubject(_)
            | Op::UpdateSubject(_)
            | Op::DeleteSubject(_)
            | Op::AddGrant(..)
            | Op::RemoveGrant(..)
            | Op::CreateRequest(_)
            | Op::CreatePolicyChange(_)
            | Op::Decide(_)
            | Op::Cancel { .. } => false,
            Op::Pki(op) => matches!(**op, PkiOp::CreateCa(..)),
            Op::InsertKey(_)
            | Op::SetKeyStatus(..)
            | Op::RebindKey(_)
            | Op::SetKeyPolicy(..)
            | Op::DecidePolicyChange(_) => true,
        }
    }

    pub(crate) fn changes_subjects(&self) -> bool {
        matches!(
            self,
            Op::CreateSubject(_)
                | Op::UpdateSubject(_)
                | Op::DeleteSubject(_)
                | Op::AddGrant(..)
                | Op::RemoveGrant(..)
        )
    }
}
