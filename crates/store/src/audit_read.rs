//! Reading the audit log: filtered pages, one record with its place in the chain, and
//! waiting for records not yet written (for `influxion audit export --follow`).

use std::time::Duration;

use serde::Serialize;

use crate::audit::{AuditRecord, RECORD_MAC};
use crate::{Store, StoreError};

/// Which records to read. Times are RFC 3339 UTC as the log writes them
/// (`2026-12-02T10:00:00Z`), compared as text; the HTTP layer normalises its input.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// At or after.
    pub since: Option<String>,
    /// Before.
    pub until: Option<String>,
    /// Any of these actions; a trailing `*` matches a prefix (`cert.*`).
    pub actions: Vec<String>,
    /// A substring of the actor's identity or recorded label (ASCII case ignored).
    pub actor: Option<String>,
    /// Records about this key: their target, or their detail's `key`.
    pub key: Option<String>,
    pub outcome: Option<String>,
    /// Records after this sequence number, oldest first (export); without it, newest
    /// first.
    pub after_seq: Option<i64>,
    /// Newest first, before this sequence number (the next page of a listing).
    pub before_seq: Option<i64>,
    pub limit: u32,
}

/// One record and how it sits in the chain.
#[derive(Debug, Clone)]
pub struct AuditPlace {
    pub record: AuditRecord,
    pub checks: PlaceChecks,
}

/// What can be said about one record from it and its neighbours. The whole-chain
/// answer (is everything before it intact, does the head match) is `ChainReport`'s.
#[derive(Debug, Clone, Serialize)]
pub struct PlaceChecks {
    /// The stored hash equals the hash of the stored fields.
    pub hash_matches: bool,
    /// `valid`, `invalid`, or `none` for a record written before keying.
    pub mac: &'static str,
    /// The previous record's hash (the genesis hash for record 1), if it exists.
    pub previous_hash: Option<String>,
    /// `prev_hash` equals the previous record's hash.
    pub links_to_previous: bool,
    /// The next record's sequence number, if there is one.
    pub next_seq: Option<i64>,
    /// The next record's `prev_hash` equals this record's hash (true for the last).
    pub next_links_here: bool,
    /// The last record of the log.
    pub last_seq: i64,
}

impl Store {
    /// Records matching `f` (see [`AuditFilter`]).
    pub async fn audit_search(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        self.db.audit_search(f).await
    }

    /// The newest records, newest first.
    pub async fn recent_audit(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        self.audit_search(&AuditFilter {
            limit,
            ..AuditFilter::default()
        })
        .await
    }

    /// Record `seq` with its hash, MAC and links checked against its neighbours.
    pub async fn audit_place(&self, seq: i64) -> Result<Option<AuditPlace>, StoreError> {
        let Some(record) = self.db.audit_record(seq).await? else {
            return Ok(None);
        };
        let previous_hash = if seq == 1 {
            Some(crate::audit::GENESIS.to_owned())
        } else {
            self.db.audit_record(seq - 1).await?.map(|r| r.hash)
        };
        let next = self.db.audit_record(seq + 1).await?;
        let mac = match &record.mac {
            None => "none",
            Some(m) if self.audit_key.verify(RECORD_MAC, seq, &record.hash, m) => "valid",
            Some(_) => "invalid",
        };
        let checks = PlaceChecks {
            hash_matches: record.computed_hash() == record.hash,
            mac,
            links_to_previous: previous_hash.as_deref() == Some(record.prev_hash.as_str()),
            previous_hash,
            next_seq: next.as_ref().map(|n| n.seq),
            next_links_here: next.as_ref().is_none_or(|n| n.prev_hash == record.hash),
            last_seq: self.db.audit_last_seq().await?,
        };
        Ok(Some(AuditPlace { record, checks }))
    }

    /// The last committed record's sequence number.
    pub fn audit_last_seq(&self) -> u64 {
        *self.audit_tip.borrow()
    }

    /// Wait until a record after `seq` is committed, at most `timeout`. Returns the last
    /// sequence number then (equal to `seq` if nothing came).
    pub async fn wait_for_audit_after(&self, seq: u64, timeout: Duration) -> u64 {
        let mut rx = self.audit_tip.clone();
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(|last| *last > seq).await.map(|last| *last).ok()
        })
        .await;
        match waited {
            Ok(Some(last)) => last,
            _ => *self.audit_tip.borrow(),
        }
    }
}
