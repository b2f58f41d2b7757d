//! End to end: the real `influxion` binary against a real third-party OIDC provider
//! (the npm package `oidc-provider`, started here on loopback), with signatures
//! checked by openssl.
//!
//! These tests need node (with `npm ci --prefix tests/oidc-provider` done) and openssl.
//! Run by hand without them, they say so and skip; under `CI=true` they fail instead.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_influxion");
const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const AUDIENCE: &str = "api://influxion-test";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Whether the external tools are here; under CI their absence is a failure.
fn prerequisites() -> bool {
    let node_modules = repo_root().join("tests/oidc-provider/node_modules/oidc-provider");
    let mut missing = Vec::new();
    if !node_modules.exists() {
        missing.push("tests/oidc-provider/node_modules (run: npm ci --prefix tests/oidc-provider)");
    }
    for tool in ["node", "openssl"] {
        if Command::new(tool).arg("--version").output().is_err()
            && Command::new(tool).arg("version").output().is_err()
        {
            missing.push(tool);
        }
    }
    if missing.is_empty() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and prerequisites are missing: {missing:?}");
    }
    eprintln!("SKIPPING: missing {missing:?} (this would fail under CI=true)");
    false
}

/// A child process killed when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Provider {
    _proc: Proc,
    issuer: String,
}

