//! SoftHSM tokens for the tests: a token directory of their own (`SOFTHSM2_CONF`).

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)] // test helpers

use std::path::Path;
use std::process::Command;

use influxion_pkcs11::{TokenConfig, TokenSelector};
use zeroize::Zeroizing;

pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const PIN: &str = "1234-user-pin";

/// The backend `name` on the token labelled `label`.
pub fn config(name: &str, label: &str, pin: &str, pool: usize) -> TokenConfig {
    TokenConfig {
        name: name.into(),
        module: MODULE.into(),
        token: TokenSelector::Label(label.into()),
        pin: Zeroizing::new(pin.into()),
        pin_setting: "INFLUXION_PKCS11_PIN".into(),
        pool,
    }
}

/// A fresh SoftHSM token labelled `label` under `dir`; sets `SOFTHSM2_CONF` for this
/// process (each test binary runs its SoftHSM tests in one test function).
pub fn token(dir: &Path, label: &str) {
    assert!(
        Path::new(MODULE).exists(),
        "{MODULE} is missing: install Debian's softhsm2 (scripts/test.sh does)"
    );
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    std::env::set_var("SOFTHSM2_CONF", &conf);
    init_token(label);
}

/// Initialise one more token in the directory of `SOFTHSM2_CONF`.
pub fn init_token(label: &str) {
    let out = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            "5678-so-pin",
            "--pin",
            PIN,
        ])
        .output()
        .expect("softhsm2-util (Debian softhsm2)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
