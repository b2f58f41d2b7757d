//! The hash-chained, keyed audit log (design and threat model: docs/audit.md).
//!
//! Record n stores `hash_n = SHA-256(canonical JSON of {seq, at, actor, action, target,
//! outcome, detail, prev_hash})` with `prev_hash = hash_{n-1}` (64 zeros for the first),
//! and `mac_n = HMAC-SHA256(audit key, "influxion audit record v1" 0 seq hash_n)`. The
//! single head row holds the last record's seq and hash (seq 0 and the genesis hash for
//! an empty log) sealed with `HMAC(audit key, "influxion audit head v1" 0 seq hash)`.
//! The audit key is derived from the KEK, so someone who can write the database file
//! but lacks the KEK cannot alter a record (its hash or MAC fails), delete one (a gap in
//! `seq`), truncate the tail and re-head (the head's MAC fails), or delete the head or
//! every row (a missing head is always broken: every store seals one when it is created).
//! Records written before keying have no MAC; they are covered by the first keyed record
//! or the sealed head through the hash links, and [`reseal`] MACs them individually.

//!
//! This module holds the chain's rules without I/O: how a record extends the chain
//! ([`extend`]), when the tip may be appended to ([`check_tip`]), and how a walk over
//! stored records decides the chain is intact ([`Walk`]). `chain.rs` runs them over a
//! database connection.

use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use influxion_core::Actor;
use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::StoreError;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The operation happened.
    Ok,
    /// The caller was refused (bad token, permission, bad input).
    Refused,
    /// The operation failed on our side.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Error => "error",
        }
    }
}

/// What happened, before it is given a place in the chain.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub actor: Actor,
    pub action: String,
    pub target: Option<String>,
    pub outcome: Outcome,
    pub detail: serde_json::Value,
}

impl AuditEvent {
    /// `actor` names who acted; `Actor::id_only("system")` for Influxion itself.
    pub fn new(actor: Actor, action: impl Into<String>, outcome: Outcome) -> Self {
        Self {
            actor,
            action: action.into(),
            target: None,
            outcome,
            detail: serde_json::Value::Object(Default::default()),
        }
    }

    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }
}

/// A record as stored.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub at: String,
    /// The actor's stable identity.
    pub actor: String,
    /// Who the actor was, for people to read (JSON text, see [`Actor::stored_label`]);
    /// hashed when present, so a record's names are as tamper-evident as the rest.
    /// None in records written before labels were kept, whose hashes it leaves as they
    /// were.
    pub actor_label: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub outcome: String,
    /// The detail exactly as hashed (JSON text); the API shows it parsed.
    #[serde(serialize_with = "detail_as_json")]
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
    /// HMAC of the record under the audit key; None for records written before keying.
    pub mac: Option<String>,
}

fn detail_as_json<S: serde::Serializer>(detail: &str, s: S) -> Result<S::Ok, S::Error> {
    match serde_json::from_str::<serde_json::Value>(detail) {
        Ok(v) => v.serialize(s),
        Err(_) => s.serialize_str(detail),
    }
}

/// The fields that are hashed, in a fixed order.
#[derive(Serialize)]
struct Hashed<'a> {
    seq: i64,
    at: &'a str,
    actor: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor_label: Option<&'a str>,
    action: &'a str,
    target: Option<&'a str>,
    outcome: &'a str,
    detail: &'a str,
    prev_hash: &'a str,
}

impl Hashed<'_> {
    fn hash(&self) -> String {
        // Serialising a struct of strings cannot fail.
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(bytes))
    }
}

impl AuditRecord {
    /// Who acted, with the label recorded at the time (the identity alone for records
    /// from before labels were kept).
    pub fn actor(&self) -> Actor {
        Actor::from_stored(self.actor.clone(), self.actor_label.as_deref())
    }

    /// The hash of the record's fields as stored (what verification compares `hash` with).
    pub fn computed_hash(&self) -> String {
        Hashed {
            seq: self.seq,
            at: &self.at,
            actor: &self.actor,
            actor_label: self.actor_label.as_deref(),
            action: &self.action,
            target: self.target.as_deref(),
            outcome: &self.outcome,
            detail: &self.detail,
            prev_hash: &self.prev_hash,
        }
        .hash()
    }
}

