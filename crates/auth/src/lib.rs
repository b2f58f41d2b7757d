//! Bearer token validation: the keyserver's front door.
//!
//! Tokens are validated locally against the signing keys the OIDC provider publishes
//! (discovered from its metadata document). The only output is a [`Principal`]; no
//! raw claim leaves this crate.

mod claims;
mod error;
mod jwks;
mod unverified;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use influxion_core::{CallerKind, Principal};
use jsonwebtoken::{Algorithm, Validation};
use sha2::{Digest, Sha256};

pub use error::AuthError;
pub use jwks::{JwksCache, JwksRefreshes};
pub use unverified::UnverifiedToken;

use claims::Claims;

/// Everything token validation needs to know. Built and checked by the configuration
/// layer; see the README's configuration reference for each field.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The OpenID Connect metadata document (discovery) URL.
    pub metadata_url: String,
    /// Accepted `aud` values: the API's client id (v2 tokens) and/or its `api://` URI (v1).
    pub audiences: Vec<String>,
    /// When set, `tid` must equal it.
    pub tenant_id: Option<String>,
    /// For multi-tenant apps: tenants allowed when the issuer is a `{tenantid}` template.
    /// Empty means any tenant whose `tid` matches its own issuer.
    pub allowed_tenants: Vec<String>,
    /// Issuers accepted besides the one in the metadata document (e.g. Entra v1
    /// `https://sts.windows.net/{tenantid}/`). `{tenantid}` is substituted from `tid`.
    pub extra_issuers: Vec<String>,
    /// Scope a delegated (user) token must carry in `scp`.
    pub required_scope: String,
    /// App roles, any one of which an app-only token must carry in `roles`.
    pub app_roles: Vec<String>,
    /// Accepted `ver` values; empty accepts any.
    pub accepted_versions: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub clock_skew: Duration,
    /// How often the JWKS is refreshed in the background.
    pub jwks_refresh_interval: Duration,
    /// Least time between refreshes triggered by an unknown `kid`.
    pub jwks_min_refresh_interval: Duration,
    /// Keys older than this (since the last successful fetch) are no longer trusted.
    pub jwks_max_age: Duration,
    pub max_token_bytes: usize,
    /// Allow `http://` metadata and JWKS URLs on non-loopback hosts. Never in production.
    pub allow_insecure_http: bool,
}

impl AuthConfig {
    pub const DEFAULT_ALGORITHMS: [Algorithm; 6] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::ES384,
    ];
}

/// Results of recent validations, keyed by the token's SHA-256, so that a busy client
/// does not pay for signature verification on every request. Cleared whenever the
/// provider's key set changes, and each entry still honours the token's `exp`.
struct TokenCache {
    entries: Mutex<HashMap<[u8; 32], (Principal, i64)>>,
    generation: Mutex<u64>,
}

const TOKEN_CACHE_MAX: usize = 10_000;

