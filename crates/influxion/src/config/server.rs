//! The configuration of `influxion serve` (and `config check`): listener and
//! storage, token validation, the key-encryption key, the bootstrap admin and the PKI.

use std::path::{Path, PathBuf};
use std::time::Duration;

use influxion_auth::AuthConfig;

use super::{
    entra_metadata_url, env, env_list, env_u64, err, http_limits, ConfigError, FileAuth, FileConfig,
};

/// Parse `app_id=…,tenant_id=…` (the form of `INFLUXION_BOOTSTRAP_ADMIN`).
pub(super) fn parse_rules(text: &str) -> Result<influxion_core::SubjectRules, ConfigError> {
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
/// The validated configuration of `influxion serve`.
#[derive(Debug, Clone)]
pub(crate) struct ServerConfig {
    pub listen: std::net::SocketAddr,
    /// The Prometheus `/metrics` listener (unauthenticated: a private address).
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub database_auth: DatabaseAuth,
    pub auth: AuthConfig,
    pub admin_role: String,
    pub sign_role: String,
    pub kek: KekSource,
    pub vault_url: Option<String>,
    /// With a vault: which Azure credential reaches it, and why (no secrets).
    pub vault_credential: Option<String>,
    /// The Key Vault backend's settings, when `vault.url` is set.
    pub vault: Option<VaultConfig>,
    /// The PKCS#11 tokens: `INFLUXION_PKCS11_MODULE`'s, and `[pkcs11.NAME]` tables.
    pub pkcs11: Vec<influxion_pkcs11::TokenConfig>,
    pub bootstrap_admin: Option<influxion_core::SubjectRules>,
    pub public_url: Option<String>,
    pub est_profile: Option<String>,
    pub http: influxion_edge::Limits,
    /// TLS certificate chain and key files (PEM), read again on SIGHUP.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Signatures and certificates per minute, per subject (`[rate_limits]`).
    pub rate_limits: influxion_server::RateLimits,
}

#[derive(Clone)]
pub(crate) enum KekSource {
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
    pub(crate) fn configured(file: &FileConfig) -> Option<Self> {
        if env("INFLUXION_KEK").is_some() {
            return Some(KekSource::Env);
        }
        env("INFLUXION_KEK_FILE")
            .map(PathBuf::from)
            .or_else(|| file.keystore.kek_file.clone())
            .map(KekSource::File)
    }

    pub(crate) fn load(&self) -> Result<influxion_keystore::Kek, ConfigError> {
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
    /// Each setting from its sources, in the order an operator reads them: where it
    /// listens and stores, whom it trusts, its keys, and what it publishes.
    pub(crate) fn resolve(file: &FileConfig) -> Result<Self, ConfigError> {
        let listen = listen(file)?;
        let metrics_listen = metrics_listen(file, listen)?;
        let data_dir = env("INFLUXION_DATA_DIR")
            .map(PathBuf::from)
            .or_else(|| file.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("./data"));
        let database_url = database_url(file, &data_dir)?;
        let database_auth = database_auth(file, &database_url)?;
        let (auth, roles) = auth(file)?;
        let kek = KekSource::configured(file).ok_or_else(|| {
            err(
                "keystore.kek_file / INFLUXION_KEK_FILE",
                "set a key-encryption key file, or INFLUXION_KEK (32 bytes, base64 or hex)",
            )
        })?;
        let vault_url = vault_url(file)?;
        let vault = vault_url.as_deref().map(vault_config).transpose()?;
        let vault_credential = vault.as_ref().map(|v| v.credential.describe());
        let pkcs11 = pkcs11_config(file)?;
        let bootstrap_admin = bootstrap_admin(file, auth.tenant_id.as_deref())?;
        let public_url = public_url(file)?;
        let est_profile = env("INFLUXION_EST_PROFILE").or_else(|| file.pki.est_profile.clone());
        Ok(Self {
            listen,
            metrics_listen,
            data_dir,
            database_url,
            database_auth,
            auth,
            admin_role: roles.admin,
            sign_role: roles.sign,
            kek,
            vault_url,
            vault_credential,
            vault,
            pkcs11,
            bootstrap_admin,
            public_url,
            est_profile,
            http: http_limits(&file.http)?,
            tls: tls_files(file)?,
            rate_limits: super::rate_limits::rate_limits(&file.rate_limits)?,
        })
    }

    /// Settings that work but are probably not what the operator meant.
    pub(crate) fn warnings(&self) -> Vec<String> {
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
    pub(crate) fn describe(&self) -> String {
        let a = &self.auth;
        format!(
            "listen = {:?}\nmetrics_listen = {:?}\ndata_dir = {:?}\ndatabase_url = {:?}\ndatabase_auth = {:?}\n\n[auth]\nmetadata_url = {:?}\naudiences = {:?}\ntenant_id = {:?}\nallowed_tenants = {:?}\nextra_issuers = {:?}\nrequired_scope = {:?}\napp_role = {:?}\nadmin_role = {:?}\naccepted_versions = {:?}\nalgorithms = {:?}\nclock_skew_secs = {}\njwks_refresh_secs = {}\njwks_min_refresh_secs = {}\njwks_max_age_secs = {}\nallow_insecure_http = {}\n\n[keystore]\nkek = {:?}\n\n[vault]\nurl = {:?}\ncredential = {:?}\n\n{}\n[bootstrap]\nadmin = {}\n\n[pki]\npublic_url = {:?}\nest_profile = {:?}\n\n[http]\nheader_timeout_secs = {}\nbody_timeout_secs = {}\nidle_timeout_secs = {}\nmax_connections = {}\n\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n\n{}",
            self.listen.to_string(),
            self.metrics_listen
                .map(|a| a.to_string())
                .unwrap_or_default(),
            self.data_dir.display().to_string(),
            redact_url(&self.database_url),
            self.database_auth.describe(),
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
            self.vault_credential.as_deref().unwrap_or(""),
            describe_pkcs11(&self.pkcs11),
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
            self.tls
                .as_ref()
                .map(|(c, _)| c.display().to_string())
                .unwrap_or_default(),
            self.tls
                .as_ref()
                .map(|(_, k)| k.display().to_string())
                .unwrap_or_default(),
            super::rate_limits::describe(&self.rate_limits),
        )
    }
}

/// `INFLUXION_TLS_CERT_FILE` and `INFLUXION_TLS_KEY_FILE` (or `[tls]`), both or neither.
fn tls_files(file: &FileConfig) -> Result<Option<(PathBuf, PathBuf)>, ConfigError> {
    let cert = env("INFLUXION_TLS_CERT_FILE")
        .map(PathBuf::from)
        .or_else(|| file.tls.cert_file.clone());
    let key = env("INFLUXION_TLS_KEY_FILE")
        .map(PathBuf::from)
        .or_else(|| file.tls.key_file.clone());
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some((c, k))),
        (None, None) => Ok(None),
        _ => Err(err(
            "tls.cert_file / INFLUXION_TLS_CERT_FILE",
            "set both the certificate and the key file (tls.key_file / INFLUXION_TLS_KEY_FILE), or neither",
        )),
    }
}

fn listen(file: &FileConfig) -> Result<std::net::SocketAddr, ConfigError> {
    let listen_text = env("INFLUXION_LISTEN")
        .or_else(|| file.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:8400".into());
    listen_text.parse().map_err(|_| {
        err(
            "listen / INFLUXION_LISTEN",
            format!("{listen_text:?} is not an address:port"),
        )
    })
}

/// `INFLUXION_METRICS_LISTEN` or `metrics_listen`: none when unset. Not the API's
/// address: `/metrics` is never served beside the API.
pub(crate) fn metrics_listen(
    file: &FileConfig,
    api: std::net::SocketAddr,
) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    let setting = "metrics_listen / INFLUXION_METRICS_LISTEN";
    let Some(text) = env("INFLUXION_METRICS_LISTEN").or_else(|| file.metrics_listen.clone()) else {
        return Ok(None);
    };
    let addr: std::net::SocketAddr = text
        .parse()
        .map_err(|_| err(setting, format!("{text:?} is not an address:port")))?;
    if addr == api {
        return Err(err(
            setting,
            format!("{addr} is the API's address (listen); give metrics a port of their own"),
        ));
    }
    Ok(Some(addr))
}

fn database_url(file: &FileConfig, data_dir: &Path) -> Result<String, ConfigError> {
    let database_url = env("INFLUXION_DATABASE_URL")
        .or_else(|| file.database_url.clone())
        .unwrap_or_else(|| format!("sqlite://{}/influxion.db", data_dir.display()));
    if database_url.contains(":memory:") || database_url.contains("mode=memory") {
        return Err(err(
            "database_url / INFLUXION_DATABASE_URL",
            "an in-memory database would lose the audit log",
        ));
    }
    let postgres = influxion_store::is_shared_database(&database_url);
    if !postgres && !database_url.starts_with("sqlite:") {
        return Err(err(
            "database_url / INFLUXION_DATABASE_URL",
            "a sqlite: or postgres: URL",
        ));
    }
    if postgres {
        url::Url::parse(&database_url).map_err(|e| {
            err(
                "database_url / INFLUXION_DATABASE_URL",
                format!("not a URL ({e})"),
            )
        })?;
    }
    Ok(database_url)
}

/// Where the password of a PostgreSQL database comes from, besides its URL and the
/// standard `PG*` variables.
#[derive(Clone)]
pub(crate) enum DatabaseAuth {
    /// The URL, `PGPASSWORD` or `~/.pgpass` (libpq's rules); SQLite needs none.
    Url,
    /// `INFLUXION_DATABASE_PASSWORD_FILE`: read at start and every few minutes, so an
    /// operator can rotate it.
    PasswordFile(PathBuf),
    /// `INFLUXION_DATABASE_AUTH=azure`: an Entra access token for Azure Database for
    /// PostgreSQL from the same credential chain as Key Vault, renewed before expiry.
    Azure {
        credential: influxion_azure::Source,
        ca_file: Option<PathBuf>,
    },
}

impl std::fmt::Debug for DatabaseAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl DatabaseAuth {
    /// For `config check`: where the password comes from, never the password.
    pub(crate) fn describe(&self) -> String {
        match self {
            DatabaseAuth::Url => "url".into(),
            DatabaseAuth::PasswordFile(p) => format!("password file {}", p.display()),
            DatabaseAuth::Azure { credential, .. } => {
                format!("azure (Entra token: {})", credential.describe())
            }
        }
    }
}

pub(crate) fn database_auth(
    file: &FileConfig,
    database_url: &str,
) -> Result<DatabaseAuth, ConfigError> {
    let auth = env("INFLUXION_DATABASE_AUTH").or_else(|| file.database_auth.clone());
    let password_file = env("INFLUXION_DATABASE_PASSWORD_FILE")
        .map(PathBuf::from)
        .or_else(|| file.database_password_file.clone());
    let chosen =
        match (auth.as_deref(), password_file) {
            (None | Some("password"), None) => DatabaseAuth::Url,
            (None | Some("password"), Some(p)) => DatabaseAuth::PasswordFile(p),
            (Some("azure"), None) => {
                let settings = influxion_azure::Settings::from_vars(env).map_err(azure_err)?;
                DatabaseAuth::Azure {
                    credential: influxion_azure::Source::select(&settings).map_err(azure_err)?,
                    ca_file: env("INFLUXION_AZURE_CA_FILE").map(PathBuf::from),
                }
            }
            (Some("azure"), Some(_)) => return Err(err(
                "database_auth / INFLUXION_DATABASE_AUTH",
                "azure takes its password from Entra ID: unset INFLUXION_DATABASE_PASSWORD_FILE",
            )),
            (Some(_), _) => {
                return Err(err(
                    "database_auth / INFLUXION_DATABASE_AUTH",
                    "password or azure",
                ))
            }
        };
    if matches!(chosen, DatabaseAuth::Azure { .. })
        && influxion_store::is_shared_database(database_url)
        && !verified_tls(database_url)
    {
        return Err(err(
            "database_url / INFLUXION_DATABASE_URL",
            "an Entra token is a bearer credential: with database_auth = azure the URL needs \
             sslmode=verify-full (or verify-ca), so the token only goes to the server the \
             certificate names",
        ));
    }
    if !matches!(chosen, DatabaseAuth::Url) && !influxion_store::is_shared_database(database_url) {
        return Err(err(
            "database_auth / INFLUXION_DATABASE_PASSWORD_FILE",
            "a password file or Entra token applies to a postgres: database only",
        ));
    }
    Ok(chosen)
}

/// Whether a PostgreSQL URL makes the client check the server's certificate, or names a
/// loopback host (nothing leaves the machine).
fn verified_tls(url: &str) -> bool {
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    let loopback = match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        // postgres: is not a scheme the URL standard knows, so its host stays text.
        Some(url::Host::Domain(d)) => {
            d == "localhost"
                || d.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|a| a.is_loopback())
        }
        None => false,
    };
    let mode = u
        .query_pairs()
        .find(|(k, _)| k == "sslmode")
        .map(|(_, v)| v.into_owned())
        .or_else(|| env("PGSSLMODE"));
    loopback || matches!(mode.as_deref(), Some("verify-full" | "verify-ca"))
}

