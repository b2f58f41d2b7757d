//! Server-side browser sessions, stored in the database so that several keyclient
//! replicas can share them: SQLite for replicas on one host, PostgreSQL for replicas
//! on several (`migrations/sqlite`, `migrations/postgres`).
//!
//! The browser holds only an opaque random id (256 bits) in an HttpOnly cookie. The
//! table keys rows by the id's SHA-256 and seals their contents (tokens included)
//! with AES-256-GCM, so neither a database dump nor a log line opens a session.

use std::str::FromStr;
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow};
use sqlx::{FromRow, PgPool, SqlitePool};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::KcError;

/// A signed-in person: who, and the tokens the keyclient uses on their behalf.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub(crate) struct UserData {
    pub subject: String,
    pub name: String,
    pub username: String,
    /// The validated ID token of the sign-in (kept server-side with the others).
    #[serde(default)]
    pub id_token: Option<String>,
    pub access_token: String,
    pub access_expires_at: i64,
    pub refresh_token: Option<String>,
    /// The scopes the provider granted (asked for again, exactly, on refresh).
    #[serde(default)]
    pub granted_scopes: Option<String>,
}

/// What a session row holds. Sign-ins in progress are not sessions: they live in a
/// sealed cookie (`signin.rs`); rows of kind `login` from older versions no longer open.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum SessionData {
    User(UserData),
}

impl SessionData {
    fn kind(&self) -> &'static str {
        match self {
            Self::User(_) => "user",
        }
    }
}

/// A session as loaded for one request.
pub(crate) struct Session {
    pub id_hash: String,
    pub data: SessionData,
    pub last_seen: i64,
    pub expires_at: i64,
}

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// A signed-in session unused for this long ends.
    pub idle: Duration,
    /// A signed-in session ends this long after sign-in, used or not.
    pub absolute: Duration,
    /// A sign-in must come back from the provider within this time.
    pub login: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(30 * 60),
            absolute: Duration::from_secs(8 * 3600),
            login: Duration::from_secs(10 * 60),
        }
    }
}

