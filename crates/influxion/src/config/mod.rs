//! Configuration: defaults < TOML file < `.env` < environment < flags.
//!
//! `.env` is read into the environment without overriding variables that are already
//! set, which gives the environment precedence over it. Every setting is validated at
//! start, and an error names the setting in both its TOML and environment spelling.

use std::path::{Path, PathBuf};
use std::time::Duration;

use influxion_auth::AuthConfig;
use serde::{Deserialize, Serialize};

pub use influxion_cli::config::{
    entra_metadata_url, env, err, is_loopback_url, ConfigError, DEV_AUDIENCE, DEV_SERVER,
};

/// The TOML file, every field optional. Unknown fields are an error, so typos surface.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    #[serde(default)]
    pub auth: FileAuth,
    #[serde(default)]
    pub keystore: FileKeystore,
    #[serde(default)]
    pub vault: FileVault,
    #[serde(default)]
    pub client: FileClient,
    #[serde(default)]
    pub bootstrap: FileBootstrap,
    #[serde(default)]
    pub pki: FilePki,
    #[serde(default)]
    pub http: FileHttp,
}

impl FileConfig {
    /// The settings of the file the CLI's client side reads.
    pub fn client_settings(&self) -> influxion_cli::config::FileSettings {
        influxion_cli::config::FileSettings {
            server: self.client.server.clone(),
            client_id: self.client.client_id.clone(),
            default_scope: self.client.default_scope.clone(),
            tenant_id: self.auth.tenant_id.clone(),
            metadata_url: self.auth.metadata_url.clone(),
            api_client_id: self.auth.api_client_id.clone(),
        }
    }
}

/// Timeouts and the connection cap of the HTTP servers (keyserver and keyclient alike).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileHttp {
    pub header_timeout_secs: Option<u64>,
    pub body_timeout_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub max_connections: Option<u64>,
}

/// `[http]` / `INFLUXION_HTTP_*`: how long a client may take, and how many may connect.
pub fn http_limits(file: &FileHttp) -> Result<influxion_edge::Limits, ConfigError> {
    let d = influxion_edge::Limits::default();
    let secs = |setting: &'static str,
                var: &'static str,
                toml: Option<u64>,
                default: Duration|
     -> Result<Duration, ConfigError> {
        let v = env_u64(var)?.or(toml).unwrap_or(default.as_secs());
        if !(1..=3600).contains(&v) {
            return Err(err(
                setting,
                format!("{v} is not between 1 and 3600 seconds"),
            ));
        }
        Ok(Duration::from_secs(v))
    };
    let max_connections = env_u64("INFLUXION_HTTP_MAX_CONNECTIONS")?
        .or(file.max_connections)
        .unwrap_or(d.max_connections as u64);
    if !(1..=1_000_000).contains(&max_connections) {
        return Err(err(
            "http.max_connections / INFLUXION_HTTP_MAX_CONNECTIONS",
            format!("{max_connections} is not between 1 and 1000000"),
        ));
    }
    Ok(influxion_edge::Limits {
        header_read_timeout: secs(
            "http.header_timeout_secs / INFLUXION_HTTP_HEADER_TIMEOUT_SECS",
            "INFLUXION_HTTP_HEADER_TIMEOUT_SECS",
            file.header_timeout_secs,
            d.header_read_timeout,
        )?,
        body_read_timeout: secs(
            "http.body_timeout_secs / INFLUXION_HTTP_BODY_TIMEOUT_SECS",
            "INFLUXION_HTTP_BODY_TIMEOUT_SECS",
            file.body_timeout_secs,
            d.body_read_timeout,
        )?,
        idle_timeout: secs(
            "http.idle_timeout_secs / INFLUXION_HTTP_IDLE_TIMEOUT_SECS",
            "INFLUXION_HTTP_IDLE_TIMEOUT_SECS",
            file.idle_timeout_secs,
            d.idle_timeout,
        )?,
        max_connections: max_connections as usize,
    })
}

/// The device certificate authority.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilePki {
    /// Public base URL of the keyserver; CRL distribution points are built from it.
    pub public_url: Option<String>,
    /// Profile for EST requests without a label.
    pub est_profile: Option<String>,
}