/// Validates bearer tokens.
pub struct Validator {
    cfg: AuthConfig,
    jwks: JwksCache,
    cache: TokenCache,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Validator {
    pub fn new(cfg: AuthConfig) -> Result<Arc<Self>, AuthError> {
        let jwks = JwksCache::new(&cfg)?;
        Ok(Arc::new(Self {
            cfg,
            jwks,
            cache: TokenCache {
                entries: Mutex::new(HashMap::new()),
                generation: Mutex::new(0),
            },
        }))
    }

    pub fn config(&self) -> &AuthConfig {
        &self.cfg
    }

    /// Whether the provider's signing keys are held (fetched and not older than the
    /// maximum age), so that tokens can be checked: part of readiness.
    pub fn keys_usable(&self) -> bool {
        self.jwks.usable()
    }

    /// How often the provider's keys were fetched, successfully or not (metrics).
    pub fn jwks_refreshes(&self) -> JwksRefreshes {
        self.jwks.refreshes()
    }

    /// Fetch the metadata and keys now, and keep them fresh in the background.
    pub fn start_background_refresh(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let every = self.cfg.jwks_refresh_interval;
        tokio::spawn(async move {
            loop {
                let Some(v) = me.upgrade() else { break };
                if let Err(e) = v.jwks.refresh_periodic().await {
                    tracing::warn!(error = %e, "JWKS refresh failed; keeping cached keys");
                }
                drop(v);
                tokio::time::sleep(every).await;
            }
        });
    }

    /// Validate a bearer token and return who it belongs to. Checks everything except
    /// whether the principal may do a particular thing.
    pub async fn validate(&self, token: &str) -> Result<Principal, AuthError> {
        if token.len() > self.cfg.max_token_bytes {
            return Err(AuthError::TooLarge);
        }
        let fingerprint: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let generation = self.jwks.generation();
        self.sync_cache(generation);
        if let Some(p) = self.cached(&fingerprint) {
            return self.admit(p);
        }
        let unverified = UnverifiedToken::parse(token, &self.cfg.algorithms)?;
        let key = self
            .jwks
            .key_for(unverified.kid(), unverified.alg())
            .await?;
        let mut validation = Validation::new(unverified.alg());
        validation.leeway = self.cfg.clock_skew.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // Issuer and audience need Entra-aware rules; they are checked below.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation)
            .map_err(AuthError::from_jwt)?;
        let claims = data.claims;
        let principal = self.check_claims(&claims)?;
        if self.jwks.generation() == generation {
            self.remember(fingerprint, &principal, claims.exp);
        }
        self.admit(principal)
    }

    fn check_claims(&self, c: &Claims) -> Result<Principal, AuthError> {
        let now = now();
        let skew = self.cfg.clock_skew.as_secs() as i64;
        if c.iat.is_some_and(|iat| iat > now + skew) {
            return Err(AuthError::NotYetValid);
        }
        let issuer = self.jwks.issuer().ok_or(AuthError::Unavailable)?;
        let tid = c.tid.as_deref();
        let matched = std::iter::once(issuer.as_str())
            .chain(self.cfg.extra_issuers.iter().map(String::as_str))
            .find(|template| issuer_matches(template, &c.iss, tid));
        let Some(matched) = matched else {
            return Err(AuthError::Issuer);
        };
        // A `{tenantid}` issuer matches every tenant's tokens: refuse them unless the
        // tenant is pinned or allow-listed, so a multi-tenant app is never open to
        // whoever creates a tenant (fail closed).
        if matched.contains("{tenantid}")
            && self.cfg.tenant_id.is_none()
            && self.cfg.allowed_tenants.is_empty()
        {
            return Err(AuthError::Tenant);
        }
        if let Some(expected) = &self.cfg.tenant_id {
            if !tid.is_some_and(|t| t.eq_ignore_ascii_case(expected)) {
                return Err(AuthError::Tenant);
            }
        }
        if !self.cfg.allowed_tenants.is_empty()
            && !tid.is_some_and(|t| {
                self.cfg
                    .allowed_tenants
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(t))
            })
        {
            return Err(AuthError::Tenant);
        }
        if !c
            .single_audience()
            .is_some_and(|a| self.cfg.audiences.iter().any(|x| x == a))
        {
            return Err(AuthError::Audience);
        }
        if let Some(why) = c.id_token_only_claims() {
            return Err(AuthError::NotAccessToken(why));
        }
        if !self.cfg.accepted_versions.is_empty()
            && !c
                .ver
                .as_deref()
                .is_some_and(|v| self.cfg.accepted_versions.iter().any(|x| x == v))
        {
            return Err(AuthError::Version);
        }
        if !version_fits_issuer(&c.iss, c.ver.as_deref()) {
            return Err(AuthError::Version);
        }
        if let Some(why) = c.missing_client_claim() {
            return Err(AuthError::NotAccessToken(why));
        }
        c.to_principal()
    }

    /// The door: delegated tokens need the API scope, app-only tokens an app role.
    fn admit(&self, p: Principal) -> Result<Principal, AuthError> {
        let ok = match p.kind {
            CallerKind::User => p.has_scope(&self.cfg.required_scope),
            CallerKind::App => self.cfg.app_roles.iter().any(|r| p.has_role(r)),
        };
        if ok {
            Ok(p)
        } else {
            Err(AuthError::InsufficientScope(p.kind))
        }
    }

