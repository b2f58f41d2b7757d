//! End to end: the real `influxion` binary against a real third-party OIDC provider
//! (the npm package `oidc-provider`, started here on loopback), with signatures
//! checked by openssl.
//!
//! These tests need node (with `npm ci --prefix tests/oidc-provider` done) and openssl.
//! Without them these tests fail, naming what is missing (scripts/test.sh installs it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

#[test]
fn sign_with_client_credentials_from_oidc_provider_and_verify_with_openssl() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let provider = start_provider(d);
    let ks = start_keyserver(d, &provider.issuer);
    write_firmware(d, "firmware.bin", 3 * 1024 * 1024 + 17);

    // Key administration needs the admin app role.
    ok(&ks.admin(&["keys", "create", "fw", "--type", "ec-p256"], d));
    ok(&ks.admin(&["keys", "create", "rel", "--type", "rsa-3072"], d));
    let refused = ks.signer(&["keys", "create", "nope"], d);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("forbidden"));

    // ECDSA P-256: sign, verify with the CLI and with openssl.
    ok(&ks.signer(
        &["sign", "--key", "fw", "firmware.bin", "-o", "firmware.sig"],
        d,
    ));
    ok(&ks.signer(
        &[
            "verify",
            "--key",
            "fw",
            "firmware.bin",
            "--signature",
            "firmware.sig",
        ],
        d,
    ));
    ok(&ks.signer(&["keys", "public", "fw", "-o", "pub.pem"], d));
    assert_sha256_verifies(d, "pub.pem", "firmware.sig", "firmware.bin");
    // Offline verification with the PEM file, and a tampered file fails.
    ok(&ks.signer(
        &[
            "verify",
            "--public-key",
            "pub.pem",
            "firmware.bin",
            "--signature",
            "firmware.sig",
        ],
        d,
    ));
    write_firmware(d, "tampered.bin", 3 * 1024 * 1024 + 18);
    let bad = ks.signer(
        &[
            "verify",
            "--public-key",
            "pub.pem",
            "tampered.bin",
            "--signature",
            "firmware.sig",
        ],
        d,
    );
    assert!(!bad.status.success());
    let v = openssl(
        &[
            "dgst",
            "-sha256",
            "-verify",
            "pub.pem",
            "-signature",
            "firmware.sig",
            "tampered.bin",
        ],
        d,
    );
    assert!(!v.status.success());

    // RSA-3072 with PSS and with PKCS#1 v1.5.
    ok(&ks.signer(&["keys", "public", "rel", "-o", "rel.pem"], d));
    ok(&ks.signer(
        &[
            "sign",
            "--key",
            "rel",
            "--algorithm",
            "PS256",
            "firmware.bin",
            "-o",
            "pss.sig",
        ],
        d,
    ));
    let v = openssl(
        &[
            "dgst",
            "-sha256",
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:-1",
            "-verify",
            "rel.pem",
            "-signature",
            "pss.sig",
            "firmware.bin",
        ],
        d,
    );
    assert_eq!(
        String::from_utf8_lossy(&v.stdout).trim(),
        "Verified OK",
        "{}",
        String::from_utf8_lossy(&v.stderr)
    );
    ok(&ks.signer(
        &[
            "sign",
            "--key",
            "rel",
            "--algorithm",
            "RS384",
            "firmware.bin",
            "-o",
            "v15.sig",
        ],
        d,
    ));
    let v = openssl(
        &[
            "dgst",
            "-sha384",
            "-verify",
            "rel.pem",
            "-signature",
            "v15.sig",
            "firmware.bin",
        ],
        d,
    );
    assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), "Verified OK");

    // A token without the app role is refused with 403.
    let r = ks.cli(
        "no-role",
        "no-role-secret-1234567890",
        &["sign", "--key", "fw", "firmware.bin"],
        d,
    );
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("403") && err.contains("insufficient-scope"),
        "{err}"
    );
    // A wrong client secret is refused by the provider.
    let r = ks.cli(
        "ci-signer",
        "wrong",
        &["sign", "--key", "fw", "firmware.bin"],
        d,
    );
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("refused the client credentials"));
}

#[test]
fn audit_verify_pinpoints_altered_and_deleted_records() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let provider = start_provider(d);
    let mut ks = start_keyserver(d, &provider.issuer);
    write_firmware(d, "fw.bin", 1000);
    ok(&ks.admin(&["keys", "create", "fw"], d));
    for _ in 0..4 {
        ok(&ks.signer(&["sign", "--key", "fw", "fw.bin"], d));
    }
    ks.stop();
    let data = ks.data.clone();
    let out = ok(&audit_cmd(&["verify"], &data).output().unwrap());
    // bootstrap subject, subject ci, key.create, four signatures.
    assert!(out.contains("audit chain intact: 7 records"), "{out}");

    let tamper = |sql: &str| {
        let copy = tempfile::tempdir().unwrap();
        for f in ["influxion.db", "influxion.db-wal", "influxion.db-shm"] {
            if data.join(f).exists() {
                std::fs::copy(data.join(f), copy.path().join(f)).unwrap();
            }
        }
        let url = format!("sqlite://{}/influxion.db", copy.path().display());
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
            pool.close().await;
        });
        let o = audit_cmd(&["verify"], copy.path()).output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let (code, out) =
        tamper("UPDATE audit_log SET detail = replace(detail, 'ES256', 'ES384') WHERE seq = 4");
    assert_eq!(code, Some(2));
    assert!(
        out.contains("BROKEN at record 4") && out.contains("altered"),
        "{out}"
    );
    let (code, out) = tamper("DELETE FROM audit_log WHERE seq = 5");
    assert_eq!(code, Some(2));
    assert!(
        out.contains("BROKEN at record 5") && out.contains("missing"),
        "{out}"
    );
    let (code, out) = tamper("DELETE FROM audit_log WHERE seq = 7");
    assert_eq!(code, Some(2));
    assert!(out.contains("BROKEN at record 7"), "{out}");
}

