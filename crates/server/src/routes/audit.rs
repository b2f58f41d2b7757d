//! `GET /v1/audit` (filtered pages, and export pages that wait for new records) and
//! `GET /v1/audit/{seq}` (one record and its place in the chain). Auditors only.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::Json;
use influxion_api::{AuditEntry, AuditPage, AuditRecordView, Chain, RecordChecks};
use influxion_core::Role;
use influxion_store::{AuditEvent, AuditFilter, AuditRecord, ChainReport, Outcome, StoreError};
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::Semaphore;

use super::{forbidden, refused};
use crate::{ApiError, AppState, Caller};

/// Longest wait of one export request for new records.
const MAX_WAIT_SECS: u64 = 30;
/// Export requests waiting at once; more are answered at once (they poll again).
const MAX_WAITERS: usize = 64;
/// Most records in one answer.
const MAX_LIMIT: u32 = 1000;
/// An export reader is recorded at most this often, so a follower does not read its
/// own read records in a loop.
const EXPORT_RECORD_EVERY: Duration = Duration::from_secs(600);
/// Readers remembered for the rule above (the oldest are forgotten beyond this).
const MAX_READERS: usize = 10_000;

/// Who is exporting, and the waits in progress.
pub struct AuditFeed {
    waiters: Semaphore,
    recorded: Mutex<HashMap<String, Instant>>,
}

impl Default for AuditFeed {
    fn default() -> Self {
        Self {
            waiters: Semaphore::new(MAX_WAITERS),
            recorded: Mutex::new(HashMap::new()),
        }
    }
}

impl AuditFeed {
    /// Whether this export read is to be recorded (the first, then every ten minutes).
    fn record_export(&self, reader: &str) -> bool {
        let Ok(mut m) = self.recorded.lock() else {
            return true;
        };
        let now = Instant::now();
        if m.get(reader)
            .is_some_and(|t| now.duration_since(*t) < EXPORT_RECORD_EVERY)
        {
            return false;
        }
        if m.len() >= MAX_READERS {
            m.retain(|_, t| now.duration_since(*t) < EXPORT_RECORD_EVERY);
        }
        if m.len() < MAX_READERS {
            m.insert(reader.to_owned(), now);
        }
        true
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    limit: Option<u32>,
    /// Re-verify the whole chain instead of only what was appended since the last check.
    full: Option<bool>,
    since: Option<String>,
    until: Option<String>,
    /// Comma-separated; a trailing `*` matches a prefix.
    action: Option<String>,
    actor: Option<String>,
    key: Option<String>,
    outcome: Option<String>,
    /// Export: records after this sequence number, oldest first.
    after: Option<i64>,
    /// Listing: records before this sequence number, newest first.
    before: Option<i64>,
    /// Export: wait up to this many seconds (at most 30) for a record after `after`.
    wait: Option<u64>,
}

/// An RFC 3339 time as the log's own text compares: `YYYY-MM-DDTHH:MM:SS` in UTC. At
/// or after it is every record of that second on; before it excludes that second.
fn time_bound(name: &str, v: &str) -> Result<String, ApiError> {
    let t = OffsetDateTime::parse(v, &Rfc3339).map_err(|_| {
        ApiError::InvalidRequest(format!(
            "{name} is an RFC 3339 time such as 2026-12-01T09:00:00Z"
        ))
    })?;
    let t = t.to_offset(time::UtcOffset::UTC);
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

fn text_param(name: &str, v: Option<String>, max: usize) -> Result<Option<String>, ApiError> {
    match v {
        Some(s) if s.is_empty() => Ok(None),
        Some(s) if s.chars().count() > max || s.chars().any(char::is_control) => Err(
            ApiError::InvalidRequest(format!("{name} is at most {max} printable characters")),
        ),
        other => Ok(other),
    }
}

fn actions(v: Option<String>) -> Result<Vec<String>, ApiError> {
    let Some(v) = v.filter(|v| !v.is_empty()) else {
        return Ok(Vec::new());
    };
    let list: Vec<String> = v.split(',').map(|a| a.trim().to_owned()).collect();
    let valid = |a: &str| {
        let body = a.strip_suffix('*').unwrap_or(a);
        !a.is_empty()
            && a.len() <= 64
            && body
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
    };
    if list.len() > 16 || !list.iter().all(|a| valid(a)) {
        return Err(ApiError::InvalidRequest(
            "action is a comma-separated list of up to 16 actions such as sign,cert.* (lower case, digits, '.', '_', '-', a trailing '*')".into(),
        ));
    }
    Ok(list)
}

impl AuditQuery {
    fn filter(self) -> Result<(AuditFilter, Option<u64>, bool), ApiError> {
        let outcome = match self.outcome.as_deref() {
            None | Some("") => None,
            Some(o @ ("ok" | "refused" | "error")) => Some(o.to_owned()),
            Some(_) => {
                return Err(ApiError::InvalidRequest(
                    "outcome is ok, refused or error".into(),
                ))
            }
        };
        if self.after.is_some() && self.before.is_some() {
            return Err(ApiError::InvalidRequest(
                "after (export, oldest first) and before (listing, newest first) do not go together".into(),
            ));
        }
        if self.wait.is_some() && self.after.is_none() {
            return Err(ApiError::InvalidRequest(
                "wait needs after: it waits for records after a sequence number".into(),
            ));
        }
        if let Some(w) = self.wait.filter(|w| *w > MAX_WAIT_SECS) {
            return Err(ApiError::InvalidRequest(format!(
                "wait is at most {MAX_WAIT_SECS} seconds, not {w}"
            )));
        }
        if self.after.is_some_and(|a| a < 0) || self.before.is_some_and(|b| b < 1) {
            return Err(ApiError::InvalidRequest(
                "after is 0 or more; before is 1 or more".into(),
            ));
        }
        let limit = self.limit.unwrap_or(100);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::InvalidRequest(format!(
                "limit is 1 to {MAX_LIMIT}"
            )));
        }
        let f = AuditFilter {
            since: self
                .since
                .as_deref()
                .map(|v| time_bound("since", v))
                .transpose()?,
            until: self
                .until
                .as_deref()
                .map(|v| time_bound("until", v))
                .transpose()?,
            actions: actions(self.action)?,
            actor: text_param("actor", self.actor, 128)?,
            key: text_param("key", self.key, 128)?,
            outcome,
            after_seq: self.after,
            before_seq: self.before,
            limit,
        };
        Ok((f, self.wait, self.full.unwrap_or(false)))
    }
}

