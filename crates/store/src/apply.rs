//! Applying one operation inside the writer's transaction: load the rows the rules need,
//! apply the rules (`rules.rs`), write, and extend the audit chain. Database-independent:
//! it speaks only to a [`Conn`].

use crate::access::{Decision, RequestOutcome};
use crate::audit::{AuditEvent, AuditKey, ChainTip, Outcome};
use crate::chain;
use std::collections::HashMap;

use crate::db::{CaState, Conn, Inserted, KeyUseState, PendingKind, VoteRow};
use crate::ops::{Op, PkiOp};
use crate::pki::CertRecord;
use crate::rules::{self, Open, Tally};
use crate::{KeyRecord, StoreError};
use influxion_core::KeyStatus;

type Result<T> = std::result::Result<T, StoreError>;

/// The chain tip after the operation and what it did to a request or change, if anything.
pub(crate) type Done = (ChainTip, Option<RequestOutcome>);

pub(crate) async fn apply(
    conn: &mut dyn Conn,
    op: &Op,
    event: &AuditEvent,
    tip: &ChainTip,
    key: &AuditKey,
) -> Result<Done> {
    match op {
        Op::None => {}
        // The writer takes key uses and certificates through `checked_write` itself,
        // reading each row once per batch.
        Op::KeyUse { key_id, handle } => {
            key_use(conn, key_id, handle, &mut BatchRows::default()).await??;
        }
        Op::InsertKey(k) => insert_key(conn, k).await?,
        Op::Pki(op) => apply_pki(conn, op).await?,
        Op::SetKeyStatus(name, status) => {
            if conn.set_key_status(name, *status).await? == 0 {
                return Err(StoreError::NoSuchKey(name.to_string()));
            }
        }
        Op::RebindKey(r) => {
            if conn.rebind_key(r).await? == 0 {
                return Err(StoreError::KeyChanged(r.key_id.clone()));
            }
        }
        Op::SetKeyPolicy(key_id, change) => {
            let (expected, p) = &**change;
            set_policy(conn, key_id, expected, p).await?;
        }
        Op::CreateSubject(s) => {
            conn.insert_subject(s)
                .await?
                .or(|| StoreError::DuplicateSubject(s.name.clone()))?;
            for g in &s.grants {
                insert_grant(conn, &s.id, g).await?;
            }
        }
        Op::UpdateSubject(s) => {
            if conn.update_subject(s).await? == 0 {
                return Err(StoreError::NoSuchSubject(s.name.clone()));
            }
        }
        Op::DeleteSubject(id) => {
            if conn.delete_subject(id).await? == 0 {
                return Err(StoreError::NoSuchSubject(id.clone()));
            }
        }
        Op::AddGrant(subject_id, g) => insert_grant(conn, subject_id, g).await?,
        Op::RemoveGrant(subject_id, grant_id) => {
            if conn.delete_grant(subject_id, grant_id).await? == 0 {
                return Err(StoreError::NoSuchGrant(grant_id.clone()));
            }
        }
        Op::CreateRequest(r) => conn.insert_request(r).await?,
        Op::CreatePolicyChange(c) => conn.insert_policy_change(c).await?,
        Op::DecidePolicyChange(d) => return decide_policy_change(conn, d, event, tip, key).await,
        Op::Decide(d) => return decide(conn, d, event, tip, key).await,
        Op::Cancel {
            request_id,
            requester,
            now,
        } => {
            let r = conn
                .signing_request(request_id)
                .await?
                .ok_or_else(|| StoreError::NoSuchRequest(request_id.clone()))?;
            if rules::open_at(&r.status, r.expires_at, *now)? == Open::Overdue {
                return expire(
                    conn,
                    PendingKind::SigningRequest,
                    request_id,
                    &r.key_name,
                    tip,
                    key,
                )
                .await;
            }
            rules::may_cancel(&r.requester.id, requester)?;
            finish(conn, PendingKind::SigningRequest, request_id, "cancelled").await?;
            let next = chain::append(conn, event, tip, key).await?;
            return Ok((next, Some(RequestOutcome::Cancelled)));
        }
    }
    Ok((chain::append(conn, event, tip, key).await?, None))
}

