//! Helpers for tests (cargo feature `test-helpers`): raw access to stored rows, to damage
//! the audit log on purpose and check that verification and the writer notice. Each
//! database implements [`Tamper`] in its own module; nothing here is for production.

use std::ops::RangeInclusive;

use async_trait::async_trait;

use crate::{AuditRecord, StoreError};

/// The audit head row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadRow {
    pub seq: i64,
    pub hash: String,
    pub mac: Option<String>,
}

#[async_trait]
pub trait Tamper: Send + Sync {
    /// Record `seq` exactly as stored (its MAC included).
    async fn audit_row(&self, seq: i64) -> Result<Option<AuditRecord>, StoreError>;
    /// Overwrite every column of record `r.seq` with `r`, without any check.
    async fn put_audit_row(&self, r: &AuditRecord) -> Result<(), StoreError>;
    async fn delete_audit_rows(&self, seqs: RangeInclusive<i64>) -> Result<(), StoreError>;
    async fn audit_head(&self) -> Result<Option<HeadRow>, StoreError>;
    /// Replace the head row (`None` deletes it).
    async fn put_audit_head(&self, head: Option<&HeadRow>) -> Result<(), StoreError>;

    /// Delete the records after `keep` and point the head at record `keep`, keeping the
    /// head's MAC: truncation by someone without the audit key.
    async fn truncate_audit(&self, keep: i64) -> Result<(), StoreError> {
        self.delete_audit_rows(keep + 1..=i64::MAX).await?;
        let hash = match self.audit_row(keep).await? {
            Some(r) => r.hash,
            None => crate::audit::GENESIS.to_owned(),
        };
        let mac = self.audit_head().await?.and_then(|h| h.mac);
        self.put_audit_head(Some(&HeadRow {
            seq: keep,
            hash,
            mac,
        }))
        .await
    }
}

/// [`Tamper`] for a database's `Db` type (a `pool` field): plain statements against the
/// tables, bypassing the writer. One text for every database: `$n` placeholders are
/// PostgreSQL's, and SQLite's driver takes them too.
macro_rules! impl_tamper {
    ($db:ty) => {
        #[async_trait::async_trait]
        impl $crate::test_helpers::Tamper for $db {
            async fn audit_row(&self, seq: i64) -> ::std::result::Result<Option<$crate::AuditRecord>, $crate::StoreError> {
                let sql = format!(
                    "SELECT {}, mac FROM audit_log WHERE seq = $1",
                    $crate::rows::AUDIT_COLUMNS
                );
                let row = sqlx::query(&sql)
                    .bind(seq)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.as_ref().map($crate::rows::audit_record).transpose()?)
            }

            async fn put_audit_row(&self, r: &$crate::AuditRecord) -> ::std::result::Result<(), $crate::StoreError> {
                sqlx::query(
                    "UPDATE audit_log SET at = $1, actor = $2, actor_label = $3, action = $4, target = $5, outcome = $6, detail = $7,
                         prev_hash = $8, hash = $9, mac = $10 WHERE seq = $11",
                )
                .bind(&r.at)
                .bind(&r.actor)
                .bind(&r.actor_label)
                .bind(&r.action)
                .bind(&r.target)
                .bind(&r.outcome)
                .bind(&r.detail)
                .bind(&r.prev_hash)
                .bind(&r.hash)
                .bind(&r.mac)
                .bind(r.seq)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn delete_audit_rows(&self, seqs: std::ops::RangeInclusive<i64>) -> ::std::result::Result<(), $crate::StoreError> {
                sqlx::query("DELETE FROM audit_log WHERE seq BETWEEN $1 AND $2")
                    .bind(seqs.start())
                    .bind(seqs.end())
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn audit_head(&self) -> ::std::result::Result<Option<$crate::test_helpers::HeadRow>, $crate::StoreError> {
                let row = sqlx::query("SELECT seq, hash, mac FROM audit_head WHERE id = 1")
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|h| {
                    Ok($crate::test_helpers::HeadRow {
                        seq: sqlx::Row::try_get(&h, "seq")?,
                        hash: sqlx::Row::try_get(&h, "hash")?,
                        mac: sqlx::Row::try_get(&h, "mac")?,
                    })
                })
                .transpose()
            }

            async fn put_audit_head(&self, head: Option<&$crate::test_helpers::HeadRow>) -> ::std::result::Result<(), $crate::StoreError> {
                sqlx::query("DELETE FROM audit_head")
                    .execute(&self.pool)
                    .await?;
                if let Some(h) = head {
                    sqlx::query("INSERT INTO audit_head (id, seq, hash, mac) VALUES (1, $1, $2, $3)")
                        .bind(h.seq)
                        .bind(&h.hash)
                        .bind(&h.mac)
                        .execute(&self.pool)
                        .await?;
                }
                Ok(())
            }
        }
    };
}
pub(crate) use impl_tamper;
