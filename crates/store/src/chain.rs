//! The audit chain's rules (`audit.rs`) run over a database connection: find the tip,
//! append, seal the head, key an old log, verify, re-seal. Database-independent.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;

use crate::audit::{self, AuditEvent, AuditKey, Broken, ChainReport, ChainTip, Checkpoint};
use crate::audit::{Outcome, ResealReport, Walk, HEAD_MAC};
use crate::db::{Conn, Database, KeyUseState, Lock};
use crate::StoreError;

type Result<T> = std::result::Result<T, StoreError>;

/// Records read per query while walking the chain.
const PAGE: u32 = 1024;

async fn last_record(conn: &mut dyn Conn) -> Result<ChainTip> {
    tip_at(conn.audit_last().await?)
}

/// The tip a last record (seq, hash) makes; genesis for an empty log.
fn tip_at(last: Option<(i64, String)>) -> Result<ChainTip> {
    Ok(match last {
        Some((seq, hash)) => ChainTip {
            seq: crate::error::seq_u64(seq)?,
            hash,
        },
        None => ChainTip::genesis(),
    })
}

/// Open the writer's batch: its write transaction (taken up front, so the tip cannot
/// be stale: another process writing the same database waits), and the tip to append
/// after (see [`audit::check_tip`]).
/// Also the key-use states of `keys` that exist, read in the same call.
pub(crate) async fn begin(
    conn: &mut dyn Conn,
    key: &AuditKey,
    keys: &[&str],
) -> Result<(ChainTip, HashMap<String, KeyUseState>)> {
    let begun = conn.begin_append(keys).await?;
    let tip = audit::check_tip(tip_at(begun.last)?, begun.head.as_ref(), key)?;
    Ok((tip, begun.keys))
}

/// Close the writer's batch (see [`Conn::finish_append`]): the head is sealed at `tip`
/// unless the log is still empty.
pub(crate) async fn finish(
    conn: &mut dyn Conn,
    records: &[audit::AuditRecord],
    tip: &ChainTip,
    key: &AuditKey,
    change: &crate::db::Change,
) -> Result<()> {
    let mac = audit::head_mac(tip, key)?;
    let seq =
        i64::try_from(tip.seq).map_err(|_| StoreError::Corrupt("audit sequence number".into()))?;
    let head = (tip.seq > 0).then_some((seq, tip.hash.as_str(), mac.as_str()));
    conn.finish_append(records, head, change).await
}

pub(crate) async fn append(
    conn: &mut dyn Conn,
    e: &AuditEvent,
    tip: &ChainTip,
    key: &AuditKey,
) -> Result<ChainTip> {
    let (r, next) = extend(e, tip, key)?;
    conn.audit_insert(&r).await?;
    Ok(next)
}

/// The record that extends the chain at `tip` with `e`, and the new tip; written by
/// the caller (the writer gathers a batch's records into a few statements).
pub(crate) fn extend(
    e: &AuditEvent,
    tip: &ChainTip,
    key: &AuditKey,
) -> Result<(audit::AuditRecord, ChainTip)> {
    let r = audit::extend(tip, e, crate::now_rfc3339(), key)?;
    let next = ChainTip {
        seq: crate::error::seq_u64(r.seq)?,
        hash: r.hash.clone(),
    };
    Ok((r, next))
}

/// Seal the head at `tip` (seq 0 and the genesis hash for an empty log).
pub(crate) async fn set_head(conn: &mut dyn Conn, tip: &ChainTip, key: &AuditKey) -> Result<()> {
    let mac = audit::head_mac(tip, key)?;
    conn.audit_set_head(tip.seq as i64, &tip.hash, &mac).await
}

/// Key a log the first time this version opens it (the keyed schema was created by this
/// very open; the caller holds the write lock). A new database gets a sealed genesis
/// head. An existing one has its head sealed where it stands, and an `audit.keyed`
/// record marks the moment, so a second such record (someone rewrote the file into the
/// old schema to be sealed afresh) stands out. A log whose head is missing or disagrees
/// with the last record is left as it is: verification reports it broken and writes
/// stop, as before keying.
pub(crate) async fn key_on_upgrade(conn: &mut dyn Conn, key: &AuditKey, fresh: bool) -> Result<()> {
    let last = last_record(conn).await?;
    let head = conn.audit_head(true).await?;
    if !audit::legacy_head_consistent(head.as_ref(), &last) {
        tracing::error!("the legacy audit chain head disagrees with the log; not sealing it");
        return Ok(());
    }
    if fresh {
        return set_head(conn, &last, key).await;
    }
    let e = AuditEvent::new(
        influxion_core::Actor::id_only("system:upgrade"),
        "audit.keyed",
        Outcome::Ok,
    )
    .target("audit")
    .detail(serde_json::json!({"unkeyed_records": last.seq}));
    let tip = append(conn, &e, &last, key).await?;
    set_head(conn, &tip, key).await
}