async fn insert_key(conn: &mut dyn Conn, k: &KeyRecord) -> Result<()> {
    conn.insert_key(k)
        .await?
        .or(|| StoreError::DuplicateKey(k.name.to_string()))
}

async fn insert_grant(
    conn: &mut dyn Conn,
    subject_id: &str,
    g: &influxion_core::Grant,
) -> Result<()> {
    match conn
        .insert_grant(subject_id, g, &crate::now_rfc3339())
        .await?
    {
        Inserted::Yes => Ok(()),
        Inserted::NoParent => Err(StoreError::NoSuchSubject(subject_id.into())),
        Inserted::Duplicate => Err(StoreError::DuplicateGrant {
            role: g.role,
            pattern: g.pattern.clone(),
        }),
    }
}

/// Replace a key's policy, provided it is still `expected` (see [`rules::policy_unchanged`]).
async fn set_policy(
    conn: &mut dyn Conn,
    key_id: &str,
    expected: &influxion_core::KeyPolicy,
    p: &influxion_core::KeyPolicy,
) -> Result<()> {
    let current = conn.key_by_id(key_id).await?;
    rules::policy_unchanged(key_id, current.as_ref(), expected)?;
    conn.set_key_policy(key_id, p).await?;
    Ok(())
}

/// Close a pending item with `status`.
async fn finish(conn: &mut dyn Conn, kind: PendingKind, id: &str, status: &str) -> Result<()> {
    if conn.finish(kind, id, status, &crate::now_rfc3339()).await? {
        return Ok(());
    }
    // The item was checked pending in this transaction; report what it is now.
    Err(rules::closed(&current_status(conn, kind, id).await?))
}

async fn current_status(conn: &mut dyn Conn, kind: PendingKind, id: &str) -> Result<String> {
    let status = match kind {
        PendingKind::SigningRequest => conn.signing_request(id).await?.map(|r| r.status),
        PendingKind::PolicyChange => conn.policy_change(id).await?.map(|c| c.status),
    };
    status.ok_or_else(|| StoreError::NoSuchRequest(id.to_owned()))
}

fn expire_action(kind: PendingKind) -> &'static str {
    match kind {
        PendingKind::SigningRequest => "signing_request.expire",
        PendingKind::PolicyChange => "key.policy_change.expire",
    }
}

/// Mark an overdue item expired, with its own audit record.
async fn expire(
    conn: &mut dyn Conn,
    kind: PendingKind,
    id: &str,
    key_name: &str,
    tip: &ChainTip,
    key: &AuditKey,
) -> Result<Done> {
    finish(conn, kind, id, "expired").await?;
    let e = AuditEvent::new(
        influxion_core::Actor::id_only("system:expiry"),
        expire_action(kind),
        Outcome::Ok,
    )
    .target(id.to_owned())
    .detail(serde_json::json!({"key": key_name}));
    Ok((
        chain::append(conn, &e, tip, key).await?,
        Some(RequestOutcome::Expired),
    ))
}

/// The state of an item a vote needs, read inside the writer's transaction.
struct Ballot<'a> {
    kind: PendingKind,
    id: &'a str,
    status: &'a str,
    expires_at: i64,
    quorum: u32,
    requester: &'a str,
    key_name: &'a str,
}

/// What recording a vote left to the caller.
enum Vote {
    /// The vote settled it (expired, rejected or still short of the quorum).
    Done(Done),
    /// This vote, already audited at `tip`, completed the quorum: the caller acts on it.
    Quorum { tip: ChainTip, approvals: u32 },
}

