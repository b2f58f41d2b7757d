//! One SQLite connection: the writer's own, or one from the pool (verification,
//! re-sealing), with the statements the rules are applied with.

use std::collections::HashMap;

use async_trait::async_trait;
use influxion_core::{Grant, KeyName, KeyPolicy, KeyStatus};
use sqlx::pool::PoolConnection;
use sqlx::{Row, Sqlite, SqliteConnection};
use tokio::sync::mpsc;

use crate::access::{SigningRequest, SubjectRecord};
use crate::audit::{AuditRecord, Head};
use crate::db::{
    Begun, CaState, CertValidity, Change, Conn, Inserted, KeyUseState, Kind, Lock, PendingKind,
    Result, SqlValue, Table, VoteRow,
};
use crate::pki::{CaRecord, CaStatus, CertRecord, ProfileRecord};
use crate::policy_changes::PolicyChange;
use crate::rows;
use crate::sql::{inserted, tables, Dialect};
use crate::KeyRecord;

enum Inner {
    /// The writer's connection, and the checkpointer it tells of each commit.
    Own(SqliteConnection, mpsc::Sender<()>),
    Pooled(PoolConnection<Sqlite>),
}

pub(crate) struct SqliteConn(Inner);

impl SqliteConn {
    pub(super) fn own(c: SqliteConnection, commits: mpsc::Sender<()>) -> Self {
        Self(Inner::Own(c, commits))
    }

    pub(super) fn pooled(c: PoolConnection<Sqlite>) -> Self {
        Self(Inner::Pooled(c))
    }

    fn c(&mut self) -> &mut SqliteConnection {
        match &mut self.0 {
            Inner::Own(c, _) => c,
            Inner::Pooled(c) => c,
        }
    }

    /// Tell the checkpointer (the writer's connection only).
    fn committed(&self) {
        if let Inner::Own(_, commits) = &self.0 {
            // Full: a checkpoint is already due, and will copy this commit too.
            let _ = commits.try_send(());
        }
    }

    /// One INSERT of `certs` (at most [`RECORDS_PER_INSERT`]): which of them went in.
    async fn insert_certificate_run(&mut self, certs: &[&CertRecord]) -> Result<Vec<bool>> {
        let r = insert_certificates(certs).build().execute(self.c()).await?;
        if r.rows_affected() == certs.len() as u64 {
            return Ok(vec![true; certs.len()]);
        }
        // Some were refused (a serial or request key taken). Those that went in are the
        // newest rows: this transaction alone writes, and SQLite gives a new row a
        // rowid above every other (while the table has rowids, and below 2^63 rows).
        // Not `RETURNING`: it would send every inserted row back, one message each,
        // where the usual case needs only the count. Matched in order by serial and
        // DER, as a duplicate later in the batch shares the serial.
        let mut new: Vec<(String, Vec<u8>)> = if r.rows_affected() == 0 {
            Vec::new()
        } else {
            sqlx::query_as("SELECT serial, der FROM certificates ORDER BY rowid DESC LIMIT ?")
                .bind(i64::try_from(r.rows_affected()).unwrap_or(i64::MAX))
                .fetch_all(self.c())
                .await?
        };
        Ok(certs
            .iter()
            .map(|c| {
                let at = new.iter().position(|(s, d)| *s == c.serial && *d == c.der);
                at.map(|i| new.swap_remove(i)).is_some()
            })
            .collect())
    }

    async fn exec(&mut self, sql: &str) -> Result<()> {
        sqlx::query(sql).execute(self.c()).await?;
        Ok(())
    }
}

/// Rows per audit-record or certificate INSERT. A batch's rows go in statements of at most this
/// many rows, so the writer's connection prepares and caches at most this many shapes
/// of the statement (one per row count), however large the batch.
const RECORDS_PER_INSERT: usize = 64;

// A batch's records are bound values in multi-row INSERTs (`sql::audit_insert`), not
// one JSON array taken apart by SQLite: `json_each` renders each row back into JSON
// text for every column read from it, which was a tenth of the sign path's CPU (issue
// 19's profile). Runs of up to RECORDS_PER_INSERT rows, of any length, rather than
// `sql::insert_runs`' four shapes: a batch of up to 64 records then goes with the head
// and COMMIT in one call to the connection's thread, at the price of a cached shape per
// row count (the writer's statement cache is sized for them).

