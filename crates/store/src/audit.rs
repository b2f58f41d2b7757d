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

use std::sync::atomic::{AtomicU64, Ordering};

use futures::TryStreamExt;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{Row, SqliteConnection, SqlitePool};
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
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub outcome: Outcome,
    pub detail: serde_json::Value,
}

impl AuditEvent {
    pub fn new(actor: impl Into<String>, action: impl Into<String>, outcome: Outcome) -> Self {
        Self {
            actor: actor.into(),
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
    pub actor: String,
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
    fn computed_hash(&self) -> String {
        Hashed {
            seq: self.seq,
            at: &self.at,
            actor: &self.actor,
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
    fn verify(&self, domain: &[u8], seq: i64, hash: &str, mac_hex: &str) -> bool {
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
const RECORD_MAC: &[u8] = b"influxion audit record v1";
const HEAD_MAC: &[u8] = b"influxion audit head v1";

#[derive(Debug, Clone)]
pub(crate) struct ChainTip {
    pub seq: u64,
    pub hash: String,
}

struct Head {
    seq: i64,
    hash: String,
    mac: Option<String>,
}

async fn read_head(conn: &mut SqliteConnection, keyed: bool) -> Result<Option<Head>, StoreError> {
    let sql = if keyed {
        "SELECT seq, hash, mac FROM audit_head WHERE id = 1"
    } else {
        "SELECT seq, hash, NULL AS mac FROM audit_head WHERE id = 1"
    };
    let Some(h) = sqlx::query(sql).fetch_optional(&mut *conn).await? else {
        return Ok(None);
    };
    Ok(Some(Head {
        seq: h.try_get("seq")?,
        hash: h.try_get("hash")?,
        mac: h.try_get("mac")?,
    }))
}

async fn last_record(conn: &mut SqliteConnection) -> Result<ChainTip, StoreError> {
    let row = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match row {
        Some(r) => ChainTip {
            seq: r.try_get::<i64, _>("seq")? as u64,
            hash: r.try_get("hash")?,
        },
        None => ChainTip {
            seq: 0,
            hash: GENESIS.to_owned(),
        },
    })
}

/// The chain tip to append after, inside the writer's transaction. Appending after a
/// deleted tail, or under a head that is missing or not sealed by our key, would bless
/// the damage with a fresh seal; stop instead.
pub(crate) async fn tip(
    conn: &mut SqliteConnection,
    key: &AuditKey,
) -> Result<ChainTip, StoreError> {
    let last = last_record(&mut *conn).await?;
    let mismatch = |m: String| Err(StoreError::ChainHeadMismatch(m));
    let Some(head) = read_head(&mut *conn, true).await? else {
        return mismatch("the head is missing".into());
    };
    match &head.mac {
        None => return mismatch("the head is not sealed".into()),
        Some(m) if !key.verify(HEAD_MAC, head.seq, &head.hash, m) => {
            return mismatch("the head's MAC does not verify".into())
        }
        Some(_) => {}
    }
    if head.seq as u64 != last.seq || head.hash != last.hash {
        return mismatch(format!(
            "head {} at {} vs last record {} at {}",
            head.hash, head.seq, last.hash, last.seq
        ));
    }
    Ok(last)
}

pub(crate) async fn append(
    conn: &mut SqliteConnection,
    e: &AuditEvent,
    tip: &ChainTip,
    key: &AuditKey,
) -> Result<ChainTip, StoreError> {
    let seq = tip.seq as i64 + 1;
    let at = crate::now_rfc3339();
    let detail = e.detail.to_string();
    let hash = Hashed {
        seq,
        at: &at,
        actor: &e.actor,
        action: &e.action,
        target: e.target.as_deref(),
        outcome: e.outcome.as_str(),
        detail: &detail,
        prev_hash: &tip.hash,
    }
    .hash();
    let mac = key.mac(RECORD_MAC, seq, &hash)?;
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, action, target, outcome, detail, prev_hash, hash, mac)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(seq)
    .bind(&at)
    .bind(&e.actor)
    .bind(&e.action)
    .bind(&e.target)
    .bind(e.outcome.as_str())
    .bind(&detail)
    .bind(&tip.hash)
    .bind(&hash)
    .bind(&mac)
    .execute(&mut *conn)
    .await?;
    Ok(ChainTip {
        seq: seq as u64,
        hash,
    })
}

/// Seal the head at `tip` (seq 0 and the genesis hash for an empty log).
pub(crate) async fn set_head(
    conn: &mut SqliteConnection,
    tip: &ChainTip,
    key: &AuditKey,
) -> Result<(), StoreError> {
    let mac = key.mac(HEAD_MAC, tip.seq as i64, &tip.hash)?;
    sqlx::query(
        "INSERT INTO audit_head (id, seq, hash, mac) VALUES (1, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, mac = excluded.mac",
    )
    .bind(tip.seq as i64)
    .bind(&tip.hash)
    .bind(&mac)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Key a log the first time this version opens it (migration 0007 was applied by this
/// very open; the caller holds the write lock). A new database gets a sealed genesis
/// head. An existing one has its head sealed where it stands, and an `audit.keyed`
/// record marks the moment, so a second such record (someone rewrote the file into the
/// old schema to be sealed afresh) stands out. A log whose head is missing or disagrees
/// with the last record is left as it is: verification reports it broken and writes
/// stop, as before keying.
pub(crate) async fn key_on_upgrade(
    conn: &mut SqliteConnection,
    key: &AuditKey,
    fresh: bool,
) -> Result<(), StoreError> {
    let last = last_record(&mut *conn).await?;
    let head = read_head(&mut *conn, true).await?;
    let consistent = match &head {
        Some(h) => h.seq as u64 == last.seq && h.hash == last.hash,
        None => last.seq == 0,
    };
    if !consistent {
        tracing::error!("the legacy audit chain head disagrees with the log; not sealing it");
        return Ok(());
    }
    if fresh {
        return set_head(conn, &last, key).await;
    }
    let e = AuditEvent::new("system:upgrade", "audit.keyed", Outcome::Ok)
        .target("audit")
        .detail(serde_json::json!({"unkeyed_records": last.seq}));
    let tip = append(conn, &e, &last, key).await?;
    set_head(conn, &tip, key).await
}

/// Named, not `*`: the column set differs between schema versions.
const COLUMNS: &str = "seq, at, actor, action, target, outcome, detail, prev_hash, hash";

fn record_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<AuditRecord, sqlx::Error> {
    Ok(AuditRecord {
        seq: r.try_get("seq")?,
        at: r.try_get("at")?,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        outcome: r.try_get("outcome")?,
        detail: r.try_get("detail")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
        mac: r.try_get("mac")?,
    })
}

pub(crate) async fn recent(pool: &SqlitePool, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS}, mac FROM audit_log ORDER BY seq DESC LIMIT ?"
    ))
    .bind(limit as i64)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(record_from_row).collect::<Result<_, _>>()?)
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
}

struct Broken(i64, String);

/// Walks records in order from a checkpoint (or the start).
struct Walk<'a> {
    key: Option<&'a AuditKey>,
    next_seq: i64,
    prev: String,
    unkeyed: u64,
    keyed_seen: bool,
    checked: &'a AtomicU64,
}

impl<'a> Walk<'a> {
    fn new(key: Option<&'a AuditKey>, from: Option<&Checkpoint>, checked: &'a AtomicU64) -> Self {
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

    fn step(&mut self, r: &AuditRecord) -> Result<(), Broken> {
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

    fn records(&self) -> i64 {
        self.next_seq - 1
    }

    /// The head must exist, carry our seal (on a keyed file) and name the last record.
    fn check_head(&self, head: Option<&Head>, keyed_file: bool) -> Result<(), Broken> {
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
    fn check_head_link(&self, h: &Head) -> Result<(), Broken> {
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

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            seq: self.records(),
            hash: self.prev.clone(),
            unkeyed: self.unkeyed,
            keyed_seen: self.keyed_seen,
        }
    }
}

/// Whether the file has the keyed schema (migration 0007); a read-only copy of an old
/// database may not.
async fn keyed_schema(conn: &mut SqliteConnection) -> Result<bool, StoreError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pragma_table_info('audit_head') WHERE name = 'mac'",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(n > 0)
}

/// Verify from `from` (a checkpoint an earlier call returned) or from the start, in one
/// read snapshot so that appends committing meanwhile cannot look like a deletion.
/// `key: None` checks the hash links only. Returns the report and, when intact, the
/// checkpoint to resume from.
pub(crate) async fn verify(
    pool: &SqlitePool,
    key: Option<&AuditKey>,
    from: Option<&Checkpoint>,
    checked: &AtomicU64,
) -> Result<(ChainReport, Option<Checkpoint>), StoreError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("BEGIN").execute(&mut *conn).await?;
    let r = verify_in(&mut conn, key, from, checked).await;
    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
    r
}

async fn verify_in(
    conn: &mut SqliteConnection,
    key: Option<&AuditKey>,
    from: Option<&Checkpoint>,
    checked: &AtomicU64,
) -> Result<(ChainReport, Option<Checkpoint>), StoreError> {
    let broken = |b: Broken| {
        Ok((
            ChainReport::Broken {
                seq: b.0,
                reason: b.1,
            },
            None,
        ))
    };
    let keyed_file = keyed_schema(&mut *conn).await?;
    if let Some(c) = from.filter(|c| c.seq > 0) {
        // Records up to the checkpoint were verified before; that the checkpoint record
        // is still there, unchanged, shows the log was not truncated or rolled back past it.
        let hash: Option<String> = sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = ?")
            .bind(c.seq)
            .fetch_optional(&mut *conn)
            .await?;
        if hash.as_deref() != Some(c.hash.as_str()) {
            return broken(Broken(
                c.seq,
                format!(
                    "record {}, verified earlier, was deleted or rewritten",
                    c.seq
                ),
            ));
        }
    }
    let mut walk = Walk::new(key, from, checked);
    let mac = if keyed_file { "mac" } else { "NULL AS mac" };
    let sql = format!("SELECT {COLUMNS}, {mac} FROM audit_log WHERE seq > ? ORDER BY seq");
    {
        let mut rows = sqlx::query(&sql).bind(walk.records()).fetch(&mut *conn);
        while let Some(row) = rows.try_next().await? {
            if let Err(b) = walk.step(&record_from_row(&row)?) {
                return broken(b);
            }
        }
    }
    let head = read_head(&mut *conn, keyed_file).await?;
    if let Err(b) = walk.check_head(head.as_ref(), keyed_file) {
        return broken(b);
    }
    Ok((
        ChainReport::Intact {
            records: walk.records() as u64,
            head: walk.prev.clone(),
            unkeyed: walk.unkeyed,
            keyed: keyed_file && key.is_some(),
        },
        Some(walk.checkpoint()),
    ))
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

/// MAC the unkeyed records from `from` on, after verifying the whole chain, and record
/// it as `event` (detail replaced by what was done), all in one write transaction.
/// Refuses a chain that is broken anywhere, whose head is missing, or whose head MAC
/// fails: a re-seal vouches for the log as it stands and must not bless damage. An
/// unsealed head that names the last record is sealed (and the record says so).
pub(crate) async fn reseal(
    conn: &mut SqliteConnection,
    key: &AuditKey,
    from: i64,
    event: &AuditEvent,
) -> Result<ResealReport, StoreError> {
    let refuse = |m: String| Err(StoreError::Reseal(m));
    let checked = AtomicU64::new(0);
    let mut walk = Walk::new(Some(key), None, &checked);
    let mut to_seal = Vec::new();
    {
        let sql = format!("SELECT {COLUMNS}, mac FROM audit_log ORDER BY seq");
        let mut rows = sqlx::query(&sql).fetch(&mut *conn);
        while let Some(row) = rows.try_next().await? {
            let r = record_from_row(&row)?;
            if let Err(Broken(seq, reason)) = walk.step(&r) {
                return refuse(format!("record {seq}: {reason}"));
            }
            if r.mac.is_none() && r.seq >= from {
                to_seal.push((r.seq, r.hash));
            }
        }
    }
    let head = read_head(&mut *conn, true).await?;
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
        sqlx::query("UPDATE audit_log SET mac = ? WHERE seq = ?")
            .bind(key.mac(RECORD_MAC, *seq, hash)?)
            .bind(seq)
            .execute(&mut *conn)
            .await?;
    }
    let tip = ChainTip {
        seq: walk.records() as u64,
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

#[cfg(test)]
mod tests {
    use crate::{AuditEvent, AuditKey, ChainReport, Outcome, Store, StoreError};

    fn key() -> AuditKey {
        AuditKey::new(zeroize::Zeroizing::new([7u8; 32]))
    }

    fn url(dir: &tempfile::TempDir) -> String {
        format!("sqlite://{}/t.db", dir.path().display())
    }

    async fn exec(s: &Store, sql: &str) {
        sqlx::query(sql).execute(s.pool()).await.unwrap();
    }

    async fn hash_of(s: &Store, seq: i64) -> String {
        sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = ?")
            .bind(seq)
            .fetch_one(s.pool())
            .await
            .unwrap()
    }

    fn broken(r: ChainReport) -> (i64, String) {
        match r {
            ChainReport::Broken { seq, reason } => (seq, reason),
            other => panic!("expected broken, got {other:?}"),
        }
    }

    async fn store_with(n: usize) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&url(&dir), key()).await.unwrap();
        for i in 0..n {
            store
                .audit(AuditEvent::new("tester", "test", Outcome::Ok).target(format!("t{i}")))
                .await
                .unwrap();
        }
        (dir, store)
    }

    #[tokio::test]
    async fn intact_chain_verifies() {
        let (_d, s) = store_with(5).await;
        assert!(matches!(
            s.verify_audit_chain().await.unwrap(),
            ChainReport::Intact { records: 5, .. }
        ));
    }

    #[tokio::test]
    async fn concurrent_appends_form_one_chain() {
        let (_d, s) = store_with(0).await;
        let mut tasks = Vec::new();
        for i in 0..200 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.audit(AuditEvent::new("t", "x", Outcome::Ok).target(i.to_string()))
                    .await
            }));
        }
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap().unwrap());
        }
        seqs.sort();
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
        assert!(matches!(
            s.verify_audit_chain().await.unwrap(),
            ChainReport::Intact { records: 200, .. }
        ));
    }

    #[tokio::test]
    async fn altered_record_is_pinpointed() {
        let (_d, s) = store_with(5).await;
        sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
            .execute(s.pool())
            .await
            .unwrap();
        match s.verify_audit_chain().await.unwrap() {
            ChainReport::Broken { seq, .. } => assert_eq!(seq, 3),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn deleted_record_is_pinpointed() {
        let (_d, s) = store_with(5).await;
        sqlx::query("DELETE FROM audit_log WHERE seq = 2")
            .execute(s.pool())
            .await
            .unwrap();
        match s.verify_audit_chain().await.unwrap() {
            ChainReport::Broken { seq, reason } => {
                assert_eq!(seq, 2);
                assert!(reason.contains("missing"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn key_use_of_a_disabled_key_writes_nothing() {
        use influxion_core::{KeyStatus, KeyType};
        let (_d, s) = store_with(0).await;
        let key = crate::KeyRecord {
            id: "k1".into(),
            name: "fw".parse().unwrap(),
            key_type: KeyType::EcP256,
            backend: "software".into(),
            status: KeyStatus::Active,
            public_key: vec![1],
            handle: vec![2],
            created_at: crate::now_rfc3339(),
            created_by: "t".into(),
            policy: Default::default(),
            purpose: Default::default(),
        };
        s.insert_key(key, AuditEvent::new("t", "key.create", Outcome::Ok))
            .await
            .unwrap();
        assert_eq!(
            s.audit_key_use("k1", AuditEvent::new("t", "sign", Outcome::Ok))
                .await
                .unwrap(),
            2
        );
        let name = "fw".parse().unwrap();
        s.set_key_status(
            &name,
            KeyStatus::Disabled,
            AuditEvent::new("t", "key.disable", Outcome::Ok),
        )
        .await
        .unwrap();
        let r = s
            .audit_key_use("k1", AuditEvent::new("t", "sign", Outcome::Ok))
            .await;
        assert!(
            matches!(r, Err(crate::StoreError::KeyNotActive(_))),
            "{r:?}"
        );
        assert_eq!(s.recent_audit(1).await.unwrap()[0].action, "key.disable");
    }

    #[tokio::test]
    async fn writes_stop_after_the_tail_was_deleted() {
        let (_d, s) = store_with(3).await;
        sqlx::query("DELETE FROM audit_log WHERE seq = 3")
            .execute(s.pool())
            .await
            .unwrap();
        let r = s.audit(AuditEvent::new("t", "x", Outcome::Ok)).await;
        assert!(r.is_err(), "{r:?}");
        match s.verify_audit_chain().await.unwrap() {
            ChainReport::Broken { seq, .. } => assert_eq!(seq, 3),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn deleted_tail_is_detected() {
        let (_d, s) = store_with(5).await;
        sqlx::query("DELETE FROM audit_log WHERE seq = 5")
            .execute(s.pool())
            .await
            .unwrap();
        match s.verify_audit_chain().await.unwrap() {
            ChainReport::Broken { seq, .. } => assert_eq!(seq, 5),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn fresh_empty_log_is_intact_and_keyed() {
        let (_d, s) = store_with(0).await;
        assert_eq!(
            s.verify_audit_chain().await.unwrap(),
            ChainReport::Intact {
                records: 0,
                head: super::GENESIS.into(),
                unkeyed: 0,
                keyed: true
            }
        );
    }

    #[tokio::test]
    async fn truncation_with_a_rewritten_head_is_broken() {
        let (_d, s) = store_with(5).await;
        let h3 = hash_of(&s, 3).await;
        exec(&s, "DELETE FROM audit_log WHERE seq > 3").await;
        exec(&s, &format!("UPDATE audit_head SET seq = 3, hash = '{h3}'")).await;
        let (seq, reason) = broken(s.verify_audit_chain().await.unwrap());
        assert_eq!(seq, 4);
        assert!(reason.contains("head's MAC does not verify"), "{reason}");
        // A record's MAC is no head MAC: the labels differ.
        exec(
            &s,
            "UPDATE audit_head SET mac = (SELECT mac FROM audit_log WHERE seq = 3)",
        )
        .await;
        let (seq, reason) = broken(s.verify_audit_chain().await.unwrap());
        assert_eq!((seq, reason.contains("MAC")), (4, true), "{reason}");
        // Nor can the writer be used to bless the truncation with a fresh seal.
        let r = s.audit(AuditEvent::new("t", "x", Outcome::Ok)).await;
        assert!(matches!(r, Err(StoreError::ChainHeadMismatch(_))), "{r:?}");
        let r = s
            .reseal_audit(1, AuditEvent::new("t", "audit.reseal", Outcome::Ok))
            .await;
        assert!(matches!(r, Err(StoreError::Reseal(_))), "{r:?}");
    }

    #[tokio::test]
    async fn rewritten_record_with_recomputed_hash_fails_its_mac() {
        let (_d, s) = store_with(5).await;
        let r = s.recent_audit(1).await.unwrap().remove(0);
        let forged = super::AuditRecord {
            actor: "mallory".into(),
            ..r
        };
        let hash = forged.computed_hash();
        exec(
            &s,
            &format!("UPDATE audit_log SET actor = 'mallory', hash = '{hash}' WHERE seq = 5"),
        )
        .await;
        exec(&s, &format!("UPDATE audit_head SET hash = '{hash}'")).await;
        let (seq, reason) = broken(s.verify_audit_chain().await.unwrap());
        assert_eq!(seq, 5);
        assert!(reason.contains("record's MAC does not verify"), "{reason}");
    }

    #[tokio::test]
    async fn missing_head_after_records_existed_is_broken() {
        let (_d, s) = store_with(3).await;
        exec(&s, "DELETE FROM audit_log").await;
        exec(&s, "DELETE FROM audit_head").await;
        let (seq, reason) = broken(s.verify_audit_chain().await.unwrap());
        assert_eq!(seq, 1);
        assert!(reason.contains("head is missing"), "{reason}");
        let r = s.audit(AuditEvent::new("t", "x", Outcome::Ok)).await;
        assert!(matches!(r, Err(StoreError::ChainHeadMismatch(_))), "{r:?}");
        // An empty log loses its sealed genesis head the same way.
        let (_d, s) = store_with(0).await;
        exec(&s, "DELETE FROM audit_head").await;
        assert_eq!(broken(s.verify_audit_chain().await.unwrap()).0, 1);
        // And an unsealed head is not accepted in place of a sealed one.
        let (_d, s) = store_with(2).await;
        exec(&s, "UPDATE audit_head SET mac = NULL").await;
        let (seq, reason) = broken(s.verify_audit_chain().await.unwrap());
        assert_eq!(seq, 3);
        assert!(reason.contains("not sealed"), "{reason}");
    }

    #[tokio::test]
    async fn verifying_without_the_key_checks_links_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&url(&dir), key()).await.unwrap();
        s.audit(AuditEvent::new("t", "x", Outcome::Ok))
            .await
            .unwrap();
        let other = AuditKey::new(zeroize::Zeroizing::new([8u8; 32]));
        let (seq, reason) = broken(
            Store::verify_database(&url(&dir), Some(&other))
                .await
                .unwrap(),
        );
        assert_eq!(seq, 1);
        assert!(reason.contains("MAC"), "{reason}");
        assert!(matches!(
            Store::verify_database(&url(&dir), None).await.unwrap(),
            ChainReport::Intact {
                records: 1,
                keyed: false,
                ..
            }
        ));
    }

    /// Rewrite a keyed store into the schema before migration 0007, as a database
    /// written by an older version looks.
    async fn downgrade(s: Store) {
        for sql in [
            "ALTER TABLE audit_log DROP COLUMN mac",
            "ALTER TABLE audit_head DROP COLUMN mac",
            "DELETE FROM _sqlx_migrations WHERE version = 7",
        ] {
            exec(&s, sql).await;
        }
        s.pool().close().await;
    }

    #[tokio::test]
    async fn unkeyed_records_verify_and_reseal_keys_them() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&url(&dir), key()).await.unwrap();
        for i in 0..3 {
            s.audit(AuditEvent::new("t", "x", Outcome::Ok).target(i.to_string()))
                .await
                .unwrap();
        }
        downgrade(s).await;
        // An old file verifies as before, and says it is not keyed.
        assert!(matches!(
            Store::verify_database(&url(&dir), Some(&key()))
                .await
                .unwrap(),
            ChainReport::Intact {
                records: 3,
                unkeyed: 3,
                keyed: false,
                ..
            }
        ));

        // Opening it keys it: the head is sealed and the moment recorded.
        let s = Store::open(&url(&dir), key()).await.unwrap();
        let rec = s.recent_audit(1).await.unwrap().remove(0);
        assert_eq!((rec.seq, rec.action.as_str()), (4, "audit.keyed"));
        assert_eq!(rec.detail, r#"{"unkeyed_records":3}"#);
        assert!(matches!(
            s.verify_audit_chain().await.unwrap(),
            ChainReport::Intact {
                records: 4,
                unkeyed: 3,
                keyed: true,
                ..
            }
        ));
        // The old records are covered through the links: truncating them still fails.
        exec(&s, "DELETE FROM audit_log WHERE seq = 3").await;
        assert_eq!(broken(s.verify_audit_chain().await.unwrap()).0, 3);
        let r = s
            .reseal_audit(1, AuditEvent::new("t", "audit.reseal", Outcome::Ok))
            .await;
        assert!(matches!(r, Err(StoreError::Reseal(_))), "{r:?}");
    }

    #[tokio::test]
    async fn reseal_from_a_sequence_number_is_audited() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&url(&dir), key()).await.unwrap();
        for _ in 0..3 {
            s.audit(AuditEvent::new("t", "x", Outcome::Ok))
                .await
                .unwrap();
        }
        downgrade(s).await;
        let s = Store::open(&url(&dir), key()).await.unwrap();
        let r = s
            .reseal_audit(
                2,
                AuditEvent::new("operator", "audit.reseal", Outcome::Ok).target("audit"),
            )
            .await
            .unwrap();
        assert_eq!((r.sealed, r.seq, r.head_was_unsealed), (2, 5, false));
        let rec = s.recent_audit(1).await.unwrap().remove(0);
        assert_eq!(
            (rec.actor.as_str(), rec.action.as_str()),
            ("operator", "audit.reseal")
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&rec.detail).unwrap(),
            serde_json::json!({"from": 2, "sealed": 2, "through": 4, "head_was_unsealed": false})
        );
        assert!(matches!(
            s.verify_audit_chain().await.unwrap(),
            ChainReport::Intact {
                records: 5,
                unkeyed: 1,
                keyed: true,
                ..
            }
        ));
        // Now a rewritten record 2 is pinpointed by its own MAC.
        exec(
            &s,
            "UPDATE audit_log SET mac = (SELECT mac FROM audit_log WHERE seq = 3) WHERE seq = 2",
        )
        .await;
        let (seq, reason) = broken(s.verify_audit_chain().await.unwrap());
        assert_eq!(seq, 2);
        assert!(reason.contains("MAC"), "{reason}");
    }

    #[tokio::test]
    async fn incremental_verification_checks_only_new_records() {
        let (_d, s) = store_with(10).await;
        assert!(matches!(
            s.verify_audit_chain_incremental().await.unwrap(),
            ChainReport::Intact { records: 10, .. }
        ));
        assert_eq!(s.audit_records_checked(), 10);
        for _ in 0..3 {
            s.audit(AuditEvent::new("t", "x", Outcome::Ok))
                .await
                .unwrap();
        }
        assert!(matches!(
            s.verify_audit_chain_incremental().await.unwrap(),
            ChainReport::Intact { records: 13, .. }
        ));
        assert_eq!(s.audit_records_checked(), 13);
        // Truncating behind the checkpoint is still noticed (the checkpoint record is gone).
        let h = hash_of(&s, 11).await;
        exec(&s, "DELETE FROM audit_log WHERE seq > 11").await;
        exec(&s, &format!("UPDATE audit_head SET seq = 11, hash = '{h}'")).await;
        let (seq, reason) = broken(s.verify_audit_chain_incremental().await.unwrap());
        assert_eq!(seq, 13);
        assert!(reason.contains("verified earlier"), "{reason}");
    }
}