/// Record an approval or rejection. The single writer serialises decisions, so exactly
/// one vote can see the quorum reached while the item is still pending.
async fn vote(
    conn: &mut dyn Conn,
    b: &Ballot<'_>,
    d: &Decision,
    event: &AuditEvent,
    tip: &ChainTip,
    key: &AuditKey,
) -> Result<Vote> {
    if rules::open_at(b.status, b.expires_at, d.now)? == Open::Overdue {
        return Ok(Vote::Done(
            expire(conn, b.kind, b.id, b.key_name, tip, key).await?,
        ));
    }
    rules::may_vote(b.requester, &d.approver.id)?;
    let at = crate::now_rfc3339();
    let row = VoteRow {
        approver: &d.approver,
        decision: if d.approve { "approve" } else { "reject" },
        comment: &d.comment,
        at: &at,
    };
    conn.insert_vote(b.kind, b.id, &row)
        .await?
        .or(|| StoreError::AlreadyDecided)?;
    if !d.approve {
        finish(conn, b.kind, b.id, "rejected").await?;
        return Ok(Vote::Done((
            chain::append(conn, event, tip, key).await?,
            Some(RequestOutcome::Rejected),
        )));
    }
    let tip = chain::append(conn, event, tip, key).await?;
    match rules::tally(conn.approvals(b.kind, b.id).await?, b.quorum) {
        Tally::Short { approvals, quorum } => Ok(Vote::Done((
            tip,
            Some(RequestOutcome::Approved { approvals, quorum }),
        ))),
        Tally::Reached { approvals } => Ok(Vote::Quorum { tip, approvals }),
    }
}

/// Record a vote on a signing request; the vote that completes the quorum stores the
/// signature made in advance.
async fn decide(
    conn: &mut dyn Conn,
    d: &Decision,
    event: &AuditEvent,
    tip: &ChainTip,
    key: &AuditKey,
) -> Result<Done> {
    let r = conn
        .signing_request(&d.request_id)
        .await?
        .ok_or_else(|| StoreError::NoSuchRequest(d.request_id.clone()))?;
    let ballot = Ballot {
        kind: PendingKind::SigningRequest,
        id: &d.request_id,
        status: &r.status,
        expires_at: r.expires_at,
        quorum: r.quorum,
        requester: &r.requester.id,
        key_name: &r.key_name,
    };
    let (tip, approvals) = match vote(conn, &ballot, d, event, tip, key).await? {
        Vote::Done(done) => return Ok(done),
        Vote::Quorum { tip, approvals } => (tip, approvals),
    };
    let Some(signature) = &d.signature else {
        return Err(StoreError::NeedSignature);
    };
    if !rules::key_usable(conn.key_status(&r.key_id).await?) {
        return Err(StoreError::KeyNotActive(r.key_name));
    }
    if !conn
        .store_signature(&d.request_id, signature, &crate::now_rfc3339())
        .await?
    {
        return Err(rules::closed("signed"));
    }
    let signed = AuditEvent::new(
        influxion_core::Actor::id_only("system:quorum"),
        "sign",
        Outcome::Ok,
    )
    .target(r.key_name.clone())
    .detail({
        let mut detail = serde_json::json!({
            "request": d.request_id,
            "requester": r.requester.id,
            "approvals": approvals,
            "quorum": r.quorum,
        });
        for (k, v) in &d.signed_with {
            detail[k.as_str()] = v.clone();
        }
        // The signature format the requester named (raw, cms, mcuboot, authenticode).
        if let Some(format) = r.metadata.get("format") {
            detail["format"] = format.clone();
        }
        detail
    });
    Ok((
        chain::append(conn, &signed, &tip, key).await?,
        Some(RequestOutcome::Signed),
    ))
}

/// Record a vote on a policy change; the vote that completes the quorum applies it,
/// provided the key's policy is still the one the change was proposed against.
async fn decide_policy_change(
    conn: &mut dyn Conn,
    d: &Decision,
    event: &AuditEvent,
    tip: &ChainTip,
    key: &AuditKey,
) -> Result<Done> {
    let c = conn
        .policy_change(&d.request_id)
        .await?
        .ok_or_else(|| StoreError::NoSuchRequest(d.request_id.clone()))?;
    let ballot = Ballot {
        kind: PendingKind::PolicyChange,
        id: &c.id,
        status: &c.status,
        expires_at: c.expires_at,
        quorum: c.quorum,
        requester: &c.requester.id,
        key_name: &c.key_name,
    };
    let (tip, approvals) = match vote(conn, &ballot, d, event, tip, key).await? {
        Vote::Done(done) => return Ok(done),
        Vote::Quorum { tip, approvals } => (tip, approvals),
    };
    let (status, action, outcome) =
        match set_policy(conn, &c.key_id, &c.base_policy, &c.policy).await {
            Ok(()) => ("applied", "key.policy", RequestOutcome::Applied),
            // Another change committed first: this one was judged against a policy no
            // longer in force, so it ends without effect.
            Err(StoreError::PolicyChanged(_)) => (
                "superseded",
                "key.policy_change.supersede",
                RequestOutcome::Superseded,
            ),
            Err(e) => return Err(e),
        };
    finish(conn, PendingKind::PolicyChange, &c.id, status).await?;
    let e = AuditEvent::new(
        influxion_core::Actor::id_only("system:quorum"),
        action,
        Outcome::Ok,
    )
    .target(c.key_name.clone())
    .detail(serde_json::json!({
        "change": c.id,
        "requester": c.requester.id,
        "before": c.base_policy,
        "after": c.policy,
        "weakens": c.weakens,
        "approvals": approvals,
        "quorum": c.quorum,
    }));
    Ok((chain::append(conn, &e, &tip, key).await?, Some(outcome)))
}