/// The HMAC key of the audit chain (derived from the KEK by the keystore). Zeroized on
/// drop; never printed.
pub struct AuditKey(Zeroizing<[u8; 32]>);

impl AuditKey {
    pub fn new(key: Zeroizing<[u8; 32]>) -> Self {
        Self(key)
    }

    fn hmac(&self, domain: &[u8], seq: i64, hash: &str) -> Option<HmacSha256> {
        // HMAC takes keys of any length, so this cannot fail for 32 bytes.
        let mut m = <HmacSha256 as Mac>::new_from_slice(self.0.as_ref()).ok()?;
        m.update(domain);
        m.update(&[0]);
        m.update(&seq.to_be_bytes());
        m.update(hash.as_bytes());
        Some(m)
    }

    fn mac(&self, domain: &[u8], seq: i64, hash: &str) -> Result<String, StoreError> {
        self.hmac(domain, seq, hash)
            .map(|m| hex::encode(m.finalize().into_bytes()))
            .ok_or_else(|| StoreError::Corrupt("audit key".into()))
    }

    /// Constant-time comparison of a stored MAC (hex) with the expected one.
    pub(crate) fn verify(&self, domain: &[u8], seq: i64, hash: &str, mac_hex: &str) -> bool {
        let Ok(given) = hex::decode(mac_hex) else {
            return false;
        };
        self.hmac(domain, seq, hash)
            .is_some_and(|m| m.verify_slice(&given).is_ok())
    }
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey([redacted])")
    }
}

type HmacSha256 = Hmac<Sha256>;

/// Domain labels keep a record's MAC from being replayed as a head's (and vice versa).
pub(crate) const RECORD_MAC: &[u8] = b"influxion audit record v1";
pub(crate) const HEAD_MAC: &[u8] = b"influxion audit head v1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChainTip {
    pub seq: u64,
    pub hash: String,
}

impl ChainTip {
    /// The tip of an empty log.
    pub(crate) fn genesis() -> Self {
        Self {
            seq: 0,
            hash: GENESIS.to_owned(),
        }
    }
}

/// The single head row: the last record's seq and hash, and their seal (None before
/// keying, or when someone removed it).
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub seq: i64,
    pub hash: String,
    pub mac: Option<String>,
}

/// The tip to append after, given the last stored record and the head. Appending after
/// a deleted tail, or under a head that is missing or not sealed by our key, would
/// bless the damage with a fresh seal; refuse instead.
pub(crate) fn check_tip(
    last: ChainTip,
    head: Option<&Head>,
    key: &AuditKey,
) -> Result<ChainTip, StoreError> {
    let mismatch = |m: String| Err(StoreError::ChainHeadMismatch(m));
    let Some(head) = head else {
        return mismatch("the head is missing".into());
    };
    match &head.mac {
        None => return mismatch("the head is not sealed".into()),
        Some(m) if !key.verify(HEAD_MAC, head.seq, &head.hash, m) => {
            return mismatch("the head's MAC does not verify".into())
        }
        Some(_) => {}
    }
    if u64::try_from(head.seq).ok() != Some(last.seq) || head.hash != last.hash {
        return mismatch(format!(
            "head {} at {} vs last record {} at {}",
            head.hash, head.seq, last.hash, last.seq
        ));
    }
    Ok(last)
}

/// The record that extends the chain after `tip` with `e`, written at `at`: the next
/// sequence number, the hash linking it to `tip`, and its MAC.
pub(crate) fn extend(
    tip: &ChainTip,
    e: &AuditEvent,
    at: String,
    key: &AuditKey,
) -> Result<AuditRecord, StoreError> {
    let seq = tip.seq as i64 + 1;
    let detail = e.detail.to_string();
    let actor_label = e.actor.stored_label();
    let hash = Hashed {
        seq,
        at: &at,
        actor: &e.actor.id,
        actor_label: actor_label.as_deref(),
        action: &e.action,
        target: e.target.as_deref(),
        outcome: e.outcome.as_str(),
        detail: &detail,
        prev_hash: &tip.hash,
    }
    .hash();
    let mac = key.mac(RECORD_MAC, seq, &hash)?;
    Ok(AuditRecord {
        seq,
        at,
        actor: e.actor.id.clone(),
        actor_label,
        action: e.action.clone(),
        target: e.target.clone(),
        outcome: e.outcome.as_str().to_owned(),
        detail,
        prev_hash: tip.hash.clone(),
        hash,
        mac: Some(mac),
    })
}

