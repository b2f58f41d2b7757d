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