/// Append to `q` the statement that seals the head at (seq, hash, mac).
fn set_head<'a>(q: &mut sqlx::QueryBuilder<'a, Sqlite>, seq: i64, hash: &'a str, mac: &'a str) {
    q.push("INSERT INTO audit_head (id, seq, hash, mac) VALUES (1, ")
        .push_bind(seq)
        .push(", ")
        .push_bind(hash)
        .push(", ")
        .push_bind(mac)
        .push(
            ") ON CONFLICT (id) DO UPDATE
             SET seq = excluded.seq, hash = excluded.hash, mac = excluded.mac",
        );
}

/// The INSERT of a run of a batch's certificates, as bound values (not a JSON array:
/// see the audit records above). Rows go in the batch's order (`n`), so of two
/// certificates with the same request key the first wins, as with one INSERT each.
fn insert_certificates<'a>(certs: &'a [&'a CertRecord]) -> sqlx::QueryBuilder<'a, Sqlite> {
    let mut q = sqlx::QueryBuilder::new(
        "WITH v (n, serial, ca, profile, device_id, subject, not_before, not_after, der,
            requested_by, requested_by_label, issued_at, key_generated, request_key) AS (",
    );
    q.push_values(certs.iter().enumerate(), |mut b, (n, c)| {
        b.push_bind(i64::try_from(n).unwrap_or(i64::MAX))
            .push_bind(&c.serial)
            .push_bind(&c.ca)
            .push_bind(&c.profile)
            .push_bind(&c.device_id)
            .push_bind(&c.subject)
            .push_bind(&c.not_before)
            .push_bind(&c.not_after)
            .push_bind(&c.der)
            .push_bind(&c.requested_by.id)
            .push_bind(c.requested_by.stored_label())
            .push_bind(&c.issued_at)
            .push_bind(i64::from(c.key_generated))
            .push_bind(&c.request_key);
    });
    q.push(
        ")
        INSERT INTO certificates (serial, ca, profile, device_id, subject, not_before,
            not_after, der, requested_by, requested_by_label, issued_at, key_generated,
            request_key, status)
        SELECT serial, ca, profile, device_id, subject, not_before, not_after, der,
            requested_by, requested_by_label, issued_at, key_generated, request_key, 'valid'
        FROM v
        WHERE NOT EXISTS (SELECT 1 FROM cas WHERE cas.serial = v.serial)
        ORDER BY n
        ON CONFLICT DO NOTHING",
    );
    q
}

#[async_trait]
impl Conn for SqliteConn {
    async fn begin(&mut self, lock: Lock) -> Result<()> {
        match lock {
            // Deferred: the snapshot starts at the first read.
            Lock::Read => self.exec("BEGIN").await,
            // IMMEDIATE takes the write lock up front (another process writing the same
            // file waits on busy_timeout).
            Lock::Write => self.exec("BEGIN IMMEDIATE").await,
        }
    }

    async fn commit(&mut self) -> Result<()> {
        self.exec("COMMIT").await?;
        self.committed();
        Ok(())
    }

    async fn rollback(&mut self) -> Result<()> {
        self.exec("ROLLBACK").await
    }

    async fn savepoint(&mut self) -> Result<()> {
        self.exec("SAVEPOINT job").await
    }

    async fn release_savepoint(&mut self) -> Result<()> {
        self.exec("RELEASE job").await
    }

    async fn rollback_to_savepoint(&mut self) -> Result<()> {
        self.exec("ROLLBACK TO job").await
    }

    async fn audit_keyed_schema(&mut self) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pragma_table_info('audit_head') WHERE name = 'mac'",
        )
        .fetch_one(self.c())
        .await?;
        Ok(n > 0)
    }

    async fn audit_last(&mut self) -> Result<Option<(i64, String)>> {
        let row = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(self.c())
            .await?;
        row.map(|r| Ok((r.try_get("seq")?, r.try_get("hash")?)))
            .transpose()
    }

    async fn audit_head(&mut self, keyed: bool) -> Result<Option<Head>> {
        let sql = if keyed {
            "SELECT seq, hash, mac FROM audit_head WHERE id = 1"
        } else {
            "SELECT seq, hash, NULL AS mac FROM audit_head WHERE id = 1"
        };
        let Some(h) = sqlx::query(sql).fetch_optional(self.c()).await? else {
            return Ok(None);
        };
        Ok(Some(Head {
            seq: h.try_get("seq")?,
            hash: h.try_get("hash")?,
            mac: h.try_get("mac")?,
        }))
    }

    async fn audit_hash(&mut self, seq: i64) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = ?")
                .bind(seq)
                .fetch_optional(self.c())
                .await?,
        )
    }

    async fn audit_records_after(
        &mut self,
        seq: i64,
        limit: u32,
        keyed: bool,
    ) -> Result<Vec<AuditRecord>> {
        let mac = if keyed { "mac" } else { "NULL AS mac" };
        // A read-only verification of an older file (no migrations) may lack labels.
        let labelled: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pragma_table_info('audit_log') WHERE name = 'actor_label'",
        )
        .fetch_one(self.c())
        .await?;
        let columns = if labelled > 0 {
            rows::AUDIT_COLUMNS.to_owned()
        } else {
            rows::AUDIT_COLUMNS.replace("actor_label", "NULL AS actor_label")
        };
        let sql =
            format!("SELECT {columns}, {mac} FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?");
        let rows = sqlx::query(&sql)
            .bind(seq)
            .bind(i64::from(limit))
            .fetch_all(self.c())
            .await?;
        Ok(rows
            .iter()
            .map(rows::audit_record)
            .collect::<std::result::Result<_, _>>()?)
    }

    async fn audit_insert(&mut self, r: &AuditRecord) -> Result<()> {
        self.audit_insert_many(std::slice::from_ref(r)).await
    }

    async fn audit_insert_many(&mut self, rs: &[AuditRecord]) -> Result<()> {
        for run in rs.chunks(RECORDS_PER_INSERT) {
            crate::sql::audit_insert::<Sqlite>(run)
                .build()
                .execute(self.c())
                .await?;
        }
        Ok(())
    }

    async fn audit_set_head(&mut self, seq: i64, hash: &str, mac: &str) -> Result<()> {
        let mut q = sqlx::QueryBuilder::new("");
        set_head(&mut q, seq, hash, mac);
        q.build().execute(self.c()).await?;
        Ok(())
    }

    async fn begin_append(&mut self, keys: &[&str]) -> Result<Begun> {
        // The batch's first call waits for the connection's thread to be scheduled
        // (under load, a third of a batch's time went to BEGIN alone): BEGIN, the tip
        // and the keys the batch signs with go in one call, as one row for the tip (no
        // `id`) and one per key.
        let ids = serde_json::to_string(keys)
            .map_err(|e| crate::StoreError::Corrupt(format!("key ids: {e}")))?;
        let found = sqlx::query(
            "BEGIN IMMEDIATE;
             SELECT l.seq AS last_seq, l.hash AS last_hash, h.seq, h.hash, h.mac,
                    NULL AS id, NULL AS status, NULL AS approvals_required, NULL AS handle
             FROM (SELECT 1)
             LEFT JOIN (SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1) AS l ON 1
             LEFT JOIN audit_head AS h ON h.id = 1
             UNION ALL
             SELECT NULL, NULL, NULL, NULL, NULL, id, status, approvals_required, handle
             FROM keys WHERE id IN (SELECT value FROM json_each(?))",
        )
        .bind(ids)
        .fetch_all(self.c())
        .await?;
        let mut begun = Begun {
            last: None,
            head: None,
            keys: HashMap::with_capacity(keys.len()),
        };
        for row in &found {
            if let Some(id) = row.try_get::<Option<String>, _>("id")? {
                begun.keys.insert(id, rows::key_use_state(row)?);
                continue;
            }
            if let Some(seq) = row.try_get::<Option<i64>, _>("last_seq")? {
                begun.last = Some((seq, row.try_get("last_hash")?));
            }
            if let Some(seq) = row.try_get::<Option<i64>, _>("seq")? {
                begun.head = Some(Head {
                    seq,
                    hash: row.try_get("hash")?,
                    mac: row.try_get("mac")?,
                });
            }
        }
        Ok(begun)
    }

    async fn finish_append(
        &mut self,
        records: &[AuditRecord],
        head: Option<(i64, &str, &str)>,
        change: &Change,
    ) -> Result<()> {
        // Nothing to announce on SQLite: one process writes the file.
        let _ = change;
        let Some((seq, hash, mac)) = head else {
            // An empty log: no head to seal yet.
            self.audit_insert_many(records).await?;
            return self.commit().await;
        };
        // The last (or only) statement's records, the head and COMMIT in one call to
        // the connection's thread; the usual batch has no statement before it.
        let last = records.len().saturating_sub(1) / RECORDS_PER_INSERT * RECORDS_PER_INSERT;
        let (before, last) = records.split_at(last);
        self.audit_insert_many(before).await?;
        let mut q = if last.is_empty() {
            sqlx::QueryBuilder::<Sqlite>::new("")
        } else {
            let mut q = crate::sql::audit_insert::<Sqlite>(last);
            q.push(";\n");
            q
        };
        set_head(&mut q, seq, hash, mac);
        q.push(";\nCOMMIT");
        q.build().execute(self.c()).await?;
        self.committed();
        Ok(())
    }

    async fn audit_set_mac(&mut self, seq: i64, mac: &str) -> Result<()> {
        sqlx::query("UPDATE audit_log SET mac = ? WHERE seq = ?")
            .bind(mac)
            .bind(seq)
            .execute(self.c())
            .await?;
        Ok(())
    }

    async fn insert_key(&mut self, k: &KeyRecord) -> Result<Inserted> {
        let r = sqlx::query(
            "INSERT INTO keys (id, name, key_type, backend, status, public_key, handle, created_at, created_by, created_by_label, purpose, certificate_pem)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&k.id)
        .bind(k.name.as_str())
        .bind(k.key_type.as_str())
        .bind(&k.backend)
        .bind(k.status.as_str())
        .bind(&k.public_key)
        .bind(&k.handle)
        .bind(&k.created_at)
        .bind(&k.created_by.id)
        .bind(k.created_by.stored_label())
        .bind(k.purpose.as_str())
        .bind(&k.certificate_pem)
        .execute(self.c())
        .await;
        inserted(r)
    }

    async fn key_by_id(&mut self, id: &str) -> Result<Option<KeyRecord>> {
        let row = sqlx::query("SELECT * FROM keys WHERE id = ?")
            .bind(id)
            .fetch_optional(self.c())
            .await?;
        row.as_ref().map(rows::key).transpose()
    }

    async fn key_use_state(&mut self, id: &str) -> Result<Option<KeyUseState>> {
        let row = sqlx::query("SELECT status, approvals_required, handle FROM keys WHERE id = ?")
            .bind(id)
            .fetch_optional(self.c())
            .await?;
        row.as_ref().map(rows::key_use_state).transpose()
    }

    async fn key_status(&mut self, id: &str) -> Result<Option<KeyStatus>> {
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM keys WHERE id = ?")
            .bind(id)
            .fetch_optional(self.c())
            .await?;
        status
            .map(|s| {
                s.parse()
                    .map_err(|_| crate::StoreError::Corrupt("key status".into()))
            })
            .transpose()
    }

    async fn rebind_key(&mut self, r: &crate::Rebind) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE keys SET handle = ?, public_key = ?, certificate_pem = ? WHERE id = ? AND handle = ?",
        )
        .bind(&r.handle)
        .bind(&r.public_key)
        .bind(&r.certificate_pem)
        .bind(&r.key_id)
        .bind(&r.expected_handle)
        .execute(self.c())
        .await?;
        Ok(done.rows_affected())
    }

    async fn set_key_status(&mut self, name: &KeyName, status: KeyStatus) -> Result<u64> {
        let r = sqlx::query("UPDATE keys SET status = ? WHERE name = ?")
            .bind(status.as_str())
            .bind(name.as_str())
            .execute(self.c())
            .await?;
        Ok(r.rows_affected())
    }

    async fn set_key_policy(&mut self, id: &str, p: &KeyPolicy) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE keys SET approvals_required = ?, approval_ttl_secs = ?, approver_subjects = ?
             WHERE id = ?",
        )
        .bind(p.approvals_required as i64)
        .bind(p.approval_ttl_secs as i64)
        .bind(rows::json(&p.approver_subjects, "[]"))
        .bind(id)
        .execute(self.c())
        .await?;
        Ok(r.rows_affected())
    }

    async fn insert_subject(&mut self, s: &SubjectRecord) -> Result<Inserted> {
        let r = sqlx::query(
            "INSERT INTO subjects (id, name, description, issuer, tenant_id, object_id, app_id, app_role, group_id, caller, created_at, created_by, created_by_label)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&s.id)
        .bind(&s.name)
        .bind(&s.description)
        .bind(&s.rules.issuer)
        .bind(&s.rules.tenant_id)
        .bind(&s.rules.object_id)
        .bind(&s.rules.app_id)
        .bind(&s.rules.app_role)
        .bind(&s.rules.group_id)
        .bind(s.rules.caller_rule().as_str())
        .bind(&s.created_at)
        .bind(&s.created_by.id)
        .bind(s.created_by.stored_label())
        .execute(self.c())
        .await;
        inserted(r)
    }

    async fn update_subject(&mut self, s: &SubjectRecord) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE subjects SET description = ?, issuer = ?, tenant_id = ?, object_id = ?, app_id = ?, app_role = ?, group_id = ?, caller = ?
             WHERE id = ?",
        )
        .bind(&s.description)
        .bind(&s.rules.issuer)
        .bind(&s.rules.tenant_id)
        .bind(&s.rules.object_id)
        .bind(&s.rules.app_id)
        .bind(&s.rules.app_role)
        .bind(&s.rules.group_id)
        .bind(s.rules.caller_rule().as_str())
        .bind(&s.id)
        .execute(self.c())
        .await?;
        Ok(r.rows_affected())
    }

    async fn delete_subject(&mut self, id: &str) -> Result<u64> {
        sqlx::query("DELETE FROM grants WHERE subject_id = ?")
            .bind(id)
            .execute(self.c())
            .await?;
        let r = sqlx::query("DELETE FROM subjects WHERE id = ?")
            .bind(id)
            .execute(self.c())
            .await?;
        Ok(r.rows_affected())
    }

    async fn insert_grant(&mut self, subject_id: &str, g: &Grant, at: &str) -> Result<Inserted> {
        let r = sqlx::query("INSERT INTO grants (id, subject_id, role, pattern, created_at, created_by) VALUES (?, ?, ?, ?, ?, '')")
            .bind(&g.id)
            .bind(subject_id)
            .bind(g.role.as_str())
            .bind(&g.pattern)
            .bind(at)
            .execute(self.c())
            .await;
        match r {
            Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => Ok(Inserted::NoParent),
            r => inserted(r),
        }
    }

    async fn delete_grant(&mut self, subject_id: &str, grant_id: &str) -> Result<u64> {
        let r = sqlx::query("DELETE FROM grants WHERE id = ? AND subject_id = ?")
            .bind(grant_id)
            .bind(subject_id)
            .execute(self.c())
            .await?;
        Ok(r.rows_affected())
    }

    async fn insert_request(&mut self, r: &SigningRequest) -> Result<()> {
        sqlx::query(
            "INSERT INTO signing_requests (id, key_id, key_name, algorithm, digest, requester, requester_name,
                 requester_label, reason, metadata, quorum, approver_subjects, status, signature, created_at,
                 expires_at, finished_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', NULL, ?, ?, NULL)",
        )
        .bind(&r.id)
        .bind(&r.key_id)
        .bind(&r.key_name)
        .bind(&r.algorithm)
        .bind(&r.digest)
        .bind(&r.requester.id)
        .bind(&r.requester.name)
        .bind(r.requester.stored_label())
        .bind(&r.reason)
        .bind(r.metadata.to_string())
        .bind(r.quorum as i64)
        .bind(rows::json(&r.approver_subjects, "[]"))
        .bind(&r.created_at)
        .bind(r.expires_at)
        .execute(self.c())
        .await?;
        Ok(())
    }

    async fn insert_policy_change(&mut self, c: &PolicyChange) -> Result<()> {
        sqlx::query(
            "INSERT INTO policy_changes (id, key_id, key_name, requester, requester_name, requester_label, reason,
                 base_policy, policy, weakens, quorum, approver_subjects, status, created_at, expires_at,
                 finished_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, NULL)",
        )
        .bind(&c.id)
        .bind(&c.key_id)
        .bind(&c.key_name)
        .bind(&c.requester.id)
        .bind(&c.requester.name)
        .bind(c.requester.stored_label())
        .bind(&c.reason)
        .bind(rows::json(&c.base_policy, "null"))
        .bind(rows::json(&c.policy, "null"))
        .bind(rows::json(&c.weakens, "null"))
        .bind(c.quorum as i64)
        .bind(rows::json(&c.approver_subjects, "null"))
        .bind(&c.created_at)
        .bind(c.expires_at)
        .execute(self.c())
        .await?;
        Ok(())
    }

    async fn signing_request(&mut self, id: &str) -> Result<Option<SigningRequest>> {
        sqlx::query("SELECT * FROM signing_requests WHERE id = ?")
            .bind(id)
            .fetch_optional(self.c())
            .await?
            .as_ref()
            .map(rows::request)
            .transpose()
    }

    async fn policy_change(&mut self, id: &str) -> Result<Option<PolicyChange>> {
        sqlx::query("SELECT * FROM policy_changes WHERE id = ?")
            .bind(id)
            .fetch_optional(self.c())
            .await?
            .as_ref()
            .map(rows::policy_change)
            .transpose()
    }

    async fn insert_vote(
        &mut self,
        kind: PendingKind,
        id: &str,
        v: &VoteRow<'_>,
    ) -> Result<Inserted> {
        let t = tables(kind);
        let sql = format!(
            "INSERT INTO {} ({}, approver, approver_label, decision, comment, at) VALUES (?, ?, ?, ?, ?, ?)",
            t.votes, t.votes_item
        );
        let r = sqlx::query(&sql)
            .bind(id)
            .bind(&v.approver.id)
            .bind(v.approver.stored_label())
            .bind(v.decision)
            .bind(v.comment)
            .bind(v.at)
            .execute(self.c())
            .await;
        inserted(r)
    }

    async fn approvals(&mut self, kind: PendingKind, id: &str) -> Result<u32> {
        let t = tables(kind);
        let sql = format!(
            "SELECT COUNT(*) FROM {} WHERE {} = ? AND decision = 'approve'",
            t.votes, t.votes_item
        );
        let n: i64 = sqlx::query_scalar(&sql)
            .bind(id)
            .fetch_one(self.c())
            .await?;
        u32::try_from(n).map_err(|_| crate::StoreError::Corrupt("approval count".into()))
    }

    async fn finish(
        &mut self,
        kind: PendingKind,
        id: &str,
        status: &str,
        at: &str,
    ) -> Result<bool> {
        let sql = format!(
            "UPDATE {} SET status = ?, finished_at = ? WHERE id = ? AND status = 'pending'",
            tables(kind).items
        );
        let r = sqlx::query(&sql)
            .bind(status)
            .bind(at)
            .bind(id)
            .execute(self.c())
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn store_signature(&mut self, id: &str, signature: &[u8], at: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE signing_requests SET status = 'signed', signature = ?, finished_at = ? WHERE id = ? AND status = 'pending'",
        )
        .bind(signature)
        .bind(at)
        .bind(id)
        .execute(self.c())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn insert_ca(&mut self, ca: &CaRecord) -> Result<Inserted> {
        let r = sqlx::query(
            "INSERT INTO cas (name, key_id, status, subject, parent, csr_pem, certificate, chain_pem, not_after, created_at, created_by, created_by_label, serial)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&ca.name)
        .bind(&ca.key_id)
        .bind(ca.status.as_str())
        .bind(&ca.subject)
        .bind(&ca.parent)
        .bind(&ca.csr_pem)
        .bind(&ca.certificate)
        .bind(&ca.chain_pem)
        .bind(&ca.not_after)
        .bind(&ca.created_at)
        .bind(&ca.created_by.id)
        .bind(ca.created_by.stored_label())
        .bind(&ca.serial)
        .execute(self.c())
        .await;
        inserted(r)
    }

    async fn ca_state(&mut self, name: &str) -> Result<Option<CaState>> {
        let Some(r) = sqlx::query(
            "SELECT status, key_id, parent, serial, revoked_at, crl_number FROM cas WHERE name = ?",
        )
        .bind(name)
        .fetch_optional(self.c())
        .await?
        else {
            return Ok(None);
        };
        Ok(Some(CaState {
            status: rows::ca_status(&r.try_get::<String, _>("status")?)?,
            key_id: r.try_get("key_id")?,
            parent: r.try_get("parent")?,
            serial: r.try_get("serial")?,
            revoked_at: r.try_get("revoked_at")?,
            crl_number: r.try_get("crl_number")?,
        }))
    }

    async fn activate_ca(
        &mut self,
        name: &str,
        certificate: &[u8],
        chain_pem: &str,
        not_after: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE cas SET status = 'active', certificate = ?, chain_pem = ?, not_after = ? WHERE name = ?",
        )
        .bind(certificate)
        .bind(chain_pem)
        .bind(not_after)
        .bind(name)
        .execute(self.c())
        .await?;
        Ok(())
    }

    async fn set_ca_status(&mut self, name: &str, status: &CaStatus) -> Result<()> {
        sqlx::query("UPDATE cas SET status = ? WHERE name = ?")
            .bind(status.as_str())
            .bind(name)
            .execute(self.c())
            .await?;
        Ok(())
    }

    async fn revoke_ca(
        &mut self,
        name: &str,
        serial: &str,
        at: &str,
        reason: &str,
    ) -> Result<Inserted> {
        // Rows made before serials were recorded get theirs now.
        let r = sqlx::query(
            "UPDATE cas SET status = 'disabled', serial = COALESCE(serial, ?), revoked_at = ?, revocation_reason = ?
             WHERE name = ?",
        )
        .bind(serial)
        .bind(at)
        .bind(reason)
        .bind(name)
        .execute(self.c())
        .await;
        inserted(r)
    }

    async fn store_crl(
        &mut self,
        ca: &str,
        number: i64,
        der: &[u8],
        next_update: &str,
    ) -> Result<()> {
        sqlx::query("UPDATE cas SET crl = ?, crl_number = ?, crl_next_update = ? WHERE name = ?")
            .bind(der)
            .bind(number)
            .bind(next_update)
            .bind(ca)
            .execute(self.c())
            .await?;
        Ok(())
    }

    async fn insert_profile(&mut self, p: &ProfileRecord) -> Result<Inserted> {
        let r = sqlx::query(
            "INSERT INTO profiles (name, ca, spec, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&p.name)
        .bind(&p.ca)
        .bind(&p.spec)
        .bind(&p.created_at)
        .bind(&p.updated_at)
        .execute(self.c())
        .await;
        inserted(r)
    }

    async fn update_profile(&mut self, p: &ProfileRecord) -> Result<u64> {
        let r = sqlx::query("UPDATE profiles SET ca = ?, spec = ?, updated_at = ? WHERE name = ?")
            .bind(&p.ca)
            .bind(&p.spec)
            .bind(&p.updated_at)
            .bind(&p.name)
            .execute(self.c())
            .await?;
        Ok(r.rows_affected())
    }

    async fn profile_used(&mut self, name: &str) -> Result<bool> {
        let used: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM certificates WHERE profile = ? LIMIT 1")
                .bind(name)
                .fetch_optional(self.c())
                .await?;
        Ok(used.is_some())
    }

    async fn delete_profile(&mut self, name: &str) -> Result<u64> {
        let r = sqlx::query("DELETE FROM profiles WHERE name = ?")
            .bind(name)
            .execute(self.c())
            .await?;
        Ok(r.rows_affected())
    }

    async fn serial_taken(&mut self, serial: &str) -> Result<bool> {
        let taken: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM certificates WHERE serial = ?1 UNION ALL SELECT 1 FROM cas WHERE serial = ?1",
        )
        .bind(serial)
        .fetch_optional(self.c())
        .await?;
        Ok(taken.is_some())
    }

    async fn device_certificates(
        &mut self,
        profile: &str,
        device_id: &str,
    ) -> Result<Vec<CertValidity>> {
        let rows = sqlx::query(
            "SELECT status, not_after FROM certificates WHERE profile = ? AND device_id = ?",
        )
        .bind(profile)
        .bind(device_id)
        .fetch_all(self.c())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(CertValidity {
                    status: r.try_get("status")?,
                    not_after: r.try_get("not_after")?,
                })
            })
            .collect()
    }

    async fn insert_certificate(&mut self, c: &CertRecord) -> Result<Inserted> {
        let one = [c];
        let r = insert_certificates(&one).build().execute(self.c()).await?;
        // A serial already taken (by a certificate or a CA), or a request key already
        // used in the profile, changes no row and, unlike a failed INSERT, leaves a
        // PostgreSQL transaction usable: no look-up first.
        Ok(if r.rows_affected() == 0 {
            Inserted::Duplicate
        } else {
            Inserted::Yes
        })
    }

    async fn insert_certificates(&mut self, certs: &[&CertRecord]) -> Result<Vec<bool>> {
        let mut went_in = Vec::with_capacity(certs.len());
        for run in certs.chunks(RECORDS_PER_INSERT) {
            went_in.extend(self.insert_certificate_run(run).await?);
        }
        Ok(went_in)
    }

    async fn certificate_status(&mut self, serial: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT status FROM certificates WHERE serial = ?")
                .bind(serial)
                .fetch_optional(self.c())
                .await?,
        )
    }

    async fn revoke_certificate(&mut self, serial: &str, at: &str, reason: &str) -> Result<()> {
        sqlx::query(
            "UPDATE certificates SET status = 'revoked', revoked_at = ?, revocation_reason = ? WHERE serial = ?",
        )
        .bind(at)
        .bind(reason)
        .bind(serial)
        .execute(self.c())
        .await?;
        Ok(())
    }

    async fn table_columns(&mut self, table: &'static str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT name FROM pragma_table_info(?)")
            .bind(table)
            .fetch_all(self.c())
            .await?)
    }

    async fn count_rows(&mut self, t: &Table) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(&crate::sql::count_rows(t))
            .fetch_one(self.c())
            .await?;
        u64::try_from(n).map_err(|_| crate::StoreError::Corrupt("row count".into()))
    }

    async fn table_rows(
        &mut self,
        t: &Table,
        after: Option<&[SqlValue]>,
        limit: u32,
    ) -> Result<Vec<Vec<SqlValue>>> {
        let sql = crate::sql::select_rows(Dialect::Sqlite, t, after.is_some());
        let mut q = sqlx::query(&sql);
        for (v, k) in after.unwrap_or_default().iter().zip(t.key) {
            q = bind(q, v, t.kind(k));
        }
        let rows = q.bind(i64::from(limit)).fetch_all(self.c()).await?;
        rows.iter()
            .map(|r| {
                t.columns
                    .iter()
                    .enumerate()
                    .map(|(i, (_, kind))| value(r, i, *kind))
                    .collect()
            })
            .collect()
    }

    async fn insert_rows(&mut self, t: &Table, rows: &[Vec<SqlValue>]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let sql = crate::sql::insert_rows(Dialect::Sqlite, t, rows.len());
        let mut q = sqlx::query(&sql);
        for row in rows {
            for (v, (_, kind)) in row.iter().zip(t.columns) {
                q = bind(q, v, *kind);
            }
        }
        q.execute(self.c()).await?;
        Ok(())
    }
}