/// The seal of a head naming `tip` (seq 0 and the genesis hash for an empty log).
pub(crate) fn head_mac(tip: &ChainTip, key: &AuditKey) -> Result<String, StoreError> {
    key.mac(HEAD_MAC, tip.seq as i64, &tip.hash)
}

/// The MAC of record `seq` with hash `hash` (for re-sealing records from before keying).
pub(crate) fn record_mac(seq: i64, hash: &str, key: &AuditKey) -> Result<String, StoreError> {
    key.mac(RECORD_MAC, seq, hash)
}

/// Whether a head written before keying names the last record (an empty log had none);
/// only then does keying seal it where it stands.
pub(crate) fn legacy_head_consistent(head: Option<&Head>, last: &ChainTip) -> bool {
    match head {
        Some(h) => u64::try_from(h.seq).ok() == Some(last.seq) && h.hash == last.hash,
        None => last.seq == 0,
    }
}

/// The outcome of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum ChainReport {
    /// Every record links to the one before, and the last matches the head.
    Intact {
        records: u64,
        head: String,
        /// Leading records written before keying (no MAC of their own; covered by the
        /// sealed head through the hash links).
        unkeyed: u64,
        /// Whether MACs were checked with the audit key: false when verifying without
        /// the KEK, or a file from before keying (then truncation goes unnoticed).
        keyed: bool,
    },
    /// The first record (by sequence number) at which the chain breaks, and why.
    Broken { seq: i64, reason: String },
}

/// A verified prefix of the chain: where incremental verification resumes.
#[derive(Debug, Clone)]
pub(crate) struct Checkpoint {
    seq: i64,
    hash: String,
    unkeyed: u64,
    keyed_seen: bool,
}

impl Checkpoint {
    pub(crate) fn seq(&self) -> i64 {
        self.seq
    }

    pub(crate) fn hash(&self) -> &str {
        &self.hash
    }
}

/// Where the chain breaks (sequence number) and why.
pub(crate) struct Broken(pub i64, pub String);

/// Walks records in order from a checkpoint (or the start).
pub(crate) struct Walk<'a> {
    key: Option<&'a AuditKey>,
    next_seq: i64,
    pub(crate) prev: String,
    pub(crate) unkeyed: u64,
    keyed_seen: bool,
    checked: &'a AtomicU64,
}

impl<'a> Walk<'a> {
    pub(crate) fn new(
        key: Option<&'a AuditKey>,
        from: Option<&Checkpoint>,
        checked: &'a AtomicU64,
    ) -> Self {
        match from {
            Some(c) => Self {
                key,
                next_seq: c.seq + 1,
                prev: c.hash.clone(),
                unkeyed: c.unkeyed,
                keyed_seen: c.keyed_seen,
                checked,
            },
            None => Self {
                key,
                next_seq: 1,
                prev: GENESIS.to_owned(),
                unkeyed: 0,
                keyed_seen: false,
                checked,
            },
        }
    }

    pub(crate) fn step(&mut self, r: &AuditRecord) -> Result<(), Broken> {
        self.checked.fetch_add(1, Ordering::Relaxed);
        let seq = r.seq;
        if seq != self.next_seq {
            return Err(Broken(
                self.next_seq,
                format!(
                    "record {} is missing (next present is {seq})",
                    self.next_seq
                ),
            ));
        }
        if r.prev_hash != self.prev {
            return Err(Broken(
                seq,
                "prev_hash does not match the previous record".into(),
            ));
        }
        if r.computed_hash() != r.hash {
            return Err(Broken(
                seq,
                "record content does not match its hash (altered)".into(),
            ));
        }
        match (&r.mac, self.key) {
            (Some(m), Some(k)) if !k.verify(RECORD_MAC, seq, &r.hash, m) => {
                return Err(Broken(
                    seq,
                    "the record's MAC does not verify (rewritten without the audit key)".into(),
                ))
            }
            (Some(_), _) => self.keyed_seen = true,
            (None, _) if self.keyed_seen => {
                return Err(Broken(
                    seq,
                    "the record has no MAC although earlier records have one (inserted or stripped without the audit key)".into(),
                ))
            }
            (None, _) => self.unkeyed += 1,
        }
        self.prev = r.hash.clone();
        self.next_seq += 1;
        Ok(())
    }