/// Verify from `from` (a checkpoint an earlier call returned) or from the start, in one
/// read snapshot so that appends committing meanwhile cannot look like a deletion.
/// `key: None` checks the hash links only. Returns the report and, when intact, the
/// checkpoint to resume from.
pub(crate) async fn verify(
    db: &dyn Database,
    key: Option<&AuditKey>,
    from: Option<&Checkpoint>,
    checked: &AtomicU64,
) -> Result<(ChainReport, Option<Checkpoint>)> {
    let mut conn = db.conn().await?;
    conn.begin(Lock::Read).await?;
    let r = verify_in(conn.as_mut(), key, from, checked).await;
    let _ = conn.rollback().await;
    r
}

/// [`verify`] in the transaction the caller holds on `conn` (a migration verifies the
/// copy before it commits).
pub(crate) async fn verify_in(
    conn: &mut dyn Conn,
    key: Option<&AuditKey>,
    from: Option<&Checkpoint>,
    checked: &AtomicU64,
) -> Result<(ChainReport, Option<Checkpoint>)> {
    let broken = |b: Broken| {
        Ok((
            ChainReport::Broken {
                seq: b.0,
                reason: b.1,
            },
            None,
        ))
    };
    let keyed_file = conn.audit_keyed_schema().await?;
    if let Some(c) = from.filter(|c| c.seq() > 0) {
        // Records up to the checkpoint were verified before; that the checkpoint record
        // is still there, unchanged, shows the log was not truncated or rolled back past it.
        let hash = conn.audit_hash(c.seq()).await?;
        if hash.as_deref() != Some(c.hash()) {
            return broken(Broken(
                c.seq(),
                format!(
                    "record {}, verified earlier, was deleted or rewritten",
                    c.seq()
                ),
            ));
        }
    }
    let mut walk = Walk::new(key, from, checked);
    let mut after = walk.records();
    loop {
        let page = conn.audit_records_after(after, PAGE, keyed_file).await?;
        for r in &page {
            if let Err(b) = walk.step(r) {
                return broken(b);
            }
        }
        match page.last() {
            Some(r) if page.len() == PAGE as usize => after = r.seq,
            _ => break,
        }
    }
    let head = conn.audit_head(keyed_file).await?;
    if let Err(b) = walk.check_head(head.as_ref(), keyed_file) {
        return broken(b);
    }
    Ok((
        ChainReport::Intact {
            records: crate::error::seq_u64(walk.records())?,
            head: walk.prev.clone(),
            unkeyed: walk.unkeyed,
            keyed: keyed_file && key.is_some(),
        },
        Some(walk.checkpoint()),
    ))
}

/// MAC the unkeyed records from `from` on, after verifying the whole chain, and record
/// it as `event` (detail replaced by what was done), all in the caller's write
/// transaction. Refuses a chain that is broken anywhere, whose head is missing, or whose
/// head MAC fails: a re-seal vouches for the log as it stands and must not bless damage.
/// An unsealed head that names the last record is sealed (and the record says so).
pub(crate) async fn reseal(
    conn: &mut dyn Conn,
    key: &AuditKey,
    from: i64,
    event: &AuditEvent,
) -> Result<ResealReport> {
    let refuse = |m: String| Err(StoreError::Reseal(m));
    let checked = AtomicU64::new(0);
    let mut walk = Walk::new(Some(key), None, &checked);
    let mut to_seal = Vec::new();
    let mut after = 0;
    loop {
        let page = conn.audit_records_after(after, PAGE, true).await?;
        for r in &page {
            if let Err(Broken(seq, reason)) = walk.step(r) {
                return refuse(format!("record {seq}: {reason}"));
            }
            if r.mac.is_none() && r.seq >= from {
                to_seal.push((r.seq, r.hash.clone()));
            }
        }
        match page.last() {
            Some(r) if page.len() == PAGE as usize => after = r.seq,
            _ => break,
        }
    }
    let head = conn.audit_head(true).await?;
    let head_was_unsealed = head.as_ref().is_some_and(|h| h.mac.is_none());
    let Some(h) = &head else {
        return refuse("the chain head is missing: the end of the log is unknown".into());
    };
    if h.mac
        .as_ref()
        .is_some_and(|m| !key.verify(HEAD_MAC, h.seq, &h.hash, m))
    {
        return refuse(
            "the chain head's MAC does not verify: it was rewritten without the audit key".into(),
        );
    }
    if let Err(Broken(_, reason)) = walk.check_head_link(h) {
        return refuse(reason);
    }
    for (seq, hash) in &to_seal {
        conn.audit_set_mac(*seq, &audit::record_mac(*seq, hash, key)?)
            .await?;
    }
    let tip = ChainTip {
        seq: crate::error::seq_u64(walk.records())?,
        hash: walk.prev.clone(),
    };
    let e = event.clone().detail(serde_json::json!({
        "from": from,
        "sealed": to_seal.len(),
        "through": tip.seq,
        "head_was_unsealed": head_was_unsealed,
    }));
    let tip = append(conn, &e, &tip, key).await?;
    set_head(conn, &tip, key).await?;
    Ok(ResealReport {
        sealed: to_seal.len() as u64,
        head_was_unsealed,
        seq: tip.seq,
    })
}
