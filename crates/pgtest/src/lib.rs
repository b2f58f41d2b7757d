//! PostgreSQL for tests. The test command (`scripts/test.sh`) starts one throwaway
//! server on loopback (`scripts/postgres.sh`) and exports its URL as
//! `INFLUXION_TEST_POSTGRES_URL`; each test takes a new, empty database on it with
//! [`fresh_database`]. Without the variable a test fails with a message saying how to
//! start one: nothing is skipped.
//!
//! [`Server`] runs a cluster of its own in a directory (the reliability harness stops
//! and restarts it under load), through the same script.

use std::path::{Path, PathBuf};
use std::process::Command;

use sqlx::Connection;

/// The variable naming the test server's administrative URL.
pub const URL_VAR: &str = "INFLUXION_TEST_POSTGRES_URL";

/// The test server's administrative URL (a superuser, database `postgres`).
///
/// # Panics
/// When the variable is not set: the test cannot run, and says so.
#[allow(clippy::panic)]
pub fn admin_url() -> String {
    match std::env::var(URL_VAR) {
        Ok(u) if !u.is_empty() => u,
        _ => panic!(
            "{URL_VAR} is not set: run the tests through scripts/test.sh, which starts a \
             PostgreSQL server, or start one with `scripts/postgres.sh start DIR` and \
             export {URL_VAR}=<the URL it prints>"
        ),
    }
}

/// A new, empty database on the test server; its URL.
///
/// # Panics
/// When the server cannot be reached or refuses: the test fails.
#[allow(clippy::expect_used)]
pub async fn fresh_database() -> String {
    fresh_database_on(&admin_url()).await
}

/// A new, empty database on the server at `admin`; its URL.
///
/// # Panics
/// When the server cannot be reached or refuses.
#[allow(clippy::expect_used)]
pub async fn fresh_database_on(admin: &str) -> String {
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut c = sqlx::PgConnection::connect(admin)
        .await
        .expect("connect to the test PostgreSQL server");
    // A name we made, never input.
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut c)
        .await
        .expect("CREATE DATABASE");
    let _ = c.close().await;
    with_database(admin, &name)
}

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    // postgres://user@host:port/database: the database is after the third slash.
    let base = match base.match_indices('/').nth(2) {
        Some((i, _)) => &base[..i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// A PostgreSQL cluster in a directory of its own, started and stopped through
/// `scripts/postgres.sh` (unprivileged under root, loopback only).
pub struct Server {
    script: PathBuf,
    dir: PathBuf,
    port: u16,
    url: String,
}

impl Server {
    /// Create (if new) and start the cluster in `dir`, listening on `port`.
    pub fn start(repo: &Path, dir: &Path, port: u16) -> Result<Self, String> {
        let script = repo.join("scripts/postgres.sh");
        let url = run(
            &script,
            &["start", &dir.display().to_string(), &port.to_string()],
        )?;
        Ok(Self {
            script,
            dir: dir.to_owned(),
            port,
            url: url.trim().to_owned(),
        })
    }

    /// The administrative URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Fast shutdown: connections are closed, in-flight transactions roll back.
    pub fn stop(&self) -> Result<(), String> {
        run(&self.script, &["stop", &self.dir.display().to_string()]).map(|_| ())
    }

    /// Start it again after [`Server::stop`].
    pub fn restart(&self) -> Result<(), String> {
        run(
            &self.script,
            &[
                "start",
                &self.dir.display().to_string(),
                &self.port.to_string(),
            ],
        )
        .map(|_| ())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn run(script: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(script)
        .args(args)
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {}: {}",
            script.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_is_replaced() {
        assert_eq!(
            with_database("postgres://u@127.0.0.1:5432/postgres", "t_1"),
            "postgres://u@127.0.0.1:5432/t_1"
        );
        assert_eq!(
            with_database(
                "postgres://u@127.0.0.1:5432/postgres?sslmode=disable",
                "t_1"
            ),
            "postgres://u@127.0.0.1:5432/t_1?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://u@127.0.0.1:5432", "t_1"),
            "postgres://u@127.0.0.1:5432/t_1"
        );
    }
}
