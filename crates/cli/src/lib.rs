//! The Influxion CLI: the client for people and pipelines. Sign-in (Authorization
//! Code with PKCE, device code, client credentials, certificates, workload identity
//! federation), profiles and the token cache, and the commands that call the
//! keyserver (keys, sign, verify, subjects, grants, approvals, policy changes, the
//! device CA, bulk runs). The `influxion` binary parses the command line and calls in
//! here.

pub mod access_cmds;
pub mod approval_cmds;
pub mod audit_cmds;
pub mod client;
pub mod commands;
pub mod config;
mod environment;
pub mod login;
pub mod output;
pub mod pki_cmds;
pub mod profiles;
pub mod session_cmds;
pub mod signing;
mod urls;

/// Exit codes (documented in docs/cli.md): 0 success, 1 any other error, 2 usage, 3
/// signing request rejected or cancelled, 4 authentication failed (not signed in,
/// token refused), 5 permission denied, 6 timed out waiting for approval.
pub const EXIT_AUTH: u8 = 4;
pub const EXIT_FORBIDDEN: u8 = 5;

/// How the CLI reaches the keyserver and obtains a token.
#[derive(clap::Args)]
pub struct ClientArgs {
    /// Profile: which keyserver/tenant settings and sign-in to use (INFLUXION_PROFILE).
    /// Give it before the command (`influxion --profile prod sign …`): after it,
    /// `--profile` of `cert` commands names a certificate profile.
    #[arg(long)]
    pub profile: Option<String>,
    /// Keyserver base URL (INFLUXION_SERVER).
    #[arg(long, global = true)]
    server: Option<String>,
    /// OpenID Connect metadata document URL (INFLUXION_OIDC_METADATA_URL).
    #[arg(long, global = true)]
    metadata_url: Option<String>,
    /// OAuth client id for client credentials (INFLUXION_AZURE_CLIENT_ID).
    #[arg(long, global = true)]
    client_id: Option<String>,
    /// OAuth client secret (INFLUXION_AZURE_CLIENT_SECRET); prefer the environment.
    #[arg(long, global = true)]
    client_secret: Option<String>,
    /// Scope to request (INFLUXION_AZURE_DEFAULT_SCOPE), e.g. api://<api-client-id>/.default.
    #[arg(long, global = true)]
    scope: Option<String>,
}

impl ClientArgs {
    /// The client configuration these flags select, over `file`'s settings.
    pub fn resolve(
        &self,
        file: &config::FileSettings,
    ) -> Result<config::ClientConfig, config::ConfigError> {
        config::ClientConfig::resolve(
            file,
            config::ClientFlags {
                profile: self.profile.clone(),
                server: self.server.clone(),
                metadata_url: self.metadata_url.clone(),
                client_id: self.client_id.clone(),
                client_secret: self.client_secret.clone(),
                scope: self.scope.clone(),
            },
        )
    }
}

/// The process exit code for a command's error: 4 for a failed or refused sign-in, 5
/// for a refused permission, 1 otherwise.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<login::AuthFailure>().is_some() {
        return EXIT_AUTH;
    }
    match e
        .downcast_ref::<client::ApiStatus>()
        .map(|a| a.status.as_u16())
    {
        Some(401) => EXIT_AUTH,
        Some(403) => EXIT_FORBIDDEN,
        _ => 1,
    }
}
