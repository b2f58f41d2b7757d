//! End to end: a keyserver on SQLite moves to PostgreSQL with `influxion db
//! migrate-to`, and `influxion serve` carries on there: the same key signs, the audit
//! chain continues and verifies. Needs the test PostgreSQL server
//! (`INFLUXION_TEST_POSTGRES_URL`, started by scripts/test.sh) besides node and openssl.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use sqlx::Connection;

/// A new, empty database on the test server; its URL, with a password that must never
/// be printed (the loopback server trusts, so it is not checked).
fn fresh_database() -> String {
    let admin = std::env::var("INFLUXION_TEST_POSTGRES_URL")
        .expect("INFLUXION_TEST_POSTGRES_URL (scripts/test.sh starts a PostgreSQL server)");
    let name = format!("e2e_{:016x}", rand::random::<u64>());
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
    });
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&name);
    url.set_password(Some("never-printed")).unwrap();
    url.to_string()
}

fn migrate(target: &str, data: &Path) -> Output {
    Command::new(BIN)
        .args(["db", "migrate-to", target, "--data-dir"])
        .arg(data)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("INFLUXION_KEK", KEK)
        .output()
        .unwrap()
}

#[test]
fn a_sqlite_keyserver_moves_to_postgres() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let provider = start_provider(d);
    let mut ks = start_keyserver(d, &provider.issuer);
    write_firmware(d, "fw.bin", 1000);
    ok(&ks.admin(&["keys", "create", "fw"], d));
    ok(&ks.signer(&["keys", "public", "fw", "-o", "pub.pem"], d));
    ok(&ks.signer(&["sign", "--key", "fw", "fw.bin", "-o", "a.sig"], d));
    ks.stop();
    let before = ok(&audit_cmd(&["verify"], &ks.data).output().unwrap());
    // bootstrap subject, subject ci, key.create, one signature.
    assert!(before.contains("audit chain intact: 4 records"), "{before}");

    let target = fresh_database();
    let out = migrate(&target, &ks.data);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("never-printed"), "{text}");
    assert!(text.contains("redacted"), "{text}");
    assert!(
        text.contains("verified on the target with the key: 4 records"),
        "{text}"
    );
    // Never into a database that holds anything.
    let again = migrate(&target, &ks.data);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("not empty") && !err.contains("never-printed"),
        "{err}"
    );

    // The keyserver on PostgreSQL: the same key signs, the chain goes on.
    ks.restart(d, &[("INFLUXION_DATABASE_URL", &target)]);
    ok(&ks.signer(&["sign", "--key", "fw", "fw.bin", "-o", "b.sig"], d));
    assert_sha256_verifies(d, "pub.pem", "b.sig", "fw.bin");
    ks.stop();
    let after = ok(&audit_cmd(&["verify", "--database-url", &target], &ks.data)
        .output()
        .unwrap());
    assert!(after.contains("audit chain intact: 5 records"), "{after}");
}