/// The session database: SQLite (the default, one host) or PostgreSQL (replicas on
/// several hosts), chosen by the URL's scheme.
///
/// Why two pools and not sqlx's `Any` driver: each arm keeps its driver's typed
/// options (SQLite: create the file, WAL, busy timeout; PostgreSQL: the acquire
/// timeout, and a password set on `PgConnectOptions` at run time, as the keyserver's
/// store does), which `Any` would take from the URL text only; and the SQL is still
/// written once. Every statement below is one text with `$n` placeholders, which
/// sqlx-sqlite accepts as well, and plain SQL both databases share (`ON CONFLICT DO
/// NOTHING`, conditional `UPDATE`); [`Db::execute`] and [`Db::fetch_optional`] are the
/// only places that tell the two apart.
#[derive(Clone)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A statement parameter (the store binds nothing else).
#[derive(Clone, Copy)]
enum Arg<'a> {
    Int(i64),
    Text(&'a str),
    Bytes(&'a [u8]),
}

/// `$q` with `$args` bound in order; a macro, so that one text serves both drivers'
/// query types without spelling out sqlx's encoding bounds.
macro_rules! bind_all {
    ($q:expr, $args:expr) => {{
        let mut q = $q;
        for a in $args {
            q = match *a {
                Arg::Int(v) => q.bind(v),
                Arg::Text(v) => q.bind(v),
                Arg::Bytes(v) => q.bind(v),
            };
        }
        q
    }};
}

/// How long a request waits for a PostgreSQL connection: a database that is away
/// gives a quick `internal` answer (and a log line), not a hung request.
const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections per keyclient replica.
const PG_POOL_SIZE: u32 = 8;

/// The database a URL names, by its scheme.
fn database_of(url: &str) -> Option<DbKind> {
    let scheme = url.split_once(':')?.0.to_ascii_lowercase();
    match scheme.as_str() {
        "sqlite" => Some(DbKind::Sqlite),
        "postgres" | "postgresql" => Some(DbKind::Postgres),
        _ => None,
    }
}

#[derive(Clone, Copy)]
enum DbKind {
    Sqlite,
    Postgres,
}

/// Whether the session store can open a database at this URL (by its scheme).
pub fn supported_database_url(url: &str) -> bool {
    database_of(url).is_some()
}

impl Db {
    async fn open(database_url: &str) -> Result<Self, KcError> {
        let kind = database_of(database_url).ok_or_else(|| {
            KcError::Internal(
                "the session database URL must be sqlite:, postgres: or postgresql:".into(),
            )
        })?;
        let migrated = match kind {
            DbKind::Postgres => {
                // Host, port, user, database, password and TLS from the URL, then the
                // standard PG* variables and ~/.pgpass (libpq's rules, as sqlx reads
                // them). A password file or Entra token (the keyserver's
                // `DatabasePassword` in crates/store) would be set here with
                // `opts.password(..)` and renewed with `pool.set_connect_options`.
                let opts = PgConnectOptions::from_str(database_url)?
                    .application_name("influxion-keyclient");
                let pool = PgPoolOptions::new()
                    .max_connections(PG_POOL_SIZE)
                    .acquire_timeout(PG_ACQUIRE_TIMEOUT)
                    // A connection the server closed (a restart) is found before use.
                    .test_before_acquire(true)
                    .connect_with(opts)
                    .await?;
                // sqlx's migrator holds an advisory lock while it runs: replicas
                // starting together apply each migration once.
                let r = sqlx::migrate!("./migrations/postgres").run(&pool).await;
                r.map(|()| Self::Postgres(pool))
            }
            DbKind::Sqlite => {
                let opts = SqliteConnectOptions::from_str(database_url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(5));
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(opts)
                    .await?;
                let r = sqlx::migrate!("./migrations/sqlite").run(&pool).await;
                r.map(|()| Self::Sqlite(pool))
            }
        };
        migrated.map_err(|e| {
            use sqlx::migrate::MigrateError::{VersionMismatch, VersionMissing};
            // Both keep applied migrations in `_sqlx_migrations`: a database the
            // keyserver uses has other migrations under the same numbers.
            let hint = match e {
                VersionMismatch(_) | VersionMissing(_) => {
                    " (the keyclient needs a database of its own, not the keyserver's)"
                }
                _ => "",
            };
            KcError::Internal(format!("session store migration: {e}{hint}"))
        })
    }

    /// Run a statement; the number of rows it changed.
    async fn execute(&self, sql: &'static str, args: &[Arg<'_>]) -> Result<u64, KcError> {
        Ok(match self {
            Self::Sqlite(p) => bind_all!(sqlx::query(sql), args)
                .execute(p)
                .await?
                .rows_affected(),
            Self::Postgres(p) => bind_all!(sqlx::query(sql), args)
                .execute(p)
                .await?
                .rows_affected(),
        })
    }

    /// The first row of a query, if any, as `T` (a tuple of the selected columns).
    async fn fetch_optional<T>(
        &self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<Option<T>, KcError>
    where
        T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        Ok(match self {
            Self::Sqlite(p) => {
                bind_all!(sqlx::query_as::<_, T>(sql), args)
                    .fetch_optional(p)
                    .await?
            }
            Self::Postgres(p) => {
                bind_all!(sqlx::query_as::<_, T>(sql), args)
                    .fetch_optional(p)
                    .await?
            }
        })
    }
}

#[derive(Clone)]
pub(crate) struct SessionStore {
    db: Db,
    cipher: Aes256Gcm,
    timeouts: Timeouts,
}