#[test]
fn invalid_configuration_names_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let run = |envs: &[(&str, &str)], args: &[&str]| {
        let mut c = Command::new(BIN);
        c.args(args).current_dir(dir.path()).env_clear();
        for (k, v) in envs {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let base = [
        ("INFLUXION_AZURE_TENANT_ID", TENANT),
        (
            "INFLUXION_AZURE_API_CLIENT_ID",
            "6f1c9a52-0000-4000-8000-00000000a91d",
        ),
        (
            "INFLUXION_KEK",
            "qNyQ3e3Yq8Vh0m3G2mH8l8mW2l0Zp2b3Qy0rJ8v6dXE=",
        ),
        ("INFLUXION_AZURE_CLIENT_SECRET", "do-not-print-me"),
    ];
    let (okk, out, err) = run(&base, &["config", "check"]);
    assert!(okk, "{err}");
    assert!(out.contains("https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0/.well-known/openid-configuration"), "{out}");
    assert!(
        out.contains("api://6f1c9a52-0000-4000-8000-00000000a91d"),
        "{out}"
    );
    assert!(out.contains("[redacted]"));
    assert!(
        !out.contains("qNyQ3e3") && !out.contains("do-not-print-me"),
        "secrets printed: {out}"
    );

    assert!(!err.contains("warning"), "{err}");
    // The PKCS#11 token's settings are shown, its PIN never.
    let mut hsm = base.to_vec();
    hsm.extend([
        ("INFLUXION_PKCS11_MODULE", "/usr/lib/softhsm/libsofthsm2.so"),
        ("INFLUXION_PKCS11_TOKEN", "line-1"),
        ("INFLUXION_PKCS11_PIN", "pin-never-shown"),
    ]);
    let (okk, out, err) = run(&hsm, &["config", "check"]);
    assert!(okk, "{err}");
    assert!(
        out.contains("[pkcs11]\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\ntoken = \"line-1\"\npin = \"(set, redacted)\"\npool = 4\n"),
        "{out}"
    );
    assert!(!out.contains("pin-never-shown"), "{out}");
    // An Entra metadata document without v2.0 works but gets a warning (issue 12 item 3).
    let mut v1 = base.to_vec();
    v1.push((
        "INFLUXION_OIDC_METADATA_URL",
        "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/.well-known/openid-configuration",
    ));
    let (okk, _, err) = run(&v1, &["config", "check"]);
    assert!(okk, "{err}");
    assert!(
        err.contains("warning: INFLUXION_OIDC_METADATA_URL") && err.contains("v2.0"),
        "{err}"
    );
    let (okk, out, err) = run(&v1, &["--output", "json", "config", "check"]);
    assert!(okk, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["warnings"].as_array().map(Vec::len), Some(1), "{out}");

    // With a vault, config check says which Azure credential reaches it and why,
    // without secrets; a half-configured credential names what is missing.
    let mut vault = base.to_vec();
    vault.push(("INFLUXION_VAULT_URL", "https://contoso.vault.azure.net"));
    let (okk, _, err) = run(&vault, &["config", "check"]);
    assert!(!okk && err.contains("INFLUXION_AZURE_CLIENT_ID"), "{err}");
    vault.push(("INFLUXION_AZURE_CLIENT_ID", "kv-app"));
    let (okk, out, err) = run(&vault, &["config", "check"]);
    assert!(okk, "{err}");
    assert!(
        out.contains("credential = \"client secret: INFLUXION_AZURE_CLIENT_SECRET is set; application kv-app in tenant 11111111-2222-3333-4444-555555555555"),
        "{out}"
    );
    assert!(!out.contains("do-not-print-me"), "{out}");
    let managed: Vec<_> = vault
        .iter()
        .filter(|(k, _)| !k.starts_with("INFLUXION_AZURE_CLIENT"))
        .copied()
        .collect();
    let (okk, out, err) = run(&managed, &["config", "check"]);
    assert!(okk, "{err}");
    assert!(
        out.contains("instance metadata managed identity")
            && out.contains("http://169.254.169.254/")
            && out.contains("system-assigned"),
        "{out}"
    );
    let mut app_service = managed.clone();
    app_service.push(("IDENTITY_ENDPOINT", "http://127.0.0.1:41234/msi/token"));
    app_service.push(("IDENTITY_HEADER", "hidden-header-value"));
    let (okk, out, err) = run(&app_service, &["config", "check"]);
    assert!(okk, "{err}");
    assert!(
        out.contains("App Service managed identity") && !out.contains("hidden-header-value"),
        "{out}"
    );

    let mut bad = base.to_vec();
    bad.push(("INFLUXION_CLOCK_SKEW_SECS", "lots"));
    let (okk, _, err) = run(&bad, &["config", "check"]);
    assert!(!okk && err.contains("INFLUXION_CLOCK_SKEW_SECS"), "{err}");

    let (okk, _, err) = run(&base[2..], &["serve"]);
    assert!(!okk && err.contains("INFLUXION_OIDC_METADATA_URL"), "{err}");

    let mut bad = base.to_vec();
    bad[2] = ("INFLUXION_KEK", "too-short");
    let (okk, _, err) = run(&bad, &["config", "check"]);
    assert!(!okk && err.contains("INFLUXION_KEK"), "{err}");

    std::fs::write(dir.path().join("bad.toml"), "[auth]\ntennant_id = \"x\"\n").unwrap();
    let (okk, _, err) = run(&base, &["--config", "bad.toml", "config", "check"]);
    assert!(!okk && err.contains("tennant_id"), "{err}");

    // The keyclient refuses unsafe settings before it starts, naming the setting.
    let mut kc = base.to_vec();
    kc.push(("INFLUXION_KEYCLIENT_CLIENT_ID", "web"));
    kc.push((
        "INFLUXION_KEYCLIENT_SESSION_KEY",
        "qNyQ3e3Yq8Vh0m3G2mH8l8mW2l0Zp2b3Qy0rJ8v6dXE=",
    ));
    for (setting, value) in [
        ("INFLUXION_KEYCLIENT_SESSION_KEY", "c2hvcnQ="),
        ("INFLUXION_KEYCLIENT_PUBLIC_URL", "http://keys.example.com"),
        ("INFLUXION_SERVER", "http://keys.example.com"),
        (
            "INFLUXION_OIDC_METADATA_URL",
            "http://idp.example.com/.well-known/openid-configuration",
        ),
        ("INFLUXION_KEYCLIENT_IDLE_TIMEOUT_SECS", "10"),
        (
            "INFLUXION_KEYCLIENT_REDIRECT_URI",
            "http://evil.example/login/oauth2/code/keyserver-client",
        ),
        ("INFLUXION_KEYCLIENT_TLS_CERT", "/nonexistent.pem"),
        (
            "INFLUXION_KEYCLIENT_DATABASE_URL",
            "mysql://db.example/sessions",
        ),
    ] {
        let mut env = kc.clone();
        env.push((setting, value));
        let (okk, _, err) = run(&env, &["keyclient"]);
        assert!(!okk && err.contains(setting), "{setting}: {err}");
        assert!(
            !err.contains("qNyQ3e3") && !err.contains("do-not-print-me"),
            "{err}"
        );
    }

    // .env is read, and the environment wins over it.
    std::fs::write(
        dir.path().join(".env"),
        "INFLUXION_REQUIRED_SCOPE=from-dotenv\nINFLUXION_APP_ROLE=Dotenv.Role\n",
    )
    .unwrap();
    let mut env = base.to_vec();
    env.push(("INFLUXION_APP_ROLE", "Env.Role"));
    let (okk, out, err) = run(&env, &["config", "check"]);
    assert!(okk, "{err}");
    assert!(out.contains("required_scope = \"from-dotenv\""), "{out}");
    assert!(out.contains("app_role = \"Env.Role\""), "{out}");
}

#[test]
fn dev_mode_quick_start() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_dev, _port) = start_dev(d);
    let env_file = std::fs::read_to_string(d.join("devdata/dev.env")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for f in ["dev.env", "kek", "dev-oidc.json"] {
        let mode = std::fs::metadata(d.join("devdata").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is readable by others");
    }
    // The CLI with nothing but dev.env's settings.
    let dev_cli = |args: &[&str]| {
        let mut c = Command::new(BIN);
        c.current_dir(d)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for line in env_file.lines() {
            let (k, v) = line.trim_start_matches("export ").split_once('=').unwrap();
            c.env(k, v);
        }
        ok(&c.args(args).output().unwrap())
    };
    write_firmware(d, "firmware.bin", 20 * 1024 * 1024);
    dev_cli(&[
        "sign",
        "--key",
        "demo",
        "firmware.bin",
        "-o",
        "firmware.sig",
    ]);
    dev_cli(&["keys", "public", "demo", "-o", "pub.pem"]);
    assert_sha256_verifies(d, "pub.pem", "firmware.sig", "firmware.bin");

    // The demo key carries a code-signing certificate from the development CA, so the
    // formats that need one work from the quick start.
    dev_cli(&[
        "sign",
        "--key",
        "demo",
        "--format",
        "cms",
        "firmware.bin",
        "-o",
        "firmware.p7s",
    ]);
    dev_cli(&["ca", "chain", "dev-device-ca", "-o", "dev-ca.pem"]);
    let (verified, said) = openssl_cms_verifies(d, "firmware.p7s", "firmware.bin", "dev-ca.pem");
    assert!(verified, "{said}");
}

/// The pending request id of key `key`, as approver 1 sees it, waiting for it to appear.
#[test]
fn two_approver_flow_from_the_cli() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let provider = start_provider(d);
    let ks = start_keyserver(d, &provider.issuer);
    write_firmware(d, "fw.bin", 200_000);
    ok(&ks.admin(&["keys", "create", "rel-prod"], d));
    for i in ["1", "2"] {
        ok(&ks.admin(
            &[
                "subjects",
                "create",
                &format!("approver-{i}"),
                "--app-id",
                &format!("approver-{i}"),
                "--grant",
                "approver:rel-*",
            ],
            d,
        ));
    }
    ok(&ks.admin(
        &[
            "keys",
            "policy",
            "rel-prod",
            "--approvals",
            "2",
            "--approver",
            "approver-1",
            "--approver",
            "approver-2",
        ],
        d,
    ));
    let a = |n: &str, args: &[&str]| {
        ks.cli(
            &format!("approver-{n}"),
            &format!("approver-{n}-secret-123456"),
            args,
            d,
        )
    };

    // Approved: the waiting CLI writes a signature openssl accepts.
    let signer = ks.spawn_signer(
        &[
            "sign",
            "--key",
            "rel-prod",
            "fw.bin",
            "--reason",
            "release 2.1",
            "--meta",
            "version=2.1",
            "-o",
            "rel.sig",
        ],
        d,
    );
    let id = pending_id(&ks, d);
    let shown = ok(&a("1", &["approvals", "show", &id]));
    assert!(
        shown.contains("release 2.1")
            && shown.contains("version")
            && shown.contains("approvals  0/2"),
        "{shown}"
    );
    ok(&a(
        "1",
        &["approvals", "approve", &id, "--comment", "checked"],
    ));
    let again = a("1", &["approvals", "approve", &id]);
    assert!(
        !again.status.success()
            && String::from_utf8_lossy(&again.stderr).contains("already-decided")
    );
    let own = ks.signer(&["approvals", "approve", &id], d);
    assert!(!own.status.success());
    ok(&a("2", &["approvals", "approve", &id, "--comment", "lgtm"]));
    let out = signer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // People and pipelines by name, not by GUID.
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("approved by approver-1 (app), approver-2 (app)"),
        "{said}"
    );
    let shown = ok(&a("1", &["approvals", "show", &id]));
    assert!(
        shown.contains("requester  ci (app) [") && shown.contains("approve  approver-1 (app) ["),
        "{shown}"
    );
    ok(&ks.signer(&["keys", "public", "rel-prod", "-o", "rel.pem"], d));
    assert_sha256_verifies(d, "rel.pem", "rel.sig", "fw.bin");

    // Rejected: the waiting CLI exits 3 and writes nothing.
    let signer = ks.spawn_signer(
        &[
            "sign", "--key", "rel-prod", "fw.bin", "--reason", "hotfix", "-o", "rej.sig",
        ],
        d,
    );
    let id = pending_id(&ks, d);
    ok(&a(
        "2",
        &["approvals", "reject", &id, "--comment", "not this build"],
    ));
    let out = signer.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!d.join("rej.sig").exists());

    // --no-wait prints the id; the requester cancels.
    let id = ok(&ks.signer(
        &[
            "sign",
            "--key",
            "rel-prod",
            "fw.bin",
            "--reason",
            "test",
            "--no-wait",
        ],
        d,
    ));
    ok(&ks.signer(&["approvals", "cancel", id.trim()], d));
    let shown = ok(&ks.signer(&["approvals", "show", id.trim()], d));
    assert!(shown.contains("cancelled"), "{shown}");

    // A key-admin who signs cannot switch approval off alone: the change waits for
    // the key's approvers, and applies when both approve.
    ok(&ks.admin(
        &["grants", "add", "ci", "key-admin", "--pattern", "rel-*"],
        d,
    ));
    let off = ok(&ks.signer(
        &[
            "--output",
            "json",
            "keys",
            "policy",
            "rel-prod",
            "--approvals",
            "0",
            "--reason",
            "release train paused",
        ],
        d,
    ));
    let v: serde_json::Value = serde_json::from_str(&off).unwrap();
    assert_eq!(v["status"], "pending", "{v}");
    let change = v["change_id"].as_str().unwrap().to_owned();
    let own = ks.signer(&["policy-changes", "approve", &change], d);
    assert!(
        !own.status.success() && String::from_utf8_lossy(&own.stderr).contains("self-approval")
    );
    let shown = ok(&a("1", &["policy-changes", "show", &change]));
    assert!(
        shown.contains("release train paused")
            && shown.contains("fewer_approvals")
            && shown.contains("approvals  0/2"),
        "{shown}"
    );
    ok(&a("1", &["policy-changes", "approve", &change]));
    let shown = ok(&ks.signer(&["keys", "show", "rel-prod"], d));
    assert!(shown.contains("\"approvals_required\": 2"), "{shown}");
    let done = ok(&a(
        "2",
        &["--output", "json", "policy-changes", "approve", &change],
    ));
    let v: serde_json::Value = serde_json::from_str(&done).unwrap();
    assert_eq!(v["status"], "applied", "{v}");
    let signed = ok(&ks.signer(&["sign", "--key", "rel-prod", "fw.bin", "-o", "now.sig"], d));
    assert!(d.join("now.sig").exists(), "{signed}");
}

