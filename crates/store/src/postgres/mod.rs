//! PostgreSQL: several replicas of the keyserver on one database. All SQL and every
//! `sqlx::Postgres` type of the store live in this module; the schema is
//! `migrations/postgres`. What one process guaranteed with SQLite, the database now
//! guarantees across processes:
//! - writers serialise on one transaction-scoped advisory lock ([`WRITE_LOCK`]),
//!   taken before the batch reads the chain head, so the chain is extended in order
//!   and every read-then-write rule reads the latest commit;
//! - the unique keys (one vote per approver, serials, names, idempotency keys) and
//!   checks (a signature exactly when signed) hold whatever a process does;
//! - each commit that changes subjects, the device CA or the audit log is announced
//!   on [`CHANGES_CHANNEL`] (NOTIFY, delivered at commit), and every replica's
//!   listener bumps its caches' signals. A listener that lost its connection treats
//!   everything as changed when it is back, and every [`FULL_REFRESH`] anyway, which
//!   bounds a stale read should a notification ever be missed.

mod conn;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use influxion_core::{Grant, KeyName, Role};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgPool, Row};

use crate::access::{ApprovalRecord, SigningRequest, SubjectRecord};
use crate::audit::AuditRecord;
use crate::db::{Change, Database, Opened, PendingKind, Result, Signals};
use crate::pki::{CaRecord, CertQuery, CertRecord, ProfileRecord, RevokedRow};
use crate::policy_changes::PolicyChange;
use crate::rows;
use crate::sql::{like_escape, tables, Bind};
use crate::{DatabasePassword, KeyRecord, StoreError};

pub(crate) use conn::PgConn;

crate::rows::impl_cols!(sqlx::postgres::PgRow);

/// The advisory lock every write transaction takes (an arbitrary constant: "INFLUXIO"
/// in ASCII), so that batches of every replica apply one after another.
pub(crate) const WRITE_LOCK: i64 = 0x494E_464C_5558_494F;
/// The NOTIFY channel of committed changes.
pub(crate) const CHANGES_CHANNEL: &str = "influxion_changes";
/// Caches are refreshed at least this often, whatever the change feed says.
const FULL_REFRESH: Duration = Duration::from_secs(30);
/// How long a request waits for a connection before it fails (503) rather than hang
/// while the database is away.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);
/// Connections per replica: the writer, the change listener and concurrent reads.
const POOL_SIZE: u32 = 16;

/// `s` subjects, `p` device CA, `k` keys, then the audit tip: "spk:42".
fn change_payload(c: &Change) -> String {
    let mut flags = String::new();
    if c.subjects {
        flags.push('s');
    }
    if c.pki {
        flags.push('p');
    }
    if c.keys {
        flags.push('k');
    }
    format!("{flags}:{}", c.tip.unwrap_or(0))
}

fn parse_change(payload: &str) -> Change {
    let (flags, tip) = payload.split_once(':').unwrap_or((payload, ""));
    Change {
        subjects: flags.contains('s'),
        pki: flags.contains('p'),
        keys: flags.contains('k'),
        tip: tip.parse().ok().filter(|t| *t > 0),
    }
}

pub(crate) struct PgDb {
    pool: PgPool,
    breaker: Breaker,
}

/// Fail fast while the database is away. Once an acquisition failed because the
/// server cannot be reached, one caller at a time tries again (at most every
/// [`Breaker::RETRY_EVERY`]) and every other caller gets the same answer at once (503),
/// instead of each waiting [`ACQUIRE_TIMEOUT`]. The first success closes it. Shared by
/// the reads and the writer of one store.
#[derive(Clone, Default)]
pub(crate) struct Breaker(Arc<std::sync::Mutex<BreakerState>>);

#[derive(Default)]
enum BreakerState {
    #[default]
    Closed,
    Open {
        retry_at: std::time::Instant,
        probing: bool,
    },
}

impl Breaker {
    const RETRY_EVERY: Duration = Duration::from_millis(250);

