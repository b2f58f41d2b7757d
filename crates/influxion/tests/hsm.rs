//! The real binary with keys on a PKCS#11 token: SoftHSM2 with a token initialised in
//! a temporary directory, configured by INFLUXION_PKCS11_* settings. Signatures are
//! checked with openssl; a wrong PIN stops the keyserver at start, naming the setting;
//! a device CA with its key on the token; the token going away and coming back.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

mod common;

use std::process::Command;

use common::*;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A SoftHSM token directory under `d` with a token for each label (user PIN
/// `user-pin-1`); returns the `SOFTHSM2_CONF` path.
fn softhsm(d: &std::path::Path, labels: &[&str]) -> String {
    std::fs::create_dir_all(d.join("tokens")).unwrap();
    let conf = d.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!("directories.tokendir = {}\n", d.join("tokens").display()),
    )
    .unwrap();
    for label in labels {
        let init = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                "so-pin-1",
                "--pin",
                "user-pin-1",
            ])
            .output()
            .expect("softhsm2-util (Debian softhsm2; scripts/test.sh installs it)");
        assert!(
            init.status.success(),
            "{}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    conf.display().to_string()
}

#[test]
fn keys_on_a_softhsm_token_sign_through_the_keyserver() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let conf_s = softhsm(d, &["line-1"]);
    std::fs::write(d.join("pin"), "user-pin-1\n").unwrap();
    let pin_file = d.join("pin").display().to_string();

    // A wrong PIN: the keyserver does not start, and says which setting is wrong.
    let provider = start_provider(d);
    let mut wrong = Command::new(BIN);
    wrong.arg("serve").current_dir(d);
    server_env(
        &mut wrong,
        &provider.issuer,
        &d.join("data-wrong"),
        free_port(),
    );
    let out = wrong
        .env("SOFTHSM2_CONF", &conf_s)
        .env("INFLUXION_PKCS11_MODULE", MODULE)
        .env("INFLUXION_PKCS11_TOKEN", "line-1")
        .env("INFLUXION_PKCS11_PIN", "0000")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("INFLUXION_PKCS11_PIN"), "{err}");

    let ks = start_keyserver_env(
        d,
        &provider.issuer,
        AUDIENCE,
        &[
            ("SOFTHSM2_CONF", conf_s.as_str()),
            ("INFLUXION_PKCS11_MODULE", MODULE),
            ("INFLUXION_PKCS11_TOKEN", "line-1"),
            ("INFLUXION_PKCS11_PIN_FILE", pin_file.as_str()),
        ],
    );
    write_firmware(d, "fw.bin", 70_000);
    let created = ok(&ks.admin(&["keys", "create", "hsm-fw", "--backend", "pkcs11"], d));
    assert!(
        created.starts_with("created key hsm-fw (ec-p256, pkcs11 backend) sha256:"),
        "{created}"
    );
    ok(&ks.signer(&["sign", "--key", "hsm-fw", "fw.bin", "-o", "fw.sig"], d));
    ok(&ks.signer(&["keys", "public", "hsm-fw", "-o", "hsm.pem"], d));
    assert_sha256_verifies(d, "hsm.pem", "fw.sig", "fw.bin");
    let audit: serde_json::Value = serde_json::from_str(&ok(&ks.admin(
        &[
            "--output", "json", "audit", "list", "--action", "sign", "--key", "hsm-fw",
        ],
        d,
    )))
    .unwrap();
    let detail = &audit["records"][0]["detail"];
    assert_eq!(detail["backend"], "pkcs11", "{audit}");
    assert_eq!(detail["token"], "line-1");
    assert_eq!(detail["key_id"].as_str().unwrap().len(), 32);

    // A device CA whose key is on the token: its certificates verify and lint clean.
    ok(&ks.admin(
        &[
            "ca",
            "create",
            "hsm-root",
            "--cn",
            "HSM Root CA",
            "--backend",
            "pkcs11",
        ],
        d,
    ));
    ok(&ks.admin(
        &[
            "profiles",
            "set",
            "hdev",
            "--ca",
            "hsm-root",
            "--cn",
            "{device_id}",
            "--key-types",
            "ec-p256",
        ],
        d,
    ));
    let csr = openssl(
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
            "/CN=dev-1",
            "-out",
            "dev.csr",
        ],
        d,
    );
    assert!(csr.status.success());
    ok(&ks.admin(
        &[
            "cert",
            "issue",
            "--profile",
            "hdev",
            "--csr",
            "dev.csr",
            "-o",
            "dev.pem",
        ],
        d,
    ));
    ok(&ks.admin(&["ca", "chain", "hsm-root", "-o", "hroot.pem"], d));
    let v = openssl(&["verify", "-CAfile", "hroot.pem", "dev.pem"], d);
    assert!(
        String::from_utf8_lossy(&v.stdout).contains("dev.pem: OK"),
        "{}",
        String::from_utf8_lossy(&v.stderr)
    );
    lint_clean(&["lint_pkix_cert", "lint"], &d.join("dev.pem"));
    lint_clean(&["lint_pkix_cert", "lint"], &d.join("hroot.pem"));
    let ca: serde_json::Value = serde_json::from_str(&ok(&ks.admin(
        &["--output", "json", "audit", "list", "--action", "ca.create"],
        d,
    )))
    .unwrap();
    assert_eq!(ca["records"][0]["detail"]["backend"], "pkcs11", "{ca}");
    assert_eq!(ca["records"][0]["detail"]["token"], "line-1", "{ca}");

    // The firmware formats with the token's key: a code-signing certificate from the
    // token's CA, CMS checked by openssl, an MCUboot image checked by imgtool.
    ok(&ks.admin(
        &[
            "profiles",
            "set",
            "hsm-code",
            "--ca",
            "hsm-root",
            "--cn",
            "{device_id}",
            "--key-types",
            "ec-p256",
            "--eku",
            "code_signing",
        ],
        d,
    ));
    ok(&ks.admin(&["keys", "certify", "hsm-fw", "--profile", "hsm-code"], d));
    ok(&ks.signer(
        &[
            "sign", "--key", "hsm-fw", "--format", "cms", "fw.bin", "-o", "fw.p7s",
        ],
        d,
    ));
    let (verified, said) = openssl_cms_verifies(d, "fw.p7s", "fw.bin", "hroot.pem");
    assert!(verified, "{said}");
    ok(&ks.signer(
        &[
            "sign",
            "--key",
            "hsm-fw",
            "--format",
            "mcuboot",
            "--header-size",
            "0x200",
            "--pad-header",
            "fw.bin",
            "-o",
            "fw.signed",
        ],
        d,
    ));
    let (verified, said) = imgtool_verifies(d, "hsm.pem", "fw.signed");
    assert!(verified, "{said}");
    mingw(d, "hello.exe", "int main(void) { return 0; }\n", &[]);
    ok(&ks.signer(
        &[
            "sign",
            "--key",
            "hsm-fw",
            "--format",
            "authenticode",
            "hello.exe",
            "-o",
            "hsm.exe",
        ],
        d,
    ));
    let (verified, said) = tool(
        d,
        "osslsigncode",
        &["verify", "-CAfile", "hroot.pem", "-in", "hsm.exe"],
    );
    assert!(verified, "{said}");

    // Keys made outside Influxion, bound by label or id. One the token would let out is
    // refused unless the operator accepts it, and that is audited.
    keygen(&conf_s, "line-1", "made-outside", "0a0b0c", "--sensitive");
    keygen(&conf_s, "line-1", "let-out", "0d0e", "--extractable");
    let imported = ok(&ks.admin(
        &[
            "keys",
            "import",
            "outside",
            "--pkcs11-label",
            "made-outside",
        ],
        d,
    ));
    assert!(
        imported.starts_with("imported key outside (ec-p256, pkcs11"),
        "{imported}"
    );
    ok(&ks.signer(
        &["sign", "--key", "outside", "fw.bin", "-o", "outside.sig"],
        d,
    ));
    ok(&ks.signer(&["keys", "public", "outside", "-o", "outside.pem"], d));
    assert_sha256_verifies(d, "outside.pem", "outside.sig", "fw.bin");
    let refused = ks.admin(&["keys", "import", "let-out", "--pkcs11-id", "0d0e"], d);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(
        err.contains("unfit-key") && err.contains("--allow-extractable"),
        "{err}"
    );
    let bad_id = ks.admin(&["keys", "import", "let-out", "--pkcs11-id", "not-hex"], d);
    let err = String::from_utf8_lossy(&bad_id.stderr);
    assert!(
        !bad_id.status.success() && err.contains("invalid-request"),
        "{err}"
    );
    let missing = ks.admin(
        &["keys", "import", "nothing", "--pkcs11-label", "no-such"],
        d,
    );
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && err.contains("unfit-key"),
        "{err}"
    );
    ok(&ks.admin(
        &[
            "keys",
            "import",
            "let-out",
            "--pkcs11-id",
            "0d0e",
            "--allow-extractable",
        ],
        d,
    ));
    let imports: serde_json::Value = serde_json::from_str(&ok(&ks.admin(
        &[
            "--output",
            "json",
            "audit",
            "list",
            "--action",
            "key.import",
        ],
        d,
    )))
    .unwrap();
    let latest = &imports["records"][0]["detail"];
    assert_eq!(latest["allow_extractable"], true, "{imports}");
    assert_eq!(latest["extractable"], true, "{imports}");
    assert_eq!(latest["key_id"], "0d0e", "{imports}");
    assert_eq!(latest["token"], "line-1", "{imports}");
    // Refusals are audited too; the first import is the oldest record.
    let records = imports["records"].as_array().unwrap();
    let refused = records.iter().filter(|r| r["outcome"] == "refused").count();
    assert_eq!(refused, 3, "{imports}");
    let first = &records[records.len() - 1]["detail"];
    assert_eq!(first["label"], "made-outside", "{imports}");
    assert!(first.get("extractable").is_none(), "{imports}");

    // The token goes away mid-run: its keys answer 503 backend-unavailable, /readyz
    // says so, software keys keep signing; once it is back the keyserver has logged in
    // again by itself.
    ok(&ks.admin(&["keys", "create", "sw-fw", "--backend", "software"], d));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ready = || readyz(&rt, &ks.url);
    let (status, body) = ready();
    assert_eq!(
        (status, &body["backends"]["pkcs11"]),
        (200, &"ok".into()),
        "{body}"
    );
    let tokens = d.join("tokens");
    std::fs::rename(&tokens, d.join("tokens-away")).unwrap();
    let away = ks.signer(&["sign", "--key", "hsm-fw", "fw.bin", "-o", "away.sig"], d);
    let err = String::from_utf8_lossy(&away.stderr);
    assert!(!away.status.success(), "{err}");
    assert!(err.contains("backend-unavailable"), "{err}");
    assert!(!d.join("away.sig").exists());
    let (status, body) = ready();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["type"], "https://influxion.dev/problems/not-ready");
    assert_eq!(body["backends"]["pkcs11"], "unavailable", "{body}");
    assert_eq!(body["backends"]["software"], "ok", "{body}");
    ok(&ks.signer(&["sign", "--key", "sw-fw", "fw.bin", "-o", "sw.sig"], d));

    std::fs::rename(d.join("tokens-away"), &tokens).unwrap();
    wait_ready(&rt, &ks.url, "the token did not come back");
    ok(&ks.signer(&["sign", "--key", "hsm-fw", "fw.bin", "-o", "back.sig"], d));
    assert_sha256_verifies(d, "hsm.pem", "back.sig", "fw.bin");
}