/// `url` with its password, if any, replaced: for messages and `config check`. Both
/// places a PostgreSQL URL may carry one: the user-info part and a `password` query
/// parameter (which sqlx also reads).
pub(crate) fn redact_url(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return url.to_owned();
    };
    let mut changed = false;
    if u.password().is_some() {
        let _ = u.set_password(Some("redacted"));
        changed = true;
    }
    if u.query_pairs()
        .any(|(k, _)| k.eq_ignore_ascii_case("password"))
    {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if k.eq_ignore_ascii_case("password") {
                    "redacted".to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
        changed = true;
    }
    if changed {
        u.to_string()
    } else {
        url.to_owned()
    }
}

/// The app roles of signers and admins.
struct Roles {
    sign: String,
    admin: String,
}

/// Whom the keyserver trusts, and how it checks their tokens.
fn auth(file: &FileConfig) -> Result<(AuthConfig, Roles), ConfigError> {
    let a = &file.auth;
    let tenant_id = tenant_id(a)?;
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
    let audiences = audiences(a)?;
    let default_scope =
        env("INFLUXION_AZURE_DEFAULT_SCOPE").or_else(|| file.client.default_scope.clone());
    let required_scope = env("INFLUXION_REQUIRED_SCOPE")
        .or_else(|| a.required_scope.clone())
        .or_else(|| default_scope.as_deref().and_then(scope_name))
        .unwrap_or_else(|| "access_as_user".into());
    let roles = Roles {
        sign: env("INFLUXION_APP_ROLE")
            .or_else(|| a.app_role.clone())
            .unwrap_or_else(|| "Influxion.Sign".into()),
        admin: env("INFLUXION_ADMIN_ROLE")
            .or_else(|| a.admin_role.clone())
            .unwrap_or_else(|| "Influxion.Admin".into()),
    };
    let timing = token_timing(a)?;
    let extra_issuers = extra_issuers(a, &metadata_url, single_tenant.as_deref());
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
        app_roles: vec![roles.sign.clone(), roles.admin.clone()],
        accepted_versions: env_list("INFLUXION_TOKEN_VERSIONS")
            .or_else(|| a.accepted_versions.clone())
            .unwrap_or_default(),
        algorithms: AuthConfig::DEFAULT_ALGORITHMS.to_vec(),
        clock_skew: timing.clock_skew,
        jwks_refresh_interval: timing.jwks_refresh,
        jwks_min_refresh_interval: timing.jwks_min_refresh,
        jwks_max_age: Duration::from_secs(24 * 3600),
        max_token_bytes: 16 * 1024,
        allow_insecure_http,
    };
    Ok((auth, roles))
}

