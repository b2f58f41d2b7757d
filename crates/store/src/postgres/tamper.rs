//! [`Tamper`] for SQLite: plain statements against the tables, bypassing the writer.

use std::ops::RangeInclusive;

use async_trait::async_trait;
use sqlx::Row;

use super::PgDb;
use crate::rows;
use crate::test_helpers::{HeadRow, Tamper};
use crate::{AuditRecord, StoreError};

#[async_trait]
impl Tamper for PgDb {
    async fn audit_row(&self, seq: i64) -> Result<Option<AuditRecord>, StoreError> {
        let sql = format!(
            "SELECT {}, mac FROM audit_log WHERE seq = $1",
            rows::AUDIT_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(seq)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(rows::audit_record).transpose()?)
    }

    async fn put_audit_row(&self, r: &AuditRecord) -> Result<(), StoreError> {
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

    async fn delete_audit_rows(&self, seqs: RangeInclusive<i64>) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM audit_log WHERE seq BETWEEN $1 AND $2")
            .bind(seqs.start())
            .bind(seqs.end())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn audit_head(&self) -> Result<Option<HeadRow>, StoreError> {
        let row = sqlx::query("SELECT seq, hash, mac FROM audit_head WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|h| {
            Ok(HeadRow {
                seq: h.try_get("seq")?,
                hash: h.try_get("hash")?,
                mac: h.try_get("mac")?,
            })
        })
        .transpose()
    }

    async fn put_audit_head(&self, head: Option<&HeadRow>) -> Result<(), StoreError> {
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