async fn apply_pki(conn: &mut dyn Conn, op: &PkiOp) -> Result<()> {
    match op {
        PkiOp::CreateCa(key, ca) => {
            insert_key(conn, key).await?;
            if let Some(serial) = &ca.serial {
                serial_unused(conn, serial).await?;
            }
            conn.insert_ca(ca)
                .await?
                .or(|| StoreError::DuplicateCa(ca.name.clone()))?;
        }
        PkiOp::ActivateCa {
            name,
            certificate,
            chain_pem,
            not_after,
        } => {
            rules::ca_may_activate(name, conn.ca_state(name).await?.as_ref())?;
            conn.activate_ca(name, certificate, chain_pem, not_after)
                .await?;
        }
        PkiOp::SetCaStatus(name, status) => {
            rules::ca_may_change_status(name, conn.ca_state(name).await?.as_ref())?;
            conn.set_ca_status(name, status).await?;
        }
        PkiOp::PutProfile { record, create } => {
            let changed = if *create {
                conn.insert_profile(record)
                    .await?
                    .or(|| StoreError::DuplicateProfile(record.name.clone()))?;
                1
            } else {
                conn.update_profile(record).await?
            };
            if changed == 0 {
                return Err(StoreError::NoSuchProfile(record.name.clone()));
            }
        }
        PkiOp::DeleteProfile(name) => {
            // Records keep the profile's name (quota, request keys): a profile that has
            // issued stays, and can only be replaced.
            if conn.profile_used(name).await? {
                return Err(StoreError::ProfileInUse(name.clone()));
            }
            if conn.delete_profile(name).await? == 0 {
                return Err(StoreError::NoSuchProfile(name.clone()));
            }
        }
        PkiOp::Issue {
            cert,
            ca_key_id,
            max_per_device,
        } => {
            issue(
                conn,
                cert,
                ca_key_id,
                *max_per_device,
                &mut BatchRows::default(),
            )
            .await??;
        }
        PkiOp::Revoke { serial, at, reason } => {
            let status = conn.certificate_status(serial).await?;
            rules::certificate_revocable(serial, status.as_deref())?;
            conn.revoke_certificate(serial, at, reason).await?;
        }
        PkiOp::RevokeCa {
            name,
            serial,
            at,
            reason,
        } => {
            rules::ca_may_be_revoked(name, conn.ca_state(name).await?.as_ref(), serial)?;
            conn.revoke_ca(name, serial, at, reason)
                .await?
                .or(|| StoreError::DuplicateCertificate(serial.clone()))?;
        }
        PkiOp::StoreCrl {
            ca,
            number,
            der,
            next_update,
        } => {
            rules::crl_is_newer(ca, conn.ca_state(ca).await?.as_ref(), *number)?;
            conn.store_crl(ca, *number, der, next_update).await?;
        }
    }
    Ok(())
}

/// Serials are unique across device and CA certificates: both kinds appear on a
/// parent's CRL, so a shared serial would revoke the wrong one.
/// Rows a writer batch reads once, in its transaction (which holds the write lock):
/// signing keys as a signature is checked against them, and the CAs certificates are
/// issued under (state, key status). Valid until a job of the batch changes them.
#[derive(Default)]
pub(crate) struct BatchRows {
    keys: HashMap<String, Option<KeyUseState>>,
    cas: HashMap<String, (Option<CaState>, Option<KeyStatus>)>,
}

