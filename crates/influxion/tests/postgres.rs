//! `influxion serve` on PostgreSQL through the real binary: the password as an Entra
//! access token from the managed-identity stand-in (`INFLUXION_DATABASE_AUTH=azure`,
//! as Azure Database for PostgreSQL takes it), then from a password file; a wrong
//! password stops the start without printing it. The test server is the one
//! scripts/test.sh starts (`INFLUXION_TEST_POSTGRES_URL`); its pg_hba.conf asks members
//! of `entra_users` for a SCRAM password, as Azure asks for the token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};

use common::*;
use influxion_azure_standin::{Endpoint, IdentityStandIn};
use sqlx::Connection;

/// A role of its own owning `db`, member of `entra_users`, with `password`.
async fn role_for(admin: &str, db: &str, role: &str, password: &str) {
    let mut c = sqlx::PgConnection::connect(admin).await.unwrap();
    sqlx::query(
        "DO $$ BEGIN CREATE ROLE entra_users NOLOGIN; \
         EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    )
    .execute(&mut c)
    .await
    .unwrap();
    // Names we made; the password is a test value.
    sqlx::query(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE entra_users"
    ))
    .execute(&mut c)
    .await
    .unwrap();
    sqlx::query(&format!("ALTER DATABASE {db} OWNER TO {role}"))
        .execute(&mut c)
        .await
        .unwrap();
}

async fn set_password(admin: &str, role: &str, password: &str) {
    let mut c = sqlx::PgConnection::connect(admin).await.unwrap();
    sqlx::query(&format!("ALTER ROLE {role} PASSWORD '{password}'"))
        .execute(&mut c)
        .await
        .unwrap();
}

#[test]
fn the_keyserver_on_postgres_with_an_entra_token_or_a_password_file() {
    prerequisites();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let admin = influxion_pgtest::admin_url();
    let (idp, db) = rt.block_on(async {
        let idp = IdentityStandIn::start().await.unwrap();
        let url = influxion_pgtest::fresh_database().await;
        (idp, url)
    });
    let db_name = db.rsplit('/').next().unwrap().to_owned();
    let role = format!("e_{}", &db_name[2..]);
    // The first token the stand-in issues; Azure checks the token, we check this.
    rt.block_on(role_for(&admin, &db_name, &role, "standin-imds-token-1"));
    let user_url = db.replacen("//influxion@", &format!("//{role}@"), 1);
    assert_ne!(user_url, db, "the test server's URL names its user");

    let provider = start_provider(d);
    let imds = idp.url();
    let mut ks = start_keyserver_env(
        d,
        &provider.issuer,
        AUDIENCE,
        &[
            ("INFLUXION_DATABASE_URL", user_url.as_str()),
            ("INFLUXION_DATABASE_AUTH", "azure"),
            ("INFLUXION_IMDS_ENDPOINT", imds.as_str()),
        ],
    );
    ok(&ks.admin(&["keys", "create", "pg-fw"], d));
    write_firmware(d, "fw.bin", 10_000);
    ok(&ks.signer(&["sign", "--key", "pg-fw", "fw.bin", "-o", "fw.sig"], d));
    // The token was asked for the database's resource, by managed identity.
    let asked: Vec<_> = idp
        .seen()
        .into_iter()
        .filter(|s| s.endpoint == Endpoint::Imds)
        .collect();
    assert!(!asked.is_empty());
    assert!(asked
        .iter()
        .all(|s| s.query.get("resource").map(String::as_str)
            == Some("https://ossrdbms-aad.database.windows.net")));
    // Everything is in PostgreSQL: no SQLite file, the key's row in the database.
    assert!(!ks.data.join("influxion.db").exists());
    let (keys, signs): (i64, i64) = rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(&db).await.unwrap();
        let k = sqlx::query_scalar("SELECT COUNT(*) FROM keys WHERE name = 'pg-fw'")
            .fetch_one(&mut c)
            .await
            .unwrap();
        let s = sqlx::query_scalar(
            "SELECT COUNT(*) FROM audit_log WHERE action = 'sign' AND target = 'pg-fw'",
        )
        .fetch_one(&mut c)
        .await
        .unwrap();
        (k, s)
    });
    assert_eq!((keys, signs), (1, 1));

    // A password file an operator rotates instead.
    ks.stop();
    rt.block_on(set_password(&admin, &role, "from-a-file-7f3a"));
    let pw = d.join("db-password");
    std::fs::write(&pw, "from-a-file-7f3a\n").unwrap();
    let pw_path = pw.display().to_string();
    ks.restart(
        d,
        &[
            ("INFLUXION_DATABASE_URL", user_url.as_str()),
            ("INFLUXION_DATABASE_PASSWORD_FILE", pw_path.as_str()),
        ],
    );
    let listed = ok(&ks.admin(&["keys", "list"], d));
    assert!(listed.contains("pg-fw"), "{listed}");
    ks.stop();
    // An auditor verifies the chain in the database with the same password source.
    let verified = ok(&Command::new(BIN)
        .args(["audit", "verify"])
        .env("INFLUXION_KEK", KEK)
        .env("INFLUXION_DATABASE_URL", &user_url)
        .env("INFLUXION_DATABASE_PASSWORD_FILE", &pw_path)
        .output()
        .unwrap());
    assert!(verified.contains("intact"), "{verified}");

    // A wrong password in the URL: the start fails, naming the database, without the
    // password.
    let wrong = user_url.replacen(
        &format!("//{role}@"),
        &format!("//{role}:hunter2-wrong@"),
        1,
    );
    let mut cmd = Command::new(BIN);
    cmd.arg("serve");
    server_env(&mut cmd, &provider.issuer, &ks.data, free_port());
    let out = cmd
        .env("INFLUXION_DATABASE_URL", &wrong)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("opening postgres://"), "{err}");
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(!err.contains("hunter2"), "the password was printed: {err}");

    // `config check` says where the password comes from, never what it is.
    let mut cmd = Command::new(BIN);
    cmd.args(["config", "check"]);
    server_env(&mut cmd, &provider.issuer, &ks.data, free_port());
    let out = cmd
        .env("INFLUXION_DATABASE_URL", &wrong)
        .env("INFLUXION_DATABASE_AUTH", "azure")
        .env("INFLUXION_IMDS_ENDPOINT", &imds)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("database_auth = \"azure (Entra token:"),
        "{text}"
    );
    assert!(text.contains(":redacted@"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}