    fn sync_cache(&self, generation: u64) {
        if let (Ok(mut g), Ok(mut e)) = (self.cache.generation.lock(), self.cache.entries.lock()) {
            if *g != generation {
                e.clear();
                *g = generation;
            }
        }
    }

    fn cached(&self, fp: &[u8; 32]) -> Option<Principal> {
        let mut entries = self.cache.entries.lock().ok()?;
        match entries.get(fp) {
            Some((p, exp)) if *exp + self.cfg.clock_skew.as_secs() as i64 > now() => {
                Some(p.clone())
            }
            Some(_) => {
                entries.remove(fp);
                None
            }
            None => None,
        }
    }

    fn remember(&self, fp: [u8; 32], p: &Principal, exp: i64) {
        if let Ok(mut entries) = self.cache.entries.lock() {
            if entries.len() >= TOKEN_CACHE_MAX {
                entries.clear();
            }
            entries.insert(fp, (p.clone(), exp));
        }
    }
}

/// Entra's two issuer forms each go with one token version: `…/v2.0` issuers sign
/// `ver: "2.0"` tokens, `https://sts.windows.net/{tid}/` signs `ver: "1.0"`. A token
/// whose `ver` contradicts its issuer was not made by Entra the way it claims, and
/// one without `ver` from an Entra-form issuer is not an Entra token at all.
fn version_fits_issuer(iss: &str, ver: Option<&str>) -> bool {
    let trimmed = iss.trim_end_matches('/');
    if trimmed.ends_with("/v2.0") {
        ver == Some("2.0")
    } else if iss.starts_with("https://sts.windows.net/") {
        ver == Some("1.0")
    } else {
        true
    }
}

/// `iss` must equal the template exactly, after substituting `{tenantid}` with the
/// token's own `tid` (Entra multi-tenant metadata publishes such a template).
fn issuer_matches(template: &str, iss: &str, tid: Option<&str>) -> bool {
    if template.contains("{tenantid}") {
        match tid {
            Some(t)
                if !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
            {
                template.replace("{tenantid}", t) == iss
            }
            _ => false,
        }
    } else {
        template == iss
    }
}

#[cfg(test)]
mod tests {
    use super::{issuer_matches, version_fits_issuer};

    #[test]
    fn version_must_fit_the_issuer_form() {
        let v2 = "https://login.microsoftonline.com/t/v2.0";
        let v1 = "https://sts.windows.net/t/";
        assert!(version_fits_issuer(v2, Some("2.0")));
        assert!(!version_fits_issuer(v2, Some("1.0")));
        assert!(!version_fits_issuer(v2, None));
        assert!(version_fits_issuer(v1, Some("1.0")));
        assert!(!version_fits_issuer(v1, Some("2.0")));
        assert!(!version_fits_issuer(v1, None));
        // Other providers have no version convention.
        assert!(version_fits_issuer("http://127.0.0.1:8080", Some("2.0")));
        assert!(version_fits_issuer("https://idp.example", None));
    }

    #[test]
    fn issuer_templates() {
        let t = "https://login.microsoftonline.com/{tenantid}/v2.0";
        assert!(issuer_matches(
            t,
            "https://login.microsoftonline.com/abc-1/v2.0",
            Some("abc-1")
        ));
        assert!(!issuer_matches(
            t,
            "https://login.microsoftonline.com/abc-1/v2.0",
            Some("abc-2")
        ));
        assert!(!issuer_matches(
            t,
            "https://login.microsoftonline.com/abc-1/v2.0",
            None
        ));
        assert!(!issuer_matches(
            t,
            "https://login.microsoftonline.com/a/b/v2.0",
            Some("a/b")
        ));
        assert!(issuer_matches("https://x", "https://x", None));
        assert!(!issuer_matches("https://x", "https://x/", None));
    }
}
