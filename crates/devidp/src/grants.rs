//! What the issuer remembers between requests, in memory only: sign-ins waiting for
//! the user, authorization codes and refresh tokens, each bounded in number and keyed
//! by the SHA-256 of the value handed out. Also the PKCE and secret comparisons.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Most pending interactions, codes or refresh tokens kept at once (each).
pub(crate) const STORE_CAP: usize = 10_000;

/// A sign-in waiting for the user to pick an account.
pub(crate) struct Interaction {
    pub(crate) client_id: String,
    pub(crate) redirect_uri: String,
    pub(crate) scope: String,
    pub(crate) state: String,
    pub(crate) nonce: String,
    pub(crate) code_challenge: String,
    pub(crate) expires_at: u64,
}

pub(crate) struct AuthCode {
    pub(crate) client_id: String,
    pub(crate) redirect_uri: String,
    pub(crate) code_challenge: String,
    pub(crate) nonce: String,
    pub(crate) scope: String,
    pub(crate) username: String,
    pub(crate) auth_time: u64,
    pub(crate) expires_at: u64,
}

pub(crate) struct RefreshGrant {
    pub(crate) client_id: String,
    pub(crate) username: String,
    pub(crate) scope: String,
    pub(crate) auth_time: u64,
    pub(crate) expires_at: u64,
}

pub(crate) trait Expiring {
    fn expires_at(&self) -> u64;
}

macro_rules! expiring {
    ($($t:ty),*) => {$(impl Expiring for $t {
        fn expires_at(&self) -> u64 {
            self.expires_at
        }
    })*};
}
expiring!(Interaction, AuthCode, RefreshGrant);

/// Keyed by SHA-256 of the random value handed out, which itself is not kept.
pub(crate) type Key = [u8; 32];

#[derive(Default)]
pub(crate) struct Grants {
    pub(crate) interactions: HashMap<Key, Interaction>,
    pub(crate) codes: HashMap<Key, AuthCode>,
    pub(crate) refresh_tokens: HashMap<Key, RefreshGrant>,
}

/// Insert after dropping expired entries; when still full, evict what expires first.
pub(crate) fn insert_bounded<V: Expiring>(map: &mut HashMap<Key, V>, key: Key, value: V, now: u64) {
    map.retain(|_, v| v.expires_at() > now);
    while map.len() >= STORE_CAP {
        let Some(oldest) = map
            .iter()
            .min_by_key(|(_, v)| v.expires_at())
            .map(|(k, _)| *k)
        else {
            break;
        };
        map.remove(&oldest);
    }
    map.insert(key, value);
}

pub(crate) fn key_of(value: &str) -> Key {
    Sha256::digest(value.as_bytes()).into()
}

/// 32 random bytes, base64url, and the key to store it under.
pub(crate) fn random_token() -> (String, Key) {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let value = B64URL.encode(b);
    let key = key_of(&value);
    (value, key)
}

pub(crate) fn ct_eq(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// RFC 7636 §4.2: the S256 challenge is 43 base64url characters; accept 43..=128.
pub(crate) fn valid_code_challenge(s: &str) -> bool {
    (43..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// RFC 7636 §4.1: 43..=128 unreserved characters.
pub(crate) fn valid_code_verifier(s: &str) -> bool {
    (43..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}