#[test]
fn subjects_grants_and_whoami_from_the_cli() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let provider = start_provider(d);
    let ks = start_keyserver(d, &provider.issuer);
    write_firmware(d, "fw.bin", 1000);
    ok(&ks.admin(&["keys", "create", "fw-a"], d));
    // The no-role client passes no door; the signer's whoami shows its subject.
    let me = ok(&ks.signer(&["whoami"], d));
    assert!(
        me.contains("you are    ci (app) [app:")
            && me.contains("subjects   ci")
            && me.contains("signer on *"),
        "{me}"
    );
    let list = ok(&ks.admin(&["subjects", "list"], d));
    assert!(
        list.contains("bootstrap-admin") && list.contains("app_id     ci-signer"),
        "{list}"
    );
    // Narrow the CI subject to fw-b*: signing with fw-a is now refused.
    let shown = ok(&ks.admin(&["grants", "list", "ci"], d));
    let grant_id = shown
        .lines()
        .find(|l| l.contains("grant") && l.contains("signer"))
        .and_then(|l| l.rsplit('(').next())
        .map(|s| s.trim_end_matches(')').to_owned())
        .unwrap();
    ok(&ks.admin(&["grants", "remove", "ci", &grant_id], d));
    ok(&ks.admin(&["grants", "add", "ci", "signer", "--pattern", "fw-b*"], d));
    let r = ks.signer(&["sign", "--key", "fw-a", "fw.bin"], d);
    assert!(!r.status.success() && String::from_utf8_lossy(&r.stderr).contains("forbidden"));
    // Rules are replaced by update; a subject that no longer matches grants nothing.
    ok(&ks.admin(&["subjects", "update", "ci", "--app-id", "someone-else"], d));
    let me = ok(&ks.signer(&["whoami"], d));
    assert!(me.contains("subjects   none"), "{me}");
    ok(&ks.admin(&["subjects", "delete", "ci"], d));
    let last = ks.admin(&["subjects", "delete", "bootstrap-admin"], d);
    assert!(!last.status.success() && String::from_utf8_lossy(&last.stderr).contains("last-admin"));
    let audit = ok(&audit_cmd(&["verify"], &ks.data).output().unwrap());
    assert!(audit.contains("intact"), "{audit}");
}