fn tenant_id(a: &FileAuth) -> Result<Option<String>, ConfigError> {
    let tenant_id = env("INFLUXION_AZURE_TENANT_ID").or_else(|| a.tenant_id.clone());
    if let Some(t) = &tenant_id {
        if !is_guid_like(t) {
            return Err(err(
                "auth.tenant_id / INFLUXION_AZURE_TENANT_ID",
                format!("{t:?} is not a tenant id"),
            ));
        }
    }
    Ok(tenant_id)
}

/// The API's client id (v2 tokens, and `api://<id>` for v1 unless an audience is
/// named) and the configured audience.
fn audiences(a: &FileAuth) -> Result<Vec<String>, ConfigError> {
    let api_client_id = env("INFLUXION_AZURE_API_CLIENT_ID").or_else(|| a.api_client_id.clone());
    let audience = env("INFLUXION_AZURE_AUDIENCE").or_else(|| a.audience.clone());
    let mut audiences = Vec::new();
    if let Some(id) = &api_client_id {
        audiences.push(id.clone());
        if audience.is_none() {
            audiences.push(format!("api://{id}"));
        }
    }
    audiences.extend(audience);
    if audiences.is_empty() {
        return Err(err(
            "auth.api_client_id / INFLUXION_AZURE_API_CLIENT_ID",
            "set the API's client id (v2 tokens) or INFLUXION_AZURE_AUDIENCE (v1 tokens)",
        ));
    }
    Ok(audiences)
}