/// A P-256 key pair made on `token` by pkcs11-tool (outside Influxion), with `CKA_LABEL`
/// `label`, `CKA_ID` `id` and `extra` (`--sensitive`, `--extractable`).
fn keygen(conf: &str, token: &str, label: &str, id: &str, extra: &str) {
    let out = Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", conf)
        .args([
            "--module",
            MODULE,
            "--token-label",
            token,
            "--login",
            "--pin",
            "user-pin-1",
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--usage-sign",
            "--label",
            label,
            "--id",
            id,
            extra,
        ])
        .output()
        .expect("pkcs11-tool (Debian opensc)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `GET /readyz`: its status and body.
fn readyz(rt: &tokio::runtime::Runtime, url: &str) -> (u16, serde_json::Value) {
    rt.block_on(async {
        let r = reqwest::get(format!("{url}/readyz")).await.unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    })
}

/// Wait (up to a minute) until `/readyz` answers 200: a token reconnected by itself.
fn wait_ready(rt: &tokio::runtime::Runtime, url: &str, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while readyz(rt, url).0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {}",
            readyz(rt, url).1
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The token directory of SoftHSM's token `label` (a directory per token, its label in
/// `token.object`).
fn token_dir(d: &std::path::Path, label: &str) -> std::path::PathBuf {
    std::fs::read_dir(d.join("tokens"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            std::fs::read(p.join("token.object")).is_ok_and(|b| {
                b.windows(label.len() + 1)
                    .any(|w| w.starts_with(label.as_bytes()) && w[label.len()] == b' ')
            })
        })
        .unwrap_or_else(|| panic!("no SoftHSM directory for token {label}"))
}

/// Two tokens named in the TOML file (`[pkcs11.line-a]`, `[pkcs11.line-b]`), each a
/// backend with its own PIN setting: keys are created, imported and signed on the token
/// they name, audit records say which, and when one token goes away the other keeps
/// signing while the first reconnects by itself. line-b is reached through a second
/// copy of the SoftHSM library, as two HSMs of different vendors would be: each module
/// is loaded, initialized and reloaded on its own.
#[test]
fn several_named_tokens_are_backends_of_their_own() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let conf_s = softhsm(d, &["line-a", "line-b"]);
    let second_module = d.join("libsofthsm2-copy.so");
    std::fs::copy(MODULE, &second_module).unwrap();
    std::fs::write(d.join("pin-b"), "user-pin-1\n").unwrap();
    std::fs::write(
        d.join("influxion.toml"),
        format!(
            "[pkcs11.line-a]\nmodule = {MODULE:?}\ntoken = \"line-a\"\npool = 2\n\n\
             [pkcs11.line-b]\nmodule = {:?}\ntoken = \"line-b\"\n",
            second_module.display().to_string()
        ),
    )
    .unwrap();
    let config = d.join("influxion.toml").display().to_string();
    let pin_b = d.join("pin-b").display().to_string();
    let env = [
        ("SOFTHSM2_CONF", conf_s.as_str()),
        ("INFLUXION_CONFIG", config.as_str()),
        ("INFLUXION_PKCS11_LINE_A_PIN", "user-pin-1"),
        ("INFLUXION_PKCS11_LINE_B_PIN_FILE", pin_b.as_str()),
    ];

    // `config check` names each token and the setting its PIN comes from, never the PIN.
    let provider = start_provider(d);
    let mut check = Command::new(BIN);
    check.args(["config", "check"]).current_dir(d);
    server_env(&mut check, &provider.issuer, &d.join("data"), free_port());
    let out = ok(&check.envs(env).output().unwrap());
    assert!(
        out.contains("[pkcs11.line-a]\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\ntoken = \"line-a\"\npin = \"(set, redacted; INFLUXION_PKCS11_LINE_A_PIN / INFLUXION_PKCS11_LINE_A_PIN_FILE)\"\npool = 2\n"),
        "{out}"
    );
    assert!(out.contains("[pkcs11.line-b]\n"), "{out}");
    assert!(!out.contains("user-pin-1"), "{out}");

    // Two tables on one token would share its login (the second PIN never checked):
    // the keyserver does not start.
    std::fs::write(
        d.join("twice.toml"),
        format!(
            "[pkcs11.one]\nmodule = {MODULE:?}\ntoken = \"line-a\"\n\n\
             [pkcs11.two]\nmodule = {MODULE:?}\ntoken = \"line-a\"\n"
        ),
    )
    .unwrap();
    let twice = d.join("twice.toml").display().to_string();
    let mut serve = Command::new(BIN);
    serve.arg("serve").current_dir(d);
    server_env(
        &mut serve,
        &provider.issuer,
        &d.join("data-twice"),
        free_port(),
    );
    let out = serve
        .envs([
            ("SOFTHSM2_CONF", conf_s.as_str()),
            ("INFLUXION_CONFIG", twice.as_str()),
            ("INFLUXION_PKCS11_ONE_PIN", "user-pin-1"),
            ("INFLUXION_PKCS11_TWO_PIN", "not-the-pin"),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("name the same PKCS#11 token"), "{err}");

    let ks = start_keyserver_env(d, &provider.issuer, AUDIENCE, &env);
    write_firmware(d, "fw.bin", 5_000);
    // With two tokens, `pkcs11` alone does not say which.
    let vague = ks.admin(&["keys", "create", "x", "--backend", "pkcs11"], d);
    let err = String::from_utf8_lossy(&vague.stderr);
    assert!(!vague.status.success(), "{err}");
    assert!(
        err.contains("invalid-request") && err.contains("pkcs11:line-a, pkcs11:line-b"),
        "{err}"
    );
    for (key, backend) in [("a-fw", "pkcs11:line-a"), ("b-fw", "pkcs11:line-b")] {
        let created = ok(&ks.admin(&["keys", "create", key, "--backend", backend], d));
        assert!(
            created.starts_with(&format!("created key {key} (ec-p256, {backend} backend)")),
            "{created}"
        );
        ok(&ks.signer(&["keys", "public", key, "-o", &format!("{key}.pem")], d));
        ok(&ks.signer(
            &["sign", "--key", key, "fw.bin", "-o", &format!("{key}.sig")],
            d,
        ));
        assert_sha256_verifies(d, &format!("{key}.pem"), &format!("{key}.sig"), "fw.bin");
    }
    let audit: serde_json::Value = serde_json::from_str(&ok(&ks.admin(
        &[
            "--output", "json", "audit", "list", "--action", "sign", "--key", "b-fw",
        ],
        d,
    )))
    .unwrap();
    let detail = &audit["records"][0]["detail"];
    assert_eq!(detail["backend"], "pkcs11:line-b", "{audit}");
    assert_eq!(detail["token"], "line-b", "{audit}");

    // An existing key is imported from the token named; without a name it is ambiguous.
    keygen(&conf_s, "line-b", "made-on-b", "0b0b", "--sensitive");
    let vague = ks.admin(
        &["keys", "import", "from-b", "--pkcs11-label", "made-on-b"],
        d,
    );
    let err = String::from_utf8_lossy(&vague.stderr);
    assert!(
        !vague.status.success() && err.contains("invalid-request"),
        "{err}"
    );
    let wrong_kind = ks.admin(
        &[
            "keys",
            "import",
            "from-b",
            "--pkcs11-label",
            "made-on-b",
            "--backend",
            "software",
        ],
        d,
    );
    let err = String::from_utf8_lossy(&wrong_kind.stderr);
    assert!(
        !wrong_kind.status.success() && err.contains("invalid-request"),
        "{err}"
    );
    let imported = ok(&ks.admin(
        &[
            "keys",
            "import",
            "from-b",
            "--pkcs11-label",
            "made-on-b",
            "--backend",
            "pkcs11:line-b",
        ],
        d,
    ));
    assert!(
        imported.starts_with("imported key from-b (ec-p256, pkcs11:line-b"),
        "{imported}"
    );
    ok(&ks.signer(
        &["sign", "--key", "from-b", "fw.bin", "-o", "from-b.sig"],
        d,
    ));

    // line-b goes away: its keys answer 503, line-a's keep signing, /readyz names it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ready = || readyz(&rt, &ks.url);
    let b_dir = token_dir(d, "line-b");
    std::fs::rename(&b_dir, d.join("line-b-away")).unwrap();
    let away = ks.signer(&["sign", "--key", "b-fw", "fw.bin", "-o", "away.sig"], d);
    let err = String::from_utf8_lossy(&away.stderr);
    assert!(
        !away.status.success() && err.contains("backend-unavailable"),
        "{err}"
    );
    ok(&ks.signer(&["sign", "--key", "a-fw", "fw.bin", "-o", "a2.sig"], d));
    assert_sha256_verifies(d, "a-fw.pem", "a2.sig", "fw.bin");
    let (status, body) = ready();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["backends"]["pkcs11:line-b"], "unavailable", "{body}");
    assert_eq!(body["backends"]["pkcs11:line-a"], "ok", "{body}");

    std::fs::rename(d.join("line-b-away"), &b_dir).unwrap();
    wait_ready(&rt, &ks.url, "line-b did not come back");
    ok(&ks.signer(&["sign", "--key", "b-fw", "fw.bin", "-o", "b2.sig"], d));
    assert_sha256_verifies(d, "b-fw.pem", "b2.sig", "fw.bin");
}
