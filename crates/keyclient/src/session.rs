//! Server-side browser sessions, stored in the database so that several keyclient
//! replicas can share them.
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
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};
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

#[derive(Clone)]
pub(crate) struct SessionStore {
    pool: SqlitePool,
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
        let opts = SqliteConnectOptions::from_str(database_url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| KcError::Internal(format!("session store migration: {e}")))?;
        let cipher = Aes256Gcm::new_from_slice(key.as_slice())
            .map_err(|e| KcError::Internal(format!("session key: {e}")))?;
        Ok(Self {
            pool,
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
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM completed_logins WHERE id_hash = ?")
            .bind(hash_id(login_id))
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// Record a completed sign-in until its cookie expires; false if it was recorded
    /// already (two callbacks racing). Only sign-ins the provider completed get here.
    pub(crate) async fn complete_login(
        &self,
        login_id: &str,
        expires_at: i64,
    ) -> Result<bool, KcError> {
        let r = sqlx::query(
            "INSERT INTO completed_logins (id_hash, expires_at) VALUES (?, ?)
             ON CONFLICT (id_hash) DO NOTHING",
        )
        .bind(hash_id(login_id))
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
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
        sqlx::query(
            "INSERT INTO web_sessions (id_hash, kind, created_at, last_seen, expires_at, sealed)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&id_hash)
        .bind(data.kind())
        .bind(now)
        .bind(now)
        .bind(now + ttl.as_secs() as i64)
        .bind(sealed)
        .execute(&self.pool)
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
        let row = sqlx::query(
            "SELECT kind, last_seen, expires_at, sealed FROM web_sessions WHERE id_hash = ?",
        )
        .bind(&id_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let kind: String = row.try_get("kind")?;
        let last_seen: i64 = row.try_get("last_seen")?;
        let expires_at: i64 = row.try_get("expires_at")?;
        if !self.alive(&kind, last_seen, expires_at, now()) {
            self.delete_hash(&id_hash).await?;
            return Ok(None);
        }
        let sealed: Vec<u8> = row.try_get("sealed")?;
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
            sqlx::query("UPDATE web_sessions SET last_seen = ? WHERE id_hash = ?")
                .bind(now)
                .bind(&s.id_hash)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Take the refresh lease of a session for `secs`: true if this caller holds it now.
    /// Replicas sharing the database thereby refresh a session one at a time, so a
    /// rotating refresh token is never spent twice.
    pub(crate) async fn take_refresh_lease(
        &self,
        id_hash: &str,
        secs: i64,
    ) -> Result<bool, KcError> {
        let now = now();
        let r = sqlx::query(
            "UPDATE web_sessions SET refresh_lease_until = ?
             WHERE id_hash = ? AND (refresh_lease_until IS NULL OR refresh_lease_until <= ?)",
        )
        .bind(now + secs)
        .bind(id_hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub(crate) async fn release_refresh_lease(&self, id_hash: &str) -> Result<(), KcError> {
        sqlx::query("UPDATE web_sessions SET refresh_lease_until = NULL WHERE id_hash = ?")
            .bind(id_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Replace the tokens of a signed-in session (after a refresh).
    pub(crate) async fn update(&self, id_hash: &str, data: &SessionData) -> Result<(), KcError> {
        let sealed = self.seal(id_hash, data)?;
        sqlx::query("UPDATE web_sessions SET sealed = ?, last_seen = ? WHERE id_hash = ?")
            .bind(sealed)
            .bind(now())
            .bind(id_hash)
            .execute(&self.pool)
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
        sqlx::query("DELETE FROM web_sessions WHERE id_hash = ?")
            .bind(id_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Delete sessions past their absolute or idle timeout; returns how many.
    pub(crate) async fn purge(&self) -> Result<u64, KcError> {
        let now = now();
        let r = sqlx::query(
            "DELETE FROM web_sessions WHERE expires_at <= ?
             OR (kind = 'user' AND last_seen < ?)",
        )
        .bind(now)
        .bind(now - self.timeouts.idle.as_secs() as i64)
        .execute(&self.pool)
        .await?;
        sqlx::query("DELETE FROM completed_logins WHERE expires_at <= ?")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    /// Age a session by `secs` (tests of the timeouts).
    #[cfg(test)]
    async fn age(&self, id: &str, secs: i64) -> Result<(), KcError> {
        sqlx::query(
            "UPDATE web_sessions SET last_seen = last_seen - ?, created_at = created_at - ?
             WHERE id_hash = ?",
        )
        .bind(secs)
        .bind(secs)
        .bind(hash_id(id))
        .execute(&self.pool)
        .await?;
        Ok(())
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
}