impl BatchRows {
    /// The key-use states read as the batch opened, for keys `ids` (`found`: those
    /// that exist; any other is known missing).
    pub(crate) fn preload_keys(&mut self, ids: &[&str], mut found: HashMap<String, KeyUseState>) {
        for &id in ids {
            self.keys.insert(id.to_owned(), found.remove(id));
        }
    }

    /// Drop what `op` may change, before it applies.
    pub(crate) fn forget(&mut self, op: &Op) {
        if op.changes_keys() {
            self.keys.clear();
        }
        if op.changes_pki() {
            self.cas.clear();
        }
    }
}

/// The operations that check, then write at most one row of their own besides their
/// audit record: a key use (every signature), a certificate, a plain record. Their
/// check, and `None` for any other operation. A certificate that passes is left for
/// the caller to insert ([`Conn::insert_certificates`], with the batch's others). A
/// refusal (the inner error) has written nothing, so these need no savepoint; the outer
/// error is the database's.
pub(crate) async fn checked_write(
    conn: &mut dyn Conn,
    op: &Op,
    rows: &mut BatchRows,
) -> Result<Option<Result<()>>> {
    Ok(Some(match op {
        Op::None => Ok(()),
        Op::KeyUse { key_id, handle } => key_use(conn, key_id, handle, rows).await?,
        Op::Pki(pki) => match &**pki {
            PkiOp::Issue {
                cert,
                ca_key_id,
                max_per_device,
            } => may_issue(conn, cert, ca_key_id, *max_per_device, rows).await?,
            _ => return Ok(None),
        },
        _ => return Ok(None),
    }))
}

async fn key_use(
    conn: &mut dyn Conn,
    key_id: &str,
    handle: &[u8],
    rows: &mut BatchRows,
) -> Result<Result<()>> {
    let row = match rows.keys.get(key_id) {
        Some(row) => row.clone(),
        None => {
            let row = conn.key_use_state(key_id).await?;
            rows.keys.insert(key_id.to_owned(), row.clone());
            row
        }
    };
    Ok(rules::direct_use(key_id, handle, row))
}

/// Issue `cert`: the checks first, then the one insert.
async fn issue(
    conn: &mut dyn Conn,
    cert: &CertRecord,
    ca_key_id: &str,
    max_per_device: u32,
    rows: &mut BatchRows,
) -> Result<Result<()>> {
    if let Err(e) = may_issue(conn, cert, ca_key_id, max_per_device, rows).await? {
        return Ok(Err(e));
    }
    // A serial already taken is refused by the insert itself (it changes no row), so
    // it is not looked up first. Should the insert fail otherwise, on PostgreSQL the
    // transaction is aborted and the whole batch fails: nothing is acknowledged that
    // did not commit.
    Ok(conn
        .insert_certificate(cert)
        .await?
        .or(|| StoreError::DuplicateCertificate(cert.serial.clone())))
}

/// The checks of an issuance: the CA may issue, and the device is under its quota.
/// The writer's batch inserts the certificates that pass together (see
/// [`checked_write`]); the quota counts only inserted ones, so the batch inserts those
/// it holds before it checks a quota.
async fn may_issue(
    conn: &mut dyn Conn,
    cert: &CertRecord,
    ca_key_id: &str,
    max_per_device: u32,
    rows: &mut BatchRows,
) -> Result<Result<()>> {
    let (state, key_status) = match rows.cas.get(&cert.ca) {
        Some(row) => row.clone(),
        None => {
            let row = (
                conn.ca_state(&cert.ca).await?,
                conn.key_status(ca_key_id).await?,
            );
            rows.cas.insert(cert.ca.clone(), row.clone());
            row
        }
    };
    if let Err(e) = rules::ca_may_issue(&cert.ca, state.as_ref(), ca_key_id, key_status) {
        return Ok(Err(e));
    }
    if max_per_device > 0 {
        let held = conn
            .device_certificates(&cert.profile, &cert.device_id)
            .await?;
        if let Err(e) = rules::device_quota(&held, &cert.issued_at, &cert.device_id, max_per_device)
        {
            return Ok(Err(e));
        }
    }
    Ok(Ok(()))
}

async fn serial_unused(conn: &mut dyn Conn, serial: &str) -> Result<()> {
    if conn.serial_taken(serial).await? {
        return Err(StoreError::DuplicateCertificate(serial.to_owned()));
    }
    Ok(())
}
