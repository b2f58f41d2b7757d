//! `influxion db`: offline tools over the keyserver's database. Like `influxion audit
//! verify` they open the store and need the key-encryption key, so they live with the
//! server wiring, not the CLI.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use influxion_cli::output;

use crate::audit_cmds::{audit_key, AuditDatabase};
use crate::config::FileConfig;

#[derive(Subcommand)]
pub(crate) enum DbCommand {
    /// Copy the keyserver's database (SQLite) into an empty PostgreSQL database, in one
    /// transaction, and verify the copy before it commits: row counts, the audit chain
    /// with the KEK ending at the same head, sample rows field by field. Stop the
    /// keyserver first. Needs the KEK (INFLUXION_KEK, INFLUXION_KEK_FILE or
    /// keystore.kek_file).
    MigrateTo(MigrateArgs),
}

#[derive(Args)]
pub(crate) struct MigrateArgs {
    /// The database to copy into, e.g. postgres://influxion@db.example.com/influxion?sslmode=verify-full.
    /// It must hold no rows (a new database, or one a keyserver only started on).
    #[arg(value_name = "TARGET_URL")]
    target: String,
    /// The database to copy (default: the configured one: INFLUXION_DATABASE_URL,
    /// database_url, or the data directory's).
    #[arg(long, value_name = "URL", conflicts_with = "data_dir")]
    from: Option<String>,
    /// Copy the database of this data directory (its `kek` file is used for a
    /// directory of `influxion dev`).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// A file holding the target's password (else the URL's, PGPASSWORD or ~/.pgpass;
    /// for Azure Database for PostgreSQL with Entra ID, an access token in PGPASSWORD).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
}

pub(crate) async fn db(file: &FileConfig, cmd: DbCommand) -> Result<ExitCode> {
    match cmd {
        DbCommand::MigrateTo(args) => migrate_to(file, args).await,
    }
}

async fn migrate_to(file: &FileConfig, a: MigrateArgs) -> Result<ExitCode> {
    let source = AuditDatabase::new(a.data_dir, a.from);
    let key = audit_key(file, &source).context("the copy is verified with the audit key")?;
    let from = source.url(file);
    let (shown_from, shown_to) = (redact(&from), redact(&a.target));
    let target = match &a.password_file {
        Some(p) => with_password(&a.target, p)?,
        None => a.target.clone(),
    };
    let r = influxion_store::Store::migrate_to(&from, &target, &key, None, None)
        .await
        .with_context(|| format!("copying {shown_from} into {shown_to}"))?;

    let secs = r.elapsed.as_secs_f64();
    let stale = (r.source_newer_records > 0).then(|| {
        format!(
            "the source gained {} audit records while it was copied (a keyserver is still running on it); they are not in the copy. Stop the keyserver, drop and create the target database again, and run the migration again",
            r.source_newer_records
        )
    });
    let tables: serde_json::Map<String, serde_json::Value> = r
        .tables
        .iter()
        .map(|t| (t.table.to_owned(), t.rows.into()))
        .collect();
    output::emit(
        &serde_json::json!({
            "ok": stale.is_none(),
            "error": stale,
            "from": shown_from,
            "to": shown_to,
            "tables": tables,
            "records": r.records,
            "unkeyed": r.unkeyed,
            "head": {"seq": r.head_seq, "hash": r.head_hash},
            "rows_compared": r.rows_compared,
            "source_newer_records": r.source_newer_records,
            "seconds": secs,
        }),
        || {
            println!("copied {shown_from} into {shown_to} in {secs:.1} s");
            for t in &r.tables {
                println!("  {:<26}{:>12}", t.table, t.rows);
            }
            println!(
                "audit chain verified on the target with the key: {} records, head {} {}",
                r.records, r.head_seq, r.head_hash
            );
            if r.unkeyed > 0 {
                println!(
                    "records 1-{} predate keying (hash-linked, no MAC of their own), as in the source",
                    r.unkeyed
                );
            }
            println!(
                "{} rows read back and compared field by field: identical",
                r.rows_compared
            );
        },
    );
    match stale {
        Some(why) => {
            if !output::json() {
                eprintln!("error: {why}");
            }
            Ok(ExitCode::from(1))
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

/// `url` with its password, if any, replaced: what is printed.
fn redact(url: &str) -> String {
    crate::config::redact_url(url)
}

/// The PostgreSQL URL `url` with the password read from `file` (its first line).
fn with_password(url: &str, file: &std::path::Path) -> Result<String> {
    let mut u = url::Url::parse(url)
        .ok()
        .filter(|_| influxion_store::is_shared_database(url))
        .context("--password-file applies to a postgres:// target URL")?;
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?,
    );
    let password = text.lines().next().unwrap_or_default();
    u.set_password(Some(password))
        .ok()
        .context("the target URL takes no password")?;
    Ok(u.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_never_shown_and_files_supply_them() {
        assert_eq!(
            redact("postgres://u:s3cret@db.example.com/x?sslmode=require"),
            "postgres://u:redacted@db.example.com/x?sslmode=require"
        );
        assert_eq!(redact("sqlite:///var/lib/x.db"), "sqlite:///var/lib/x.db");
        // sqlx also takes the password as a query parameter.
        let q = redact("postgres://u@db.example.com/x?password=s3cret&sslmode=require");
        assert!(!q.contains("s3cret"), "{q}");
        assert!(
            q.contains("password=redacted") && q.contains("sslmode=require"),
            "{q}"
        );
        let dir = std::env::temp_dir().join(format!("influxion-pw-{}", std::process::id()));
        std::fs::write(&dir, "p@ss word\n").unwrap();
        let url = with_password("postgres://u@db/x", &dir).unwrap();
        let other = with_password("sqlite:///x.db", &dir);
        let _ = std::fs::remove_file(&dir);
        assert_eq!(url, "postgres://u:p%40ss%20word@db/x");
        assert!(other.is_err());
    }
}
