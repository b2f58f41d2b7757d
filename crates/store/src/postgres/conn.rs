//! One PostgreSQL connection: the writer's, or one from the pool (verification,
//! re-sealing), with the statements the rules are applied with.

use async_trait::async_trait;
use influxion_core::{Grant, KeyName, KeyPolicy, KeyStatus};
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres, Row};

use super::{Breaker, CHANGES_CHANNEL, WRITE_LOCK};
use crate::access::{SigningRequest, SubjectRecord};
use crate::audit::{AuditRecord, Head};
use crate::db::{
    CaState, CertValidity, Change, Conn, Inserted, KeyUseState, Kind, Lock, PendingKind, Result,
    SqlValue, Table, VoteRow,
};
use crate::pki::{CaRecord, CaStatus, CertRecord, ProfileRecord};
use crate::policy_changes::PolicyChange;
use crate::rows;
use crate::sql::{inserted, tables, Dialect};
use crate::KeyRecord;

/// A connection taken from the pool when a transaction begins and kept while it
/// works. The writer holds one for the life of the store; a connection that failed
/// (the server restarted, the network dropped) is let go at rollback, and the next
/// batch begins on a new one, so the writer recovers without a restart.
pub(crate) struct PgConn {
    pool: PgPool,
    breaker: Breaker,
    conn: Option<PoolConnection<Postgres>>,
    /// A transaction is open on `conn` (BEGIN sent, no COMMIT or ROLLBACK since).
    in_tx: bool,
}

/// A connection dropped inside a transaction (its caller gave up: an HTTP client went
/// away during verification) must not go back to the pool with the transaction open:
/// the next user would read an old snapshot, or fail to write in a read-only one.
/// Closing it makes the server roll the transaction back.
impl Drop for PgConn {
    fn drop(&mut self) {
        if self.in_tx {
            if let Some(c) = self.conn.take() {
                drop(c.detach());
            }
        }
    }
}

impl PgConn {
    pub(super) fn new(pool: PgPool, breaker: Breaker) -> Self {
        Self {
            pool,
            breaker,
            conn: None,
            in_tx: false,
        }
    }

    pub(super) fn pooled(pool: PgPool, breaker: Breaker, c: PoolConnection<Postgres>) -> Self {
        Self {
            pool,
            breaker,
            conn: Some(c),
            in_tx: false,
        }
    }

    async fn connect(&mut self) -> Result<&mut PgConnection> {
        if self.conn.is_none() {
            self.conn = Some(self.breaker.acquire(&self.pool).await?);
        }
        match self.conn.as_deref_mut() {
            Some(c) => Ok(c),
            None => Err(crate::StoreError::Closed),
        }
    }

    /// `BEGIN` on the connection held, or on a new one if the held one died while idle
    /// (the server restarted between two batches of the writer).
    async fn begin_fresh(&mut self, sql: &str) -> Result<()> {
        let r = match self.exec(sql).await {
            Err(e) if e.is_unavailable() && self.conn.is_some() => {
                if let Some(c) = self.conn.take() {
                    c.detach();
                }
                self.exec(sql).await
            }
            r => r,
        };
        self.in_tx = r.is_ok();
        r
    }

    async fn exec(&mut self, sql: &str) -> Result<()> {
        let c = self.connect().await?;
        sqlx::query(sql).execute(c).await?;
        Ok(())
    }
}

