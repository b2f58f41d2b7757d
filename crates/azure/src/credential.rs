//! Access tokens for Azure resources (Key Vault, Azure Database for PostgreSQL), from
//! the first credential the environment configures, in the precedence Azure's own SDKs
//! use: a client secret, workload identity, App Service managed identity, then the
//! instance metadata service.
//!
//! Why not `azure_identity`: its instance metadata endpoint is a constant
//! (`http://169.254.169.254`), so it cannot be pointed at a stand-in, a proxy-free
//! sidecar or a sovereign cloud's equivalent (`INFLUXION_IMDS_ENDPOINT`), and its
//! authority host must be HTTPS. Each source here is one documented HTTP request;
//! what is shared (the cache, single flight, retries, error shapes) is written once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tokio::sync::Mutex;
use url::Url;
use zeroize::Zeroizing;

/// Refresh this long before a token expires.
const REFRESH_MARGIN_SECS: i64 = 300;

/// Where the settings come from: `INFLUXION_…` and `AZURE_…` environment variables (a
/// function, so tests and `config check` can pass their own).
pub struct Settings {
    pub authority_host: Url,
    pub imds_endpoint: Url,
    pub client_id: Option<String>,
    pub tenant_id: Option<String>,
    pub client_secret: Option<Zeroizing<String>>,
    pub federated_token_file: Option<PathBuf>,
    pub identity_endpoint: Option<Url>,
    pub identity_header: Option<Zeroizing<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{setting}: {why}")]
    Config { setting: &'static str, why: String },
    #[error("{source_name} refused the token request ({status}): {error}{}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Refused {
        source_name: &'static str,
        status: u16,
        error: String,
        description: Option<String>,
    },
    #[error("{source_name} is unreachable or failing: {why}")]
    Unavailable {
        source_name: &'static str,
        why: String,
    },
    #[error("{source_name} answered something that is not a token: {why}")]
    Malformed {
        source_name: &'static str,
        why: String,
    },
    #[error("reading the federated token file {path}: {why}")]
    FederatedToken { path: String, why: String },
}

impl Settings {
    /// Read the settings with `var` (usually `std::env::var`, with `_FILE` variants
    /// read from their files).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, CredentialError> {
        let nonempty = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let url = |k: &'static str, default: &str| -> Result<Url, CredentialError> {
            let v = nonempty(k).unwrap_or_else(|| default.to_owned());
            Url::parse(&v).map_err(|e| CredentialError::Config {
                setting: k,
                why: format!("not a URL ({e})"),
            })
        };
        let client_secret = match (
            nonempty("INFLUXION_AZURE_CLIENT_SECRET"),
            nonempty("INFLUXION_AZURE_CLIENT_SECRET_FILE"),
        ) {
            (Some(_), Some(_)) => {
                return Err(CredentialError::Config {
                    setting: "INFLUXION_AZURE_CLIENT_SECRET",
                    why: "set either it or INFLUXION_AZURE_CLIENT_SECRET_FILE, not both".into(),
                })
            }
            (Some(s), None) => Some(Zeroizing::new(s)),
            (None, Some(path)) => Some(Zeroizing::new(
                std::fs::read_to_string(&path)
                    .map_err(|e| CredentialError::Config {
                        setting: "INFLUXION_AZURE_CLIENT_SECRET_FILE",
                        why: format!("reading {path}: {e}"),
                    })?
                    .trim()
                    .to_owned(),
            )),
            (None, None) => None,
        };
        let federated_token_file = nonempty("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from);
        // Workload identity names its client and tenant with the AZURE_ variables the
        // AKS webhook injects; ours win where both are set.
        let client_id = nonempty("INFLUXION_AZURE_CLIENT_ID").or_else(|| {
            federated_token_file
                .as_ref()
                .and_then(|_| nonempty("AZURE_CLIENT_ID"))
        });
        let tenant_id = nonempty("INFLUXION_AZURE_TENANT_ID").or_else(|| {
            federated_token_file
                .as_ref()
                .and_then(|_| nonempty("AZURE_TENANT_ID"))
        });
        Ok(Self {
            authority_host: url("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com")?,
            imds_endpoint: url("INFLUXION_IMDS_ENDPOINT", "http://169.254.169.254")?,
            client_id,
            tenant_id,
            client_secret,
            federated_token_file,
            identity_endpoint: nonempty("IDENTITY_ENDPOINT")
                .map(|v| {
                    Url::parse(&v).map_err(|e| CredentialError::Config {
                        setting: "IDENTITY_ENDPOINT",
                        why: format!("not a URL ({e})"),
                    })
                })
                .transpose()?,
            identity_header: nonempty("IDENTITY_HEADER").map(Zeroizing::new),
        })
    }
}