pub(crate) fn entry(r: AuditRecord) -> AuditEntry {
    let actor = r.actor();
    AuditEntry {
        detail: serde_json::from_str(&r.detail).unwrap_or(serde_json::Value::String(r.detail)),
        seq: r.seq,
        at: r.at,
        actor,
        action: r.action,
        target: r.target,
        outcome: r.outcome,
        prev_hash: r.prev_hash,
        hash: r.hash,
        mac: r.mac,
    }
}

fn chain(r: ChainReport) -> Chain {
    match r {
        ChainReport::Intact {
            records,
            head,
            unkeyed,
            keyed,
        } => Chain {
            status: "intact".into(),
            records: Some(records),
            head: Some(head),
            unkeyed: Some(unkeyed),
            keyed: Some(keyed),
            seq: None,
            reason: None,
        },
        ChainReport::Broken { seq, reason } => Chain {
            status: "broken".into(),
            records: None,
            head: None,
            unkeyed: None,
            keyed: None,
            seq: Some(seq),
            reason: Some(reason),
        },
    }
}

async fn require_auditor(st: &AppState, c: &Caller) -> Result<(), ApiError> {
    if c.perms.has_role(Role::Auditor) {
        return Ok(());
    }
    let e = forbidden(&c.perms, "reading the audit log needs the auditor role");
    refused(st, &c.actor, "audit.read", "audit", &e).await;
    Err(e)
}

async fn verified(st: &AppState, full: bool) -> Result<ChainReport, ApiError> {
    Ok(if full {
        st.store.verify_audit_chain().await?
    } else {
        st.store.verify_audit_chain_incremental().await?
    })
}