#[async_trait]
impl Conn for PgConn {
    async fn begin(&mut self, lock: Lock) -> Result<()> {
        match lock {
            // One snapshot for every read of the transaction (verification walks the
            // log in pages and must see one state of it).
            Lock::Read => {
                self.begin_fresh("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await
            }
            // Every writer of the database, in every replica, takes the same
            // transaction-scoped advisory lock before it reads anything: batches are
            // serialised as SQLite's BEGIN IMMEDIATE serialises them, so the chain
            // head each batch reads is the one the previous batch committed, and every
            // read-then-write rule (quorum, quota, last admin, CRL numbers) sees the
            // latest state. READ COMMITTED: each statement after the lock sees every
            // commit made before it. Released by COMMIT or ROLLBACK.
            Lock::Write => {
                self.begin_fresh("BEGIN ISOLATION LEVEL READ COMMITTED")
                    .await?;
                let c = self.connect().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(WRITE_LOCK)
                    .execute(c)
                    .await?;
                Ok(())
            }
        }
    }

    async fn commit(&mut self) -> Result<()> {
        let r = self.exec("COMMIT").await;
        if r.is_ok() {
            self.in_tx = false;
        }
        r
    }

    async fn rollback(&mut self) -> Result<()> {
        let Some(c) = self.conn.as_deref_mut() else {
            return Ok(());
        };
        let r = sqlx::query("ROLLBACK").execute(c).await;
        self.in_tx = false;
        if let Err(e) = r {
            // The connection is gone or broken: the server rolls its transaction back
            // when it notices. Let it go; the next transaction takes a new one.
            if let Some(c) = self.conn.take() {
                c.detach();
            }
            return Err(e.into());
        }
        Ok(())
    }

    async fn savepoint(&mut self) -> Result<()> {
        self.exec("SAVEPOINT job").await
    }

    async fn release_savepoint(&mut self) -> Result<()> {
        self.exec("RELEASE SAVEPOINT job").await
    }

    async fn rollback_to_savepoint(&mut self) -> Result<()> {
        self.exec("ROLLBACK TO SAVEPOINT job").await
    }

    async fn announce(&mut self, change: &Change) -> Result<()> {
        // Delivered to every listener when the transaction commits, not before.
        let payload = super::change_payload(change);
        let c = self.connect().await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANGES_CHANNEL)
            .bind(payload)
            .execute(c)
            .await?;
        Ok(())
    }

    async fn audit_keyed_schema(&mut self) -> Result<bool> {
        // The PostgreSQL schema is keyed from its first migration.
        Ok(true)
    }