/// Which credential the settings select.
#[derive(Clone)]
pub enum Source {
    ClientSecret {
        authority_host: Url,
        tenant_id: String,
        client_id: String,
        secret: Zeroizing<String>,
    },
    WorkloadIdentity {
        authority_host: Url,
        tenant_id: String,
        client_id: String,
        token_file: PathBuf,
    },
    AppService {
        endpoint: Url,
        header: Zeroizing<String>,
        client_id: Option<String>,
    },
    Imds {
        endpoint: Url,
        client_id: Option<String>,
    },
}

impl Source {
    /// The first credential the settings configure, or why a half-configured one is
    /// refused (a client secret without a tenant is a mistake, not a reason to fall
    /// back to the machine's identity).
    pub fn select(s: &Settings) -> Result<Self, CredentialError> {
        if let Some(secret) = &s.client_secret {
            let missing = |setting: &'static str| {
                CredentialError::Config {
                setting,
                why: "a client secret also needs INFLUXION_AZURE_CLIENT_ID and INFLUXION_AZURE_TENANT_ID".into(),
            }
            };
            return Ok(Source::ClientSecret {
                authority_host: s.authority_host.clone(),
                tenant_id: s
                    .tenant_id
                    .clone()
                    .ok_or_else(|| missing("INFLUXION_AZURE_TENANT_ID"))?,
                client_id: s
                    .client_id
                    .clone()
                    .ok_or_else(|| missing("INFLUXION_AZURE_CLIENT_ID"))?,
                secret: secret.clone(),
            });
        }
        if let Some(file) = &s.federated_token_file {
            let missing = |setting: &'static str| {
                CredentialError::Config {
                setting,
                why: "AZURE_FEDERATED_TOKEN_FILE (workload identity) also needs AZURE_CLIENT_ID (or INFLUXION_AZURE_CLIENT_ID) and AZURE_TENANT_ID (or INFLUXION_AZURE_TENANT_ID)".into(),
            }
            };
            return Ok(Source::WorkloadIdentity {
                authority_host: s.authority_host.clone(),
                tenant_id: s
                    .tenant_id
                    .clone()
                    .ok_or_else(|| missing("AZURE_TENANT_ID"))?,
                client_id: s
                    .client_id
                    .clone()
                    .ok_or_else(|| missing("AZURE_CLIENT_ID"))?,
                token_file: file.clone(),
            });
        }
        match (&s.identity_endpoint, &s.identity_header) {
            (Some(endpoint), Some(header)) => {
                return Ok(Source::AppService {
                    endpoint: endpoint.clone(),
                    header: header.clone(),
                    client_id: s.client_id.clone(),
                })
            }
            (Some(_), None) | (None, Some(_)) => return Err(CredentialError::Config {
                setting: "IDENTITY_ENDPOINT",
                why:
                    "App Service managed identity needs both IDENTITY_ENDPOINT and IDENTITY_HEADER"
                        .into(),
            }),
            (None, None) => {}
        }
        Ok(Source::Imds {
            endpoint: s.imds_endpoint.clone(),
            client_id: s.client_id.clone(),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Source::ClientSecret { .. } => "client secret",
            Source::WorkloadIdentity { .. } => "workload identity",
            Source::AppService { .. } => "App Service managed identity",
            Source::Imds { .. } => "instance metadata managed identity",
        }
    }

    /// Which credential and why, without secrets (for `influxion config check`).
    pub fn describe(&self) -> String {
        let identity = |c: &Option<String>| match c {
            Some(id) => format!("user-assigned identity {id} (INFLUXION_AZURE_CLIENT_ID)"),
            None => "the system-assigned identity (INFLUXION_AZURE_CLIENT_ID is not set)".into(),
        };
        match self {
            Source::ClientSecret {
                authority_host,
                tenant_id,
                client_id,
                ..
            } => format!(
                "client secret: INFLUXION_AZURE_CLIENT_SECRET is set; application {client_id} in tenant {tenant_id}, token endpoint {}",
                token_url(authority_host, tenant_id)
                    .map(|u| u.to_string())
                    .unwrap_or_default()
            ),
            Source::WorkloadIdentity {
                authority_host,
                tenant_id,
                client_id,
                token_file,
            } => format!(
                "workload identity: AZURE_FEDERATED_TOKEN_FILE={} is set (no client secret); application {client_id} in tenant {tenant_id}, token endpoint {}",
                token_file.display(),
                token_url(authority_host, tenant_id)
                    .map(|u| u.to_string())
                    .unwrap_or_default()
            ),
            Source::AppService {
                endpoint,
                client_id,
                ..
            } => format!(
                "App Service managed identity: IDENTITY_ENDPOINT and IDENTITY_HEADER are set (no client secret, no federated token file); {endpoint}, {}",
                identity(client_id)
            ),
            Source::Imds {
                endpoint,
                client_id,
            } => format!(
                "instance metadata managed identity: no client secret, federated token file or App Service identity endpoint is set; {endpoint}, {}",
                identity(client_id)
            ),
        }
    }
}

