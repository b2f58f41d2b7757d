//! The provider's metadata and signing keys, cached as Microsoft advises: refreshed
//! periodically, refreshed on an unknown `kid` at most once per interval (single
//! flight), kept while the provider is unreachable, and trusted for at most a day.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use crate::{AuthConfig, AuthError};

const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

pub(crate) struct VerifyKey {
    pub decoding: DecodingKey,
    family: Family,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    P256,
    P384,
}

impl Family {
    fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            Family::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Family::P256 => alg == ES256,
            Family::P384 => alg == ES384,
        }
    }
}

struct KeySet {
    issuer: String,
    keys: HashMap<String, Arc<VerifyKey>>,
    fetched: Instant,
}

#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    jwks_uri: String,
}

/// Why a refresh is wanted; each trigger has its own limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// The background timer.
    Periodic,
    /// No usable key set at all (first use, or older than the maximum age).
    Missing,
    /// A token names a kid we do not know.
    UnknownKid,
}

#[derive(Default)]
struct RefreshTimes {
    /// When the last fetch finished, successfully or not.
    completed: Option<Instant>,
    last_failure: Option<Instant>,
    last_unknown_kid: Option<Instant>,
}

/// After a failed fetch, requests that find no key set wait this long before the
/// provider is asked again, so an outage is not turned into a request storm.
const FAILURE_BACKOFF: Duration = Duration::from_secs(5);

/// How many fetches of the provider's metadata and keys succeeded and failed since the
/// start: a snapshot for metrics, read at scrape time (this crate knows nothing of
/// Prometheus). Fetches skipped by single flight or the refresh limits are not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JwksRefreshes {
    pub ok: u64,
    pub failed: u64,
}

pub struct JwksCache {
    metadata_url: String,
    http: reqwest::Client,
    allow_http: bool,
    min_refresh: Duration,
    max_age: Duration,
    current: RwLock<Option<Arc<KeySet>>>,
    /// Serialises fetches so that a burst of unknown-kid tokens causes one request.
    refresh: tokio::sync::Mutex<RefreshTimes>,
    generation: AtomicU64,
    fetched_ok: AtomicU64,
    fetched_failed: AtomicU64,
}

fn check_url(url: &str, allow_http: bool) -> Result<(), AuthError> {
    let u = url::Url::parse(url).map_err(|_| AuthError::Config(format!("{url} is not a URL")))?;
    let loopback = matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    match u.scheme() {
        "https" => Ok(()),
        "http" if loopback || allow_http => Ok(()),
        _ => Err(AuthError::Config(format!("{url} must use https"))),
    }
}

