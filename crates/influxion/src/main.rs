//! `influxion`: the keyserver, its development mode, and the client CLI.

mod audit_cmds;
mod config;
mod database;
mod db_cmds;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use influxion_cli::{
    access_cmds, approval_cmds, client, commands, output, pki_cmds, session_cmds, ClientArgs,
};

#[derive(Parser)]
#[command(
    name = "influxion",
    version,
    about = "Influxion keyserver: firmware signing and device certificates"
)]
struct Cli {
    /// TOML configuration file (also INFLUXION_CONFIG).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Read this file instead of ./.env.
    #[arg(long, global = true)]
    env_file: Option<PathBuf>,
    /// What commands print on stdout: text for people, json for pipelines
    /// (INFLUXION_OUTPUT). Files are written with -o/--out.
    #[arg(
        long = "output",
        id = "output_format",
        global = true,
        value_enum,
        env = "INFLUXION_OUTPUT",
        default_value = "text"
    )]
    output: output::Format,
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the keyserver with the configured identity provider and keystore.
    Serve,
    /// Run keyserver and a development OIDC issuer on loopback, with embedded defaults.
    Dev {
        /// Where the database, keystore and development secrets live.
        #[arg(long, default_value = ".influxion/dev")]
        data_dir: PathBuf,
        /// Keyserver port; the development issuer listens on the next port.
        #[arg(long, default_value_t = 8400)]
        port: u16,
    },
    /// Run the keyclient: web sign-in, the approval and administration app, the API proxy.
    Keyclient,
    /// Manage keys.
    #[command(subcommand)]
    Keys(commands::KeysCommand),
    /// Sign a file: it is hashed here, and only the digest is sent.
    Sign(influxion_cli::signing::SignArgs),
    /// Verify a file's signature.
    Verify(influxion_cli::signing::VerifyArgs),
    /// Audit log tools.
    #[command(subcommand)]
    Audit(audit_cmds::AuditCommand),
    /// Database tools: copy the keyserver's SQLite database into PostgreSQL.
    #[command(subcommand)]
    Db(db_cmds::DbCommand),
    /// Sign in as a person: Authorization Code + PKCE in the browser, or --device-code.
    Login(session_cmds::LoginArgs),
    /// Forget the profile's sign-in (and revoke its refresh token where possible).
    Logout,
    /// Print an access token for the profile (for scripts; treat it as a secret).
    Token,
    /// Who the keyserver thinks you are, and what you may do.
    Whoami,
    /// Manage subjects: who is who, by rules over the token (admin).
    #[command(subcommand)]
    Subjects(access_cmds::SubjectsCommand),
    /// Manage the roles subjects hold (admin).
    #[command(subcommand)]
    Grants(access_cmds::GrantsCommand),
    /// Signing requests waiting for approval: list, show, approve, reject, cancel.
    #[command(subcommand)]
    Approvals(approval_cmds::ApprovalsCommand),
    /// Changes that weaken a key's approval policy, waiting for its approvers.
    #[command(subcommand)]
    PolicyChanges(approval_cmds::PolicyChangesCommand),
    /// Certificate authorities for device certificates.
    #[command(subcommand)]
    Ca(pki_cmds::CaCommand),
    /// Certificate profiles: what device certificates contain.
    #[command(subcommand)]
    Profiles(pki_cmds::ProfilesCommand),
    /// Device certificates: issue, generate, revoke, search, bulk runs.
    #[command(subcommand)]
    Cert(pki_cmds::CertCommand),
    /// A production-line run: certificates for a list of device ids (or a directory of
    /// CSRs), optionally signing each device's firmware image; concurrent, retried, and
    /// resumable from its journal without duplicates.
    Provision(pki_cmds::ProvisionArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective server configuration with secrets redacted, or the first error.
    Check,
    /// Set a profile setting (server, metadata_url, tenant_id, client_id, scope,
    /// login_scope, redirect_uri) in the user's config.toml.
    Set { key: String, value: String },
    /// Print a profile setting.
    Get { key: String },
    /// Remove a profile setting.
    Unset { key: String },
    /// List the profiles and their settings.
    List,
    /// Make a profile the default.
    Use { profile: String },
    /// Print where the CLI keeps its config.toml and token cache.
    Path,
}

/// Logs on standard error: text, or with `INFLUXION_LOG_FORMAT=json` one JSON object
/// per line with the request's span (its `request_id`) for log pipelines.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("INFLUXION_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match std::env::var("INFLUXION_LOG_FORMAT").as_deref() {
        Ok("json") => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
        Ok("text") | Err(_) => builder.init(),
        Ok(other) => {
            builder.init();
            tracing::warn!(
                value = other,
                "INFLUXION_LOG_FORMAT is text or json; logging text"
            );
        }
    }
}