fn token_url(authority_host: &Url, tenant: &str) -> Result<Url, url::ParseError> {
    authority_host.join(&format!("{tenant}/oauth2/v2.0/token"))
}

/// A bearer token and when it expires (Unix seconds). Never printed.
#[derive(Clone)]
pub struct AccessToken {
    pub token: Zeroizing<String>,
    pub expires_on: i64,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"[redacted]")
            .field("expires_on", &self.expires_on)
            .finish()
    }
}

/// Retries of the managed identity endpoints (Microsoft's guidance for the instance
/// metadata service: 404, 410, 429 and 5xx, with exponential backoff).
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub first_backoff: Duration,
    /// A `Retry-After` longer than this is cut to it.
    pub max_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 5,
            first_backoff: Duration::from_millis(800),
            max_backoff: Duration::from_secs(16),
        }
    }
}

/// The credential: one source, its HTTP client, and a token cache per resource,
/// refreshed single-flight (concurrent callers wait for the one request in flight).
pub struct Credential {
    source: Source,
    http: reqwest::Client,
    retry: Retry,
    /// One slot per resource; a slot's lock is held while its token is fetched, so
    /// callers for one resource share one request and other resources are not held up.
    cache: std::sync::Mutex<HashMap<String, Arc<Mutex<Option<AccessToken>>>>>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("source", &self.source.name())
            .finish()
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The token endpoints answer numbers; the managed identity endpoints answer strings.
fn seconds(v: &serde_json::Value) -> Option<i64> {
    match v {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    expires_on: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct ErrorAnswer {
    error: Option<serde_json::Value>,
    error_description: Option<String>,
    /// App Service's shape: `{"statusCode", "message"}`.
    message: Option<String>,
}

impl Credential {
    pub fn new(source: Source, http: reqwest::Client) -> Self {
        Self::with_retry(source, http, Retry::default())
    }

    /// `http` reaches the authority (client secret, workload identity). The managed
    /// identity endpoints are local to the host and refuse proxied requests, so they
    /// get a client that never uses `HTTPS_PROXY`/`HTTP_PROXY`.
    pub fn with_retry(source: Source, http: reqwest::Client, retry: Retry) -> Self {
        let http = match source {
            Source::AppService { .. } | Source::Imds { .. } => reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .connect_timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or(http),
            _ => http,
        };
        Self {
            source,
            http,
            retry,
            cache: std::sync::Mutex::new(HashMap::new()),
        }
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// A token for `resource` (`https://vault.azure.net`), from the cache until five
    /// minutes before it expires. If a refresh fails while the cached token is still
    /// valid, the cached one is used (and the failure logged without the token).
    pub async fn token(&self, resource: &str) -> Result<AccessToken, CredentialError> {
        let slot = {
            let mut all = match self.cache.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            all.entry(resource.to_owned()).or_default().clone()
        };
        let mut slot = slot.lock().await;
        let cached = slot.clone();
        let t = now();
        if let Some(c) = &cached {
            if c.expires_on - REFRESH_MARGIN_SECS > t {
                return Ok(c.clone());
            }
        }
        match self.fetch(resource).await {
            Ok(fresh) => {
                *slot = Some(fresh.clone());
                Ok(fresh)
            }
            Err(e) => match cached {
                Some(c) if c.expires_on > t + 10 => {
                    tracing::warn!(source = self.source.name(), error = %e, "token refresh failed; using the cached token until it expires");
                    Ok(c)
                }
                _ => Err(e),
            },
        }
    }

    async fn fetch(&self, resource: &str) -> Result<AccessToken, CredentialError> {
        let name = self.source.name();
        match &self.source {
            Source::ClientSecret {
                authority_host,
                tenant_id,
                client_id,
                secret,
            } => {
                let form = [
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id.as_str()),
                    ("client_secret", secret.as_str()),
                    ("scope", &scope(resource)),
                ];
                self.post_form(name, authority_host, tenant_id, &form).await
            }
            Source::WorkloadIdentity {
                authority_host,
                tenant_id,
                client_id,
                token_file,
            } => {
                // Read for every exchange: the file rotates (about hourly on AKS).
                let assertion = Zeroizing::new(
                    std::fs::read_to_string(token_file)
                        .map_err(|e| CredentialError::FederatedToken {
                            path: token_file.display().to_string(),
                            why: e.to_string(),
                        })?
                        .trim()
                        .to_owned(),
                );
                if assertion.is_empty() {
                    return Err(CredentialError::FederatedToken {
                        path: token_file.display().to_string(),
                        why: "the file is empty".into(),
                    });
                }
                let form = [
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id.as_str()),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", assertion.as_str()),
                    ("scope", &scope(resource)),
                ];
                self.post_form(name, authority_host, tenant_id, &form).await
            }
            Source::AppService {
                endpoint,
                header,
                client_id,
            } => {
                let mut url = endpoint.clone();
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair("api-version", "2019-08-01");
                    q.append_pair("resource", resource);
                    if let Some(c) = client_id {
                        q.append_pair("client_id", c);
                    }
                }
                self.get_with_retry(name, url, ("X-IDENTITY-HEADER", header.as_str()))
                    .await
            }
            Source::Imds {
                endpoint,
                client_id,
            } => {
                let mut url = endpoint
                    .join("metadata/identity/oauth2/token")
                    .map_err(|e| CredentialError::Config {
                        setting: "INFLUXION_IMDS_ENDPOINT",
                        why: e.to_string(),
                    })?;
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair("api-version", "2018-02-01");
                    q.append_pair("resource", resource);
                    if let Some(c) = client_id {
                        q.append_pair("client_id", c);
                    }
                }
                self.get_with_retry(name, url, ("Metadata", "true")).await
            }
        }
    }

