//! SQLite: the default database. All SQL and every `sqlx::Sqlite` type of the store
//! live in this module; the schema is `migrations/sqlite`. One process writes a file
//! (its single writer); `BEGIN IMMEDIATE` keeps a second process from interleaving.

mod conn;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use influxion_core::{Grant, KeyName, Role};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::access::{ApprovalRecord, SigningRequest, SubjectRecord};
use crate::audit::AuditRecord;
use crate::db::{Database, Opened, PendingKind, Result};
use crate::pki::{CaRecord, CertQuery, CertRecord, ProfileRecord, RevokedRow};
use crate::policy_changes::PolicyChange;
use crate::{KeyRecord, StoreError};

use crate::rows;
use crate::sql::{like_escape, tables, Bind};
pub(crate) use conn::SqliteConn;

crate::rows::impl_cols!(sqlx::sqlite::SqliteRow);

/// Migration that keys the audit chain (docs/audit.md).
const KEYED_AUDIT_MIGRATION: i64 = 7;

pub(crate) struct SqliteDb {
    pool: SqlitePool,
}

fn options(url: &str) -> Result<SqliteConnectOptions> {
    Ok(SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: the WAL is fsynced at every commit, so an acknowledged audit record
        // survives power loss.
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10)))
}

/// Open (creating if needed) the database at `url` and run migrations.
pub(crate) async fn open(url: &str) -> Result<Opened> {
    let opts = options(url)?;
    // Migrations on their own connection, closed afterwards: sqlx caches a prepared
    // statement's columns, and a statement prepared before a schema change would
    // read rows of the new shape with the old column list.
    let mut setup: sqlx::SqliteConnection = sqlx::ConnectOptions::connect(&opts).await?;
    let applied: Vec<i64> = match sqlx::query_scalar("SELECT version FROM _sqlx_migrations")
        .fetch_all(&mut setup)
        .await
    {
        Ok(v) => v,
        // No migrations table: a new database.
        Err(sqlx::Error::Database(_)) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    sqlx::migrate!("./migrations/sqlite")
        .run(&mut setup)
        .await?;
    sqlx::Connection::close(setup).await?;
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        // In process, a connection cannot have gone away: a ping before each use is
        // only a round trip to the connection's thread (seen in the sign profile).
        .test_before_acquire(false)
        .connect_with(opts.clone())
        .await?;
    // The writer does not checkpoint: a checkpoint (copy the WAL's pages into the
    // database file, fsync it) inside a commit stalled every request of that batch.
    // A connection of its own checkpoints after commits instead, beside the writer.
    // Nor does its COMMIT wait for the fsync (synchronous=NORMAL): the writer syncs
    // the WAL itself, on another thread, while it writes the next batch, and answers a
    // batch only once that sync is done (writer::Syncer). NORMAL keeps the file
    // consistent across a crash; the sync makes each answered commit durable.
    // Its cache holds a shape of the batch's record INSERT per row count
    // (conn::RECORDS_PER_INSERT of them, with and without the head and COMMIT after
    // it), one of its certificate INSERT per row count, and the writer's other
    // statements.
    let writer_opts = opts
        .clone()
        .pragma("wal_autocheckpoint", "0")
        .synchronous(SqliteSynchronous::Normal)
        .statement_cache_capacity(256);
    let mut writer: sqlx::SqliteConnection = sqlx::ConnectOptions::connect(&writer_opts).await?;
    // The file as SQLite opened it (symbolic links resolved: its WAL is beside the
    // target); empty for a database in memory, which has no WAL to sync.
    let file: String =
        sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
            .fetch_one(&mut writer)
            .await?;
    let wal = (!file.is_empty()).then(|| std::path::PathBuf::from(format!("{file}-wal")));
    // A RESTART checkpoint holds the write lock while it waits for readers: the
    // checkpointer waits briefly, and tries again after later commits.
    let checkpointer: sqlx::SqliteConnection =
        sqlx::ConnectOptions::connect(&opts.clone().busy_timeout(CHECKPOINT_BUSY_TIMEOUT)).await?;
    let (commits, committed) = tokio::sync::mpsc::channel(1);
    tokio::spawn(checkpoints(checkpointer, committed));
    Ok(Opened {
        db: Arc::new(SqliteDb { pool }),
        writer: Box::new(SqliteConn::own(writer, commits)),
        keying: (!applied.contains(&KEYED_AUDIT_MIGRATION)).then_some(applied.is_empty()),
        writer_thread: true,
        // Opened anew for each sync: the file is the one SQLite writes now, even if it
        // was removed and made again while every connection was closed.
        wal_sync: wal.map(|wal| -> crate::db::WalSync {
            Box::new(move || std::fs::File::open(&wal)?.sync_all())
        }),
    })
}

/// How long the checkpointer lets commits gather before it copies them: pages written
/// again and again (the chain head, the newest index pages) are copied once.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);

/// How long a checkpoint waits for the writer or for readers before it gives up (to
/// be tried again after later commits): the writer waits on a RESTART checkpoint.
const CHECKPOINT_BUSY_TIMEOUT: Duration = Duration::from_millis(20);

/// WAL frames (pages) after which the checkpointer makes the writer start the WAL over
/// from its beginning. 2,000 frames is 8 MiB with 4 KiB pages.
const RESTART_AFTER_FRAMES: i64 = 2000;

/// Checkpoint the WAL after commits, until the writer's connection is dropped.
///
/// PASSIVE first: it never waits for the writer or for readers, and copies what no
/// reader still needs. But the writer starts the WAL over only if, when it begins, every
/// frame has been copied, and under a steady stream of commits there is always a newer
/// one: the WAL would grow without end. So once it holds [`RESTART_AFTER_FRAMES`], a
/// RESTART checkpoint follows, which holds the writer back for the few frames the
/// PASSIVE one left (and for readers still on the WAL), so that the next commit writes
/// from the WAL's start.
async fn checkpoints(
    mut conn: sqlx::SqliteConnection,
    mut committed: tokio::sync::mpsc::Receiver<()>,
) {
    while committed.recv().await.is_some() {
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        if let Err(e) = checkpoint(&mut conn).await {
            tracing::warn!(error = %e, "WAL checkpoint failed; retried after the next commit");
        }
    }
    let _ = sqlx::Connection::close(conn).await;
}

async fn checkpoint(conn: &mut sqlx::SqliteConnection) -> Result<()> {
    // (busy, frames in the WAL, frames copied)
    let (busy, frames, copied): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(&mut *conn)
        .await?;
    // Only once everything was copied: frames a reader still needs would make RESTART
    // wait for that reader while it holds the write lock.
    if busy == 0 && copied == frames && frames >= RESTART_AFTER_FRAMES {
        sqlx::query("PRAGMA wal_checkpoint(RESTART)")
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Open an existing database read-only: not created, no migrations.
pub(crate) async fn open_read_only(url: &str) -> Result<Arc<dyn Database>> {
    let opts = SqliteConnectOptions::from_str(url)?
        .read_only(true)
        .create_if_missing(false);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await?;
    Ok(Arc::new(SqliteDb { pool }))
}

impl SqliteDb {
    async fn approvals_of(&self, kind: PendingKind, id: &str) -> Result<Vec<ApprovalRecord>> {
        let t = tables(kind);
        let sql = format!(
            "SELECT approver, approver_label, decision, comment, at FROM {} WHERE {} = ? ORDER BY at",
            t.votes, t.votes_item
        );
        let rows = sqlx::query(&sql).bind(id).fetch_all(&self.pool).await?;
        rows.iter().map(rows::approval).collect()
    }

    async fn pending_rows(
        &self,
        kind: PendingKind,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<sqlx::sqlite::SqliteRow>> {
        let t = tables(kind);
        Ok(match status {
            Some(s) => {
                let sql = format!(
                    "SELECT * FROM {} WHERE status = ? ORDER BY created_at DESC LIMIT ?",
                    t.items
                );
                sqlx::query(&sql)
                    .bind(s)
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                let sql = format!("SELECT * FROM {} ORDER BY created_at DESC LIMIT ?", t.items);
                sqlx::query(&sql)
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await?
            }
        })
    }

    async fn pending_row(
        &self,
        kind: PendingKind,
        id: &str,
    ) -> Result<Option<sqlx::sqlite::SqliteRow>> {
        let sql = format!("SELECT * FROM {} WHERE id = ?", tables(kind).items);
        Ok(sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }
}

#[async_trait]
impl Database for SqliteDb {
    async fn pending_count(&self, kind: PendingKind, now: i64) -> Result<i64> {
        // The table name is a constant of `tables`, never input.
        let sql = format!(
            "SELECT COUNT(*) FROM {} WHERE status = 'pending' AND expires_at >= $1",
            tables(kind).items
        );
        Ok(sqlx::query_scalar(&sql)
            .bind(now)
            .fetch_one(&self.pool)
            .await?)
    }

    fn pool_status(&self) -> crate::PoolStatus {
        crate::PoolStatus {
            open: self.pool.size(),
            idle: self.pool.num_idle(),
        }
    }

    async fn conn(&self) -> Result<Box<dyn crate::db::Conn>> {
        Ok(Box::new(SqliteConn::pooled(self.pool.acquire().await?)))
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn subjects(&self) -> Result<Vec<SubjectRecord>> {
        let rows = sqlx::query("SELECT * FROM subjects ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        let mut subjects = rows
            .iter()
            .map(rows::subject)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let grants =
            sqlx::query("SELECT id, subject_id, role, pattern FROM grants ORDER BY role, pattern")
                .fetch_all(&self.pool)
                .await?;
        for g in grants {
            let subject_id: String = g.try_get("subject_id")?;
            let role: Role = g
                .try_get::<String, _>("role")?
                .parse()
                .map_err(|_| StoreError::Corrupt("grant role".into()))?;
            if let Some(s) = subjects.iter_mut().find(|s| s.id == subject_id) {
                s.grants.push(Grant {
                    id: g.try_get("id")?,
                    role,
                    pattern: g.try_get("pattern")?,
                });
            }
        }
        Ok(subjects)
    }

    async fn key(&self, name: &KeyName) -> Result<Option<KeyRecord>> {
        let row = sqlx::query("SELECT * FROM keys WHERE name = ?")
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::key).transpose()
    }

    async fn key_by_id(&self, id: &str) -> Result<Option<KeyRecord>> {
        let row = sqlx::query("SELECT * FROM keys WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::key).transpose()
    }

    async fn keys(&self) -> Result<Vec<KeyRecord>> {
        let rows = sqlx::query("SELECT * FROM keys ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::key).collect()
    }

    async fn signing_request(&self, id: &str) -> Result<Option<SigningRequest>> {
        let kind = PendingKind::SigningRequest;
        let Some(row) = self.pending_row(kind, id).await? else {
            return Ok(None);
        };
        let mut r = rows::request(&row)?;
        r.approvals = self.approvals_of(kind, id).await?;
        Ok(Some(r))
    }

    async fn signing_requests(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SigningRequest>> {
        let kind = PendingKind::SigningRequest;
        let mut out = Vec::new();
        for row in &self.pending_rows(kind, status, limit).await? {
            let mut r = rows::request(row)?;
            r.approvals = self.approvals_of(kind, &r.id).await?;
            out.push(r);
        }
        Ok(out)
    }

    async fn policy_change(&self, id: &str) -> Result<Option<PolicyChange>> {
        let kind = PendingKind::PolicyChange;
        let Some(row) = self.pending_row(kind, id).await? else {
            return Ok(None);
        };
        let mut c = rows::policy_change(&row)?;
        c.approvals = self.approvals_of(kind, id).await?;
        Ok(Some(c))
    }

    async fn policy_changes(&self, status: Option<&str>, limit: u32) -> Result<Vec<PolicyChange>> {
        let kind = PendingKind::PolicyChange;
        let mut out = Vec::new();
        for row in &self.pending_rows(kind, status, limit).await? {
            let mut c = rows::policy_change(row)?;
            c.approvals = self.approvals_of(kind, &c.id).await?;
            out.push(c);
        }
        Ok(out)
    }

    async fn audit_search(&self, f: &crate::AuditFilter) -> Result<Vec<AuditRecord>> {
        // Every condition is a constant fragment with bound parameters.
        let mut sql = format!(
            "SELECT {}, mac FROM audit_log WHERE 1 = 1",
            rows::AUDIT_COLUMNS
        );
        let mut binds: Vec<Bind> = Vec::new();
        if let Some(s) = &f.since {
            sql.push_str(" AND at >= ?");
            binds.push(Bind::Text(s.clone()));
        }
        if let Some(u) = &f.until {
            sql.push_str(" AND at < ?");
            binds.push(Bind::Text(u.clone()));
        }
        if !f.actions.is_empty() {
            sql.push_str(" AND (");
            for (i, a) in f.actions.iter().enumerate() {
                if i > 0 {
                    sql.push_str(" OR ");
                }
                match a.strip_suffix('*') {
                    Some(prefix) => {
                        sql.push_str("action LIKE ? ESCAPE '\\'");
                        binds.push(Bind::Text(format!("{}%", like_escape(prefix))));
                    }
                    None => {
                        sql.push_str("action = ?");
                        binds.push(Bind::Text(a.clone()));
                    }
                }
            }
            sql.push(')');
        }
        if let Some(actor) = &f.actor {
            // Substring of the identity or the recorded label, ignoring ASCII case.
            // The label's fields, not its JSON text (whose keys and escapes would match).
            sql.push_str(
                " AND (actor LIKE ? ESCAPE '\\'
                   OR (json_valid(actor_label) AND (
                       json_extract(actor_label, '$.name') LIKE ? ESCAPE '\\'
                    OR json_extract(actor_label, '$.username') LIKE ? ESCAPE '\\'
                    OR json_extract(actor_label, '$.subject') LIKE ? ESCAPE '\\')))",
            );
            let pattern = format!("%{}%", like_escape(actor));
            for _ in 0..4 {
                binds.push(Bind::Text(pattern.clone()));
            }
        }
        if let Some(key) = &f.key {
            sql.push_str(
                " AND (target = ? OR (json_valid(detail) AND json_extract(detail, '$.key') = ?))",
            );
            binds.push(Bind::Text(key.clone()));
            binds.push(Bind::Text(key.clone()));
        }
        if let Some(o) = &f.outcome {
            sql.push_str(" AND outcome = ?");
            binds.push(Bind::Text(o.clone()));
        }
        if let Some(after) = f.after_seq {
            sql.push_str(" AND seq > ? ORDER BY seq ASC");
            binds.push(Bind::Int(after));
        } else {
            if let Some(before) = f.before_seq {
                sql.push_str(" AND seq < ?");
                binds.push(Bind::Int(before));
            }
            sql.push_str(" ORDER BY seq DESC");
        }
        sql.push_str(" LIMIT ?");
        binds.push(Bind::Int(i64::from(f.limit)));
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = match b {
                Bind::Text(s) => q.bind(s),
                Bind::Int(i) => q.bind(i),
            };
        }
        let rows = q.fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .map(rows::audit_record)
            .collect::<std::result::Result<_, _>>()?)
    }

    async fn audit_record(&self, seq: i64) -> Result<Option<AuditRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {}, mac FROM audit_log WHERE seq = ?",
            rows::AUDIT_COLUMNS
        ))
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(rows::audit_record).transpose()?)
    }

    async fn audit_last_seq(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM audit_log")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn ca(&self, name: &str) -> Result<Option<CaRecord>> {
        sqlx::query("SELECT * FROM cas WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(rows::ca)
            .transpose()
    }

    async fn cas(&self) -> Result<Vec<CaRecord>> {
        sqlx::query("SELECT * FROM cas ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::ca)
            .collect()
    }

    async fn certificate_counts(&self, ca: &str) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS n FROM certificates WHERE ca = ? GROUP BY status",
        )
        .bind(ca)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
            .collect()
    }

    async fn profile(&self, name: &str) -> Result<Option<ProfileRecord>> {
        sqlx::query("SELECT * FROM profiles WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(rows::profile)
            .transpose()
    }

    async fn profiles(&self) -> Result<Vec<ProfileRecord>> {
        sqlx::query("SELECT * FROM profiles ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::profile)
            .collect()
    }

    async fn certificate(&self, serial: &str) -> Result<Option<CertRecord>> {
        sqlx::query("SELECT * FROM certificates WHERE serial = ?")
            .bind(serial)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(rows::cert)
            .transpose()
    }

    async fn certificate_by_request_key(
        &self,
        profile: &str,
        request_key: &str,
    ) -> Result<Option<CertRecord>> {
        sqlx::query("SELECT * FROM certificates WHERE profile = ? AND request_key = ?")
            .bind(profile)
            .bind(request_key)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(rows::cert)
            .transpose()
    }

    async fn search_certificates(&self, q: &CertQuery) -> Result<Vec<CertRecord>> {
        let like = q.subject.as_ref().map(|s| {
            format!(
                "%{}%",
                s.replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            )
        });
        // Grant patterns use only `[a-z0-9._-]` and `*`, where SQLite's GLOB means the
        // same as `pattern_matches`.
        let visible = match &q.visible {
            None => String::new(),
            Some(v) if v.is_empty() => " AND 0".to_owned(),
            Some(v) => format!(
                " AND ({})",
                (0..v.len().min(64))
                    .map(|i| format!("profile GLOB ?{}", i + 8))
                    .collect::<Vec<_>>()
                    .join(" OR ")
            ),
        };
        let sql = format!(
            "SELECT * FROM certificates
             WHERE (?1 IS NULL OR device_id = ?1)
               AND (?2 IS NULL OR serial = ?2)
               AND (?3 IS NULL OR subject LIKE ?3 ESCAPE '\\')
               AND (?4 IS NULL OR profile = ?4)
               AND (?5 IS NULL OR ca = ?5)
               AND (?6 IS NULL OR status = ?6){visible}
             ORDER BY issued_at DESC, serial
             LIMIT ?7"
        );
        let mut query = sqlx::query(&sql)
            .bind(&q.device_id)
            .bind(&q.serial)
            .bind(like)
            .bind(&q.profile)
            .bind(&q.ca)
            .bind(&q.status)
            .bind(i64::from(q.limit.clamp(1, 1000)));
        for p in q.visible.iter().flatten().take(64) {
            query = query.bind(p);
        }
        query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::cert)
            .collect()
    }

    async fn latest_revocation(&self, ca: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT MAX(t) FROM (
                SELECT revoked_at AS t FROM certificates WHERE ca = ?1 AND status = 'revoked'
                UNION ALL
                SELECT revoked_at AS t FROM cas WHERE parent = ?1 AND revoked_at IS NOT NULL)",
        )
        .bind(ca)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn revoked_for_ca(&self, ca: &str) -> Result<Vec<RevokedRow>> {
        let rows = sqlx::query(
            "SELECT serial, revoked_at, revocation_reason FROM certificates
             WHERE ca = ?1 AND status = 'revoked'
             UNION ALL
             SELECT serial, revoked_at, revocation_reason FROM cas
             WHERE parent = ?1 AND revoked_at IS NOT NULL AND serial IS NOT NULL
             ORDER BY revoked_at, serial",
        )
        .bind(ca)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RevokedRow {
                    serial: r.try_get("serial")?,
                    revoked_at: r
                        .try_get::<Option<String>, _>("revoked_at")?
                        .unwrap_or_default(),
                    reason: r
                        .try_get::<Option<String>, _>("revocation_reason")?
                        .unwrap_or_else(|| "unspecified".into()),
                })
            })
            .collect()
    }

    #[cfg(feature = "test-helpers")]
    fn tamper(&self) -> &dyn crate::test_helpers::Tamper {
        self
    }
}

#[cfg(feature = "test-helpers")]
crate::test_helpers::impl_tamper!(SqliteDb);