fn x509_text(file: &str, d: &Path) -> String {
    String::from_utf8(ok_openssl(&["x509", "-in", file, "-noout", "-text"], d)).unwrap()
}

#[track_caller]
fn ok_openssl(args: &[&str], d: &Path) -> Vec<u8> {
    let o = openssl(args, d);
    assert!(
        o.status.success(),
        "openssl {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// The value on the line after `label` in `openssl x509 -text` output.
fn field_after(text: &str, label: &str) -> String {
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if l.contains(label) {
            return lines.next().unwrap_or("").trim().to_owned();
        }
    }
    panic!("{label} not in {text}");
}

fn first_pem(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let end = text.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----\n".len();
    text[..end].to_owned()
}

#[test]
fn device_certificates_chains_lint_crl_est_and_bulk() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let provider = start_provider(d);
    let ks = start_keyserver(d, &provider.issuer);

    // A root and an intermediate held here.
    ok(&ks.admin(
        &[
            "ca",
            "create",
            "root",
            "--cn",
            "Acme Root CA",
            "--org",
            "Acme",
            "--country",
            "DE",
        ],
        d,
    ));
    ok(&ks.admin(
        &[
            "ca",
            "create",
            "devices-ica",
            "--cn",
            "Acme Device CA",
            "--org",
            "Acme",
            "--parent",
            "root",
            "--key-type",
            "ec-p256",
        ],
        d,
    ));
    ok(&ks.admin(
        &[
            "profiles",
            "set",
            "device",
            "--ca",
            "devices-ica",
            "--cn",
            "{device_id}",
            "--org",
            "Acme",
            "--ou",
            "Devices",
            "--san-dns",
            "{device_id}.devices.acme.test",
            "--max-per-device",
            "1",
            "--key-types",
            "ec-p256,ec-p384",
            "--validity-days",
            "730",
        ],
        d,
    ));
    let list = ok(&ks.admin(&["ca", "list"], d));
    assert!(
        list.contains("root") && list.contains("devices-ica") && list.contains("active"),
        "{list}"
    );

    // A device key and CSR made by openssl; the certificate chains to the root.
    ok_openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "dev.key",
            "-subj",
            "/CN=dev-0001",
            "-out",
            "dev.csr",
        ],
        d,
    );
    ok(&ks.admin(
        &[
            "cert",
            "issue",
            "--profile",
            "device",
            "--csr",
            "dev.csr",
            "-o",
            "dev.pem",
        ],
        d,
    ));
    ok(&ks.admin(&["ca", "chain", "root", "-o", "root.pem"], d));
    ok(&ks.admin(&["ca", "chain", "devices-ica", "-o", "ica-chain.pem"], d));
    std::fs::write(d.join("ica.pem"), first_pem(&d.join("ica-chain.pem"))).unwrap();
    std::fs::write(d.join("leaf.pem"), first_pem(&d.join("dev.pem"))).unwrap();
    let v = ok_openssl(
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "ica.pem",
            "leaf.pem",
        ],
        d,
    );
    assert!(String::from_utf8_lossy(&v).contains("leaf.pem: OK"));

    // The fields, read by openssl.
    let leaf = x509_text("leaf.pem", d);
    let ica = x509_text("ica.pem", d);
    assert!(
        leaf.contains("Subject: C")
            || leaf.contains("Subject: O = Acme, OU = Devices, CN = dev-0001"),
        "{leaf}"
    );
    assert!(
        leaf.contains("X509v3 Key Usage: critical")
            && field_after(&leaf, "X509v3 Key Usage") == "Digital Signature",
        "{leaf}"
    );
    assert_eq!(
        field_after(&leaf, "X509v3 Extended Key Usage"),
        "TLS Web Client Authentication"
    );
    assert_eq!(
        field_after(&leaf, "X509v3 Subject Alternative Name"),
        "DNS:dev-0001.devices.acme.test"
    );
    assert!(leaf.contains("CA:FALSE"), "{leaf}");
    assert_eq!(
        field_after(&leaf, "X509v3 Authority Key Identifier").trim_start_matches("keyid:"),
        field_after(&ica, "X509v3 Subject Key Identifier"),
        "AKI of the leaf is the SKI of the intermediate"
    );
    assert!(leaf.contains("X509v3 Subject Key Identifier"));
    let cdp = format!("URI:{}/crl/devices-ica.crl", ks.url);
    assert!(leaf.contains(&cdp), "{leaf}");
    let serial = field_after(&leaf, "Serial Number:").replace(':', "");
    assert_eq!(serial.len(), 32, "128-bit serial: {serial}");
    assert!(
        ica.contains("CA:TRUE, pathlen:0") && ica.contains("Certificate Sign, CRL Sign"),
        "{ica}"
    );
    let dates = String::from_utf8(ok_openssl(
        &[
            "x509",
            "-in",
            "leaf.pem",
            "-noout",
            "-startdate",
            "-enddate",
        ],
        d,
    ))
    .unwrap();
    let year = |s: &str| {
        s.split_whitespace()
            .rev()
            .nth(1)
            .unwrap()
            .parse::<i32>()
            .unwrap()
    };
    let lines: Vec<&str> = dates.lines().collect();
    assert_eq!(year(lines[1]) - year(lines[0]), 2, "730 days: {dates}");

    // An independent linter finds nothing at WARNING or above.
    for f in ["leaf.pem", "ica.pem", "root.pem"] {
        lint_clean(&["lint_pkix_cert", "lint"], &d.join(f));
    }

    // An intermediate signed by an offline root (openssl), then imported.
    ok_openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-nodes",
            "-keyout",
            "offline.key",
            "-subj",
            "/O=Acme/CN=Acme Offline Root",
            "-days",
            "3650",
            "-out",
            "offline.pem",
        ],
        d,
    );
    ok(&ks.admin(
        &[
            "ca",
            "create",
            "ext-ica",
            "--cn",
            "Acme External ICA",
            "--org",
            "Acme",
            "--external",
            "--key-type",
            "ec-p256",
            "--csr-out",
            "ext.csr",
        ],
        d,
    ));
    let pending = ok(&ks.admin(&["ca", "list"], d));
    assert!(pending.contains("pending"), "{pending}");
    std::fs::write(
        d.join("ica.ext"),
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .unwrap();
    ok_openssl(
        &[
            "x509",
            "-req",
            "-in",
            "ext.csr",
            "-CA",
            "offline.pem",
            "-CAkey",
            "offline.key",
            "-CAcreateserial",
            "-days",
            "1825",
            "-extfile",
            "ica.ext",
            "-out",
            "ext.pem",
        ],
        d,
    );
    // The wrong chain is refused; the right one activates the CA.
    let wrong = ks.admin(
        &[
            "ca",
            "import",
            "ext-ica",
            "--certificate",
            "ext.pem",
            "--chain",
            "root.pem",
        ],
        d,
    );
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("bad-ca-certificate"),
        "{wrong:?}"
    );
    ok(&ks.admin(
        &[
            "ca",
            "import",
            "ext-ica",
            "--certificate",
            "ext.pem",
            "--chain",
            "offline.pem",
        ],
        d,
    ));
    ok(&ks.admin(
        &[
            "profiles",
            "set",
            "ext-device",
            "--ca",
            "ext-ica",
            "--org",
            "Acme",
        ],
        d,
    ));
    ok_openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "dev2.key",
            "-subj",
            "/CN=dev-0002",
            "-out",
            "dev2.csr",
        ],
        d,
    );
    ok(&ks.admin(
        &[
            "cert",
            "issue",
            "--profile",
            "ext-device",
            "--csr",
            "dev2.csr",
            "-o",
            "dev2.pem",
        ],
        d,
    ));
    let v = ok_openssl(
        &[
            "verify",
            "-CAfile",
            "offline.pem",
            "-untrusted",
            "ext.pem",
            "dev2.pem",
        ],
        d,
    );
    assert!(String::from_utf8_lossy(&v).contains("OK"));
    std::fs::write(d.join("dev2-leaf.pem"), first_pem(&d.join("dev2.pem"))).unwrap();
    lint_clean(&["lint_pkix_cert", "lint"], &d.join("dev2-leaf.pem"));

    // Server-side key generation: a PKCS#12 that openssl opens with the password.
    let mut new = ks.command(
        "ci-admin",
        "admin-secret-1234567890",
        &[
            "cert",
            "new",
            "--profile",
            "device",
            "--device-id",
            "1234",
            "-o",
            "dev.p12",
        ],
        d,
    );
    ok(&new
        .env("INFLUXION_P12_PASSWORD", "production line 7")
        .output()
        .unwrap());
    ok_openssl(
        &[
            "pkcs12",
            "-in",
            "dev.p12",
            "-passin",
            "pass:production line 7",
            "-nodes",
            "-out",
            "p12.pem",
        ],
        d,
    );
    let p12 = std::fs::read_to_string(d.join("p12.pem")).unwrap();
    assert!(
        p12.contains("PRIVATE KEY") && p12.contains("CN = 1234"),
        "{p12}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("dev.p12"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Revocation: the CRL at the certificate's distribution point lists it, and
    // openssl's CRL check rejects the certificate.
    ok(&ks.admin(
        &[
            "cert",
            "revoke",
            &serial.to_lowercase(),
            "--reason",
            "key_compromise",
        ],
        d,
    ));
    let crl = Command::new("curl")
        .args(["-sf", "-o", "crl.der", &cdp[4..]])
        .current_dir(d)
        .status()
        .unwrap();
    assert!(crl.success());
    ok_openssl(
        &["crl", "-inform", "DER", "-in", "crl.der", "-out", "crl.pem"],
        d,
    );
    lint_clean(
        &["lint_crl", "lint", "-t", "CRL", "-p", "PKIX"],
        &d.join("crl.der"),
    );
    let o = openssl(
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "ica.pem",
            "-CRLfile",
            "crl.pem",
            "leaf.pem",
        ],
        d,
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("certificate revoked")
            || String::from_utf8_lossy(&o.stderr).contains("certificate revoked"),
        "{o:?}"
    );
    let o = openssl(
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "ica.pem",
            "-CRLfile",
            "crl.pem",
            "p12.pem",
        ],
        d,
    );
    assert!(
        o.status.success(),
        "the other certificate still verifies: {o:?}"
    );

    // EST (RFC 7030) with curl and openssl, as provisioning equipment would.
    let est = format!("{}/.well-known/est", ks.url);
    let sh = |script: &str| {
        let o = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let cacerts = sh(&format!(
        "curl -sf {est}/cacerts | openssl base64 -d | openssl pkcs7 -inform DER -print_certs"
    ));
    assert!(
        cacerts.contains("Acme Device CA") && cacerts.contains("Acme Root CA"),
        "{cacerts}"
    );
    let token = access_token(&ks, "ci-admin", "admin-secret-1234567890");
    std::fs::write(d.join("token"), format!("Authorization: Bearer {token}\n")).unwrap();
    let enrolled = sh(&format!(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout est.key \
           -subj /CN=est-0001 -outform DER \
         | openssl base64 \
         | curl -sf -H @token -H 'Content-Type: application/pkcs10' --data-binary @- {est}/simpleenroll \
         | openssl base64 -d | openssl pkcs7 -inform DER -print_certs -out est.pem && cat est.pem"
    ));
    assert!(
        enrolled.contains("CN = est-0001") || enrolled.contains("CN=est-0001"),
        "{enrolled}"
    );
    let v = ok_openssl(
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "ica.pem",
            "est.pem",
        ],
        d,
    );
    assert!(String::from_utf8_lossy(&v).contains("OK"));
    // Without a token, enrolment is refused.
    let refused = Command::new("sh")
        .arg("-c")
        .arg(format!("curl -s -o /dev/null -w '%{{http_code}}' -H 'Content-Type: application/pkcs10' --data-binary x {est}/simpleenroll"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&refused.stdout), "401");

    // Bulk: five devices, keys made here; a second run does nothing; an interrupted
    // run (journal line and certificate lost) resumes without a duplicate.
    ok(&ks.admin(
        &[
            "profiles",
            "set",
            "device-bulk",
            "--ca",
            "devices-ica",
            "--max-per-device",
            "1",
        ],
        d,
    ));
    std::fs::write(d.join("ids.txt"), "b-1\nb-2\nb-3\nb-4\nb-5\n").unwrap();
    let run = || {
        ks.cli(
            "ci-admin",
            "admin-secret-1234567890",
            &[
                "cert",
                "bulk",
                "--profile",
                "device-bulk",
                "--device-ids",
                "ids.txt",
                "--out-dir",
                "out",
                "--concurrency",
                "3",
            ],
            d,
        )
    };
    let first = run();
    ok(&first);
    assert!(
        String::from_utf8_lossy(&first.stderr).contains("issued 5, already done 0, failed 0"),
        "{first:?}"
    );
    for i in 1..=5 {
        let v = ok_openssl(
            &[
                "verify",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "ica.pem",
                &format!("out/b-{i}.pem"),
            ],
            d,
        );
        assert!(String::from_utf8_lossy(&v).contains("OK"));
    }
    let again = run();
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("issued 0, already done 5"),
        "{again:?}"
    );
    let journal = d.join("out/influxion-journal.jsonl");
    let text = std::fs::read_to_string(&journal).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| !l.contains("\"b-3\"")).collect();
    std::fs::write(&journal, kept.join("\n") + "\n").unwrap();
    std::fs::remove_file(d.join("out/b-3.pem")).unwrap();
    let resumed = run();
    assert!(
        String::from_utf8_lossy(&resumed.stderr).contains("issued 1, already done 4, failed 0"),
        "{resumed:?}"
    );
    let listed = ok(&ks.admin(&["cert", "list", "--profile", "device-bulk"], d));
    assert_eq!(listed.lines().count(), 5, "no duplicates: {listed}");

    // Revoking the intermediate: the root's CRL lists it, and openssl's check of the
    // whole chain refuses the devices below it, which passed just before.
    let fetch_crls = || {
        sh(&format!(
            "curl -sf {url}/crl/root.crl | openssl crl -inform DER > crls.pem && \
             curl -sf {url}/crl/devices-ica.crl | openssl crl -inform DER >> crls.pem",
            url = ks.url
        ))
    };
    let verify_all = || {
        openssl(
            &[
                "verify",
                "-crl_check_all",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "ica.pem",
                "-CRLfile",
                "crls.pem",
                "out/b-1.pem",
            ],
            d,
        )
    };
    fetch_crls();
    let o = verify_all();
    assert!(o.status.success(), "before the CA revocation: {o:?}");
    let root_only = ks.admin(&["ca", "revoke", "root", "--reason", "superseded"], d);
    assert!(
        !root_only.status.success()
            && String::from_utf8_lossy(&root_only.stderr).contains("ca-no-parent"),
        "{root_only:?}"
    );
    let revoked = ok(&ks.admin(
        &["ca", "revoke", "devices-ica", "--reason", "ca_compromise"],
        d,
    ));
    assert!(
        revoked.contains("devices-ica") && revoked.contains("revoked"),
        "{revoked}"
    );
    fetch_crls();
    let o = verify_all();
    assert!(
        !o.status.success() && format!("{o:?}").contains("certificate revoked"),
        "after the CA revocation: {o:?}"
    );
    let again = ks.admin(&["ca", "revoke", "devices-ica"], d);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already-revoked"),
        "{again:?}"
    );

    // Every CA key use is in the audit chain, which is intact.
    let audit = ok(&audit_cmd(&["verify"], &ks.data).output().unwrap());
    assert!(audit.contains("intact"), "{audit}");
}

