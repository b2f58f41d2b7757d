//! A sign-in in progress, kept in a sealed, short-lived `__Host-` cookie.
//!
//! `/login` needs no authentication, so it keeps nothing on the server: the state,
//! nonce, PKCE verifier and return address travel sealed (AES-256-GCM, under a key of
//! their own derived from the session key) in the browser's cookie and expire with it.
//! Only a completed sign-in is recorded (by the session store), so a callback works once.

use std::time::Duration;

use aes_gcm::aead::KeyInit;
use aes_gcm::Aes256Gcm;
use axum::http::HeaderValue;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::session::{now, open_json, seal_json};
use crate::KcError;

/// The sign-in cookie, beside the session cookie (which a sign-in leaves alone until it
/// completes).
pub(crate) const LOGIN_COOKIE: &str = "__Host-influxion-login";
/// Longest cookie value opened; a sealed sign-in is well under 2 KiB.
const MAX_SEALED: usize = 4096;
const AAD: &[u8] = b"__Host-influxion-login v1";

/// What the callback must check, as `/login` started it.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub(crate) struct LoginData {
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
    pub return_to: String,
}

/// A sealed sign-in: its data, a random id (recorded once it completes) and its expiry.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub(crate) struct SignIn {
    pub id: String,
    pub expires_at: i64,
    pub login: LoginData,
}

#[derive(Clone)]
pub(crate) struct Sealer {
    cipher: Aes256Gcm,
    ttl: Duration,
}

impl Sealer {
    pub(crate) fn new(session_key: &Zeroizing<[u8; 32]>, ttl: Duration) -> Result<Self, KcError> {
        // A key of its own: a sealed session row never opens as a cookie, nor the reverse.
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(
            &Sha256::new()
                .chain_update(b"influxion keyclient sign-in cookie v1")
                .chain_update(session_key.as_slice())
                .finalize(),
        );
        let cipher = Aes256Gcm::new_from_slice(key.as_slice())
            .map_err(|e| KcError::Internal(format!("sign-in key: {e}")))?;
        Ok(Self { cipher, ttl })
    }

    /// The cookie value for a new sign-in.
    pub(crate) fn seal(&self, login: LoginData) -> Result<Zeroizing<String>, KcError> {
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let signin = SignIn {
            id: B64URL.encode(raw),
            expires_at: now() + self.ttl.as_secs() as i64,
            login,
        };
        let out = seal_json(&self.cipher, AAD, &signin, "sealing a sign-in failed")?;
        Ok(Zeroizing::new(B64URL.encode(out)))
    }

    /// The sign-in behind a cookie value, if it is genuine and not expired.
    pub(crate) fn open(&self, value: &str) -> Option<SignIn> {
        if value.len() > MAX_SEALED {
            return None;
        }
        let sealed = B64URL.decode(value).ok()?;
        let signin: SignIn = open_json(&self.cipher, AAD, &sealed)?;
        (now() < signin.expires_at).then_some(signin)
    }

    pub(crate) fn set_cookie(&self, value: &str) -> Result<HeaderValue, KcError> {
        HeaderValue::from_str(&format!(
            "{LOGIN_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={}",
            self.ttl.as_secs()
        ))
        .map_err(|e| KcError::Internal(e.to_string()))
    }
}

pub(crate) fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "__Host-influxion-login=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0",
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn login() -> LoginData {
        LoginData {
            state: "st".into(),
            nonce: "n".into(),
            pkce_verifier: "v".into(),
            return_to: "/".into(),
        }
    }

    #[test]
    fn sealed_tamper_proof_keyed_and_expiring() {
        let key = Zeroizing::new([7u8; 32]);
        let s = Sealer::new(&key, Duration::from_secs(600)).unwrap();
        let v = s.seal(login()).unwrap();
        let back = s.open(&v).unwrap();
        assert_eq!(back.login.state, "st");
        // Altered, or sealed under another key: nothing.
        let mut t = v.to_string();
        t.replace_range(20..21, if &t[20..21] == "A" { "B" } else { "A" });
        assert!(s.open(&t).is_none());
        let other = Sealer::new(&Zeroizing::new([8u8; 32]), Duration::from_secs(600)).unwrap();
        assert!(other.open(&v).is_none());
        assert!(s.open("x").is_none());
        // Expired.
        let gone = Sealer::new(&key, Duration::ZERO).unwrap();
        assert!(gone.open(&gone.seal(login()).unwrap()).is_none());
    }
}