    async fn post_form(
        &self,
        name: &'static str,
        authority_host: &Url,
        tenant: &str,
        form: &[(&str, &str)],
    ) -> Result<AccessToken, CredentialError> {
        let url = token_url(authority_host, tenant).map_err(|e| CredentialError::Config {
            setting: "AZURE_AUTHORITY_HOST",
            why: e.to_string(),
        })?;
        // The identity platform: throttling and server errors are worth another try;
        // a 404 there is a wrong tenant or authority, not a transient state.
        self.send(
            name,
            || self.http.post(url.clone()).form(form),
            |s| matches!(s, 429 | 500..=599),
        )
        .await
    }

    async fn get_with_retry(
        &self,
        name: &'static str,
        url: Url,
        header: (&str, &str),
    ) -> Result<AccessToken, CredentialError> {
        // Microsoft's guidance for the managed identity endpoints: 404 (not ready yet),
        // 410 (being updated), 429 and 5xx.
        self.send(
            name,
            || self.http.get(url.clone()).header(header.0, header.1),
            |s| matches!(s, 404 | 410 | 429 | 500..=599),
        )
        .await
    }

    /// Send the request `build` makes, retrying on the statuses `transient` names and
    /// on transport errors, with exponential backoff (or `Retry-After`, capped).
    async fn send(
        &self,
        name: &'static str,
        build: impl Fn() -> reqwest::RequestBuilder,
        transient: impl Fn(u16) -> bool,
    ) -> Result<AccessToken, CredentialError> {
        let mut backoff = self.retry.first_backoff;
        let mut attempt = 1;
        loop {
            let retry_after = match build().send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    if !transient(status) || attempt >= self.retry.attempts {
                        return read_answer(name, resp).await;
                    }
                    resp.headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs)
                }
                Err(e) if attempt >= self.retry.attempts => {
                    return Err(CredentialError::Unavailable {
                        source_name: name,
                        why: transport(&e),
                    })
                }
                Err(_) => None,
            };
            let wait = retry_after.unwrap_or(backoff).min(self.retry.max_backoff);
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.retry.max_backoff);
            attempt += 1;
        }
    }
}