/// Clock skew and how often the provider's signing keys are fetched.
struct TokenTiming {
    clock_skew: Duration,
    jwks_refresh: Duration,
    jwks_min_refresh: Duration,
}

fn token_timing(a: &FileAuth) -> Result<TokenTiming, ConfigError> {
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
    Ok(TokenTiming {
        clock_skew: Duration::from_secs(skew),
        jwks_refresh: Duration::from_secs(refresh),
        jwks_min_refresh: Duration::from_secs(min_refresh),
    })
}

/// Issuers trusted besides the metadata document's.
fn extra_issuers(a: &FileAuth, metadata_url: &str, single_tenant: Option<&str>) -> Vec<String> {
    let mut extra_issuers = Vec::new();
    if metadata_url.starts_with("https://login.microsoftonline.com/") {
        // Entra v1 access tokens carry the sts.windows.net issuer.
        extra_issuers.push(match single_tenant {
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
    extra_issuers
}

/// The PKCS#11 tokens keys may live on: the one of `INFLUXION_PKCS11_MODULE`
/// (backend `pkcs11`) and each `[pkcs11.NAME]` table (backend `pkcs11:NAME`). PINs come
/// from the environment or a file only, never from the TOML file, and are zeroized.
pub(crate) fn pkcs11_config(
    file: &FileConfig,
) -> Result<Vec<influxion_pkcs11::TokenConfig>, ConfigError> {
    let mut tokens = Vec::new();
    if let Some(module) = env("INFLUXION_PKCS11_MODULE") {
        let token = match (
            env("INFLUXION_PKCS11_TOKEN"),
            env_u64("INFLUXION_PKCS11_SLOT")?,
        ) {
            (Some(l), None) => influxion_pkcs11::TokenSelector::Label(l),
            (None, Some(s)) => influxion_pkcs11::TokenSelector::Slot(s),
            _ => {
                return Err(err(
                    "INFLUXION_PKCS11_TOKEN / INFLUXION_PKCS11_SLOT",
                    "the label of the token keys live on (or its slot id), one of them",
                ))
            }
        };
        tokens.push(influxion_pkcs11::TokenConfig {
            name: influxion_pkcs11::NAME.to_owned(),
            module,
            token,
            pin: pin("INFLUXION_PKCS11_PIN", "INFLUXION_PKCS11_PIN_FILE")?,
            pin_setting: "INFLUXION_PKCS11_PIN / INFLUXION_PKCS11_PIN_FILE".into(),
            pool: pool(env_u64("INFLUXION_PKCS11_POOL")?, "INFLUXION_PKCS11_POOL")?,
        });
    }
    for (name, t) in &file.pkcs11 {
        let table = format!("[pkcs11.{name}]");
        let ok_name = !name.is_empty()
            && name.len() <= 32
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok_name {
            return Err(err(
                "pkcs11.<name>",
                format!("{table}: a token name is 1 to 32 of a-z, 0-9 and -"),
            ));
        }
        let module = t.module.clone().ok_or_else(|| {
            err(
                "pkcs11.<name>.module",
                format!("{table} needs module, the vendor's PKCS#11 library"),
            )
        })?;
        let token = match (&t.token, t.slot) {
            (Some(l), None) => influxion_pkcs11::TokenSelector::Label(l.clone()),
            (None, Some(s)) => influxion_pkcs11::TokenSelector::Slot(s),
            _ => {
                return Err(err(
                    "pkcs11.<name>.token / pkcs11.<name>.slot",
                    format!(
                    "{table} needs the token's label (token) or its slot id (slot), one of them"
                ),
                ))
            }
        };
        let var = format!(
            "INFLUXION_PKCS11_{}",
            name.to_ascii_uppercase().replace('-', "_")
        );
        let (pin_var, file_var) = (format!("{var}_PIN"), format!("{var}_PIN_FILE"));
        tokens.push(influxion_pkcs11::TokenConfig {
            name: format!("{}:{name}", influxion_pkcs11::NAME),
            module,
            token,
            pool: pool(t.pool, "pkcs11.<name>.pool")?,
            pin: pin(&pin_var, &file_var)?,
            pin_setting: format!("{pin_var} / {file_var}"),
        });
    }
    Ok(tokens)
}

/// A token's user PIN from `var`, or from the file `file_var` names.
fn pin(var: &str, file_var: &str) -> Result<zeroize::Zeroizing<String>, ConfigError> {
    let setting = "INFLUXION_PKCS11[_<NAME>]_PIN / _PIN_FILE";
    match (env(var), env(file_var)) {
        (Some(p), None) => Ok(zeroize::Zeroizing::new(p)),
        (None, Some(f)) => {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(&f)
                    .map_err(|e| err(setting, format!("{file_var}: reading {f}: {e}")))?,
            );
            Ok(zeroize::Zeroizing::new(
                text.trim_end_matches(['\r', '\n']).to_owned(),
            ))
        }
        (Some(_), Some(_)) => Err(err(
            setting,
            format!("set one of {var} and {file_var}, not both"),
        )),
        (None, None) => Err(err(
            setting,
            format!("the token's user PIN is required: {var} or {file_var}"),
        )),
    }
}

fn pool(pool: Option<u64>, setting: &'static str) -> Result<usize, ConfigError> {
    let pool = pool.unwrap_or(4);
    if !(1..=64).contains(&pool) {
        return Err(err(setting, "between 1 and 64 sessions"));
    }
    Ok(usize::try_from(pool).unwrap_or(4))
}

/// The `[pkcs11]` part of `config check`, the PINs redacted.
fn describe_pkcs11(tokens: &[influxion_pkcs11::TokenConfig]) -> String {
    if tokens.is_empty() {
        return "[pkcs11]\nmodule = \"\"\n".into();
    }
    let mut out = String::new();
    for t in tokens {
        let header = match t.name.split_once(':') {
            Some((_, n)) => format!("[pkcs11.{n}]"),
            None => "[pkcs11]".into(),
        };
        let token = match &t.token {
            influxion_pkcs11::TokenSelector::Label(l) => format!("token = {l:?}"),
            influxion_pkcs11::TokenSelector::Slot(s) => format!("slot = {s}"),
        };
        let pin = if t.name == influxion_pkcs11::NAME {
            "(set, redacted)".to_owned()
        } else {
            format!("(set, redacted; {})", t.pin_setting)
        };
        out.push_str(&format!(
            "{header}\nmodule = {:?}\n{token}\npin = {pin:?}\npool = {}\n",
            t.module, t.pool
        ));
    }
    out
}

/// How the Key Vault backend reaches its vault.
#[derive(Clone)]
pub(crate) struct VaultConfig {
    pub url: url::Url,
    /// The Azure credential (see `influxion_azure`); a half-configured one fails at
    /// load, naming the setting.
    pub credential: influxion_azure::Source,
    /// `INFLUXION_VAULT_CA_FILE`: trust roots added to the system's.
    pub ca_file: Option<PathBuf>,
    /// `INFLUXION_VAULT_HSM=true`: create EC-HSM/RSA-HSM keys (Premium vaults).
    pub hsm: bool,
}

impl std::fmt::Debug for VaultConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultConfig")
            .field("url", &self.url.as_str())
            .field("credential", &self.credential.name())
            .finish()
    }
}

