//! The store's rules, as plain functions over rows the writer loaded inside its
//! transaction: quorum, self-approval, expiry, who may cancel, the device quota, the
//! state a CA must be in, and that a key is active when it is used. No I/O, no SQL:
//! every database runs the same rules (the audit chain's rules are in `audit.rs`).

use influxion_core::{KeyPolicy, KeyStatus};

use crate::access::ApprovalRecord;
use crate::db::{CaState, CertValidity};
use crate::pki::CaStatus;
use crate::{KeyRecord, StoreError};

type Result<T> = std::result::Result<T, StoreError>;

/// The number of approving votes among `approvals`.
pub(crate) fn approvals_count(approvals: &[ApprovalRecord]) -> u32 {
    let n = approvals.iter().filter(|a| a.decision == "approve").count();
    // At most 16 approvals count toward a quorum; a longer list saturates.
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Whether an item may still be acted on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Open {
    Pending,
    /// Overdue: the only thing that happens to it now is that it is marked expired.
    Overdue,
}

/// The error for an item that is no longer pending: expiry is its own case.
pub(crate) fn closed(status: &str) -> StoreError {
    match status {
        "expired" => StoreError::RequestExpired,
        s => StoreError::RequestClosed {
            status: s.to_owned(),
        },
    }
}

/// Whether an item in `status`, expiring at `expires_at`, is open at `now` (Unix seconds).
pub(crate) fn open_at(status: &str, expires_at: i64, now: i64) -> Result<Open> {
    if status != "pending" {
        return Err(closed(status));
    }
    Ok(if now > expires_at {
        Open::Overdue
    } else {
        Open::Pending
    })
}

/// Four eyes: the requester never approves (or rejects) their own item.
pub(crate) fn may_vote(requester: &str, approver: &str) -> Result<()> {
    if requester == approver {
        return Err(StoreError::SelfApproval);
    }
    Ok(())
}

/// Only the requester withdraws a request.
pub(crate) fn may_cancel(requester: &str, caller: &str) -> Result<()> {
    if requester != caller {
        return Err(StoreError::NotRequester);
    }
    Ok(())
}

/// Where an item stands after an approving vote.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Tally {
    Short {
        approvals: u32,
        quorum: u32,
    },
    /// This vote completed the quorum.
    Reached {
        approvals: u32,
    },
}

pub(crate) fn tally(approvals: u32, quorum: u32) -> Tally {
    if approvals < quorum {
        Tally::Short { approvals, quorum }
    } else {
        Tally::Reached { approvals }
    }
}

/// A key may be used (a signature recorded) only while it is active at commit.
pub(crate) fn key_usable(status: Option<KeyStatus>) -> bool {
    status == Some(KeyStatus::Active)
}

/// A signature made without approval keeps its record only if the key is, at commit,
/// what the signer saw: active, needing no approval, bound to the same backend key.
pub(crate) fn direct_use(
    key_id: &str,
    signed_with: &[u8],
    now: Option<crate::db::KeyUseState>,
) -> Result<()> {
    let Some(now) = now.filter(|k| k.status == KeyStatus::Active) else {
        return Err(StoreError::KeyNotActive(key_id.to_owned()));
    };
    if now.approvals_required > 0 || now.handle != signed_with {
        return Err(StoreError::KeyChanged(key_id.to_owned()));
    }
    Ok(())
}

/// A policy change applies only over the policy it was decided against: if another
/// change committed since, that decision is stale.
pub(crate) fn policy_unchanged(
    key_id: &str,
    key: Option<&KeyRecord>,
    expected: &KeyPolicy,
) -> Result<()> {
    match key {
        None => Err(StoreError::NoSuchKey(key_id.to_owned())),
        Some(k) if k.policy != *expected => Err(StoreError::PolicyChanged(k.name.to_string())),
        Some(_) => Ok(()),
    }
}

/// Issuance needs the CA active and its key (the one the certificate was signed with)
/// active, now, at commit.
pub(crate) fn ca_may_issue(
    ca: &str,
    state: Option<&CaState>,
    ca_key_id: &str,
    key_status: Option<KeyStatus>,
) -> Result<()> {
    let state = match state {
        Some(s) if s.status == CaStatus::Active => s,
        other => {
            return Err(StoreError::CaNotActive {
                ca: ca.to_owned(),
                status: other.map(|s| s.status.clone()),
            })
        }
    };
    if state.key_id != ca_key_id || !key_usable(key_status) {
        return Err(StoreError::CaKeyNotActive {
            ca: ca.to_owned(),
            key_id: ca_key_id.to_owned(),
        });
    }
    Ok(())
}

