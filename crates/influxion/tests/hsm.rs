//! The real binary with keys on a PKCS#11 token: SoftHSM2 with a token initialised in
//! a temporary directory, configured by INFLUXION_PKCS11_* settings. Signatures are
//! checked with openssl; a wrong PIN stops the keyserver at start, naming the setting.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

mod common;

use std::process::Command;

use common::*;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

#[test]
fn keys_on_a_softhsm_token_sign_through_the_keyserver() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("tokens")).unwrap();
    let conf = d.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!("directories.tokendir = {}\n", d.join("tokens").display()),
    )
    .unwrap();
    let init = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            "line-1",
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
    let conf_s = conf.display().to_string();
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
}