type Query<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Bind `v`; a NULL as the column's type.
fn bind<'q>(q: Query<'q>, v: &'q SqlValue, kind: Kind) -> Query<'q> {
    match v {
        SqlValue::Int(i) => q.bind(*i),
        SqlValue::Text(s) => q.bind(s.as_str()),
        SqlValue::Blob(b) => q.bind(b.as_slice()),
        SqlValue::Bool(b) => q.bind(*b),
        SqlValue::Null => match kind {
            Kind::Text => q.bind(None::<String>),
            Kind::Int => q.bind(None::<i64>),
            Kind::Blob => q.bind(None::<Vec<u8>>),
            Kind::Bool => q.bind(None::<bool>),
        },
    }
}

/// Column `i` of `r`, read as the schema declares it (a flag from its 0/1).
fn value(r: &sqlx::sqlite::SqliteRow, i: usize, kind: Kind) -> Result<SqlValue> {
    Ok(match kind {
        Kind::Text => r
            .try_get::<Option<String>, _>(i)?
            .map_or(SqlValue::Null, SqlValue::Text),
        Kind::Int => r
            .try_get::<Option<i64>, _>(i)?
            .map_or(SqlValue::Null, SqlValue::Int),
        Kind::Blob => r
            .try_get::<Option<Vec<u8>>, _>(i)?
            .map_or(SqlValue::Null, SqlValue::Blob),
        Kind::Bool => r
            .try_get::<Option<bool>, _>(i)?
            .map_or(SqlValue::Null, SqlValue::Bool),
    })
}