/// Only a CA waiting for its certificate (an intermediate signed elsewhere) is activated.
pub(crate) fn ca_may_activate(ca: &str, state: Option<&CaState>) -> Result<()> {
    match state {
        Some(s) if s.status == CaStatus::Pending => Ok(()),
        _ => Err(StoreError::CaNotPending { ca: ca.to_owned() }),
    }
}

/// Enabling or disabling needs a CA that has its certificate.
pub(crate) fn ca_may_change_status(ca: &str, state: Option<&CaState>) -> Result<()> {
    match state {
        None => Err(StoreError::NoSuchCa(ca.to_owned())),
        Some(s) if s.status == CaStatus::Pending => {
            Err(StoreError::CaNotIssued { ca: ca.to_owned() })
        }
        Some(_) => Ok(()),
    }
}

/// Revoking an intermediate: its parent is held here (so a CRL of ours lists it), it
/// was not revoked before, and `serial` is the one recorded for it (rows made before
/// serials were recorded have none, and get this one).
pub(crate) fn ca_may_be_revoked(ca: &str, state: Option<&CaState>, serial: &str) -> Result<()> {
    let Some(s) = state else {
        return Err(StoreError::NoSuchCa(ca.to_owned()));
    };
    if s.parent.is_none() {
        return Err(StoreError::CaWithoutParent(ca.to_owned()));
    }
    if s.revoked_at.is_some() {
        return Err(StoreError::CaAlreadyRevoked(ca.to_owned()));
    }
    if s.serial
        .as_deref()
        .is_some_and(|recorded| recorded != serial)
    {
        return Err(StoreError::CaSerialMismatch { ca: ca.to_owned() });
    }
    Ok(())
}

/// CRL numbers only grow (RFC 5280 5.2.3): a CRL built from an older view loses.
pub(crate) fn crl_is_newer(ca: &str, state: Option<&CaState>, number: i64) -> Result<()> {
    match state {
        Some(s) if s.crl_number < number => Ok(()),
        _ => Err(StoreError::CrlOutdated {
            ca: ca.to_owned(),
            number,
        }),
    }
}

/// Only a valid certificate is revoked.
pub(crate) fn certificate_revocable(serial: &str, status: Option<&str>) -> Result<()> {
    match status {
        None => Err(StoreError::NoSuchCertificate(serial.to_owned())),
        Some("valid") => Ok(()),
        Some(_) => Err(StoreError::AlreadyRevoked(serial.to_owned())),
    }
}