/// `https://vault.azure.net` → `https://vault.azure.net/.default`.
fn scope(resource: &str) -> String {
    format!("{}/.default", resource.trim_end_matches('/'))
}

/// A transport error without the URL's query (which may name identities).
fn transport(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    match e.url() {
        Some(u) => format!("{kind} ({}://{})", u.scheme(), u.host_str().unwrap_or("")),
        None => kind.to_owned(),
    }
}

/// Error bodies are read at most this far (they are shown to operators).
const MAX_ANSWER: usize = 64 * 1024;

async fn read_answer(
    name: &'static str,
    resp: reqwest::Response,
) -> Result<AccessToken, CredentialError> {
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| CredentialError::Unavailable {
            source_name: name,
            why: transport(&e),
        })?;
    if body.len() > MAX_ANSWER {
        return Err(CredentialError::Malformed {
            source_name: name,
            why: format!("an answer of {} bytes", body.len()),
        });
    }
    if !status.is_success() {
        let e: ErrorAnswer = serde_json::from_slice(&body).unwrap_or_default();
        let error = match e.error {
            Some(serde_json::Value::String(s)) => s,
            Some(other) => other.to_string(),
            None => status.canonical_reason().unwrap_or("error").to_owned(),
        };
        let err = CredentialError::Refused {
            source_name: name,
            status: status.as_u16(),
            error,
            description: e.error_description.or(e.message),
        };
        return Err(if status.is_server_error() || status.as_u16() == 429 {
            CredentialError::Unavailable {
                source_name: name,
                why: err.to_string(),
            }
        } else {
            err
        });
    }
    let a: TokenAnswer = serde_json::from_slice(&body).map_err(|e| CredentialError::Malformed {
        source_name: name,
        why: e.to_string(),
    })?;
    let token =
        a.access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| CredentialError::Malformed {
                source_name: name,
                why: "no access_token".into(),
            })?;
    let t = now();
    let expires_on = a
        .expires_on
        .as_ref()
        .and_then(seconds)
        .or_else(|| a.expires_in.as_ref().and_then(seconds).map(|s| t + s))
        .ok_or_else(|| CredentialError::Malformed {
            source_name: name,
            why: "neither expires_on nor expires_in".into(),
        })?;
    Ok(AccessToken {
        token: Zeroizing::new(token),
        expires_on,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn select(pairs: &[(&str, &str)]) -> Result<Source, CredentialError> {
        Source::select(&Settings::from_vars(vars(pairs))?)
    }

    #[test]
    fn precedence_is_secret_workload_app_service_then_imds() {
        let all = [
            ("INFLUXION_AZURE_CLIENT_ID", "c"),
            ("INFLUXION_AZURE_TENANT_ID", "t"),
            ("INFLUXION_AZURE_CLIENT_SECRET", "s"),
            ("AZURE_FEDERATED_TOKEN_FILE", "/f"),
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi/token"),
            ("IDENTITY_HEADER", "h"),
        ];
        assert_eq!(select(&all).unwrap().name(), "client secret");
        let no_secret: Vec<_> = all
            .iter()
            .filter(|(k, _)| *k != "INFLUXION_AZURE_CLIENT_SECRET")
            .copied()
            .collect();
        assert_eq!(select(&no_secret).unwrap().name(), "workload identity");
        assert_eq!(
            select(&all[4..]).unwrap().name(),
            "App Service managed identity"
        );
        let imds = select(&[]).unwrap();
        assert_eq!(imds.name(), "instance metadata managed identity");
        assert!(imds.describe().contains("http://169.254.169.254/"));
        assert!(imds.describe().contains("system-assigned"));
        let user = select(&[("INFLUXION_AZURE_CLIENT_ID", "u1")]).unwrap();
        assert!(user.describe().contains("user-assigned identity u1"));
    }

    #[test]
    fn half_configured_credentials_are_refused_not_skipped() {
        let e = select(&[
            ("INFLUXION_AZURE_CLIENT_SECRET", "s"),
            ("INFLUXION_AZURE_CLIENT_ID", "c"),
        ]);
        assert!(matches!(
            e,
            Err(CredentialError::Config {
                setting: "INFLUXION_AZURE_TENANT_ID",
                ..
            })
        ));
        let e = select(&[
            ("AZURE_FEDERATED_TOKEN_FILE", "/f"),
            ("AZURE_TENANT_ID", "t"),
        ]);
        assert!(matches!(
            e,
            Err(CredentialError::Config {
                setting: "AZURE_CLIENT_ID",
                ..
            })
        ));
        let e = select(&[("IDENTITY_ENDPOINT", "http://x/msi")]);
        assert!(matches!(
            e,
            Err(CredentialError::Config {
                setting: "IDENTITY_ENDPOINT",
                ..
            })
        ));
        let e = select(&[("INFLUXION_IMDS_ENDPOINT", "not a url")]);
        assert!(matches!(
            e,
            Err(CredentialError::Config {
                setting: "INFLUXION_IMDS_ENDPOINT",
                ..
            })
        ));
        let e = select(&[
            ("INFLUXION_AZURE_CLIENT_SECRET", "s"),
            ("INFLUXION_AZURE_CLIENT_SECRET_FILE", "/x"),
        ]);
        assert!(matches!(e, Err(CredentialError::Config { .. })));
    }

    #[test]
    fn workload_identity_takes_the_webhooks_variables() {
        let s = select(&[
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                "/var/run/secrets/azure/tokens/azure-identity-token",
            ),
            ("AZURE_CLIENT_ID", "wc"),
            ("AZURE_TENANT_ID", "wt"),
        ])
        .unwrap();
        let d = s.describe();
        assert!(d.contains("application wc in tenant wt"), "{d}");
        assert!(
            d.contains("https://login.microsoftonline.com/wt/oauth2/v2.0/token"),
            "{d}"
        );
        // AZURE_CLIENT_ID alone does not pick a user-assigned managed identity.
        let m = select(&[("AZURE_CLIENT_ID", "x")]).unwrap();
        assert!(m.describe().contains("system-assigned"));
    }

    #[test]
    fn descriptions_and_debug_never_show_secrets() {
        let s = select(&[
            ("INFLUXION_AZURE_CLIENT_ID", "c"),
            ("INFLUXION_AZURE_TENANT_ID", "t"),
            ("INFLUXION_AZURE_CLIENT_SECRET", "hunter2-secret"),
        ])
        .unwrap();
        assert!(!s.describe().contains("hunter2"));
        let t = AccessToken {
            token: Zeroizing::new("eyJ-secret".into()),
            expires_on: 1,
        };
        assert!(!format!("{t:?}").contains("eyJ"));
    }

    #[test]
    fn expiry_is_a_number_or_a_string() {
        assert_eq!(seconds(&serde_json::json!(3599)), Some(3599));
        assert_eq!(seconds(&serde_json::json!("1506484173")), Some(1506484173));
        assert_eq!(seconds(&serde_json::json!("soon")), None);
        assert_eq!(
            scope("https://vault.azure.net"),
            "https://vault.azure.net/.default"
        );
        assert_eq!(
            scope("https://vault.azure.net/"),
            "https://vault.azure.net/.default"
        );
    }
}