/// The first admin subject, created when the database has no subjects yet.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileBootstrap {
    pub admin: Option<influxion_core::SubjectRules>,
}

/// Parse `app_id=…,tenant_id=…` (the form of `INFLUXION_BOOTSTRAP_ADMIN`).
pub fn parse_rules(text: &str) -> Result<influxion_core::SubjectRules, ConfigError> {
    let setting = "bootstrap.admin / INFLUXION_BOOTSTRAP_ADMIN";
    let mut r = influxion_core::SubjectRules::default();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| err(setting, format!("{part:?} is not key=value")))?;
        let raw = v.trim();
        let v = Some(raw.to_owned());
        match k.trim() {
            "issuer" => r.issuer = v,
            "tenant_id" => r.tenant_id = v,
            "object_id" => r.object_id = v,
            "app_id" => r.app_id = v,
            "app_role" => r.app_role = v,
            "group_id" => r.group_id = v,
            "caller" => {
                r.caller = Some(
                    raw.parse()
                        .map_err(|e: influxion_core::access::AccessError| {
                            err(setting, e.to_string())
                        })?,
                )
            }
            other => return Err(err(setting, format!("unknown rule {other:?}"))),
        }
    }
    r.validate().map_err(|e| err(setting, e.to_string()))?;
    Ok(r)
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileAuth {
    pub tenant_id: Option<String>,
    pub api_client_id: Option<String>,
    pub audience: Option<String>,
    pub metadata_url: Option<String>,
    pub required_scope: Option<String>,
    pub app_role: Option<String>,
    pub admin_role: Option<String>,
    pub allowed_tenants: Option<Vec<String>>,
    /// Issuers trusted besides the metadata document's (`{tenantid}` is substituted).
    pub extra_issuers: Option<Vec<String>>,
    pub accepted_versions: Option<Vec<String>>,
    pub clock_skew_secs: Option<u64>,
    pub jwks_refresh_secs: Option<u64>,
    pub jwks_min_refresh_secs: Option<u64>,
    pub allow_insecure_http: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileKeystore {
    pub kek_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileVault {
    pub url: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileClient {
    pub server: Option<String>,
    pub client_id: Option<String>,
    pub default_scope: Option<String>,
}

fn env_list(name: &str) -> Option<Vec<String>> {
    env(name).map(|v| {
        v.split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

fn env_u64(name: &'static str) -> Result<Option<u64>, ConfigError> {
    env(name)
        .map(|v| {
            v.parse()
                .map_err(|_| err(name, format!("{v:?} is not a whole number")))
        })
        .transpose()
}

/// Load `.env` (if present) and the TOML file (if given or found).
pub fn load_file(path: Option<&Path>, env_file: Option<&Path>) -> Result<FileConfig, ConfigError> {
    match env_file {
        Some(p) => {
            dotenvy::from_path(p)
                .map_err(|e| err("--env-file", format!("{}: {e}", p.display())))?;
        }
        None => {
            // Only ./.env (dotenvy::dotenv would also search parent directories, which
            // a service must not do). A missing .env is normal; a malformed one is not.
            if let Err(e) = dotenvy::from_path(".env") {
                if !e.not_found() {
                    return Err(err(".env", e.to_string()));
                }
            }
        }
    }
    let path = path
        .map(Path::to_path_buf)
        .or_else(|| env("INFLUXION_CONFIG").map(PathBuf::from));
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| err("--config", format!("{}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| err("--config", format!("{}: {e}", path.display())))
}

/// The validated configuration of `influxion serve`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: std::net::SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub auth: AuthConfig,
    pub admin_role: String,
    pub sign_role: String,
    pub kek: KekSource,
    pub vault_url: Option<String>,
    pub bootstrap_admin: Option<influxion_core::SubjectRules>,
    pub public_url: Option<String>,
    pub est_profile: Option<String>,
    pub http: influxion_edge::Limits,
}

#[derive(Clone)]
pub enum KekSource {
    Env,
    File(PathBuf),
}

impl std::fmt::Debug for KekSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KekSource::Env => f.write_str("INFLUXION_KEK ([redacted])"),
            KekSource::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

impl KekSource {
    /// INFLUXION_KEK, else INFLUXION_KEK_FILE, else `keystore.kek_file`.
    pub fn configured(file: &FileConfig) -> Option<Self> {
        if env("INFLUXION_KEK").is_some() {
            return Some(KekSource::Env);
        }
        env("INFLUXION_KEK_FILE")
            .map(PathBuf::from)
            .or_else(|| file.keystore.kek_file.clone())
            .map(KekSource::File)
    }

    pub fn load(&self) -> Result<influxion_keystore::Kek, ConfigError> {
        let text = match self {
            KekSource::Env => zeroize::Zeroizing::new(env("INFLUXION_KEK").unwrap_or_default()),
            KekSource::File(p) => zeroize::Zeroizing::new(
                std::fs::read_to_string(p)
                    .map_err(|e| err("keystore.kek_file", format!("{}: {e}", p.display())))?,
            ),
        };
        influxion_keystore::Kek::from_text(&text)
            .map_err(|e| err("INFLUXION_KEK / keystore.kek_file", e.to_string()))
    }
}

/// The scope name the API requires in `scp`, derived from a client-side scope such as
/// `api://influxion/access_as_user` (but not `.default`, which names no scope).
fn scope_name(default_scope: &str) -> Option<String> {
    let last = default_scope.rsplit('/').next()?;
    (!last.is_empty() && last != ".default").then(|| last.to_owned())
}

fn is_guid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

fn is_guid_like(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

impl ServerConfig {
    pub fn resolve(file: &FileConfig) -> Result<Self, ConfigError> {
        let a = &file.auth;
        let listen_text = env("INFLUXION_LISTEN")
            .or_else(|| file.listen.clone())
            .unwrap_or_else(|| "127.0.0.1:8400".into());
        let listen = listen_text.parse().map_err(|_| {
            err(
                "listen / INFLUXION_LISTEN",
                format!("{listen_text:?} is not an address:port"),
            )
        })?;
        let data_dir = env("INFLUXION_DATA_DIR")
            .map(PathBuf::from)
            .or_else(|| file.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("./data"));
        let database_url = env("INFLUXION_DATABASE_URL")
            .or_else(|| file.database_url.clone())
            .unwrap_or_else(|| format!("sqlite://{}/influxion.db", data_dir.display()));
        if database_url.contains(":memory:") || database_url.contains("mode=memory") {
            return Err(err(
                "database_url / INFLUXION_DATABASE_URL",
                "an in-memory database would lose the audit log",
            ));
        }
        if !database_url.starts_with("sqlite:") {
            return Err(err(
                "database_url / INFLUXION_DATABASE_URL",
                "only sqlite: URLs are supported in this version",
            ));
        }

        let tenant_id = env("INFLUXION_AZURE_TENANT_ID").or_else(|| a.tenant_id.clone());
        if let Some(t) = &tenant_id {
            if !is_guid_like(t) {
                return Err(err(
                    "auth.tenant_id / INFLUXION_AZURE_TENANT_ID",
                    format!("{t:?} is not a tenant id"),
                ));
            }
        }
        // `tid` is always the tenant's GUID. A domain name (contoso.onmicrosoft.com) or
        // `common`/`organizations` only selects the metadata document; then the issuer
        // is checked (a template for multi-tenant apps) but `tid` is not pinned.
        let single_tenant = tenant_id.clone().filter(|t| is_guid(t));
        let metadata_url = env("INFLUXION_OIDC_METADATA_URL")
            .or_else(|| a.metadata_url.clone())
            .or_else(|| tenant_id.as_deref().map(entra_metadata_url))
            .ok_or_else(|| {
                err(
                    "auth.metadata_url / INFLUXION_OIDC_METADATA_URL",
                    "set it, or set INFLUXION_AZURE_TENANT_ID to use Entra ID's metadata document",
                )
            })?;
        let api_client_id =
            env("INFLUXION_AZURE_API_CLIENT_ID").or_else(|| a.api_client_id.clone());
        let audience = env("INFLUXION_AZURE_AUDIENCE").or_else(|| a.audience.clone());
        let mut audiences = Vec::new();
        if let Some(id) = &api_client_id {
            audiences.push(id.clone());
            if audience.is_none() {
                audiences.push(format!("api://{id}"));
            }
        }
        audiences.extend(audience.clone());
        if audiences.is_empty() {
            return Err(err(
                "auth.api_client_id / INFLUXION_AZURE_API_CLIENT_ID",
                "set the API's client id (v2 tokens) or INFLUXION_AZURE_AUDIENCE (v1 tokens)",
            ));
        }
        let default_scope =
            env("INFLUXION_AZURE_DEFAULT_SCOPE").or_else(|| file.client.default_scope.clone());
        let required_scope = env("INFLUXION_REQUIRED_SCOPE")
            .or_else(|| a.required_scope.clone())
            .or_else(|| default_scope.as_deref().and_then(scope_name))
            .unwrap_or_else(|| "access_as_user".into());
        let sign_role = env("INFLUXION_APP_ROLE")
            .or_else(|| a.app_role.clone())
            .unwrap_or_else(|| "Influxion.Sign".into());
        let admin_role = env("INFLUXION_ADMIN_ROLE")
            .or_else(|| a.admin_role.clone())
            .unwrap_or_else(|| "Influxion.Admin".into());
        let skew = env_u64("INFLUXION_CLOCK_SKEW_SECS")?
            .or(a.clock_skew_secs)
            .unwrap_or(300);
        if skew > 600 {
            return Err(err(
                "auth.clock_skew_secs / INFLUXION_CLOCK_SKEW_SECS",
                "at most 600 seconds",
            ));
        }
        let refresh = env_u64("INFLUXION_JWKS_REFRESH_SECS")?
            .or(a.jwks_refresh_secs)
            .unwrap_or(3600);
        let min_refresh = env_u64("INFLUXION_JWKS_MIN_REFRESH_SECS")?
            .or(a.jwks_min_refresh_secs)
            .unwrap_or(300);
        if min_refresh == 0 {
            return Err(err(
                "auth.jwks_min_refresh_secs / INFLUXION_JWKS_MIN_REFRESH_SECS",
                "must be at least 1 second, or every unknown kid would reach the provider",
            ));
        }
        if refresh == 0 {
            return Err(err(
                "auth.jwks_refresh_secs / INFLUXION_JWKS_REFRESH_SECS",
                "must be positive",
            ));
        }
        let mut extra_issuers = Vec::new();
        if metadata_url.starts_with("https://login.microsoftonline.com/") {
            // Entra v1 access tokens carry the sts.windows.net issuer.
            extra_issuers.push(match &single_tenant {
                Some(t) => format!("https://sts.windows.net/{t}/"),
                None => "https://sts.windows.net/{tenantid}/".to_owned(),
            });
        }
        // Other clouds' v1 issuers (e.g. sts.chinacloudapi.cn) are not derived: name them.
        extra_issuers.extend(
            env_list("INFLUXION_EXTRA_ISSUERS")
                .or_else(|| a.extra_issuers.clone())
                .unwrap_or_default(),
        );
        let allow_insecure_http = env("INFLUXION_ALLOW_INSECURE_HTTP")
            .map(|v| v == "true" || v == "1")
            .or(a.allow_insecure_http)
            .unwrap_or(false);
        let auth = AuthConfig {
            metadata_url,
            audiences,
            tenant_id: single_tenant,
            allowed_tenants: env_list("INFLUXION_ALLOWED_TENANTS")
                .or_else(|| a.allowed_tenants.clone())
                .unwrap_or_default(),
            extra_issuers,
            required_scope,
            app_roles: vec![sign_role.clone(), admin_role.clone()],
            accepted_versions: env_list("INFLUXION_TOKEN_VERSIONS")
                .or_else(|| a.accepted_versions.clone())
                .unwrap_or_default(),
            algorithms: AuthConfig::DEFAULT_ALGORITHMS.to_vec(),
            clock_skew: Duration::from_secs(skew),
            jwks_refresh_interval: Duration::from_secs(refresh),
            jwks_min_refresh_interval: Duration::from_secs(min_refresh),
            jwks_max_age: Duration::from_secs(24 * 3600),
            max_token_bytes: 16 * 1024,
            allow_insecure_http,
        };
        let kek = KekSource::configured(file).ok_or_else(|| {
            err(
                "keystore.kek_file / INFLUXION_KEK_FILE",
                "set a key-encryption key file, or INFLUXION_KEK (32 bytes, base64 or hex)",
            )
        })?;
        let vault_url = env("INFLUXION_VAULT_URL").or_else(|| file.vault.url.clone());
        if let Some(v) = &vault_url {
            if !v.starts_with("https://") {
                return Err(err(
                    "vault.url / INFLUXION_VAULT_URL",
                    "must be an https:// URL",
                ));
            }
        }
        let mut bootstrap_admin = match env("INFLUXION_BOOTSTRAP_ADMIN") {
            Some(t) => Some(parse_rules(&t)?),
            None => file.bootstrap.admin.clone(),
        };
        if let Some(r) = bootstrap_admin.as_mut() {
            r.validate()
                .map_err(|e| err("bootstrap.admin / INFLUXION_BOOTSTRAP_ADMIN", e.to_string()))?;
            // Pin the bootstrap admin to our tenant, so an app id alone never matches
            // a principal of another tenant.
            if r.tenant_id.is_none() {
                r.tenant_id = auth.tenant_id.clone();
            }
            if r.tenant_id.is_none() {
                return Err(err(
                    "bootstrap.admin / INFLUXION_BOOTSTRAP_ADMIN",
                    "name the tenant_id: tokens may come from several tenants",
                ));
            }
        }
        let public_url = env("INFLUXION_PUBLIC_URL")
            .or_else(|| file.pki.public_url.clone())
            .map(|u| u.trim_end_matches('/').to_owned());
        if let Some(u) = &public_url {
            let ok = url::Url::parse(u)
                .is_ok_and(|p| matches!(p.scheme(), "http" | "https") && p.host().is_some());
            if !ok {
                return Err(err(
                    "pki.public_url / INFLUXION_PUBLIC_URL",
                    "must be an http:// or https:// URL",
                ));
            }
        }
        let est_profile = env("INFLUXION_EST_PROFILE").or_else(|| file.pki.est_profile.clone());
        Ok(Self {
            listen,
            data_dir,
            database_url,
            auth,
            admin_role,
            sign_role,
            kek,
            vault_url,
            bootstrap_admin,
            public_url,
            est_profile,
            http: http_limits(&file.http)?,
        })
    }

    /// Settings that work but are probably not what the operator meant.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if let Some(url) = entra_v1_metadata(&self.auth.metadata_url) {
            w.push(format!(
                "INFLUXION_OIDC_METADATA_URL ({url}) is an Entra ID metadata document without v2.0: \
                 it publishes the v1 issuer (https://sts.windows.net/...), while the setup guide \
                 asks for v2 tokens (requestedAccessTokenVersion: 2) and the v2.0 document, \
                 https://login.microsoftonline.com/<tenant>/v2.0/.well-known/openid-configuration"
            ));
        }
        w
    }

    /// The effective configuration as TOML-like text, with secrets redacted.
    pub fn describe(&self) -> String {
        let a = &self.auth;
        format!(
            "listen = {:?}\ndata_dir = {:?}\ndatabase_url = {:?}\n\n[auth]\nmetadata_url = {:?}\naudiences = {:?}\ntenant_id = {:?}\nallowed_tenants = {:?}\nextra_issuers = {:?}\nrequired_scope = {:?}\napp_role = {:?}\nadmin_role = {:?}\naccepted_versions = {:?}\nalgorithms = {:?}\nclock_skew_secs = {}\njwks_refresh_secs = {}\njwks_min_refresh_secs = {}\njwks_max_age_secs = {}\nallow_insecure_http = {}\n\n[keystore]\nkek = {:?}\n\n[vault]\nurl = {:?}\n\n[bootstrap]\nadmin = {}\n\n[pki]\npublic_url = {:?}\nest_profile = {:?}\n\n[http]\nheader_timeout_secs = {}\nbody_timeout_secs = {}\nidle_timeout_secs = {}\nmax_connections = {}\n",
            self.listen.to_string(),
            self.data_dir.display().to_string(),
            self.database_url,
            a.metadata_url,
            a.audiences,
            a.tenant_id.as_deref().unwrap_or(""),
            a.allowed_tenants,
            a.extra_issuers,
            a.required_scope,
            self.sign_role,
            self.admin_role,
            a.accepted_versions,
            a.algorithms,
            a.clock_skew.as_secs(),
            a.jwks_refresh_interval.as_secs(),
            a.jwks_min_refresh_interval.as_secs(),
            a.jwks_max_age.as_secs(),
            a.allow_insecure_http,
            format!("{:?}", self.kek),
            self.vault_url.as_deref().unwrap_or(""),
            self.bootstrap_admin
                .as_ref()
                .and_then(|r| serde_json::to_string(r).ok())
                .unwrap_or_else(|| "\"\"".into()),
            self.public_url.as_deref().unwrap_or(""),
            self.est_profile.as_deref().unwrap_or(""),
            self.http.header_read_timeout.as_secs(),
            self.http.body_read_timeout.as_secs(),
            self.http.idle_timeout.as_secs(),
            self.http.max_connections,
        )
    }
}

/// A secret from `NAME` or from the file named by `NAME_FILE`.
fn env_secret(name: &'static str, file_var: &'static str) -> Result<Option<String>, ConfigError> {
    if let Some(v) = env(name) {
        return Ok(Some(v));
    }
    env(file_var)
        .map(|p| {
            std::fs::read_to_string(&p)
                .map(|s| s.trim().to_owned())
                .map_err(|e| err(file_var, format!("{p}: {e}")))
        })
        .transpose()
}

fn parse_url(setting: &'static str, v: &str) -> Result<url::Url, ConfigError> {
    url::Url::parse(v).map_err(|_| err(setting, format!("{v:?} is not a URL")))
}

/// The configuration of `influxion keyclient`, from the environment (and the auth
/// settings of the TOML file). See docs/configuration.md.
pub fn keyclient(file: &FileConfig) -> Result<influxion_keyclient::KeyclientConfig, ConfigError> {
    use influxion_keyclient::{KeyclientConfig, OidcSettings, Timeouts};
    let listen_text = env("INFLUXION_KEYCLIENT_LISTEN").unwrap_or_else(|| "127.0.0.1:8402".into());
    let listen: std::net::SocketAddr = listen_text.parse().map_err(|_| {
        err(
            "INFLUXION_KEYCLIENT_LISTEN",
            format!("{listen_text:?} is not host:port"),
        )
    })?;
    let public_url = match env("INFLUXION_KEYCLIENT_PUBLIC_URL") {
        Some(v) => parse_url("INFLUXION_KEYCLIENT_PUBLIC_URL", &v)?,
        None => parse_url("INFLUXION_KEYCLIENT_LISTEN", &format!("http://{listen}/"))?,
    };
    let tls =
        match (
            env("INFLUXION_KEYCLIENT_TLS_CERT"),
            env("INFLUXION_KEYCLIENT_TLS_KEY"),
        ) {
            (Some(cert), Some(key)) => Some(influxion_keyclient::TlsFiles {
                cert: cert.into(),
                key: key.into(),
            }),
            (None, None) => None,
            _ => return Err(err(
                "INFLUXION_KEYCLIENT_TLS_CERT",
                "set both INFLUXION_KEYCLIENT_TLS_CERT and INFLUXION_KEYCLIENT_TLS_KEY, or neither",
            )),
        };
    // The session cookie is Secure: browsers accept that over plain HTTP on loopback only.
    if public_url.scheme() != "https" && !is_loopback_url(&public_url) {
        return Err(err(
            "INFLUXION_KEYCLIENT_PUBLIC_URL",
            format!("{public_url} must be https:// (plain http is for loopback development only)"),
        ));
    }
    let server = env("INFLUXION_SERVER")
        .or_else(|| file.client.server.clone())
        .unwrap_or_else(|| DEV_SERVER.into());
    let keyserver_url = parse_url("INFLUXION_SERVER", &server)?;
    // Bearer tokens go to the keyserver, the client secret and codes to the provider:
    // never in clear text beyond this host.
    if keyserver_url.scheme() != "https" && !is_loopback_url(&keyserver_url) {
        return Err(err(
            "INFLUXION_SERVER",
            format!("{keyserver_url} must be https:// unless it is on loopback"),
        ));
    }
    let tenant = env("INFLUXION_AZURE_TENANT_ID").or_else(|| file.auth.tenant_id.clone());
    let metadata = env("INFLUXION_OIDC_METADATA_URL")
        .or_else(|| file.auth.metadata_url.clone())
        .or_else(|| tenant.as_deref().map(entra_metadata_url))
        .ok_or_else(|| {
            err(
                "INFLUXION_OIDC_METADATA_URL",
                "set it, or INFLUXION_AZURE_TENANT_ID for Entra ID",
            )
        })?;
    let metadata_url = parse_url("INFLUXION_OIDC_METADATA_URL", &metadata)?;
    if metadata_url.scheme() != "https" && !is_loopback_url(&metadata_url) {
        return Err(err(
            "INFLUXION_OIDC_METADATA_URL",
            format!("{metadata_url} must be https:// unless it is on loopback"),
        ));
    }
    let client_id = env("INFLUXION_KEYCLIENT_CLIENT_ID")
        .or_else(|| env("INFLUXION_AZURE_CLIENT_ID"))
        .ok_or_else(|| {
            err(
                "INFLUXION_KEYCLIENT_CLIENT_ID",
                "the keyclient's client id (or INFLUXION_AZURE_CLIENT_ID) is required",
            )
        })?;
    let client_secret = match env_secret(
        "INFLUXION_KEYCLIENT_CLIENT_SECRET",
        "INFLUXION_KEYCLIENT_CLIENT_SECRET_FILE",
    )? {
        Some(s) => s,
        None => env_secret(
            "INFLUXION_AZURE_CLIENT_SECRET",
            "INFLUXION_AZURE_CLIENT_SECRET_FILE",
        )?
        .ok_or_else(|| {
            err(
                "INFLUXION_KEYCLIENT_CLIENT_SECRET",
                "the keyclient's client secret (or _FILE, or INFLUXION_AZURE_CLIENT_SECRET) is required",
            )
        })?,
    };
    let redirect_uri = match env("INFLUXION_KEYCLIENT_REDIRECT_URI") {
        Some(v) => parse_url("INFLUXION_KEYCLIENT_REDIRECT_URI", &v)?,
        None => KeyclientConfig::default_redirect_uri(&public_url)
            .map_err(|e| err("INFLUXION_KEYCLIENT_PUBLIC_URL", e.to_string()))?,
    };
    if redirect_uri.origin() != public_url.origin() {
        return Err(err(
            "INFLUXION_KEYCLIENT_REDIRECT_URI",
            "must be on the keyclient's own origin (INFLUXION_KEYCLIENT_PUBLIC_URL)",
        ));
    }
    let audience = env("INFLUXION_AZURE_AUDIENCE")
        .or_else(|| env("INFLUXION_AZURE_API_CLIENT_ID").map(|id| format!("api://{id}")));
    let api_scope = env("INFLUXION_KEYCLIENT_SCOPE")
        .or_else(|| audience.map(|a| format!("{a}/access_as_user")))
        .ok_or_else(|| {
            err(
                "INFLUXION_KEYCLIENT_SCOPE",
                "the API scope to request, e.g. api://<api-client-id>/access_as_user",
            )
        })?;
    let data_dir = env("INFLUXION_DATA_DIR")
        .map(PathBuf::from)
        .or_else(|| file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("./data"));
    let database_url = env("INFLUXION_KEYCLIENT_DATABASE_URL")
        .unwrap_or_else(|| format!("sqlite://{}/keyclient.db", data_dir.display()));
    let key_text = match env_secret(
        "INFLUXION_KEYCLIENT_SESSION_KEY",
        "INFLUXION_KEYCLIENT_SESSION_KEY_FILE",
    )? {
        Some(k) => zeroize::Zeroizing::new(k),
        None => return Err(err(
            "INFLUXION_KEYCLIENT_SESSION_KEY",
            "32 random bytes, base64 (e.g. `openssl rand -base64 32`), the same on every replica; or _FILE",
        )),
    };
    let session_key = session_key(&key_text)?;
    let secs = |name: &'static str, default: u64| -> Result<std::time::Duration, ConfigError> {
        Ok(std::time::Duration::from_secs(
            env_u64(name)?.unwrap_or(default),
        ))
    };
    let timeouts = Timeouts {
        idle: secs("INFLUXION_KEYCLIENT_IDLE_TIMEOUT_SECS", 30 * 60)?,
        absolute: secs("INFLUXION_KEYCLIENT_ABSOLUTE_TIMEOUT_SECS", 8 * 3600)?,
        ..Timeouts::default()
    };
    let (idle, absolute) = (timeouts.idle.as_secs(), timeouts.absolute.as_secs());
    if !(60..=absolute).contains(&idle) || absolute > 7 * 24 * 3600 {
        return Err(err(
            "INFLUXION_KEYCLIENT_IDLE_TIMEOUT_SECS",
            format!("need 60 <= idle ({idle}) <= absolute ({absolute}) <= 604800 (7 days)"),
        ));
    }
    Ok(KeyclientConfig {
        listen,
        oidc: OidcSettings {
            metadata_url,
            client_id,
            client_secret: zeroize::Zeroizing::new(client_secret),
            redirect_uri,
            post_logout_redirect_uri: public_url.clone(),
            scopes: influxion_keyclient::scopes(&api_scope),
        },
        public_url,
        keyserver_url,
        database_url,
        session_key,
        timeouts,
        tls,
        limits: http_limits(&file.http)?,
    })
}

/// A 256-bit key from its base64 text.
pub fn session_key(text: &str) -> Result<zeroize::Zeroizing<[u8; 32]>, ConfigError> {
    use base64::Engine as _;
    let raw = zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| err("INFLUXION_KEYCLIENT_SESSION_KEY", "not base64"))?,
    );
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    if raw.len() != 32 {
        return Err(err(
            "INFLUXION_KEYCLIENT_SESSION_KEY",
            format!("must be 32 bytes, not {}", raw.len()),
        ));
    }
    key.copy_from_slice(&raw);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids() {
        assert!(is_guid("11111111-2222-3333-4444-555555555555"));
        assert!(!is_guid("contoso.onmicrosoft.com"));
        assert!(!is_guid("common"));
    }

    #[test]
    fn scope_names() {
        assert_eq!(
            scope_name("api://x/access_as_user").as_deref(),
            Some("access_as_user")
        );
        assert_eq!(scope_name("api://x/.default"), None);
        assert_eq!(scope_name("keyserver").as_deref(), Some("keyserver"));
    }

    #[test]
    fn unknown_toml_fields_are_refused() {
        let r: Result<FileConfig, _> = toml::from_str("[auth]\ntenant = \"x\"\n");
        assert!(r.is_err());
    }
}

/// The metadata URL, if it is an Entra ID (any cloud) document without `/v2.0/`.
fn entra_v1_metadata(metadata_url: &str) -> Option<&str> {
    const ENTRA_HOSTS: [&str; 4] = [
        "login.microsoftonline.com",
        "login.microsoftonline.us",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
    ];
    let url = url::Url::parse(metadata_url).ok()?;
    let host = url.host_str()?.to_ascii_lowercase();
    let entra = ENTRA_HOSTS.contains(&host.as_str());
    (entra && !url.path().split('/').any(|seg| seg == "v2.0")).then_some(metadata_url)
}

#[cfg(test)]
mod metadata_tests {
    use super::entra_v1_metadata;

    #[test]
    fn entra_v1_metadata_documents_are_noticed() {
        let v1 = "https://login.microsoftonline.com/t/.well-known/openid-configuration";
        let v2 = "https://login.microsoftonline.com/t/v2.0/.well-known/openid-configuration";
        assert_eq!(entra_v1_metadata(v1), Some(v1));
        assert_eq!(entra_v1_metadata(v2), None);
        assert!(entra_v1_metadata("https://login.microsoftonline.us/t/.well-known/x").is_some());
        assert_eq!(
            entra_v1_metadata("https://idp.example/.well-known/openid-configuration"),
            None
        );
    }
}