    pub(crate) fn records(&self) -> i64 {
        self.next_seq - 1
    }

    /// The head must exist, carry our seal (on a keyed file) and name the last record.
    pub(crate) fn check_head(&self, head: Option<&Head>, keyed_file: bool) -> Result<(), Broken> {
        let records = self.records();
        let after = records + 1;
        let Some(h) = head else {
            // Before keying, an empty log had no head; every keyed store has one.
            if !keyed_file && records == 0 {
                return Ok(());
            }
            return Err(Broken(
                after,
                format!("the chain head is missing: the end of the log is unknown, records after {records} may have been deleted"),
            ));
        };
        if keyed_file {
            match (&h.mac, self.key) {
                (None, _) => {
                    return Err(Broken(
                        after,
                        format!("the chain head is not sealed (its MAC was removed or it was written without the audit key); records after {records} may have been deleted"),
                    ))
                }
                (Some(m), Some(k)) if !k.verify(HEAD_MAC, h.seq, &h.hash, m) => {
                    return Err(Broken(
                        after,
                        format!("the chain head's MAC does not verify: it was rewritten without the audit key; records after {records} may have been deleted"),
                    ))
                }
                _ => {}
            }
        }
        self.check_head_link(h)
    }

    /// The head names the last record walked.
    pub(crate) fn check_head_link(&self, h: &Head) -> Result<(), Broken> {
        let records = self.records();
        if h.seq > records {
            return Err(Broken(
                records + 1,
                format!(
                    "the head says the chain ends at record {}; records after {records} were deleted",
                    h.seq
                ),
            ));
        }
        if h.seq < records || h.hash != self.prev {
            return Err(Broken(
                h.seq + 1,
                format!(
                    "the head says the chain ends at record {} with another hash; the log after it was rewritten",
                    h.seq
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            seq: self.records(),
            hash: self.prev.clone(),
            unkeyed: self.unkeyed,
            keyed_seen: self.keyed_seen,
        }
    }
}

/// What [`reseal`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResealReport {
    /// Records that received a MAC.
    pub sealed: u64,
    /// Whether the head was unsealed before (a crash between migration and first seal,
    /// or a head whose MAC someone removed: the audit record says which case you chose to accept).
    pub head_was_unsealed: bool,
    /// Sequence number of the `audit.reseal` record.
    pub seq: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn key(b: u8) -> AuditKey {
        AuditKey::new(Zeroizing::new([b; 32]))
    }

    /// `n` records extending the genesis tip, and the head sealing the last.
    fn chain(n: usize, k: &AuditKey) -> (Vec<AuditRecord>, Head) {
        let mut tip = ChainTip::genesis();
        let mut out = Vec::new();
        for i in 0..n {
            let e = AuditEvent::new(Actor::id_only("t"), "x", Outcome::Ok).target(i.to_string());
            let r = extend(&tip, &e, "2026-01-01T00:00:00Z".into(), k).unwrap();
            tip = ChainTip {
                seq: u64::try_from(r.seq).unwrap(),
                hash: r.hash.clone(),
            };
            out.push(r);
        }
        let head = Head {
            seq: tip.seq as i64,
            hash: tip.hash.clone(),
            mac: Some(head_mac(&tip, k).unwrap()),
        };
        (out, head)
    }

    fn walk(records: &[AuditRecord], head: &Head, k: &AuditKey) -> Result<i64, i64> {
        let checked = AtomicU64::new(0);
        let mut w = Walk::new(Some(k), None, &checked);
        for r in records {
            w.step(r).map_err(|b| b.0)?;
        }
        w.check_head(Some(head), true).map_err(|b| b.0)?;
        Ok(w.records())
    }

    #[test]
    fn a_record_without_a_label_hashes_as_records_always_did() {
        // The fields and order hashed before labels existed (version 0.7 and older).
        let old = serde_json::json!({
            "seq": 7, "at": "2026-01-01T00:00:00Z", "actor": "app:t/o", "action": "sign",
            "target": "fw", "outcome": "ok", "detail": "{}", "prev_hash": GENESIS,
        });
        // serde_json keeps insertion order only with preserve_order; spell it out.
        let old_text = format!(
            r#"{{"seq":7,"at":"2026-01-01T00:00:00Z","actor":"app:t/o","action":"sign","target":"fw","outcome":"ok","detail":"{{}}","prev_hash":"{GENESIS}"}}"#
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&old_text).unwrap(),
            old
        );
        let mut r = AuditRecord {
            seq: 7,
            at: "2026-01-01T00:00:00Z".into(),
            actor: "app:t/o".into(),
            actor_label: None,
            action: "sign".into(),
            target: Some("fw".into()),
            outcome: "ok".into(),
            detail: "{}".into(),
            prev_hash: GENESIS.into(),
            hash: String::new(),
            mac: None,
        };
        assert_eq!(
            r.computed_hash(),
            hex::encode(Sha256::digest(old_text.as_bytes()))
        );
        // A label is covered by the hash.
        let unlabelled = r.computed_hash();
        r.actor_label = Some(r#"{"name":"ci"}"#.into());
        assert_ne!(r.computed_hash(), unlabelled);
    }

    #[test]
    fn extending_links_each_record_to_the_one_before() {
        let k = key(1);
        let (records, head) = chain(3, &k);
        assert_eq!(records[0].prev_hash, GENESIS);
        assert_eq!(records[1].prev_hash, records[0].hash);
        assert!(records.iter().all(|r| r.computed_hash() == r.hash));
        assert_eq!(walk(&records, &head, &k), Ok(3));
    }

    #[test]
    fn a_walk_pinpoints_alteration_gaps_and_foreign_macs() {
        let k = key(1);
        let (records, head) = chain(4, &k);
        let mut altered = records.clone();
        altered[2].actor = "mallory".into();
        assert_eq!(walk(&altered, &head, &k), Err(3));
        let gap = [&records[..1], &records[2..]].concat();
        assert_eq!(walk(&gap, &head, &k), Err(2));
        assert_eq!(walk(&records, &head, &key(2)), Err(1));
        let short = &records[..3];
        assert_eq!(walk(short, &head, &k), Err(4));
    }

    #[test]
    fn the_tip_is_refused_under_a_missing_unsealed_foreign_or_stale_head() {
        let k = key(1);
        let (records, head) = chain(2, &k);
        let last = ChainTip {
            seq: 2,
            hash: records[1].hash.clone(),
        };
        assert_eq!(check_tip(last.clone(), Some(&head), &k).unwrap(), last);
        let refused = |h: Option<&Head>, k: &AuditKey| {
            matches!(
                check_tip(last.clone(), h, k),
                Err(StoreError::ChainHeadMismatch(_))
            )
        };
        assert!(refused(None, &k));
        assert!(refused(
            Some(&Head {
                mac: None,
                ..head.clone()
            }),
            &k
        ));
        assert!(refused(Some(&head), &key(2)));
        let stale = Head {
            seq: 1,
            hash: records[0].hash.clone(),
            mac: Some(
                head_mac(
                    &ChainTip {
                        seq: 1,
                        hash: records[0].hash.clone(),
                    },
                    &k,
                )
                .unwrap(),
            ),
        };
        assert!(refused(Some(&stale), &k));
    }

    #[test]
    fn a_legacy_head_is_sealed_only_where_it_names_the_last_record() {
        let genesis = ChainTip::genesis();
        assert!(legacy_head_consistent(None, &genesis));
        let last = ChainTip {
            seq: 2,
            hash: "h2".into(),
        };
        assert!(!legacy_head_consistent(None, &last));
        let head = |seq: i64, hash: &str| Head {
            seq,
            hash: hash.into(),
            mac: None,
        };
        assert!(legacy_head_consistent(Some(&head(2, "h2")), &last));
        assert!(!legacy_head_consistent(Some(&head(1, "h1")), &last));
    }
}