/// The CLI side of the keyed chain, on a database written through the library (no
/// identity provider needed): a truncated and re-headed log is broken, an old unkeyed
/// one verifies and `audit reseal` keys it, with a record of doing so.
#[test]
fn audit_cli_catches_truncation_and_reseals_old_records() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let url = format!("sqlite://{}/influxion.db", data.display());
    let key = || {
        let kek = influxion_keystore::Kek::from_text(KEK).unwrap();
        influxion_store::AuditKey::new(kek.audit_mac_key())
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sql = |stmts: &[&str]| {
        rt.block_on(async {
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            for s in stmts {
                sqlx::query(s).execute(&pool).await.unwrap();
            }
            pool.close().await;
        })
    };
    rt.block_on(async {
        let store = influxion_store::Store::open(&url, key()).await.unwrap();
        for i in 0..4 {
            store
                .audit(
                    influxion_store::AuditEvent::new(
                        influxion_store::Actor::id_only("t"),
                        "x",
                        influxion_store::Outcome::Ok,
                    )
                    .target(i.to_string()),
                )
                .await
                .unwrap();
        }
    });
    let run = |c: &mut Command| {
        let o = c.output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, out, _) = run(&mut audit_cmd(&["verify"], &data));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("audit chain intact: 4 records") && !out.contains("NOT"),
        "{out}"
    );
    // Without the KEK the keyed check is refused, unless asked for links only.
    let (code, _, err) = run(audit_cmd(&["verify"], &data).env_remove("INFLUXION_KEK"));
    assert_eq!(code, Some(1));
    assert!(err.contains("INFLUXION_KEK"), "{err}");
    let (code, out, _) =
        run(audit_cmd(&["verify", "--links-only"], &data).env_remove("INFLUXION_KEK"));
    assert_eq!(code, Some(0));
    assert!(
        out.contains("intact: 4 records") && out.contains("MACs NOT checked"),
        "{out}"
    );

    // Truncate to 3 records and point the head at the new end.
    let h3: String = rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = 3")
            .fetch_one(&pool)
            .await
            .unwrap()
    });
    let backup = dir.path().join("backup");
    std::fs::create_dir(&backup).unwrap();
    for f in ["influxion.db", "influxion.db-wal", "influxion.db-shm"] {
        if data.join(f).exists() {
            std::fs::copy(data.join(f), backup.join(f)).unwrap();
        }
    }
    sql(&[
        "DELETE FROM audit_log WHERE seq > 3",
        &format!("UPDATE audit_head SET seq = 3, hash = '{h3}'"),
    ]);
    let (code, out, _) = run(&mut audit_cmd(&["verify"], &data));
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("BROKEN at record 4") && out.contains("MAC does not verify"),
        "{out}"
    );
    // Nor will reseal vouch for it.
    let (code, _, err) = run(&mut audit_cmd(&["reseal", "--from", "1"], &data));
    assert_eq!(code, Some(1));
    assert!(err.contains("refusing to re-seal"), "{err}");

    // Back to the 4 records, rewritten into the schema before keying.
    for f in ["influxion.db", "influxion.db-wal", "influxion.db-shm"] {
        let _ = std::fs::remove_file(data.join(f));
        if backup.join(f).exists() {
            std::fs::copy(backup.join(f), data.join(f)).unwrap();
        }
    }
    sql(&[
        "ALTER TABLE audit_log DROP COLUMN mac",
        "ALTER TABLE audit_head DROP COLUMN mac",
        "DELETE FROM _sqlx_migrations WHERE version = 7",
    ]);
    let (code, out, _) = run(&mut audit_cmd(&["verify"], &data));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("intact: 4 records") && out.contains("before keying"),
        "{out}"
    );
    let (code, out, err) = run(&mut audit_cmd(&["reseal", "--from", "1"], &data));
    assert_eq!(code, Some(0), "{err}");
    // Opening keyed the log (record 5, audit.keyed); the re-seal is record 6.
    assert!(
        out.contains("re-sealed 4 records from 1; recorded as audit record 6"),
        "{out}"
    );
    let (code, out, _) = run(&mut audit_cmd(&["verify"], &data));
    assert_eq!(code, Some(0));
    assert!(
        out.contains("intact: 6 records") && !out.contains("predate"),
        "{out}"
    );
    let actions: Vec<String> = rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::query_scalar("SELECT action FROM audit_log WHERE seq > 4 ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap()
    });
    assert_eq!(actions, ["audit.keyed", "audit.reseal"]);
}

