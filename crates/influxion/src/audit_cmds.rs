//! `influxion audit`: offline tools over the keyserver's database (they open the store
//! and need the key-encryption key, so they live with the server wiring, not the CLI).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use influxion_cli::output;

use crate::config::FileConfig;

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// The newest records, filtered by the keyserver (auditor role): a table, or one
    /// JSON document under --output json.
    List(influxion_cli::audit_cmds::ListArgs),
    /// One record with its hash and its place in the chain (auditor role).
    Show {
        /// The record's sequence number.
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        seq: i64,
    },
    /// Records as JSON Lines, oldest first, for Splunk, Sentinel or any log pipeline;
    /// resumable from a sequence number, and with --follow a live stream (auditor role).
    Export(influxion_cli::audit_cmds::ExportArgs),
    /// Prove the audit chain unbroken, or report the first broken record. Needs the
    /// key-encryption key (INFLUXION_KEK, INFLUXION_KEK_FILE or keystore.kek_file).
    Verify {
        #[command(flatten)]
        db: AuditDatabase,
        /// Check the hash links only, without the KEK: truncation goes unnoticed.
        #[arg(long)]
        links_only: bool,
    },
    /// Give records written before the chain was keyed a MAC each, from sequence
    /// number FROM on, after verifying the whole chain; writes an `audit.reseal` record.
    Reseal {
        #[command(flatten)]
        db: AuditDatabase,
        /// First record to re-seal (records before it stay hash-linked only).
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        from: i64,
    },
}

#[derive(Args)]
pub(crate) struct AuditDatabase {
    /// Data directory of the keyserver (default from configuration).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Database URL (overrides --data-dir).
    #[arg(long)]
    database_url: Option<String>,
}

impl AuditDatabase {
    /// The database of `data_dir`, or `database_url`, or (neither) the configured one.
    pub(crate) fn new(data_dir: Option<PathBuf>, database_url: Option<String>) -> Self {
        Self {
            data_dir,
            database_url,
        }
    }

    /// Only the database location is needed, not the whole server configuration.
    pub(crate) fn url(self, file: &FileConfig) -> String {
        match (self.database_url, self.data_dir) {
            (Some(u), _) => u,
            (None, Some(d)) => format!("sqlite://{}/influxion.db", d.display()),
            (None, None) => crate::config::env("INFLUXION_DATABASE_URL")
                .or_else(|| file.database_url.clone())
                .unwrap_or_else(|| {
                    let dir = crate::config::env("INFLUXION_DATA_DIR")
                        .map(PathBuf::from)
                        .or_else(|| file.data_dir.clone())
                        .unwrap_or_else(|| PathBuf::from("./data"));
                    format!("sqlite://{}/influxion.db", dir.display())
                }),
        }
    }
}

pub(crate) fn audit_key(
    file: &FileConfig,
    db: &AuditDatabase,
) -> Result<influxion_store::AuditKey> {
    // `influxion dev` keeps its KEK in the data directory; use it when nothing is configured.
    let dev_kek = db
        .data_dir
        .as_ref()
        .map(|d| d.join("kek"))
        .filter(|p| p.is_file())
        .map(crate::config::KekSource::File);
    let kek = crate::config::KekSource::configured(file)
        .or(dev_kek)
        .context("the audit chain is keyed: set INFLUXION_KEK, INFLUXION_KEK_FILE or keystore.kek_file (or verify with --links-only)")?
        .load()?;
    Ok(influxion_store::AuditKey::new(kek.audit_mac_key()))
}

/// `client` makes the API client for the commands that go through the keyserver.
pub(crate) async fn audit(
    file: &FileConfig,
    cmd: AuditCommand,
    client: impl FnOnce() -> Result<influxion_cli::client::Client>,
) -> Result<ExitCode> {
    use influxion_cli::audit_cmds as online;
    match cmd {
        AuditCommand::List(a) => online::list(client()?, a).await,
        AuditCommand::Show { seq } => online::show(client()?, seq).await,
        AuditCommand::Export(a) => online::export(client()?, a).await,
        AuditCommand::Verify { db, links_only } => {
            let key = if links_only {
                None
            } else {
                Some(audit_key(file, &db)?)
            };
            let url = db.url(file);
            // A PostgreSQL database's password as the keyserver gets it (password file,
            // Entra token), unless the URL or PG* variables carry it.
            let password =
                crate::database::password_source(&crate::config::database_auth(file, &url)?)?;
            let report = influxion_store::Store::verify_database(&url, key.as_ref(), password)
                .await
                .with_context(|| {
                    format!("opening {} read-only", crate::config::redact_url(&url))
                })?;
            match report {
                influxion_store::ChainReport::Intact {
                    records,
                    head,
                    unkeyed,
                    keyed,
                } => {
                    output::emit(
                        &serde_json::json!({"intact": true, "records": records, "head": head, "keyed": keyed, "unkeyed": unkeyed}),
                        || {
                            println!("audit chain intact: {records} records, head {head}");
                            if !keyed {
                                println!("MACs NOT checked (no key, or a database from before keying): a truncated log would look intact");
                            }
                            if unkeyed > 0 {
                                println!("records 1-{unkeyed} predate keying: covered by the sealed head through the hash links; `influxion audit reseal --from 1` gives each its own MAC");
                            }
                        },
                    );
                    Ok(ExitCode::SUCCESS)
                }
                influxion_store::ChainReport::Broken { seq, reason } => {
                    output::emit(
                        &serde_json::json!({"intact": false, "seq": seq, "reason": reason}),
                        || println!("audit chain BROKEN at record {seq}: {reason}"),
                    );
                    Ok(ExitCode::from(2))
                }
            }
        }
        AuditCommand::Reseal { db, from } => {
            let key = audit_key(file, &db)?;
            let url = db.url(file);
            let password =
                crate::database::password_source(&crate::config::database_auth(file, &url)?)?;
            let store = influxion_store::Store::open_with(&url, key, password)
                .await
                .with_context(|| format!("opening {}", crate::config::redact_url(&url)))?;
            let user = crate::config::env("USER").unwrap_or_else(|| "unknown".into());
            let event = influxion_store::AuditEvent::new(
                influxion_core::Actor::id_only(format!("cli:{user}")),
                "audit.reseal",
                influxion_store::Outcome::Ok,
            )
            .target("audit");
            let r = store.reseal_audit(from, event).await?;
            output::emit(
                &serde_json::json!({"sealed": r.sealed, "head_was_unsealed": r.head_was_unsealed, "seq": r.seq}),
                || {
                    println!(
                        "re-sealed {} records from {from}; recorded as audit record {}",
                        r.sealed, r.seq
                    );
                    if r.head_was_unsealed {
                        println!("the chain head was not sealed before; it is now");
                    }
                },
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