    fn state(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether this caller may try the database now.
    fn admit(&self) -> bool {
        let mut s = self.state();
        match &mut *s {
            BreakerState::Closed => true,
            BreakerState::Open { retry_at, probing } => {
                if *probing || std::time::Instant::now() < *retry_at {
                    false
                } else {
                    *probing = true;
                    true
                }
            }
        }
    }

    /// Whether [`Breaker::acquire`] would try the database now (without claiming the
    /// attempt): closed, or open with an attempt due and none out.
    fn attempt_due(&self) -> bool {
        match &*self.state() {
            BreakerState::Closed => true,
            BreakerState::Open { retry_at, probing } => {
                !*probing && std::time::Instant::now() >= *retry_at
            }
        }
    }

    /// A connection from `pool`, unless the database is known to be away.
    pub(crate) async fn acquire(
        &self,
        pool: &PgPool,
    ) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        if !self.admit() {
            return Err(StoreError::Db(sqlx::Error::PoolTimedOut));
        }
        // A caller that gives up while waiting (its HTTP client went away) must not
        // leave the breaker believing a probe is still out: the guard ends the probe.
        let mut probe = ProbeGuard(Some(self));
        let r = pool.acquire().await.map_err(StoreError::Db);
        probe.0 = None;
        let mut s = self.state();
        match &r {
            Ok(_) => *s = BreakerState::Closed,
            // No connection could be opened within the timeout while the pool had room
            // for one: the server is away. (A full pool is load, not an outage: it
            // answers 503 too, but leaves the breaker as it was.)
            Err(e) if e.is_unavailable() && pool.size() < POOL_SIZE => {
                *s = BreakerState::Open {
                    retry_at: std::time::Instant::now() + Self::RETRY_EVERY,
                    probing: false,
                }
            }
            // Anything else says nothing about reachability; a probe ends.
            Err(_) => {
                if let BreakerState::Open { probing, .. } = &mut *s {
                    *probing = false;
                }
            }
        }
        r
    }
}

/// Ends a probe if its future is dropped before the answer.
struct ProbeGuard<'a>(Option<&'a Breaker>);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.0 {
            if let BreakerState::Open { probing, .. } = &mut *b.state() {
                *probing = false;
            }
        }
    }
}

async fn options(url: &str, password: Option<&dyn DatabasePassword>) -> Result<PgConnectOptions> {
    // Host, port, user, database, sslmode and sslrootcert come from the URL, then the
    // standard PG* variables and ~/.pgpass (libpq's rules, as sqlx reads them).
    let mut opts = PgConnectOptions::from_str(url)?.application_name("influxion");
    if let Some(p) = password {
        let secret = p.password().await.map_err(StoreError::Password)?;
        opts = opts.password(&secret.value);
    }
    Ok(opts)
}

fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // A connection the server closed (a restart) is found before it is used.
        .test_before_acquire(true)
}

/// Server-side bounds for the store's own connections, so nothing waits forever: a
/// writer stuck on the advisory lock (another replica's session hung), a statement
/// that never ends, or a transaction left open by a connection nobody uses.
fn bounded(opts: PgConnectOptions) -> PgConnectOptions {
    opts.options([
        ("lock_timeout", "10s"),
        ("statement_timeout", "60s"),
        ("idle_in_transaction_session_timeout", "60s"),
    ])
}