pub(crate) fn vault_config(url: &str) -> Result<VaultConfig, ConfigError> {
    let mut url = url::Url::parse(url).map_err(|e| {
        err(
            "vault.url / INFLUXION_VAULT_URL",
            format!("not a URL ({e})"),
        )
    })?;
    // Paths are joined onto it: keys/... under the vault's root.
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    let settings = influxion_azure::Settings::from_vars(env).map_err(azure_err)?;
    let credential = influxion_azure::Source::select(&settings).map_err(azure_err)?;
    let hsm = match env("INFLUXION_VAULT_HSM").as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(_) => return Err(err("INFLUXION_VAULT_HSM", "true or false")),
    };
    Ok(VaultConfig {
        url,
        credential,
        ca_file: env("INFLUXION_VAULT_CA_FILE").map(PathBuf::from),
        hsm,
    })
}

fn azure_err(e: influxion_azure::CredentialError) -> ConfigError {
    match e {
        influxion_azure::CredentialError::Config { setting, why } => err(setting, why),
        other => err("INFLUXION_VAULT_URL", other.to_string()),
    }
}

fn vault_url(file: &FileConfig) -> Result<Option<String>, ConfigError> {
    let vault_url = env("INFLUXION_VAULT_URL").or_else(|| file.vault.url.clone());
    if let Some(v) = &vault_url {
        if !v.starts_with("https://") {
            return Err(err(
                "vault.url / INFLUXION_VAULT_URL",
                "must be an https:// URL",
            ));
        }
    }
    Ok(vault_url)
}

