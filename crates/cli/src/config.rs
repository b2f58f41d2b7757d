//! The client side's configuration: flags < environment < profile (`config.toml`) <
//! the shared TOML file, resolved into a [`ClientConfig`] per command.
//!
//! The TOML file and `.env` are read by the binary (they also configure the server);
//! this crate sees only the client's settings of it, as [`FileSettings`].

use std::path::PathBuf;

pub use crate::environment::env;
pub use crate::urls::is_loopback as is_loopback_url;

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {setting}: {message}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub message: String,
}

/// A [`ConfigError`] naming `setting` (in its TOML and environment spelling).
pub fn err(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        message: message.into(),
    }
}

/// What the shared TOML file says about the client: its `[client]` table and the
/// `[auth]` settings a client derives its defaults from.
#[derive(Debug, Clone, Default)]
pub struct FileSettings {
    /// `client.server`
    pub server: Option<String>,
    /// `client.client_id`
    pub client_id: Option<String>,
    /// `client.default_scope`
    pub default_scope: Option<String>,
    /// `auth.tenant_id`
    pub tenant_id: Option<String>,
    /// `auth.metadata_url`
    pub metadata_url: Option<String>,
    /// `auth.api_client_id`
    pub api_client_id: Option<String>,
}

/// Entra's metadata document for a tenant (v2.0 endpoint).
pub fn entra_metadata_url(tenant: &str) -> String {
    format!("https://login.microsoftonline.com/{tenant}/v2.0/.well-known/openid-configuration")
}