/// Record a read of the log; a damaged log refuses writes, and the page saying where
/// it broke is what the auditor needs, so that refusal does not replace the answer.
async fn record_read(
    st: &AppState,
    event: AuditEvent,
    chain: Option<&ChainReport>,
) -> Result<(), ApiError> {
    match st.store.audit(event).await {
        Ok(_) => Ok(()),
        Err(StoreError::ChainHeadMismatch(_))
            if chain.is_none_or(|c| matches!(c, ChainReport::Broken { .. })) =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn list(
    State(st): State<AppState>,
    c: Caller,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    require_auditor(&st, &c).await?;
    let Query(q) = q.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let (f, wait, full) = q.filter()?;
    let Some(after) = f.after_seq else {
        let records = st.store.audit_search(&f).await?;
        let report = verified(&st, full).await?;
        let read = AuditEvent::new(c.actor.clone(), "audit.read", Outcome::Ok).target("audit");
        record_read(&st, read, Some(&report)).await?;
        return Ok(Json(AuditPage {
            chain: Some(chain(report)),
            records: records.into_iter().map(entry).collect(),
            last_seq: i64::try_from(st.store.audit_last_seq()).unwrap_or(i64::MAX),
        }));
    };
    if st.feed.record_export(&c.actor.id) {
        let read = AuditEvent::new(c.actor.clone(), "audit.export", Outcome::Ok)
            .target("audit")
            .detail(serde_json::json!({"after": after}));
        record_read(&st, read, None).await?;
    }
    let mut records = st.store.audit_search(&f).await?;
    let after_u = u64::try_from(after).unwrap_or(0);
    if let Some(secs) = wait.filter(|s| *s > 0 && records.is_empty()) {
        // Bounded: beyond MAX_WAITERS the answer is immediate and the client polls.
        if let Ok(_permit) = st.feed.waiters.try_acquire() {
            let mut seen = after_u;
            let deadline = Instant::now() + Duration::from_secs(secs);
            // Records after `after` may all be filtered out: wait again until one
            // that matches comes, or the time is up.
            while records.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let last = st.store.wait_for_audit_after(seen, left).await;
                if last <= seen {
                    break;
                }
                seen = last;
                records = st.store.audit_search(&f).await?;
            }
        }
    }
    Ok(Json(AuditPage {
        chain: None,
        records: records.into_iter().map(entry).collect(),
        last_seq: i64::try_from(st.store.audit_last_seq()).unwrap_or(i64::MAX),
    }))
}

pub(crate) async fn show(
    State(st): State<AppState>,
    c: Caller,
    Path(seq): Path<String>,
) -> Result<Json<AuditRecordView>, ApiError> {
    require_auditor(&st, &c).await?;
    let seq: i64 = seq.parse().ok().filter(|s| *s >= 1).ok_or_else(|| {
        ApiError::InvalidRequest(
            "an audit record is named by its sequence number (1 or more)".into(),
        )
    })?;
    let place = st
        .store
        .audit_place(seq)
        .await?
        .ok_or(ApiError::UnknownAuditRecord(seq))?;
    let report = verified(&st, false).await?;
    let read = AuditEvent::new(c.actor.clone(), "audit.read", Outcome::Ok).target(seq.to_string());
    record_read(&st, read, Some(&report)).await?;
    let k = place.checks;
    Ok(Json(AuditRecordView {
        record: entry(place.record),
        checks: RecordChecks {
            hash_matches: k.hash_matches,
            mac: k.mac.to_owned(),
            previous_hash: k.previous_hash,
            links_to_previous: k.links_to_previous,
            next_seq: k.next_seq,
            next_links_here: k.next_links_here,
            last_seq: k.last_seq,
        },
        chain: chain(report),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_become_the_logs_seconds_in_utc() {
        assert_eq!(
            time_bound("since", "2026-12-01T10:00:00+01:00").unwrap(),
            "2026-12-01T09:00:00"
        );
        assert_eq!(
            time_bound("since", "2026-12-01T09:00:00.75Z").unwrap(),
            "2026-12-01T09:00:00"
        );
        assert!(time_bound("since", "yesterday").is_err());
        // Text comparison with the log's own timestamps, fractions or not.
        let bound = time_bound("since", "2026-12-01T09:00:00Z").unwrap();
        assert!("2026-12-01T09:00:00Z" >= bound.as_str());
        assert!("2026-12-01T09:00:00.5Z" >= bound.as_str());
        assert!("2026-12-01T08:59:59.9Z" < bound.as_str());
    }

    #[test]
    fn actions_are_checked() {
        assert_eq!(
            actions(Some("sign,cert.*".into())).unwrap(),
            vec!["sign", "cert.*"]
        );
        assert!(actions(Some("sign;drop".into())).is_err());
        assert!(actions(Some("a*b".into())).is_err());
        assert!(actions(Some(",".into())).is_err());
        assert!(actions(None).unwrap().is_empty());
    }

    #[test]
    fn export_reads_are_recorded_once_in_a_while() {
        let f = AuditFeed::default();
        assert!(f.record_export("user:a"));
        assert!(!f.record_export("user:a"));
        assert!(f.record_export("user:b"));
    }
}