/// Seq numbers of a JSON Lines export, in file order.
fn exported_seqs(path: &Path) -> Vec<i64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_i64()
                .unwrap()
        })
        .collect()
}

#[test]
fn audit_log_from_the_cli_list_show_export_and_follow() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let provider = start_provider(d);
    let ks = start_keyserver(d, &provider.issuer);
    write_firmware(d, "fw.bin", 50_000);
    let created = ok(&ks.admin(&["keys", "create", "fw"], d));
    // One line: name, type, backend, fingerprint; not the JSON document.
    assert!(
        created.starts_with("created key fw (ec-p256, software backend) sha256:")
            && created.trim().lines().count() == 1,
        "{created}"
    );
    ok(&ks.signer(&["sign", "--key", "fw", "fw.bin", "-o", "fw.sig"], d));

    // A table with the pipeline's name, and the same as one JSON document.
    let table = ok(&ks.admin(&["audit", "list", "--action", "sign", "--key", "fw"], d));
    assert!(
        table.contains("SEQ") && table.contains("ci (app)"),
        "{table}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&ks.admin(
        &[
            "--output", "json", "audit", "list", "--action", "sign", "--since", "1h",
        ],
        d,
    )))
    .unwrap();
    let actor = &json["records"][0]["actor"];
    assert_eq!(actor["name"], "ci", "{json}");
    assert_eq!(actor["subject"], "ci");
    assert!(actor["id"].as_str().unwrap().starts_with("app:"), "{json}");
    assert_eq!(json["chain"]["status"], "intact");
    let sign_seq = json["records"][0]["seq"].as_i64().unwrap();

    // One record, its hash and its links.
    let shown = ok(&ks.admin(&["audit", "show", &sign_seq.to_string()], d));
    for want in [
        "action     sign",
        "actor      ci (app) [app:",
        "matches the record's fields: yes",
        "mac        valid",
        "chain intact",
    ] {
        assert!(shown.contains(want), "{want}: {shown}");
    }
    let missing = ks.admin(&["audit", "show", "999999"], d);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("unknown-audit-record"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let bad = ks.admin(&["audit", "list", "--since", "yesterday"], d);
    assert_eq!(bad.status.code(), Some(1));
    let denied = ks.signer(&["audit", "list"], d);
    assert_eq!(denied.status.code(), Some(5), "forbidden: exit 5");

    // Export into a file, then again: it resumes after the file's last record,
    // without gaps or repeats.
    let file = d.join("audit.jsonl");
    ok(&ks.admin(
        &["audit", "export", "--format", "jsonl", "-o", "audit.jsonl"],
        d,
    ));
    let first = exported_seqs(&file);
    assert_eq!(first.first(), Some(&1));
    ok(&ks.signer(&["sign", "--key", "fw", "fw.bin", "-o", "fw2.sig"], d));
    ok(&ks.admin(&["audit", "export", "-o", "audit.jsonl", "--page", "2"], d));
    let all = exported_seqs(&file);
    assert!(all.len() > first.len());
    let expected: Vec<i64> = (1..=*all.last().unwrap()).collect();
    assert_eq!(all, expected, "every record once, in order");
    // --since SEQ to stdout.
    let tail = ok(&ks.admin(&["audit", "export", "--since", &sign_seq.to_string()], d));
    let first_line: serde_json::Value = serde_json::from_str(tail.lines().next().unwrap()).unwrap();
    assert_eq!(first_line["seq"], sign_seq + 1);

    // --follow receives a record made after it started.
    let last = *all.last().unwrap();
    let mut follower = ks
        .command(
            "ci-admin",
            "admin-secret-1234567890",
            &[
                "audit",
                "export",
                "--follow",
                "--since",
                &last.to_string(),
                "--action",
                "sign",
            ],
            d,
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let signed = ok(&ks.signer(
        &[
            "--output", "json", "sign", "--key", "fw", "fw.bin", "-o", "fw3.sig",
        ],
        d,
    ));
    let signed: serde_json::Value = serde_json::from_str(&signed).unwrap();
    // A bound so a broken follower fails the test instead of hanging it.
    let line = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the follower printed the new record");
    let rec: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(rec["action"], "sign");
    assert_eq!(
        signed["summary"],
        format!("audit record {}", rec["seq"]),
        "{line} vs {signed}"
    );
    assert_eq!(rec["actor"]["label"], "ci (app)");
    follower.kill().unwrap();
    follower.wait().unwrap();
}