/// Open the database at `url` (it must exist) and run migrations. `password`, when
/// given, supplies the password of every new connection (an Entra access token, a
/// file), fetched again before it expires.
pub(crate) async fn open(url: &str, password: Option<Arc<dyn DatabasePassword>>) -> Result<Opened> {
    let opts = options(url, password.as_deref()).await?;
    // Migrations on their own connection, closed afterwards (prepared statements
    // cache column lists). sqlx's migrator holds an advisory lock while it runs, so
    // replicas starting together apply each migration once.
    let mut setup: sqlx::PgConnection = sqlx::ConnectOptions::connect(&opts).await?;
    let applied: Vec<i64> = match sqlx::query_scalar("SELECT version FROM _sqlx_migrations")
        .fetch_all(&mut setup)
        .await
    {
        Ok(v) => v,
        // No migrations table: a new database.
        Err(sqlx::Error::Database(_)) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    sqlx::migrate!("./migrations/postgres")
        .run(&mut setup)
        .await?;
    sqlx::Connection::close(setup).await?;
    let pool = pool_options().connect_with(bounded(opts)).await?;
    if let Some(p) = password {
        tokio::spawn(refresh_password(pool.clone(), url.to_owned(), p));
    }
    let breaker = Breaker::default();
    Ok(Opened {
        db: Arc::new(PgDb {
            pool: pool.clone(),
            breaker: breaker.clone(),
        }),
        writer: Box::new(PgConn::new(pool, breaker)),
        // Keyed from the first migration: a new database is sealed at once. (Another
        // replica may have created it a moment ago; sealing an empty log twice
        // writes the same head.)
        keying: applied.is_empty().then_some(true),
        // Its connections belong to the pool's runtime.
        writer_thread: false,
        wal_sync: None,
    })
}

/// Open an existing database for reading only: no migrations, and every transaction
/// read-only on the server's side too.
pub(crate) async fn open_read_only(
    url: &str,
    password: Option<Arc<dyn DatabasePassword>>,
) -> Result<Arc<dyn Database>> {
    let opts = options(url, password.as_deref())
        .await?
        .options([("default_transaction_read_only", "on")]);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(opts)
        .await?;
    Ok(Arc::new(PgDb {
        pool,
        breaker: Breaker::default(),
    }))
}

/// Keep the pool's password fresh: fetched again a while before it expires (an access
/// token lives about an hour), or every five minutes for one without an expiry (a
/// file an operator may rotate). Connections already open stay open: PostgreSQL
/// checks a password only when a connection starts.
async fn refresh_password(pool: PgPool, url: String, source: Arc<dyn DatabasePassword>) {
    let mut wait = Duration::from_secs(300);
    loop {
        tokio::time::sleep(wait).await;
        if pool.is_closed() {
            return;
        }
        match source.password().await {
            Ok(secret) => {
                wait = secret.valid_for.map_or(Duration::from_secs(300), |v| {
                    // Renew at 80 % of the lifetime, at least 10 s apart.
                    (v * 4 / 5).max(Duration::from_secs(10))
                });
                match PgConnectOptions::from_str(&url) {
                    Ok(o) => pool.set_connect_options(bounded(
                        o.application_name("influxion").password(&secret.value),
                    )),
                    Err(e) => tracing::error!(error = %e, "database URL no longer parses"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not renew the database password; retrying");
                wait = Duration::from_secs(10);
            }
        }
    }
}

/// Bump `signals` for every change another replica (or this one) commits.
async fn follow_changes(pool: PgPool, signals: Signals) {
    let mut refresh = tokio::time::interval(FULL_REFRESH);
    refresh.tick().await;
    let mut listener: Option<PgListener> = None;
    loop {
        let l = match listener.as_mut() {
            Some(l) => l,
            None => {
                match PgListener::connect_with(&pool).await {
                    Ok(mut l) => match l.listen(CHANGES_CHANNEL).await {
                        Ok(()) => {
                            // Whatever happened while nobody listened is unknown.
                            let tip = last_seq(&pool).await;
                            signals.all_changed(tip);
                            listener = Some(l);
                            continue;
                        }
                        Err(e) => tracing::debug!(error = %e, "LISTEN failed"),
                    },
                    Err(e) => tracing::debug!(error = %e, "change listener cannot connect"),
                }
                if pool.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        tokio::select! {
            n = l.try_recv() => match n {
                Ok(Some(n)) => signals.changed(&parse_change(n.payload())),
                // The connection was lost: listen again on a new one, never in a
                // tight loop should new connections fail at once.
                Ok(None) | Err(_) => {
                    listener = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
            _ = refresh.tick() => {
                if pool.is_closed() {
                    return;
                }
                signals.all_changed(None);
            }
        }
    }
}

async fn last_seq(pool: &PgPool) -> Option<u64> {
    let seq: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM audit_log")
        .fetch_one(pool)
        .await
        .ok()?;
    u64::try_from(seq).ok()
}

impl PgDb {
    async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        self.breaker.acquire(&self.pool).await
    }

    async fn approvals_of(&self, kind: PendingKind, id: &str) -> Result<Vec<ApprovalRecord>> {
        let t = tables(kind);
        let sql = format!(
            "SELECT approver, approver_label, decision, comment, at FROM {} WHERE {} = $1 ORDER BY at COLLATE \"C\"",
            t.votes, t.votes_item
        );
        let rows = sqlx::query(&sql)
            .bind(id)
            .fetch_all(&mut *self.acquire().await?)
            .await?;
        rows.iter().map(rows::approval).collect()
    }

    async fn pending_rows(
        &self,
        kind: PendingKind,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<sqlx::postgres::PgRow>> {
        let t = tables(kind);
        Ok(match status {
            Some(s) => {
                let sql = format!(
                    "SELECT * FROM {} WHERE status = $1 ORDER BY created_at COLLATE \"C\" DESC LIMIT $2",
                    t.items
                );
                sqlx::query(&sql)
                    .bind(s)
                    .bind(limit as i64)
                    .fetch_all(&mut *self.acquire().await?)
                    .await?
            }
            None => {
                let sql = format!(
                    "SELECT * FROM {} ORDER BY created_at COLLATE \"C\" DESC LIMIT $1",
                    t.items
                );
                sqlx::query(&sql)
                    .bind(limit as i64)
                    .fetch_all(&mut *self.acquire().await?)
                    .await?
            }
        })
    }

    async fn pending_row(
        &self,
        kind: PendingKind,
        id: &str,
    ) -> Result<Option<sqlx::postgres::PgRow>> {
        let sql = format!("SELECT * FROM {} WHERE id = $1", tables(kind).items);
        Ok(sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&mut *self.acquire().await?)
            .await?)
    }
}

#[async_trait]
impl Database for PgDb {
    async fn pending_count(&self, kind: PendingKind, now: i64) -> Result<i64> {
        // The table name is a constant of `tables`, never input.
        let sql = format!(
            "SELECT COUNT(*) FROM {} WHERE status = 'pending' AND expires_at >= $1",
            tables(kind).items
        );
        Ok(sqlx::query_scalar(&sql)
            .bind(now)
            .fetch_one(&mut *self.acquire().await?)
            .await?)
    }

    fn pool_status(&self) -> crate::PoolStatus {
        crate::PoolStatus {
            open: self.pool.size(),
            idle: self.pool.num_idle(),
        }
    }

    fn accepts_writes(&self) -> bool {
        self.breaker.attempt_due()
    }

    async fn conn(&self) -> Result<Box<dyn crate::db::Conn>> {
        Ok(Box::new(PgConn::pooled(
            self.pool.clone(),
            self.breaker.clone(),
            self.acquire().await?,
        )))
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn subjects(&self) -> Result<Vec<SubjectRecord>> {
        let rows = sqlx::query("SELECT * FROM subjects ORDER BY name COLLATE \"C\"")
            .fetch_all(&mut *self.acquire().await?)
            .await?;
        let mut subjects = rows
            .iter()
            .map(rows::subject)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let grants =
            sqlx::query("SELECT id, subject_id, role, pattern FROM grants ORDER BY role COLLATE \"C\", pattern COLLATE \"C\"")
                .fetch_all(&mut *self.acquire().await?)
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
        let row = sqlx::query("SELECT * FROM keys WHERE name = $1")
            .bind(name.as_str())
            .fetch_optional(&mut *self.acquire().await?)
            .await?;
        row.as_ref().map(rows::key).transpose()
    }

    async fn key_by_id(&self, id: &str) -> Result<Option<KeyRecord>> {
        let row = sqlx::query("SELECT * FROM keys WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *self.acquire().await?)
            .await?;
        row.as_ref().map(rows::key).transpose()
    }

    async fn keys(&self) -> Result<Vec<KeyRecord>> {
        let rows = sqlx::query("SELECT * FROM keys ORDER BY name COLLATE \"C\"")
            .fetch_all(&mut *self.acquire().await?)
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
        // Every condition is a constant fragment with bound parameters ($n in order).
        let mut sql = format!(
            "SELECT {}, mac FROM audit_log WHERE TRUE",
            rows::AUDIT_COLUMNS
        );
        let mut binds: Vec<Bind> = Vec::new();
        let param = |binds: &mut Vec<Bind>, b: Bind| {
            binds.push(b);
            format!("${}", binds.len())
        };
        if let Some(s) = &f.since {
            let p = param(&mut binds, Bind::Text(s.clone()));
            sql.push_str(&format!(" AND at >= {p}"));
        }
        if let Some(u) = &f.until {
            let p = param(&mut binds, Bind::Text(u.clone()));
            sql.push_str(&format!(" AND at < {p}"));
        }
        if !f.actions.is_empty() {
            let mut any = Vec::new();
            for a in &f.actions {
                // ILIKE: SQLite's LIKE ignores ASCII case, and the two must agree.
                any.push(match a.strip_suffix('*') {
                    Some(prefix) => {
                        let p = param(&mut binds, Bind::Text(format!("{}%", like_escape(prefix))));
                        format!("action ILIKE {p}")
                    }
                    None => {
                        let p = param(&mut binds, Bind::Text(a.clone()));
                        format!("action = {p}")
                    }
                });
            }
            sql.push_str(&format!(" AND ({})", any.join(" OR ")));
        }
        if let Some(actor) = &f.actor {
            // Substring of the identity or of the recorded label's fields (not its
            // JSON text, whose keys and escapes would match), ignoring case.
            let p = param(&mut binds, Bind::Text(format!("%{}%", like_escape(actor))));
            sql.push_str(&format!(
                " AND (actor ILIKE {p}
                   OR influxion_jsonb(actor_label) ->> 'name' ILIKE {p}
                   OR influxion_jsonb(actor_label) ->> 'username' ILIKE {p}
                   OR influxion_jsonb(actor_label) ->> 'subject' ILIKE {p})"
            ));
        }
        if let Some(key) = &f.key {
            let p = param(&mut binds, Bind::Text(key.clone()));
            sql.push_str(&format!(
                " AND (target = {p} OR influxion_jsonb(detail) ->> 'key' = {p})"
            ));
        }
        if let Some(o) = &f.outcome {
            let p = param(&mut binds, Bind::Text(o.clone()));
            sql.push_str(&format!(" AND outcome = {p}"));
        }
        if let Some(after) = f.after_seq {
            let p = param(&mut binds, Bind::Int(after));
            sql.push_str(&format!(" AND seq > {p} ORDER BY seq ASC"));
        } else {
            if let Some(before) = f.before_seq {
                let p = param(&mut binds, Bind::Int(before));
                sql.push_str(&format!(" AND seq < {p}"));
            }
            sql.push_str(" ORDER BY seq DESC");
        }
        let p = param(&mut binds, Bind::Int(i64::from(f.limit)));
        sql.push_str(&format!(" LIMIT {p}"));
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = match b {
                Bind::Text(s) => q.bind(s),
                Bind::Int(i) => q.bind(i),
            };
        }
        let rows = q.fetch_all(&mut *self.acquire().await?).await?;
        Ok(rows
            .iter()
            .map(rows::audit_record)
            .collect::<std::result::Result<_, _>>()?)
    }

    async fn audit_record(&self, seq: i64) -> Result<Option<AuditRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {}, mac FROM audit_log WHERE seq = $1",
            rows::AUDIT_COLUMNS
        ))
        .bind(seq)
        .fetch_optional(&mut *self.acquire().await?)
        .await?;
        Ok(row.as_ref().map(rows::audit_record).transpose()?)
    }

    async fn audit_last_seq(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM audit_log")
                .fetch_one(&mut *self.acquire().await?)
                .await?,
        )
    }

    async fn ca(&self, name: &str) -> Result<Option<CaRecord>> {
        sqlx::query("SELECT * FROM cas WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *self.acquire().await?)
            .await?
            .as_ref()
            .map(rows::ca)
            .transpose()
    }

    async fn cas(&self) -> Result<Vec<CaRecord>> {
        sqlx::query("SELECT * FROM cas ORDER BY name COLLATE \"C\"")
            .fetch_all(&mut *self.acquire().await?)
            .await?
            .iter()
            .map(rows::ca)
            .collect()
    }

    async fn certificate_counts(&self, ca: &str) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS n FROM certificates WHERE ca = $1 GROUP BY status",
        )
        .bind(ca)
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
            .collect()
    }

    async fn profile(&self, name: &str) -> Result<Option<ProfileRecord>> {
        sqlx::query("SELECT * FROM profiles WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *self.acquire().await?)
            .await?
            .as_ref()
            .map(rows::profile)
            .transpose()
    }

    async fn profiles(&self) -> Result<Vec<ProfileRecord>> {
        sqlx::query("SELECT * FROM profiles ORDER BY name COLLATE \"C\"")
            .fetch_all(&mut *self.acquire().await?)
            .await?
            .iter()
            .map(rows::profile)
            .collect()
    }

    async fn certificate(&self, serial: &str) -> Result<Option<CertRecord>> {
        sqlx::query("SELECT * FROM certificates WHERE serial = $1")
            .bind(serial)
            .fetch_optional(&mut *self.acquire().await?)
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
        sqlx::query("SELECT * FROM certificates WHERE profile = $1 AND request_key = $2")
            .bind(profile)
            .bind(request_key)
            .fetch_optional(&mut *self.acquire().await?)
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
        // Grant patterns use only `[a-z0-9._-]` and `*`: as a LIKE pattern, `*` is `%`
        // and `_` is escaped, which means the same as `pattern_matches`.
        let visible = match &q.visible {
            None => String::new(),
            Some(v) if v.is_empty() => " AND FALSE".to_owned(),
            Some(v) => format!(
                " AND ({})",
                (0..v.len().min(64))
                    .map(|i| format!("profile LIKE ${}", i + 8))
                    .collect::<Vec<_>>()
                    .join(" OR ")
            ),
        };
        let sql = format!(
            "SELECT * FROM certificates
             WHERE ($1::TEXT IS NULL OR device_id = $1)
               AND ($2::TEXT IS NULL OR serial = $2)
               AND ($3::TEXT IS NULL OR subject ILIKE $3)
               AND ($4::TEXT IS NULL OR profile = $4)
               AND ($5::TEXT IS NULL OR ca = $5)
               AND ($6::TEXT IS NULL OR status = $6){visible}
             ORDER BY issued_at COLLATE \"C\" DESC, serial COLLATE \"C\"
             LIMIT $7"
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
            query = query.bind(like_escape(p).replace('*', "%"));
        }
        query
            .fetch_all(&mut *self.acquire().await?)
            .await?
            .iter()
            .map(rows::cert)
            .collect()
    }

    async fn latest_revocation(&self, ca: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT MAX(t) FROM (
                SELECT revoked_at AS t FROM certificates WHERE ca = $1 AND status = 'revoked'
                UNION ALL
                SELECT revoked_at AS t FROM cas WHERE parent = $1 AND revoked_at IS NOT NULL) AS r",
        )
        .bind(ca)
        .fetch_one(&mut *self.acquire().await?)
        .await?)
    }

    async fn revoked_for_ca(&self, ca: &str) -> Result<Vec<RevokedRow>> {
        let rows = sqlx::query(
            "SELECT serial, revoked_at, revocation_reason FROM (
                SELECT serial, revoked_at, revocation_reason FROM certificates
                WHERE ca = $1 AND status = 'revoked'
                UNION ALL
                SELECT serial, revoked_at, revocation_reason FROM cas
                WHERE parent = $1 AND revoked_at IS NOT NULL AND serial IS NOT NULL) AS r
             ORDER BY revoked_at COLLATE \"C\", serial COLLATE \"C\"",
        )
        .bind(ca)
        .fetch_all(&mut *self.acquire().await?)
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

    fn follow(&self, signals: Signals) {
        tokio::spawn(follow_changes(self.pool.clone(), signals));
    }

    #[cfg(feature = "test-helpers")]
    fn tamper(&self) -> &dyn crate::test_helpers::Tamper {
        self
    }
}

#[cfg(feature = "test-helpers")]
crate::test_helpers::impl_tamper!(PgDb);

#[cfg(test)]
mod breaker_tests {
    use super::{Breaker, BreakerState};
    use std::time::{Duration, Instant};

    fn open(b: &Breaker, retry_at: Instant, probing: bool) {
        *b.state() = BreakerState::Open { retry_at, probing };
    }

    /// Writes are queued while the database is reachable, and while it is away only
    /// when an attempt is due and none is out: every other write is refused at once.
    #[test]
    fn writes_queue_only_when_an_attempt_is_due() {
        let b = Breaker::default();
        assert!(b.attempt_due());
        let later = Instant::now() + Duration::from_secs(3600);
        open(&b, later, false);
        assert!(!b.attempt_due());
        assert!(!b.admit());
        let past = Instant::now() - Duration::from_millis(1);
        open(&b, past, false);
        assert!(b.attempt_due());
        // The first caller claims the attempt; from then on nobody else is due.
        assert!(b.admit());
        assert!(!b.attempt_due());
        assert!(!b.admit());
        open(&b, past, true);
        assert!(!b.attempt_due());
    }
}