/// Cookie values are 32 random bytes, base64url without padding.
const ID_LEN: usize = 43;
/// `last_seen` is written at most this often per session, to spare the database.
const TOUCH_EVERY_SECS: i64 = 60;

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn hash_id(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// Only well-formed ids reach the database; anything else is simply no session.
fn well_formed(id: &str) -> bool {
    id.len() == ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl SessionStore {
    pub(crate) async fn open(
        database_url: &str,
        key: &Zeroizing<[u8; 32]>,
        timeouts: Timeouts,
    ) -> Result<Self, KcError> {
        let db = Db::open(database_url).await?;
        let cipher = Aes256Gcm::new_from_slice(key.as_slice())
            .map_err(|e| KcError::Internal(format!("session key: {e}")))?;
        Ok(Self {
            db,
            cipher,
            timeouts,
        })
    }

    fn seal(&self, id_hash: &str, data: &SessionData) -> Result<Vec<u8>, KcError> {
        seal_json(
            &self.cipher,
            id_hash.as_bytes(),
            data,
            "sealing a session failed",
        )
    }

    fn open_sealed(&self, id_hash: &str, sealed: &[u8]) -> Option<SessionData> {
        open_json(&self.cipher, id_hash.as_bytes(), sealed)
    }

    /// Whether the sign-in with this id has completed already (its callback is spent).
    pub(crate) async fn login_completed(&self, login_id: &str) -> Result<bool, KcError> {
        let row: Option<(String,)> = self
            .db
            .fetch_optional(
                "SELECT id_hash FROM completed_logins WHERE id_hash = $1",
                &[Arg::Text(&hash_id(login_id))],
            )
            .await?;
        Ok(row.is_some())
    }

    /// Record a completed sign-in until its cookie expires; false if it was recorded
    /// already (two callbacks racing). Only sign-ins the provider completed get here.
    pub(crate) async fn complete_login(
        &self,
        login_id: &str,
        expires_at: i64,
    ) -> Result<bool, KcError> {
        let n = self
            .db
            .execute(
                "INSERT INTO completed_logins (id_hash, expires_at) VALUES ($1, $2)
                 ON CONFLICT (id_hash) DO NOTHING",
                &[Arg::Text(&hash_id(login_id)), Arg::Int(expires_at)],
            )
            .await?;
        Ok(n == 1)
    }

    /// Store a new session and return the cookie value that opens it.
    pub(crate) async fn create(&self, data: &SessionData) -> Result<Zeroizing<String>, KcError> {
        let mut raw = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(raw.as_mut());
        let id = Zeroizing::new(B64URL.encode(raw.as_ref()));
        let id_hash = hash_id(&id);
        let now = now();
        let ttl = self.timeouts.absolute;
        let sealed = self.seal(&id_hash, data)?;
        self.db
            .execute(
                "INSERT INTO web_sessions (id_hash, kind, created_at, last_seen, expires_at, sealed)
                 VALUES ($1, $2, $3, $3, $4, $5)",
                &[
                    Arg::Text(&id_hash),
                    Arg::Text(data.kind()),
                    Arg::Int(now),
                    Arg::Int(now + ttl.as_secs() as i64),
                    Arg::Bytes(&sealed),
                ],
            )
            .await?;
        Ok(id)
    }

    fn alive(&self, kind: &str, last_seen: i64, expires_at: i64, now: i64) -> bool {
        let idle_ok = kind == "login" || now - last_seen <= self.timeouts.idle.as_secs() as i64;
        now < expires_at && idle_ok
    }

    /// The live session behind a cookie value, if any. Expired ones are deleted.
    pub(crate) async fn load(&self, id: &str) -> Result<Option<Session>, KcError> {
        if !well_formed(id) {
            return Ok(None);
        }
        let id_hash = hash_id(id);
        let row: Option<(String, i64, i64, Vec<u8>)> = self
            .db
            .fetch_optional(
                "SELECT kind, last_seen, expires_at, sealed FROM web_sessions WHERE id_hash = $1",
                &[Arg::Text(&id_hash)],
            )
            .await?;
        let Some((kind, last_seen, expires_at, sealed)) = row else {
            return Ok(None);
        };
        if !self.alive(&kind, last_seen, expires_at, now()) {
            self.delete_hash(&id_hash).await?;
            return Ok(None);
        }
        let Some(data) = self.open_sealed(&id_hash, &sealed) else {
            // Sealed under another key (rotated) or altered: unusable either way.
            self.delete_hash(&id_hash).await?;
            return Ok(None);
        };
        Ok(Some(Session {
            id_hash,
            data,
            last_seen,
            expires_at,
        }))
    }

    /// Record use of a session (at most once a minute).
    pub(crate) async fn touch(&self, s: &Session) -> Result<(), KcError> {
        let now = now();
        if now - s.last_seen >= TOUCH_EVERY_SECS {
            self.db
                .execute(
                    "UPDATE web_sessions SET last_seen = $1 WHERE id_hash = $2",
                    &[Arg::Int(now), Arg::Text(&s.id_hash)],
                )
                .await?;
        }
        Ok(())
    }

    /// Take the refresh lease of a session for `secs`: true if this caller holds it now.
    /// Replicas sharing the database thereby refresh a session one at a time, so a
    /// rotating refresh token is never spent twice.
    ///
    /// One conditional `UPDATE`, atomic in both databases: SQLite runs writers one at a
    /// time, and PostgreSQL makes a second `UPDATE` of the row wait for the first to
    /// commit and then evaluates the condition again on the row as the first left it,
    /// so of two replicas racing, exactly one changes the row.
    pub(crate) async fn take_refresh_lease(
        &self,
        id_hash: &str,
        secs: i64,
    ) -> Result<bool, KcError> {
        let now = now();
        let n = self
            .db
            .execute(
                "UPDATE web_sessions SET refresh_lease_until = $1
                 WHERE id_hash = $2 AND (refresh_lease_until IS NULL OR refresh_lease_until <= $3)",
                &[Arg::Int(now + secs), Arg::Text(id_hash), Arg::Int(now)],
            )
            .await?;
        Ok(n == 1)
    }

    pub(crate) async fn release_refresh_lease(&self, id_hash: &str) -> Result<(), KcError> {
        self.db
            .execute(
                "UPDATE web_sessions SET refresh_lease_until = NULL WHERE id_hash = $1",
                &[Arg::Text(id_hash)],
            )
            .await?;
        Ok(())
    }

    /// Replace the tokens of a signed-in session (after a refresh).
    pub(crate) async fn update(&self, id_hash: &str, data: &SessionData) -> Result<(), KcError> {
        let sealed = self.seal(id_hash, data)?;
        self.db
            .execute(
                "UPDATE web_sessions SET sealed = $1, last_seen = $2 WHERE id_hash = $3",
                &[Arg::Bytes(&sealed), Arg::Int(now()), Arg::Text(id_hash)],
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn delete(&self, id: &str) -> Result<(), KcError> {
        if well_formed(id) {
            self.delete_hash(&hash_id(id)).await?;
        }
        Ok(())
    }

    async fn delete_hash(&self, id_hash: &str) -> Result<(), KcError> {
        self.db
            .execute(
                "DELETE FROM web_sessions WHERE id_hash = $1",
                &[Arg::Text(id_hash)],
            )
            .await?;
        Ok(())
    }

    /// Delete sessions past their absolute or idle timeout; returns how many.
    pub(crate) async fn purge(&self) -> Result<u64, KcError> {
        let now = now();
        let n = self
            .db
            .execute(
                "DELETE FROM web_sessions WHERE expires_at <= $1
                 OR (kind = 'user' AND last_seen < $2)",
                &[
                    Arg::Int(now),
                    Arg::Int(now - self.timeouts.idle.as_secs() as i64),
                ],
            )
            .await?;
        self.db
            .execute(
                "DELETE FROM completed_logins WHERE expires_at <= $1",
                &[Arg::Int(now)],
            )
            .await?;
        Ok(n)
    }

    /// Age a session by `secs` (tests of the timeouts): as if it had been created and
    /// last used `secs` earlier.
    #[cfg(test)]
    async fn age(&self, id: &str, secs: i64) -> Result<(), KcError> {
        self.db
            .execute(
                "UPDATE web_sessions SET last_seen = last_seen - $1,
                 created_at = created_at - $1, expires_at = expires_at - $1
                 WHERE id_hash = $2",
                &[Arg::Int(secs), Arg::Text(&hash_id(id))],
            )
            .await?;
        Ok(())
    }

    /// Every row's sealed contents (tests: nothing readable at rest).
    #[cfg(test)]
    async fn sealed_rows(&self) -> Result<Vec<(String, Vec<u8>)>, KcError> {
        Ok(match &self.db {
            Db::Sqlite(p) => {
                sqlx::query_as("SELECT id_hash, sealed FROM web_sessions")
                    .fetch_all(p)
                    .await?
            }
            Db::Postgres(p) => {
                sqlx::query_as("SELECT id_hash, sealed FROM web_sessions")
                    .fetch_all(p)
                    .await?
            }
        })
    }
}

/// `value` as JSON, encrypted under a fresh random nonce and bound to `aad`; the nonce
/// comes first. Sessions and sign-in cookies are sealed alike.
pub(crate) fn seal_json<T: Serialize>(
    cipher: &Aes256Gcm,
    aad: &[u8],
    value: &T,
    failed: &str,
) -> Result<Vec<u8>, KcError> {
    let plain =
        Zeroizing::new(serde_json::to_vec(value).map_err(|e| KcError::Internal(e.to_string()))?);
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(&Nonce::from(nonce), Payload { msg: &plain, aad })
        .map_err(|_| KcError::Internal(failed.into()))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    Ok(out)
}

/// The value [`seal_json`] sealed, if `sealed` is genuine and bound to `aad`.
pub(crate) fn open_json<T: serde::de::DeserializeOwned>(
    cipher: &Aes256Gcm,
    aad: &[u8],
    sealed: &[u8],
) -> Option<T> {
    if sealed.len() < 12 {
        return None;
    }
    let (nonce, ct) = sealed.split_at(12);
    let nonce: [u8; 12] = nonce.try_into().ok()?;
    let plain = Zeroizing::new(
        cipher
            .decrypt(&Nonce::from(nonce), Payload { msg: ct, aad })
            .ok()?,
    );
    serde_json::from_slice(&plain).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn store(dir: &std::path::Path, key: u8) -> SessionStore {
        let url = format!("sqlite://{}/s.db", dir.display());
        SessionStore::open(&url, &Zeroizing::new([key; 32]), Timeouts::default())
            .await
            .unwrap()
    }

    fn user() -> SessionData {
        SessionData::User(UserData {
            subject: "s".into(),
            name: "Alice".into(),
            username: "alice".into(),
            id_token: Some("eyJ.id.token".into()),
            access_token: "eyJ.secret.token".into(),
            access_expires_at: now() + 3600,
            refresh_token: Some("refresh-secret".into()),
            granted_scopes: None,
        })
    }

    #[tokio::test]
    async fn round_trip_tamper_idle_and_single_use_login() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 7).await;
        let id = s.create(&user()).await.unwrap();
        assert!(matches!(
            s.load(&id).await.unwrap().unwrap().data,
            SessionData::User(_)
        ));
        // The database holds neither the cookie value nor the token in the clear.
        let raw = std::fs::read(dir.path().join("s.db")).unwrap();
        let hay = String::from_utf8_lossy(&raw);
        for secret in [
            id.as_str(),
            "eyJ.secret.token",
            "eyJ.id.token",
            "refresh-secret",
        ] {
            assert!(
                !hay.contains(secret),
                "{secret} is readable in the database"
            );
        }
        // A tampered id is no session.
        let mut t = id.to_string();
        t.replace_range(0..1, if t.starts_with('A') { "B" } else { "A" });
        assert!(s.load(&t).await.unwrap().is_none());
        assert!(s.load("short").await.unwrap().is_none());
        // Idle timeout.
        s.age(&id, 31 * 60).await.unwrap();
        assert!(s.load(&id).await.unwrap().is_none());

        // A sign-in completes once.
        assert!(!s.login_completed("login-1").await.unwrap());
        assert!(s.complete_login("login-1", now() + 600).await.unwrap());
        assert!(s.login_completed("login-1").await.unwrap());
        assert!(!s.complete_login("login-1", now() + 600).await.unwrap());
        // One refresh lease at a time.
        let sess = s.create(&user()).await.unwrap();
        let h = hash_id(&sess);
        assert!(s.take_refresh_lease(&h, 30).await.unwrap());
        assert!(!s.take_refresh_lease(&h, 30).await.unwrap());
        s.release_refresh_lease(&h).await.unwrap();
        assert!(s.take_refresh_lease(&h, 30).await.unwrap());
    }

    #[tokio::test]
    async fn another_key_opens_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let id = store(dir.path(), 1).await.create(&user()).await.unwrap();
        let other = store(dir.path(), 2).await;
        assert!(other.load(&id).await.unwrap().is_none());
    }

    // ---------------------------------------------------------- replicas, both databases

    /// Two session stores on one database, as two keyclient replicas would open it.
    async fn replicas(url: &str) -> (SessionStore, SessionStore) {
        let key = Zeroizing::new([9; 32]);
        let open = || SessionStore::open(url, &key, Timeouts::default());
        if url.starts_with("sqlite:") {
            // sqlx's migrator takes no lock on SQLite: replicas sharing a file on one
            // host start one after another (as they did before PostgreSQL).
            let a = open().await.unwrap();
            return (a, open().await.unwrap());
        }
        // Started together: the migrator's advisory lock makes the second wait for
        // the first's migrations.
        let (a, b) = tokio::join!(open(), open());
        (a.unwrap(), b.unwrap())
    }

    fn user_named(name: &str, expires_in: i64) -> SessionData {
        let SessionData::User(mut u) = user();
        u.username = name.into();
        u.access_expires_at = now() + expires_in;
        SessionData::User(u)
    }

    fn username(s: &Session) -> String {
        let SessionData::User(u) = &s.data;
        u.username.clone()
    }

    /// A session made on one replica opens on the other, and what either does to it
    /// (new tokens, sign-out) the other sees at once. Nothing readable is stored.
    async fn sessions_are_shared(url: &str) {
        let (a, b) = replicas(url).await;
        let id = a.create(&user_named("alice", 3600)).await.unwrap();
        let on_b = b.load(&id).await.unwrap().expect("the session opens on b");
        assert_eq!(username(&on_b), "alice");
        b.touch(&on_b).await.unwrap();
        b.update(&on_b.id_hash, &user_named("alice-refreshed", 7200))
            .await
            .unwrap();
        let on_a = a.load(&id).await.unwrap().unwrap();
        assert_eq!(username(&on_a), "alice-refreshed");
        let SessionData::User(u) = &on_a.data;
        assert!(u.access_expires_at > now() + 3600);
        for (id_hash, sealed) in a.sealed_rows().await.unwrap() {
            let text = String::from_utf8_lossy(&sealed);
            assert_ne!(id_hash, id.as_str());
            for secret in [
                "eyJ.secret.token",
                "eyJ.id.token",
                "refresh-secret",
                "alice",
            ] {
                assert!(!text.contains(secret), "{secret} is readable at rest");
            }
        }
        b.delete(&id).await.unwrap();
        assert!(a.load(&id).await.unwrap().is_none());
    }

    /// A sign-in completes once across the replicas, however its callbacks race.
    async fn logins_complete_once(url: &str) {
        let (a, b) = replicas(url).await;
        for round in 0..5 {
            let login = format!("login-{round}");
            let tries = (0..8).map(|i| {
                let s = if i % 2 == 0 { a.clone() } else { b.clone() };
                let login = login.clone();
                tokio::spawn(async move { s.complete_login(&login, now() + 600).await.unwrap() })
            });
            let won = futures::future::join_all(tries)
                .await
                .into_iter()
                .filter(|r| *r.as_ref().unwrap())
                .count();
            assert_eq!(won, 1, "{login} completed {won} times");
            assert!(a.login_completed(&login).await.unwrap());
            assert!(b.login_completed(&login).await.unwrap());
        }
        assert!(!b.login_completed("never").await.unwrap());
    }

    /// Replicas racing for a session's refresh lease: exactly one holds it; released
    /// (or run out), it can be taken again, on either replica.
    async fn one_refresh_lease(url: &str) {
        let (a, b) = replicas(url).await;
        for round in 0..5 {
            let id = a
                .create(&user_named(&format!("u{round}"), 10))
                .await
                .unwrap();
            let h = hash_id(&id);
            let tries = (0..16).map(|i| {
                let s = if i % 2 == 0 { a.clone() } else { b.clone() };
                let h = h.clone();
                tokio::spawn(async move { s.take_refresh_lease(&h, 30).await.unwrap() })
            });
            let won = futures::future::join_all(tries)
                .await
                .into_iter()
                .filter(|r| *r.as_ref().unwrap())
                .count();
            assert_eq!(won, 1, "round {round}: {won} leases");
            assert!(!a.take_refresh_lease(&h, 30).await.unwrap());
            assert!(!b.take_refresh_lease(&h, 30).await.unwrap());
            // The holder (whichever) releases it; the other replica may take it now.
            a.release_refresh_lease(&h).await.unwrap();
            assert!(b.take_refresh_lease(&h, 0).await.unwrap());
            // A lease that has run out is taken over.
            assert!(a.take_refresh_lease(&h, 30).await.unwrap());
        }
    }

    /// Idle and absolute expiry, and the clean-up of sessions and completed sign-ins,
    /// whichever replica runs it.
    async fn expired_rows_are_cleaned_up(url: &str) {
        let (a, b) = replicas(url).await;
        let live = a.create(&user_named("live", 3600)).await.unwrap();
        let idle = a.create(&user_named("idle", 3600)).await.unwrap();
        let old = a.create(&user_named("old", 3600)).await.unwrap();
        let idle_secs = Timeouts::default().idle.as_secs() as i64;
        a.age(&idle, idle_secs + 5).await.unwrap();
        a.age(&old, Timeouts::default().absolute.as_secs() as i64 + 5)
            .await
            .unwrap();
        assert!(a.complete_login("spent", now() - 1).await.unwrap());
        assert!(a.complete_login("recent", now() + 600).await.unwrap());
        assert_eq!(b.purge().await.unwrap(), 2);
        assert_eq!(a.purge().await.unwrap(), 0);
        assert!(b.load(&live).await.unwrap().is_some());
        for gone in [&idle, &old] {
            assert!(b.load(gone).await.unwrap().is_none());
        }
        assert!(!a.login_completed("spent").await.unwrap());
        assert!(a.login_completed("recent").await.unwrap());
        // Loading an expired session deletes it too.
        a.age(&live, idle_secs + 5).await.unwrap();
        assert!(b.load(&live).await.unwrap().is_none());
        assert_eq!(a.sealed_rows().await.unwrap().len(), 0);
    }

    /// A database whose migrations are another program's (the keyserver's, say) is
    /// refused at start, saying so.
    async fn foreign_migrations_are_refused(url: &str) {
        let (a, _) = replicas(url).await;
        a.db.execute(
            "UPDATE _sqlx_migrations SET checksum = $1 WHERE version = 1",
            &[Arg::Bytes(&[0; 48])],
        )
        .await
        .unwrap();
        let r = SessionStore::open(url, &Zeroizing::new([9; 32]), Timeouts::default()).await;
        let Err(KcError::Internal(e)) = r else {
            panic!("opened a database with foreign migrations")
        };
        assert!(e.contains("a database of its own"), "{e}");
    }

    #[tokio::test]
    async fn sqlite_foreign_migrations_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        foreign_migrations_are_refused(&sqlite_url(&dir)).await;
    }

    #[tokio::test]
    async fn postgres_foreign_migrations_are_refused() {
        foreign_migrations_are_refused(&influxion_pgtest::fresh_database().await).await;
    }

    fn sqlite_url(dir: &tempfile::TempDir) -> String {
        format!("sqlite://{}/kc.db", dir.path().display())
    }

    #[tokio::test]
    async fn sqlite_replicas_share_sessions() {
        let dir = tempfile::tempdir().unwrap();
        sessions_are_shared(&sqlite_url(&dir)).await;
    }

    #[tokio::test]
    async fn sqlite_logins_complete_once() {
        let dir = tempfile::tempdir().unwrap();
        logins_complete_once(&sqlite_url(&dir)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_one_refresh_lease() {
        let dir = tempfile::tempdir().unwrap();
        one_refresh_lease(&sqlite_url(&dir)).await;
    }

    #[tokio::test]
    async fn sqlite_expired_rows_are_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        expired_rows_are_cleaned_up(&sqlite_url(&dir)).await;
    }

    #[tokio::test]
    async fn postgres_replicas_share_sessions() {
        sessions_are_shared(&influxion_pgtest::fresh_database().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_logins_complete_once() {
        logins_complete_once(&influxion_pgtest::fresh_database().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_one_refresh_lease() {
        one_refresh_lease(&influxion_pgtest::fresh_database().await).await;
    }

    #[tokio::test]
    async fn postgres_expired_rows_are_cleaned_up() {
        expired_rows_are_cleaned_up(&influxion_pgtest::fresh_database().await).await;
    }

    /// `postgresql://` names PostgreSQL too. A server that accepts connections and
    /// never answers fails the keyclient within the acquire timeout, not after a hang.
    #[tokio::test]
    async fn postgres_urls_and_a_silent_server() {
        let url = influxion_pgtest::fresh_database().await;
        let alt = url.replacen("postgres://", "postgresql://", 1);
        let (a, _) = replicas(&alt).await;
        let id = a.create(&user()).await.unwrap();
        let (b, _) = replicas(&url).await;
        assert!(b.load(&id).await.unwrap().is_some());

        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((conn, _)) = silent.accept().await {
                open.push(conn);
            }
        });
        // No timing is asserted: a hang would leave this test hanging, which fails the
        // run; the acquire timeout is what ends the wait.
        let r = SessionStore::open(
            &format!("postgres://influxion@127.0.0.1:{port}/none"),
            &Zeroizing::new([9; 32]),
            Timeouts::default(),
        )
        .await;
        assert!(
            matches!(r, Err(KcError::SessionStoreUnavailable(_))),
            "{:?}",
            r.err()
        );
        held.abort();
    }
}