fn start_provider(dir: &Path) -> Provider {
    let cfg = serde_json::json!({
        "audience": AUDIENCE,
        "tenant_id": TENANT,
        "scope": "access_as_user",
        "clients": [
            {"client_id": "ci-signer", "client_secret": "s3cret-value-1234567890", "roles": ["Influxion.Sign"]},
            {"client_id": "ci-admin", "client_secret": "admin-secret-1234567890", "roles": ["Influxion.Admin"]},
            {"client_id": "no-role", "client_secret": "no-role-secret-1234567890", "roles": []},
            {"client_id": "approver-1", "client_secret": "approver-1-secret-123456", "roles": ["Influxion.Sign"]},
            {"client_id": "approver-2", "client_secret": "approver-2-secret-123456", "roles": ["Influxion.Sign"]}
        ],
        "signing_keys": null
    });
    let cfg_path = dir.join("oidc.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let mut child = Command::new("node")
        .arg(repo_root().join("tests/oidc-provider/provider.mjs"))
        .env("OIDC_PORT", "0")
        .env("OIDC_CONFIG", &cfg_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting node");
    let stdout = child.stdout.take().unwrap();
    // Read the ready line on a thread so a provider that never starts fails the test
    // instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let child = Proc(child);
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the OIDC provider did not report ready within 60 s");
    let ready: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("provider said {line:?}: {e}"));
    Provider {
        _proc: child,
        issuer: ready["issuer"].as_str().unwrap().to_owned(),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_healthy(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(out) = Command::new("curl")
            .args(["-fsS", &format!("{url}/healthz")])
            .output()
        {
            if out.status.success() {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{url} did not become healthy");
}

struct Keyserver {
    proc: Option<Proc>,
    url: String,
    data: PathBuf,
    issuer: String,
}

fn server_env(cmd: &mut Command, issuer: &str, data: &Path, port: u16) {
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "INFLUXION_OIDC_METADATA_URL",
            format!("{issuer}/.well-known/openid-configuration"),
        )
        .env("INFLUXION_AZURE_TENANT_ID", TENANT)
        .env("INFLUXION_AZURE_AUDIENCE", AUDIENCE)
        .env("INFLUXION_TOKEN_VERSIONS", "2.0")
        .env("INFLUXION_LISTEN", format!("127.0.0.1:{port}"))
        .env("INFLUXION_DATA_DIR", data)
        .env(
            "INFLUXION_KEK",
            "qNyQ3e3Yq8Vh0m3G2mH8l8mW2l0Zp2b3Qy0rJ8v6dXE=",
        )
        .env("INFLUXION_BOOTSTRAP_ADMIN", "app_id=ci-admin")
        .env("INFLUXION_LOG", "warn");
}

fn start_keyserver(dir: &Path, issuer: &str) -> Keyserver {
    let port = free_port();
    let data = dir.join("data");
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").current_dir(dir);
    server_env(&mut cmd, issuer, &data, port);
    let child = cmd.stdout(Stdio::null()).spawn().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    wait_healthy(&url);
    let ks = Keyserver {
        proc: Some(Proc(child)),
        url,
        data,
        issuer: issuer.to_owned(),
    };
    // The bootstrap admin makes the CI client a signer.
    ok(&ks.admin(
        &[
            "subjects",
            "create",
            "ci",
            "--app-id",
            "ci-signer",
            "--grant",
            "signer",
        ],
        dir,
    ));
    ks
}

impl Keyserver {
    /// Run the CLI as client `id`.
    /// The CLI as client `id`, configured only through the environment.
    fn command(&self, id: &str, secret: &str, args: &[&str], cwd: &Path) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(cwd)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CI", "true")
            .env("INFLUXION_SERVER", &self.url)
            .env(
                "INFLUXION_OIDC_METADATA_URL",
                format!("{}/.well-known/openid-configuration", self.issuer),
            )
            .env("INFLUXION_AZURE_CLIENT_ID", id)
            .env("INFLUXION_AZURE_CLIENT_SECRET", secret)
            .env(
                "INFLUXION_AZURE_DEFAULT_SCOPE",
                format!("{AUDIENCE}/.default"),
            );
        c
    }

    /// Run the CLI as client `id`.
    fn cli(&self, id: &str, secret: &str, args: &[&str], cwd: &Path) -> Output {
        self.command(id, secret, args, cwd).output().unwrap()
    }

    fn signer(&self, args: &[&str], cwd: &Path) -> Output {
        self.cli("ci-signer", "s3cret-value-1234567890", args, cwd)
    }

    fn admin(&self, args: &[&str], cwd: &Path) -> Output {
        self.cli("ci-admin", "admin-secret-1234567890", args, cwd)
    }

    /// The CLI as a child process (for `sign`, which waits for approvals).
    fn spawn_signer(&self, args: &[&str], cwd: &Path) -> Child {
        self.command("ci-signer", "s3cret-value-1234567890", args, cwd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn stop(&mut self) {
        self.proc.take();
    }
}

#[track_caller]
fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn openssl(args: &[&str], cwd: &Path) -> Output {
    Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn write_firmware(dir: &Path, name: &str, len: usize) {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.join(name), data).unwrap();
}

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
    let v = openssl(
        &[
            "dgst",
            "-sha256",
            "-verify",
            "pub.pem",
            "-signature",
            "firmware.sig",
            "firmware.bin",
        ],
        d,
    );
    assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), "Verified OK");
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
    let out = ok(&Command::new(BIN)
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap());
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
            let store = influxion_store::Store::open(&url).await.unwrap();
            sqlx::query(sql).execute(store.pool()).await.unwrap();
        });
        let o = Command::new(BIN)
            .args(["audit", "verify", "--data-dir"])
            .arg(copy.path())
            .output()
            .unwrap();
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
    let port = free_port();
    // The issuer takes the next port; make sure both are free enough by picking again if not.
    let _dev = Proc(
        Command::new(BIN)
            .args(["dev", "--data-dir", "devdata", "--port", &port.to_string()])
            .current_dir(d)
            .env("INFLUXION_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}");
    wait_healthy(&url);
    let env_file = std::fs::read_to_string(d.join("devdata/dev.env")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for f in ["dev.env", "kek", "dev-oidc.json"] {
        let mode = std::fs::metadata(d.join("devdata").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is readable by others");
    }
    let mut cmd = Command::new(BIN);
    cmd.current_dir(d)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for line in env_file.lines() {
        let (k, v) = line.trim_start_matches("export ").split_once('=').unwrap();
        cmd.env(k, v);
    }
    write_firmware(d, "firmware.bin", 20 * 1024 * 1024);
    ok(&cmd
        .args([
            "sign",
            "--key",
            "demo",
            "firmware.bin",
            "-o",
            "firmware.sig",
        ])
        .output()
        .unwrap());
    let mut cmd2 = Command::new(BIN);
    cmd2.current_dir(d).env_clear();
    for line in env_file.lines() {
        let (k, v) = line.trim_start_matches("export ").split_once('=').unwrap();
        cmd2.env(k, v);
    }
    ok(&cmd2
        .args(["keys", "public", "demo", "-o", "pub.pem"])
        .output()
        .unwrap());
    let v = openssl(
        &[
            "dgst",
            "-sha256",
            "-verify",
            "pub.pem",
            "-signature",
            "firmware.sig",
            "firmware.bin",
        ],
        d,
    );
    assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), "Verified OK");
}

/// The pending request id of key `key`, as approver 1 sees it, waiting for it to appear.
fn pending_id(ks: &Keyserver, d: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = ok(&ks.cli(
            "approver-1",
            "approver-1-secret-123456",
            &["approvals", "list"],
            d,
        ));
        if let Some(line) = out.lines().nth(1) {
            return line.split_whitespace().next().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no pending request appeared");
        std::thread::sleep(Duration::from_millis(200));
    }
}

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
    ok(&ks.signer(&["keys", "public", "rel-prod", "-o", "rel.pem"], d));
    let v = openssl(
        &[
            "dgst",
            "-sha256",
            "-verify",
            "rel.pem",
            "-signature",
            "rel.sig",
            "fw.bin",
        ],
        d,
    );
    assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), "Verified OK");

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
    assert!(me.contains("\"ci\"") && me.contains("\"signer\""), "{me}");
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
    assert!(me.contains("\"subjects\": []"), "{me}");
    ok(&ks.admin(&["subjects", "delete", "ci"], d));
    let last = ks.admin(&["subjects", "delete", "bootstrap-admin"], d);
    assert!(!last.status.success() && String::from_utf8_lossy(&last.stderr).contains("last-admin"));
    let audit = ok(&Command::new(BIN)
        .args(["audit", "verify", "--data-dir"])
        .arg(&ks.data)
        .output()
        .unwrap());
    assert!(audit.contains("intact"), "{audit}");
}