/// Settings of the client side of the CLI.
#[derive(Clone)]
pub struct ClientConfig {
    pub server: String,
    pub metadata_url: String,
    pub client_id: Option<String>,
    pub client_secret: Option<zeroize::Zeroizing<String>>,
    pub scope: String,
    /// The profile whose token cache a person's sign-in uses.
    pub profile: String,
    /// Scope a person signs in for.
    pub login_scope: String,
    pub redirect_uri: String,
    /// PEM with the private key and certificate for private_key_jwt.
    pub certificate_path: Option<PathBuf>,
    /// Workload identity federation.
    pub federated: Option<crate::login::Federated>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("server", &self.server)
            .field("metadata_url", &self.metadata_url)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("scope", &self.scope)
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

/// Development defaults, matching what `influxion dev` starts.
pub const DEV_SERVER: &str = "http://127.0.0.1:8400";
pub const DEV_ISSUER: &str = "http://127.0.0.1:8401";
pub const DEV_AUDIENCE: &str = "api://influxion-dev";

pub struct ClientFlags {
    pub profile: Option<String>,
    pub server: Option<String>,
    pub metadata_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub scope: Option<String>,
}

impl ClientConfig {
    pub fn resolve(file: &FileSettings, flags: ClientFlags) -> Result<Self, ConfigError> {
        let user = crate::profiles::UserConfig::load()
            .map_err(|e| err("profiles (config.toml)", format!("{e:#}")))?;
        let profile_name = user.profile_name(flags.profile.as_deref());
        crate::profiles::check_name(&profile_name)
            .map_err(|e| err("--profile / INFLUXION_PROFILE", e.to_string()))?;
        if flags.profile.is_some() && !user.profiles.contains_key(&profile_name) {
            return Err(err(
                "--profile",
                format!(
                    "no profile {profile_name:?}; create it with `influxion config set server <url> --profile {profile_name}`"
                ),
            ));
        }
        let prof = user
            .profiles
            .get(&profile_name)
            .cloned()
            .unwrap_or_default();
        let server = flags
            .server
            .or_else(|| env("INFLUXION_SERVER"))
            .or_else(|| prof.server.clone())
            .or_else(|| file.server.clone())
            .unwrap_or_else(|| DEV_SERVER.into());
        let server_url = url::Url::parse(&server).map_err(|_| {
            err(
                "--server / INFLUXION_SERVER",
                format!("{server:?} is not a URL"),
            )
        })?;
        // Bearer tokens travel to the server: never in clear text beyond this host.
        if server_url.scheme() != "https" && !is_loopback_url(&server_url) {
            return Err(err(
                "--server / INFLUXION_SERVER",
                format!("{server} must be https:// unless it is on loopback"),
            ));
        }
        let tenant = env("INFLUXION_AZURE_TENANT_ID")
            .or_else(|| prof.tenant_id.clone())
            .or_else(|| file.tenant_id.clone());
        let metadata_url = flags
            .metadata_url
            .or_else(|| env("INFLUXION_OIDC_METADATA_URL"))
            .or_else(|| prof.metadata_url.clone())
            .or_else(|| file.metadata_url.clone())
            .or_else(|| tenant.as_deref().map(entra_metadata_url))
            .unwrap_or_else(|| format!("{DEV_ISSUER}/.well-known/openid-configuration"));
        // The metadata names where secrets and refresh tokens are sent.
        match url::Url::parse(&metadata_url) {
            Ok(u) if u.scheme() == "https" || is_loopback_url(&u) => {}
            _ => {
                return Err(err(
                    "--metadata-url / INFLUXION_OIDC_METADATA_URL",
                    format!("{metadata_url} must be an https:// URL unless it is on loopback"),
                ))
            }
        }
        let client_secret = match flags
            .client_secret
            .or_else(|| env("INFLUXION_AZURE_CLIENT_SECRET"))
        {
            Some(s) => Some(s),
            None => env("INFLUXION_AZURE_CLIENT_SECRET_FILE")
                .map(|p| {
                    std::fs::read_to_string(&p)
                        .map(|s| s.trim().to_owned())
                        .map_err(|e| err("INFLUXION_AZURE_CLIENT_SECRET_FILE", format!("{p}: {e}")))
                })
                .transpose()?,
        };
        let api = env("INFLUXION_AZURE_API_CLIENT_ID").or_else(|| file.api_client_id.clone());
        let scope = flags
            .scope
            .or_else(|| env("INFLUXION_AZURE_DEFAULT_SCOPE"))
            .or_else(|| prof.scope.clone())
            .or_else(|| file.default_scope.clone())
            .or_else(|| api.map(|id| format!("api://{id}/.default")))
            .unwrap_or_else(|| format!("{DEV_AUDIENCE}/.default"));
        // People sign in for the API's delegated scope, plus a refresh token.
        let api_scope = env("INFLUXION_LOGIN_SCOPE")
            .or_else(|| prof.login_scope.clone())
            .unwrap_or_else(|| match scope.strip_suffix("/.default") {
                Some(api) => format!("{api}/access_as_user"),
                None => scope.clone(),
            });
        let login_scope = format!("openid profile offline_access {api_scope}");
        let redirect_uri = env("INFLUXION_PKCE_REDIRECT_URI")
            .or_else(|| env("PKCE_REDIRECT_URI"))
            .or_else(|| prof.redirect_uri.clone())
            .unwrap_or_else(|| "http://127.0.0.1/callback".into());
        let certificate_path = env("INFLUXION_AZURE_CLIENT_CERTIFICATE_PATH")
            .or_else(|| env("AZURE_CLIENT_CERTIFICATE_PATH"))
            .map(PathBuf::from);
        let federated = if let Some(f) = env("AZURE_FEDERATED_TOKEN_FILE") {
            Some(crate::login::Federated::File(f.into()))
        } else if let (Some(uri), true) = (
            env("SYSTEM_OIDCREQUESTURI"),
            // Azure DevOps sets SYSTEM_OIDCREQUESTURI in every job; federation is used
            // only when a service connection is named for it.
            env("INFLUXION_ADO_SERVICE_CONNECTION_ID")
                .or_else(|| env("AZURESUBSCRIPTION_SERVICE_CONNECTION_ID"))
                .is_some(),
        ) {
            let access_token = env("SYSTEM_ACCESSTOKEN").ok_or_else(|| {
                err(
                    "SYSTEM_ACCESSTOKEN",
                    "SYSTEM_OIDCREQUESTURI is set: map the job's access token into the step (env: SYSTEM_ACCESSTOKEN: $(System.AccessToken))",
                )
            })?;
            let service_connection_id = env("INFLUXION_ADO_SERVICE_CONNECTION_ID")
                .or_else(|| env("AZURESUBSCRIPTION_SERVICE_CONNECTION_ID"))
                .ok_or_else(|| {
                    err(
                        "INFLUXION_ADO_SERVICE_CONNECTION_ID",
                        "the Azure DevOps service connection (workload identity federation) to request the token for",
                    )
                })?;
            Some(crate::login::Federated::AzureDevOps {
                request_uri: uri,
                access_token: zeroize::Zeroizing::new(access_token),
                service_connection_id,
            })
        } else {
            None
        };
        Ok(Self {
            server: server.trim_end_matches('/').to_owned(),
            metadata_url,
            client_id: flags
                .client_id
                .or_else(|| env("INFLUXION_AZURE_CLIENT_ID"))
                .or_else(|| env("AZURE_CLIENT_ID"))
                .or_else(|| prof.client_id.clone())
                .or_else(|| file.client_id.clone()),
            client_secret: client_secret.map(zeroize::Zeroizing::new),
            scope,
            profile: profile_name,
            login_scope,
            redirect_uri,
            certificate_path,
            federated,
        })
    }
}