/// jemalloc rather than glibc's malloc: the request path allocates and frees small
/// buffers across threads, and glibc spent a tenth of the sign path's CPU in malloc,
/// free and consolidation (BENCHMARKS.md, issue 19). mimalloc was as fast but held
/// 46 MiB idle against jemalloc's 28 MiB.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    output::set(cli.output);
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            let code = influxion_cli::exit_code(&e);
            if output::json() {
                eprintln!(
                    "{}",
                    serde_json::json!({"error": format!("{e:#}"), "exit_code": code})
                );
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let file = config::load_file(cli.config.as_deref(), cli.env_file.as_deref())?;
    let client_cfg = || cli.client.resolve(&file.client_settings());
    match cli.command {
        Command::Serve => {
            init_tracing();
            server::serve(config::ServerConfig::resolve(&file)?).await?;
        }
        Command::Dev { data_dir, port } => {
            init_tracing();
            server::dev(&data_dir, port).await?;
        }
        Command::Keyclient => {
            init_tracing();
            server::keyclient(config::keyclient(&file)?).await?;
        }
        Command::Config(cmd) => {
            let profile = cli.client.profile.as_deref();
            return match cmd {
                ConfigCommand::Check => {
                    let cfg = config::ServerConfig::resolve(&file)?;
                    cfg.kek.load()?;
                    let text = cfg.describe();
                    let warnings = cfg.warnings();
                    output::emit(
                        &serde_json::json!({"ok": true, "effective": text, "warnings": warnings}),
                        || {
                            print!("{text}");
                            for w in &warnings {
                                eprintln!("warning: {w}");
                            }
                        },
                    );
                    Ok(ExitCode::SUCCESS)
                }
                ConfigCommand::Set { key, value } => {
                    session_cmds::config_set(profile, &key, Some(value))
                }
                ConfigCommand::Unset { key } => session_cmds::config_set(profile, &key, None),
                ConfigCommand::Get { key } => session_cmds::config_get(profile, &key),
                ConfigCommand::List => session_cmds::config_list(),
                ConfigCommand::Use { profile } => session_cmds::config_use(&profile),
                ConfigCommand::Path => session_cmds::config_path(),
            };
        }
        Command::Provision(args) => {
            return pki_cmds::provision(client::Client::new(client_cfg()?)?, args).await
        }
        Command::Login(args) => return session_cmds::login(client_cfg()?, args).await,
        Command::Logout => return session_cmds::logout(client_cfg()?).await,
        Command::Token => return session_cmds::token(client::Client::new(client_cfg()?)?).await,
        Command::Keys(cmd) => {
            return commands::keys(client::Client::new(client_cfg()?)?, cmd).await
        }
        Command::Sign(args) => {
            return influxion_cli::signing::sign(client::Client::new(client_cfg()?)?, args).await
        }
        Command::Verify(args) => return influxion_cli::signing::verify(client_cfg()?, args).await,
        Command::Audit(cmd) => {
            return audit_cmds::audit(&file, cmd, || client::Client::new(client_cfg()?)).await
        }
        Command::Db(cmd) => return db_cmds::db(&file, cmd).await,
        Command::Whoami => return access_cmds::whoami(client::Client::new(client_cfg()?)?).await,
        Command::Subjects(cmd) => {
            return access_cmds::subjects(client::Client::new(client_cfg()?)?, cmd).await
        }
        Command::Grants(cmd) => {
            return access_cmds::grants(client::Client::new(client_cfg()?)?, cmd).await
        }
        Command::Approvals(cmd) => {
            return approval_cmds::approvals(client::Client::new(client_cfg()?)?, cmd).await
        }
        Command::PolicyChanges(cmd) => {
            return approval_cmds::policy_changes(client::Client::new(client_cfg()?)?, cmd).await
        }
        Command::Ca(cmd) => return pki_cmds::ca(client::Client::new(client_cfg()?)?, cmd).await,
        Command::Profiles(cmd) => {
            return pki_cmds::profiles(client::Client::new(client_cfg()?)?, cmd).await
        }
        Command::Cert(cmd) => {
            return pki_cmds::cert(client::Client::new(client_cfg()?)?, cmd).await
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    /// Every subcommand's flags are unique and well-formed (clap checks them lazily,
    /// only when a command is used, otherwise).
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