impl JwksCache {
    pub(crate) fn new(cfg: &AuthConfig) -> Result<Self, AuthError> {
        check_url(&cfg.metadata_url, cfg.allow_insecure_http)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| AuthError::Config(e.to_string()))?;
        Ok(Self {
            metadata_url: cfg.metadata_url.clone(),
            http,
            allow_http: cfg.allow_insecure_http,
            min_refresh: cfg.jwks_min_refresh_interval,
            max_age: cfg.jwks_max_age,
            current: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(RefreshTimes::default()),
            generation: AtomicU64::new(0),
            fetched_ok: AtomicU64::new(0),
            fetched_failed: AtomicU64::new(0),
        })
    }

    /// Changes whenever a new key set is installed.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn current(&self) -> Option<Arc<KeySet>> {
        let set = self.current.read().ok()?.clone()?;
        (set.fetched.elapsed() <= self.max_age).then_some(set)
    }

    /// Fetches of the provider's keys so far, by outcome.
    pub(crate) fn refreshes(&self) -> JwksRefreshes {
        JwksRefreshes {
            ok: self.fetched_ok.load(Ordering::Relaxed),
            failed: self.fetched_failed.load(Ordering::Relaxed),
        }
    }

    /// Whether a key set no older than the maximum age is held: tokens can be checked.
    pub(crate) fn usable(&self) -> bool {
        self.current().is_some()
    }

    pub(crate) fn issuer(&self) -> Option<String> {
        self.current().map(|s| s.issuer.clone())
    }

    /// The key for `kid`, fetching the key set if we have none or do not know the kid.
    pub(crate) async fn key_for(
        &self,
        kid: &str,
        alg: Algorithm,
    ) -> Result<Arc<VerifyKey>, AuthError> {
        let found = match self.current() {
            Some(set) => set.keys.get(kid).cloned(),
            None => {
                self.refresh_now(Trigger::Missing).await?;
                self.current().and_then(|s| s.keys.get(kid).cloned())
            }
        };
        let key = match found {
            Some(k) => k,
            None => {
                // An unknown kid may mean the provider rotated keys; look again, but
                // not more often than min_refresh, whatever attackers send.
                if let Err(e) = self.refresh_now(Trigger::UnknownKid).await {
                    tracing::warn!(error = %e, "JWKS refresh on unknown kid failed");
                }
                self.current()
                    .ok_or(AuthError::Unavailable)?
                    .keys
                    .get(kid)
                    .cloned()
                    .ok_or(AuthError::UnknownKey)?
            }
        };
        if !key.family.fits(alg) {
            return Err(AuthError::Algorithm);
        }
        Ok(key)
    }

    pub(crate) async fn refresh_periodic(&self) -> Result<(), AuthError> {
        self.refresh_now(Trigger::Periodic).await
    }

    async fn refresh_now(&self, trigger: Trigger) -> Result<(), AuthError> {
        let started = Instant::now();
        let mut times = self.refresh.lock().await;
        // Someone fetched while we waited for the lock: single flight.
        if times.completed.is_some_and(|t| t >= started) {
            return match times.last_failure {
                Some(f) if f >= started => Err(AuthError::Unavailable),
                _ => Ok(()),
            };
        }
        match trigger {
            Trigger::Periodic => {}
            Trigger::Missing => {
                if times
                    .last_failure
                    .is_some_and(|f| f.elapsed() < FAILURE_BACKOFF)
                {
                    return Err(AuthError::Unavailable);
                }
            }
            Trigger::UnknownKid => {
                if times
                    .last_unknown_kid
                    .is_some_and(|t| t.elapsed() < self.min_refresh)
                {
                    return Ok(());
                }
                times.last_unknown_kid = Some(Instant::now());
            }
        }
        let fetched = self.fetch().await;
        times.completed = Some(Instant::now());
        let set = match fetched {
            Ok(set) => set,
            Err(e) => {
                self.fetched_failed.fetch_add(1, Ordering::Relaxed);
                times.last_failure = times.completed;
                return Err(e);
            }
        };
        self.fetched_ok.fetch_add(1, Ordering::Relaxed);
        tracing::info!(keys = set.keys.len(), issuer = %set.issuer, "installed provider signing keys");
        if let Ok(mut cur) = self.current.write() {
            *cur = Some(Arc::new(set));
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, AuthError> {
        check_url(url, self.allow_http)?;
        let unavailable = |e: reqwest::Error| {
            tracing::warn!(url, error = %e, "identity provider request failed");
            AuthError::Unavailable
        };
        let mut resp = self.http.get(url).send().await.map_err(unavailable)?;
        if !resp.status().is_success() {
            tracing::warn!(url, status = %resp.status(), "identity provider returned an error");
            return Err(AuthError::Unavailable);
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(unavailable)? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_DOCUMENT_BYTES {
                return Err(AuthError::Unavailable);
            }
        }
        serde_json::from_slice(&body).map_err(|e| {
            tracing::warn!(url, error = %e, "identity provider document does not parse");
            AuthError::Unavailable
        })
    }

    async fn fetch(&self) -> Result<KeySet, AuthError> {
        let meta: Metadata = self.get_json(&self.metadata_url).await?;
        let set: JwkSet = self.get_json(&meta.jwks_uri).await?;
        let mut keys = HashMap::new();
        for jwk in set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            // Symmetric (`oct`) keys are never accepted: a published HMAC key would let
            // anyone mint tokens.
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Family::Rsa,
                AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                    EllipticCurve::P256 => Family::P256,
                    EllipticCurve::P384 => Family::P384,
                    _ => continue,
                },
                _ => continue,
            };
            match DecodingKey::from_jwk(&jwk) {
                Ok(decoding) => {
                    keys.insert(kid, Arc::new(VerifyKey { decoding, family }));
                }
                Err(e) => tracing::warn!(kid, error = %e, "skipping unusable JWK"),
            }
        }
        Ok(KeySet {
            issuer: meta.issuer,
            keys,
            fetched: Instant::now(),
        })
    }
}