/// The first admin's rules, pinned to `tenant_id` (the single tenant trusted, if any).
fn bootstrap_admin(
    file: &FileConfig,
    tenant_id: Option<&str>,
) -> Result<Option<influxion_core::SubjectRules>, ConfigError> {
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
            r.tenant_id = tenant_id.map(str::to_owned);
        }
        if r.tenant_id.is_none() {
            return Err(err(
                "bootstrap.admin / INFLUXION_BOOTSTRAP_ADMIN",
                "name the tenant_id: tokens may come from several tenants",
            ));
        }
    }
    Ok(bootstrap_admin)
}

fn public_url(file: &FileConfig) -> Result<Option<String>, ConfigError> {
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
    Ok(public_url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_are_redacted_and_tls_checked() {
        assert_eq!(
            redact_url("postgres://u:s3cret@db.example.com:5432/x?sslmode=verify-full"),
            "postgres://u:redacted@db.example.com:5432/x?sslmode=verify-full"
        );
        let q = redact_url("postgres://u@db.example.com/x?password=s3cret");
        assert!(
            !q.contains("s3cret") && q.contains("password=redacted"),
            "{q}"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/x.db"),
            "sqlite:///var/lib/x.db"
        );
        // An Entra token only goes where the certificate is checked, or to loopback.
        assert!(verified_tls(
            "postgres://u@db.example.com/x?sslmode=verify-full"
        ));
        assert!(verified_tls(
            "postgres://u@db.example.com/x?sslmode=verify-ca"
        ));
        assert!(!verified_tls(
            "postgres://u@db.example.com/x?sslmode=require"
        ));
        assert!(verified_tls("postgres://u@127.0.0.1:5432/x"));
        assert!(verified_tls("postgres://u@[::1]:5432/x"));
    }

    #[test]
    fn guids() {
        assert!(is_guid("11111111-2222-3333-4444-555555555555"));
        assert!(!is_guid("contoso.onmicrosoft.com"));
        assert!(!is_guid("common"));
    }

    fn tables(toml: &str) -> Result<Vec<influxion_pkcs11::TokenConfig>, ConfigError> {
        pkcs11_config(&toml::from_str::<FileConfig>(toml).unwrap())
    }

    #[test]
    fn pkcs11_tables_are_checked_naming_the_setting() {
        let e = tables("[pkcs11.Line_1]\nmodule = \"m.so\"\ntoken = \"t\"\n").unwrap_err();
        assert_eq!(e.setting, "pkcs11.<name>");
        assert!(e.message.contains("[pkcs11.Line_1]"), "{}", e.message);
        let e = tables("[pkcs11.cfg-test-a]\ntoken = \"t\"\n").unwrap_err();
        assert_eq!(e.setting, "pkcs11.<name>.module");
        let e = tables("[pkcs11.cfg-test-b]\nmodule = \"m.so\"\ntoken = \"t\"\nslot = 1\n")
            .unwrap_err();
        assert!(e.message.contains("one of them"), "{}", e.message);
        let e = tables("[pkcs11.cfg-test-c]\nmodule = \"m.so\"\nslot = 1\n").unwrap_err();
        assert!(
            e.message.contains(
                "INFLUXION_PKCS11_CFG_TEST_C_PIN or INFLUXION_PKCS11_CFG_TEST_C_PIN_FILE"
            ),
            "{}",
            e.message
        );
        let e = tables("[pkcs11.cfg-test-d]\nmodule = \"m.so\"\ntoken = \"t\"\npool = 65\n")
            .unwrap_err();
        assert_eq!(e.setting, "pkcs11.<name>.pool");
        // The PIN is never a setting of the file.
        assert!(toml::from_str::<FileConfig>("[pkcs11.x]\npin = \"1234\"\n").is_err());
    }

    #[test]
    fn tls_takes_both_files_or_neither() {
        let file = |t: &str| toml::from_str::<FileConfig>(t).unwrap();
        assert!(tls_files(&file("")).unwrap().is_none());
        let both = tls_files(&file(
            "[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n",
        ));
        assert_eq!(
            both.unwrap(),
            Some((PathBuf::from("c.pem"), PathBuf::from("k.pem")))
        );
        let e = tls_files(&file("[tls]\ncert_file = \"c.pem\"\n")).unwrap_err();
        assert_eq!(e.setting, "tls.cert_file / INFLUXION_TLS_CERT_FILE");
    }

    #[test]
    fn metrics_listen_is_optional_and_apart_from_the_api() {
        let file = |t: &str| toml::from_str::<FileConfig>(t).unwrap();
        let api: std::net::SocketAddr = "127.0.0.1:8400".parse().unwrap();
        assert_eq!(metrics_listen(&file(""), api).unwrap(), None);
        assert_eq!(
            metrics_listen(&file("metrics_listen = \"10.0.0.5:9464\"\n"), api).unwrap(),
            Some("10.0.0.5:9464".parse().unwrap())
        );
        let e = metrics_listen(&file("metrics_listen = \"127.0.0.1:8400\"\n"), api).unwrap_err();
        assert_eq!(e.setting, "metrics_listen / INFLUXION_METRICS_LISTEN");
        assert!(metrics_listen(&file("metrics_listen = \"9464\"\n"), api).is_err());
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
