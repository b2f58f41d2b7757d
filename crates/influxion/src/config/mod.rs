//! Configuration: defaults < TOML file < `.env` < environment < flags.
//!
//! `.env` is read into the environment without overriding variables that are already
//! set, which gives the environment precedence over it. Every setting is validated at
//! start, and an error names the setting in both its TOML and environment spelling.

mod http;
mod keyclient;
mod rate_limits;
mod server;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub(crate) use http::http_limits;
pub(crate) use influxion_cli::config::{
    entra_metadata_url, env, err, is_loopback_url, ConfigError, DEV_AUDIENCE, DEV_SERVER,
};
pub(crate) use keyclient::{keyclient, session_key};
pub(crate) use server::{
    database_auth, metrics_listen, pkcs11_config, redact_url, vault_config, DatabaseAuth,
    KekSource, ServerConfig, VaultConfig,
};

/// The TOML file, every field optional. Unknown fields are an error, so typos surface.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub listen: Option<String>,
    /// Where Prometheus scrapes `/metrics`; none when unset.
    pub metrics_listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    /// `password` (the URL, a password file, `PG*` variables) or `azure` (Entra).
    pub database_auth: Option<String>,
    pub database_password_file: Option<PathBuf>,
    #[serde(default)]
    pub auth: FileAuth,
    #[serde(default)]
    pub keystore: FileKeystore,
    #[serde(default)]
    pub vault: FileVault,
    /// Named PKCS#11 tokens, `[pkcs11.NAME]`: backend `pkcs11:NAME`.
    #[serde(default)]
    pub pkcs11: std::collections::BTreeMap<String, FilePkcs11Token>,
    #[serde(default)]
    pub client: FileClient,
    #[serde(default)]
    pub bootstrap: FileBootstrap,
    #[serde(default)]
    pub pki: FilePki,
    #[serde(default)]
    pub http: FileHttp,
    #[serde(default)]
    pub tls: FileTls,
    #[serde(default)]
    pub rate_limits: rate_limits::FileRateLimits,
}

/// The keyserver's own TLS (`influxion serve` without a reverse proxy).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileTls {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl FileConfig {
    /// The settings of the file the CLI's client side reads.
    pub(crate) fn client_settings(&self) -> influxion_cli::config::FileSettings {
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
pub(crate) struct FileHttp {
    pub header_timeout_secs: Option<u64>,
    pub body_timeout_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub max_connections: Option<u64>,
}

/// The device certificate authority.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FilePki {
    /// Public base URL of the keyserver; CRL distribution points are built from it.
    pub public_url: Option<String>,
    /// Profile for EST requests without a label.
    pub est_profile: Option<String>,
}

/// The first admin subject, created when the database has no subjects yet.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileBootstrap {
    pub admin: Option<influxion_core::SubjectRules>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileAuth {
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
pub(crate) struct FileKeystore {
    pub kek_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileVault {
    pub url: Option<String>,
}

/// One `[pkcs11.NAME]` table: the module, the token (by label, or by slot id) and the
/// session pool. Never the PIN: that is `INFLUXION_PKCS11_<NAME>_PIN` or `_PIN_FILE`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FilePkcs11Token {
    pub module: Option<String>,
    pub token: Option<String>,
    pub slot: Option<u64>,
    pub pool: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileClient {
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
pub(crate) fn load_file(
    path: Option<&Path>,
    env_file: Option<&Path>,
) -> Result<FileConfig, ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_toml_fields_are_refused() {
        let r: Result<FileConfig, _> = toml::from_str("[auth]\ntenant = \"x\"\n");
        assert!(r.is_err());
    }
}
