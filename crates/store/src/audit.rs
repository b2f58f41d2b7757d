//! The hash-chained audit log.
//!
//! Record n stores `hash_n = SHA-256(canonical JSON of {seq, at, actor, action, target,
//! outcome, detail, prev_hash})` with `prev_hash = hash_{n-1}` (64 zeros for the first).
//! Altering a record breaks its own hash; deleting one leaves a gap in `seq` and a
//! `prev_hash` that no longer matches; deleting the newest ones disagrees with the head.

use futures::TryStreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{Row, SqliteConnection, SqlitePool};

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

#[derive(Debug, Clone)]
pub(crate) struct ChainTip {
    pub seq: u64,
    pub hash: String,
}

pub(crate) async fn tip(conn: &mut SqliteConnection) -> Result<ChainTip, StoreError> {
    let row = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_optional(&mut *conn)
        .await?;
    // Appending after deleted newest records would rewrite the head and hide the
    // deletion; stop instead.
    let last = row
        .as_ref()
        .map(|r| r.try_get::<String, _>("hash"))
        .transpose()?;
    let head_hash = head
        .as_ref()
        .map(|h| h.try_get::<String, _>("hash"))
        .transpose()?;
    if last != head_hash {
        return Err(StoreError::ChainHeadMismatch(format!(
            "head {} vs last record {}",
            head_hash.as_deref().unwrap_or("none"),
            last.as_deref().unwrap_or("none")
        )));
    }
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

pub(crate) async fn append(
    conn: &mut SqliteConnection,
    e: &AuditEvent,
    tip: &ChainTip,
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
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, action, target, outcome, detail, prev_hash, hash)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
    .execute(&mut *conn)
    .await?;
    Ok(ChainTip {
        seq: seq as u64,
        hash,
    })
}

pub(crate) async fn set_head(
    conn: &mut SqliteConnection,
    tip: &ChainTip,
) -> Result<(), StoreError> {
    if tip.seq == 0 {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
    )
    .bind(tip.seq as i64)
    .bind(&tip.hash)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

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
    })
}

pub(crate) async fn recent(pool: &SqlitePool, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
    let rows = sqlx::query("SELECT * FROM audit_log ORDER BY seq DESC LIMIT ?")
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
    Intact { records: u64, head: String },
    /// The first record (by sequence number) at which the chain breaks, and why.
    Broken { seq: i64, reason: String },
}

pub(crate) async fn verify_chain(pool: &SqlitePool) -> Result<ChainReport, StoreError> {
    let mut rows = sqlx::query("SELECT * FROM audit_log ORDER BY seq").fetch(pool);
    let mut expected_seq = 1i64;
    let mut prev = GENESIS.to_owned();
    while let Some(row) = rows.try_next().await? {
        let r = record_from_row(&row)?;
        if r.seq != expected_seq {
            return Ok(ChainReport::Broken {
                seq: expected_seq,
                reason: format!(
                    "record {expected_seq} is missing (next present is {})",
                    r.seq
                ),
            });
        }
        if r.prev_hash != prev {
            return Ok(ChainReport::Broken {
                seq: r.seq,
                reason: "prev_hash does not match the previous record".into(),
            });
        }
        if r.computed_hash() != r.hash {
            return Ok(ChainReport::Broken {
                seq: r.seq,
                reason: "record content does not match its hash (altered)".into(),
            });
        }
        prev = r.hash;
        expected_seq += 1;
    }
    drop(rows);
    let records = (expected_seq - 1) as u64;
    let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_optional(pool)
        .await?;
    if let Some(h) = head {
        let seq: i64 = h.try_get("seq")?;
        let hash: String = h.try_get("hash")?;
        if seq != records as i64 || hash != prev {
            return Ok(ChainReport::Broken {
                seq: records as i64 + 1,
                reason: format!("the head says the chain ends at record {seq}; records after {records} were deleted"),
            });
        }
    } else if records > 0 {
        return Ok(ChainReport::Broken {
            seq: 1,
            reason: "the chain head is missing".into(),
        });
    }
    Ok(ChainReport::Intact {
        records,
        head: prev,
    })
}

#[cfg(test)]
mod tests {
    use crate::{AuditEvent, ChainReport, Outcome, Store};

    async fn store_with(n: usize) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let store = Store::open(&url).await.unwrap();
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
}