    async fn audit_last(&mut self) -> Result<Option<(i64, String)>> {
        let row = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(self.connect().await?)
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
        let Some(h) = sqlx::query(sql)
            .fetch_optional(self.connect().await?)
            .await?
        else {
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
            sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = $1")
                .bind(seq)
                .fetch_optional(self.connect().await?)
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
        let sql = format!(
            "SELECT {}, {mac} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
            rows::AUDIT_COLUMNS
        );
        let rows = sqlx::query(&sql)
            .bind(seq)
            .bind(i64::from(limit))
            .fetch_all(self.connect().await?)
            .await?;
        Ok(rows
            .iter()
            .map(rows::audit_record)
            .collect::<std::result::Result<_, _>>()?)
    }

    async fn audit_insert(&mut self, r: &AuditRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (seq, at, actor, actor_label, action, target, outcome, detail, prev_hash,
                 hash, mac)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(r.seq)
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
        .execute(self.connect().await?)
        .await?;
        Ok(())
    }

    async fn audit_insert_many(&mut self, rs: &[AuditRecord]) -> Result<()> {
        for run in crate::sql::insert_runs(rs) {
            crate::sql::audit_insert::<sqlx::Postgres>(run)
                .build()
                .execute(self.connect().await?)
                .await?;
        }
        Ok(())
    }

    async fn audit_set_head(&mut self, seq: i64, hash: &str, mac: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_head (id, seq, hash, mac) VALUES (1, $1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, mac = excluded.mac",
        )
        .bind(seq)
        .bind(hash)
        .bind(mac)
        .execute(self.connect().await?)
        .await?;
        Ok(())
    }

    async fn audit_set_mac(&mut self, seq: i64, mac: &str) -> Result<()> {
        sqlx::query("UPDATE audit_log SET mac = $1 WHERE seq = $2")
            .bind(mac)
            .bind(seq)
            .execute(self.connect().await?)
            .await?;
        Ok(())
    }

    async fn insert_key(&mut self, k: &KeyRecord) -> Result<Inserted> {
        let r = sqlx::query(
            "INSERT INTO keys (id, name, key_type, backend, status, public_key, handle, created_at, created_by, created_by_label, purpose, certificate_pem)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
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
        .execute(self.connect().await?)
        .await;
        inserted(r)
    }

    async fn key_by_id(&mut self, id: &str) -> Result<Option<KeyRecord>> {
        let row = sqlx::query("SELECT * FROM keys WHERE id = $1")
            .bind(id)
            .fetch_optional(self.connect().await?)
            .await?;
        row.as_ref().map(rows::key).transpose()
    }

    async fn key_use_state(&mut self, id: &str) -> Result<Option<KeyUseState>> {
        let row = sqlx::query("SELECT status, approvals_required, handle FROM keys WHERE id = $1")
            .bind(id)
            .fetch_optional(self.connect().await?)
            .await?;
        row.as_ref().map(rows::key_use_state).transpose()
    }

    async fn key_status(&mut self, id: &str) -> Result<Option<KeyStatus>> {
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM keys WHERE id = $1")
            .bind(id)
            .fetch_optional(self.connect().await?)
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
            "UPDATE keys SET handle = $1, public_key = $2, certificate_pem = $3 WHERE id = $4 AND handle = $5",
        )
        .bind(&r.handle)
        .bind(&r.public_key)
        .bind(&r.certificate_pem)
        .bind(&r.key_id)
        .bind(&r.expected_handle)
        .execute(self.connect().await?)
        .await?;
        Ok(done.rows_affected())
    }

    async fn set_key_status(&mut self, name: &KeyName, status: KeyStatus) -> Result<u64> {
        let r = sqlx::query("UPDATE keys SET status = $1 WHERE name = $2")
            .bind(status.as_str())
            .bind(name.as_str())
            .execute(self.connect().await?)
            .await?;
        Ok(r.rows_affected())
    }

    async fn set_key_policy(&mut self, id: &str, p: &KeyPolicy) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE keys SET approvals_required = $1, approval_ttl_secs = $2, approver_subjects = $3
             WHERE id = $4",
        )
        .bind(p.approvals_required as i64)
        .bind(p.approval_ttl_secs as i64)
        .bind(rows::json(&p.approver_subjects, "[]"))
        .bind(id)
        .execute(self.connect().await?)
        .await?;
        Ok(r.rows_affected())
    }

    async fn insert_subject(&mut self, s: &SubjectRecord) -> Result<Inserted> {
        let r = sqlx::query(
            "INSERT INTO subjects (id, name, description, issuer, tenant_id, object_id, app_id, app_role, group_id, caller, created_at, created_by, created_by_label)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
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
        .execute(self.connect().await?)
        .await;
        inserted(r)
    }

    async fn update_subject(&mut self, s: &SubjectRecord) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE subjects SET description = $1, issuer = $2, tenant_id = $3, object_id = $4, app_id = $5, app_role = $6, group_id = $7, caller = $8
             WHERE id = $9",
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
        .execute(self.connect().await?)
        .await?;
        Ok(r.rows_affected())
    }

    async fn delete_subject(&mut self, id: &str) -> Result<u64> {
        sqlx::query("DELETE FROM grants WHERE subject_id = $1")
            .bind(id)
            .execute(self.connect().await?)
            .await?;
        let r = sqlx::query("DELETE FROM subjects WHERE id = $1")
            .bind(id)
            .execute(self.connect().await?)
            .await?;
        Ok(r.rows_affected())
    }

    async fn insert_grant(&mut self, subject_id: &str, g: &Grant, at: &str) -> Result<Inserted> {
        let r = sqlx::query("INSERT INTO grants (id, subject_id, role, pattern, created_at, created_by) VALUES ($1, $2, $3, $4, $5, '')")
            .bind(&g.id)
            .bind(subject_id)
            .bind(g.role.as_str())
            .bind(&g.pattern)
            .bind(at)
            .execute(self.connect().await?)
            .await;
        match r {
            Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => Ok(Inserted::NoParent),
            r => inserted(r),
        }
    }

    async fn delete_grant(&mut self, subject_id: &str, grant_id: &str) -> Result<u64> {
        let r = sqlx::query("DELETE FROM grants WHERE id = $1 AND subject_id = $2")
            .bind(grant_id)
            .bind(subject_id)
            .execute(self.connect().await?)
            .await?;
        Ok(r.rows_affected())
    }

    async fn insert_request(&mut self, r: &SigningRequest) -> Result<()> {
        sqlx::query(
            "INSERT INTO signing_requests (id, key_id, key_name, algorithm, digest, requester, requester_name,
                 requester_label, reason, metadata, quorum, approver_subjects, status, signature, created_at,
                 expires_at, finished_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'pending', NULL, $13, $14, NULL)",
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
        .execute(self.connect().await?)
        .await?;
        Ok(())
    }

    async fn insert_policy_change(&mut self, c: &PolicyChange) -> Result<()> {
        sqlx::query(
            "INSERT INTO policy_changes (id, key_id, key_name, requester, requester_name, requester_label, reason,
                 base_policy, policy, weakens, quorum, approver_subjects, status, created_at, expires_at,
                 finished_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'pending', $13, $14, NULL)",
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
        .execute(self.connect().await?)
        .await?;
        Ok(())
    }

    async fn signing_request(&mut self, id: &str) -> Result<Option<SigningRequest>> {
        sqlx::query("SELECT * FROM signing_requests WHERE id = $1")
            .bind(id)
            .fetch_optional(self.connect().await?)
            .await?
            .as_ref()
            .map(rows::request)
            .transpose()
    }

    async fn policy_change(&mut self, id: &str) -> Result<Option<PolicyChange>> {
        sqlx::query("SELECT * FROM policy_changes WHERE id = $1")
            .bind(id)
            .fetch_optional(self.connect().await?)
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
            "INSERT INTO {} ({}, approver, approver_label, decision, comment, at) VALUES ($1, $2, $3, $4, $5, $6)",
            t.votes, t.votes_item
        );
        let r = sqlx::query(&sql)
            .bind(id)
            .bind(&v.approver.id)
            .bind(v.approver.stored_label())
            .bind(v.decision)
            .bind(v.comment)
            .bind(v.at)
            .execute(self.connect().await?)
            .await;
        inserted(r)
    }

    async fn approvals(&mut self, kind: PendingKind, id: &str) -> Result<u32> {
        let t = tables(kind);
        let sql = format!(
            "SELECT COUNT(*) FROM {} WHERE {} = $1 AND decision = 'approve'",
            t.votes, t.votes_item
        );
        let n: i64 = sqlx::query_scalar(&sql)
            .bind(id)
            .fetch_one(self.connect().await?)
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
            "UPDATE {} SET status = $1, finished_at = $2 WHERE id = $3 AND status = 'pending'",
            tables(kind).items
        );
        let r = sqlx::query(&sql)
            .bind(status)
            .bind(at)
            .bind(id)
            .execute(self.connect().await?)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn store_signature(&mut self, id: &str, signature: &[u8], at: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE signing_requests SET status = 'signed', signature = $1, finished_at = $2 WHERE id = $3 AND status = 'pending'",
        )
        .bind(signature)
        .bind(at)
        .bind(id)
        .execute(self.connect().await?)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn insert_ca(&mut self, ca: &CaRecord) -> Result<Inserted> {
        let r = sqlx::query(
            "INSERT INTO cas (name, key_id, status, subject, parent, csr_pem, certificate, chain_pem, not_after, created_at, created_by, created_by_label, serial)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
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
        .execute(self.connect().await?)
        .await;
        inserted(r)
    }

    async fn ca_state(&mut self, name: &str) -> Result<Option<CaState>> {
        let Some(r) = sqlx::query(
            "SELECT status, key_id, parent, serial, revoked_at, crl_number FROM cas WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(self.connect().await?)
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
            "UPDATE cas SET status = 'active', certificate = $1, chain_pem = $2, not_after = $3 WHERE name = $4",
        )
        .bind(certificate)
        .bind(chain_pem)
        .bind(not_after)
        .bind(name)
        .execute(self.connect().await?)
        .await?;
        Ok(())
    }

    async fn set_ca_status(&mut self, name: &str, status: &CaStatus) -> Result<()> {
        sqlx::query("UPDATE cas SET status = $1 WHERE name = $2")
            .bind(status.as_str())
            .bind(name)
            .execute(self.connect().await?)
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
            "UPDATE cas SET status = 'disabled', serial = COALESCE(serial, $1), revoked_at = $2, revocation_reason = $3
             WHERE name = $4",
        )
        .bind(serial)
        .bind(at)
        .bind(reason)
        .bind(name)
        .execute(self.connect().await?)
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
        sqlx::query(
            "UPDATE cas SET crl = $1, crl_number = $2, crl_next_update = $3 WHERE name = $4",
        )
        .bind(der)
        .bind(number)
        .bind(next_update)
        .bind(ca)
        .execute(self.connect().await?)
        .await?;
        Ok(())
    }

    async fn insert_profile(&mut self, p: &ProfileRecord) -> Result<Inserted> {
        let r = sqlx::query(
            "INSERT INTO profiles (name, ca, spec, created_at, updated_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&p.name)
        .bind(&p.ca)
        .bind(&p.spec)
        .bind(&p.created_at)
        .bind(&p.updated_at)
        .execute(self.connect().await?)
        .await;
        inserted(r)
    }

    async fn update_profile(&mut self, p: &ProfileRecord) -> Result<u64> {
        let r =
            sqlx::query("UPDATE profiles SET ca = $1, spec = $2, updated_at = $3 WHERE name = $4")
                .bind(&p.ca)
                .bind(&p.spec)
                .bind(&p.updated_at)
                .bind(&p.name)
                .execute(self.connect().await?)
                .await?;
        Ok(r.rows_affected())
    }

    async fn profile_used(&mut self, name: &str) -> Result<bool> {
        let used: Option<i64> =
            sqlx::query_scalar("SELECT 1::BIGINT FROM certificates WHERE profile = $1 LIMIT 1")
                .bind(name)
                .fetch_optional(self.connect().await?)
                .await?;
        Ok(used.is_some())
    }

    async fn delete_profile(&mut self, name: &str) -> Result<u64> {
        let r = sqlx::query("DELETE FROM profiles WHERE name = $1")
            .bind(name)
            .execute(self.connect().await?)
            .await?;
        Ok(r.rows_affected())
    }

    async fn serial_taken(&mut self, serial: &str) -> Result<bool> {
        let taken: Option<i64> = sqlx::query_scalar(
            "SELECT 1::BIGINT FROM certificates WHERE serial = $1 UNION ALL SELECT 1::BIGINT FROM cas WHERE serial = $1 LIMIT 1",
        )
        .bind(serial)
        .fetch_optional(self.connect().await?)
        .await?;
        Ok(taken.is_some())
    }

    async fn device_certificates(
        &mut self,
        profile: &str,
        device_id: &str,
    ) -> Result<Vec<CertValidity>> {
        let rows = sqlx::query(
            "SELECT status, not_after FROM certificates WHERE profile = $1 AND device_id = $2",
        )
        .bind(profile)
        .bind(device_id)
        .fetch_all(self.connect().await?)
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
        let r = sqlx::query(
            "INSERT INTO certificates (serial, ca, profile, device_id, subject, not_before, not_after, der,
                requested_by, requested_by_label, issued_at, key_generated, request_key, status)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'valid'
             WHERE NOT EXISTS (SELECT 1 FROM cas WHERE serial = $1)
             ON CONFLICT DO NOTHING",
        )
        .bind(&c.serial)
        .bind(&c.ca)
        .bind(&c.profile)
        .bind(&c.device_id)
        .bind(&c.subject)
        .bind(&c.not_before)
        .bind(&c.not_after)
        .bind(&c.der)
        .bind(&c.requested_by.id)
        .bind(c.requested_by.stored_label())
        .bind(&c.issued_at)
        .bind(c.key_generated)
        .bind(&c.request_key)
        .execute(self.connect().await?)
        .await?;
        // A serial already taken (by a certificate or a CA), or a request key already
        // used in the profile, changes no row and, unlike a failed INSERT, leaves a
        // PostgreSQL transaction usable: no look-up first.
        Ok(if r.rows_affected() == 0 {
            Inserted::Duplicate
        } else {
            Inserted::Yes
        })
    }

    async fn certificate_status(&mut self, serial: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT status FROM certificates WHERE serial = $1")
                .bind(serial)
                .fetch_optional(self.connect().await?)
                .await?,
        )
    }

    async fn revoke_certificate(&mut self, serial: &str, at: &str, reason: &str) -> Result<()> {
        sqlx::query(
            "UPDATE certificates SET status = 'revoked', revoked_at = $1, revocation_reason = $2 WHERE serial = $3",
        )
        .bind(at)
        .bind(reason)
        .bind(serial)
        .execute(self.connect().await?)
        .await?;
        Ok(())
    }

    async fn table_columns(&mut self, table: &'static str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT column_name::TEXT FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = $1",
        )
        .bind(table)
        .fetch_all(self.connect().await?)
        .await?)
    }

    async fn count_rows(&mut self, t: &Table) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(&crate::sql::count_rows(t))
            .fetch_one(self.connect().await?)
            .await?;
        u64::try_from(n).map_err(|_| crate::StoreError::Corrupt("row count".into()))
    }

    async fn table_rows(
        &mut self,
        t: &Table,
        after: Option<&[SqlValue]>,
        limit: u32,
    ) -> Result<Vec<Vec<SqlValue>>> {
        let sql = crate::sql::select_rows(Dialect::Postgres, t, after.is_some());
        let mut q = sqlx::query(&sql);
        for (v, k) in after.unwrap_or_default().iter().zip(t.key) {
            q = bind(q, v, t.kind(k));
        }
        let rows = q
            .bind(i64::from(limit))
            .fetch_all(self.connect().await?)
            .await?;
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
        let sql = crate::sql::insert_rows(Dialect::Postgres, t, rows.len());
        let mut q = sqlx::query(&sql);
        for row in rows {
            for (v, (_, kind)) in row.iter().zip(t.columns) {
                q = bind(q, v, *kind);
            }
        }
        q.execute(self.connect().await?).await?;
        Ok(())
    }
}

type Query<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// Bind `v`; a NULL as the column's type (PostgreSQL checks it).
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

/// Column `i` of `r`, read as the schema declares it.
fn value(r: &sqlx::postgres::PgRow, i: usize, kind: Kind) -> Result<SqlValue> {
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