/// A device holds at most `max` certificates of a profile that are valid at `at` (not
/// revoked, not expired); `max == 0` means no limit.
pub(crate) fn device_quota(
    certs: &[CertValidity],
    at: &str,
    device_id: &str,
    max: u32,
) -> Result<()> {
    if max == 0 {
        return Ok(());
    }
    // RFC 3339 UTC timestamps of one format compare as text.
    let valid = certs
        .iter()
        .filter(|c| c.status == "valid" && c.not_after.as_str() > at)
        .count();
    if valid >= max as usize {
        return Err(StoreError::DeviceQuota {
            device_id: device_id.to_owned(),
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn vote(decision: &str) -> ApprovalRecord {
        ApprovalRecord {
            approver: influxion_core::Actor::id_only("a"),
            decision: decision.into(),
            comment: String::new(),
            at: String::new(),
        }
    }

    fn ca(status: CaStatus) -> CaState {
        CaState {
            status,
            key_id: "k".into(),
            parent: Some("root".into()),
            serial: None,
            revoked_at: None,
            crl_number: 3,
        }
    }

    #[test]
    fn only_approvals_count_towards_the_quorum() {
        let votes = [vote("approve"), vote("reject"), vote("approve")];
        assert_eq!(approvals_count(&votes), 2);
        assert_eq!(
            tally(1, 2),
            Tally::Short {
                approvals: 1,
                quorum: 2
            }
        );
        assert_eq!(tally(2, 2), Tally::Reached { approvals: 2 });
        assert_eq!(tally(3, 2), Tally::Reached { approvals: 3 });
    }

    #[test]
    fn an_item_is_open_only_while_pending_and_not_overdue() {
        assert_eq!(open_at("pending", 100, 100).unwrap(), Open::Pending);
        assert_eq!(open_at("pending", 100, 101).unwrap(), Open::Overdue);
        assert!(matches!(
            open_at("expired", 100, 0),
            Err(StoreError::RequestExpired)
        ));
        assert!(matches!(
            open_at("signed", 100, 0),
            Err(StoreError::RequestClosed { status }) if status == "signed"
        ));
    }

    #[test]
    fn requester_neither_approves_nor_is_replaced_when_cancelling() {
        assert!(matches!(may_vote("r", "r"), Err(StoreError::SelfApproval)));
        assert!(may_vote("r", "a").is_ok());
        assert!(matches!(
            may_cancel("r", "a"),
            Err(StoreError::NotRequester)
        ));
        assert!(may_cancel("r", "r").is_ok());
    }

    #[test]
    fn quota_counts_valid_unexpired_certificates_only() {
        let c = |status: &str, not_after: &str| CertValidity {
            status: status.into(),
            not_after: not_after.into(),
        };
        let now = "2026-06-01T00:00:00Z";
        let certs = [
            c("valid", "2027-01-01T00:00:00Z"),
            c("revoked", "2027-01-01T00:00:00Z"),
            c("valid", "2026-01-01T00:00:00Z"),
        ];
        assert!(device_quota(&certs, now, "d", 2).is_ok());
        assert!(matches!(
            device_quota(&certs, now, "d", 1),
            Err(StoreError::DeviceQuota { max: 1, .. })
        ));
        assert!(device_quota(&certs, now, "d", 0).is_ok());
    }

    #[test]
    fn issuance_needs_an_active_ca_and_its_active_key() {
        let active = ca(CaStatus::Active);
        assert!(ca_may_issue("c", Some(&active), "k", Some(KeyStatus::Active)).is_ok());
        assert!(matches!(
            ca_may_issue("c", None, "k", Some(KeyStatus::Active)),
            Err(StoreError::CaNotActive { status: None, .. })
        ));
        assert!(matches!(
            ca_may_issue(
                "c",
                Some(&ca(CaStatus::Disabled)),
                "k",
                Some(KeyStatus::Active)
            ),
            Err(StoreError::CaNotActive {
                status: Some(CaStatus::Disabled),
                ..
            })
        ));
        assert!(matches!(
            ca_may_issue("c", Some(&active), "other", Some(KeyStatus::Active)),
            Err(StoreError::CaKeyNotActive { .. })
        ));
        assert!(matches!(
            ca_may_issue("c", Some(&active), "k", Some(KeyStatus::Disabled)),
            Err(StoreError::CaKeyNotActive { .. })
        ));
    }

    #[test]
    fn ca_state_transitions() {
        let pending = ca(CaStatus::Pending);
        let active = ca(CaStatus::Active);
        assert!(ca_may_activate("c", Some(&pending)).is_ok());
        assert!(matches!(
            ca_may_activate("c", Some(&active)),
            Err(StoreError::CaNotPending { .. })
        ));
        assert!(matches!(
            ca_may_activate("c", None),
            Err(StoreError::CaNotPending { .. })
        ));
        assert!(matches!(
            ca_may_change_status("c", Some(&pending)),
            Err(StoreError::CaNotIssued { .. })
        ));
        assert!(matches!(
            ca_may_change_status("c", None),
            Err(StoreError::NoSuchCa(_))
        ));
        assert!(ca_may_change_status("c", Some(&active)).is_ok());
        assert!(crl_is_newer("c", Some(&active), 4).is_ok());
        assert!(matches!(
            crl_is_newer("c", Some(&active), 3),
            Err(StoreError::CrlOutdated { number: 3, .. })
        ));
    }

    #[test]
    fn revoking_a_ca_needs_a_parent_here_and_its_own_serial() {
        let mut s = ca(CaStatus::Active);
        assert!(ca_may_be_revoked("c", Some(&s), "01").is_ok());
        s.serial = Some("02".into());
        assert!(matches!(
            ca_may_be_revoked("c", Some(&s), "01"),
            Err(StoreError::CaSerialMismatch { .. })
        ));
        assert!(ca_may_be_revoked("c", Some(&s), "02").is_ok());
        s.revoked_at = Some("t".into());
        assert!(matches!(
            ca_may_be_revoked("c", Some(&s), "02"),
            Err(StoreError::CaAlreadyRevoked(_))
        ));
        s.parent = None;
        assert!(matches!(
            ca_may_be_revoked("c", Some(&s), "02"),
            Err(StoreError::CaWithoutParent(_))
        ));
        assert!(matches!(
            certificate_revocable("01", Some("revoked")),
            Err(StoreError::AlreadyRevoked(_))
        ));
        assert!(matches!(
            certificate_revocable("01", None),
            Err(StoreError::NoSuchCertificate(_))
        ));
    }
}
