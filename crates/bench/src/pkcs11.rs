//! `--mode pkcs11`: a P-256 key on a SoftHSM2 token, signed through the keyserver,
//! beside SoftHSM's own rate through the same module driven directly in this process
//! (`C_Sign` with `CKM_ECDSA` on as many sessions as the end-to-end concurrency). The
//! ratio is Influxion's overhead around the token: HTTP, token validation, the
//! session pool, DER conversion, verification and the durable audit record.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cryptoki::context::{CInitializeArgs, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

pub(crate) const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN: &str = "bench";
const PIN: &str = "bench-pin";

/// A SoftHSM token directory under `dir` with one token; the environment `influxion
/// dev` needs to use it with a pool of `pool` sessions.
pub(crate) fn token_env(dir: &Path, pool: usize) -> Result<Vec<(String, String)>> {
    let tokens = dir.join("softhsm-tokens");
    std::fs::create_dir_all(&tokens)?;
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )?;
    let init = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", TOKEN])
        .args(["--so-pin", "bench-so-pin", "--pin", PIN])
        .output()
        .context("softhsm2-util (Debian softhsm2)")?;
    if !init.status.success() {
        bail!("softhsm2-util: {}", String::from_utf8_lossy(&init.stderr));
    }
    std::env::set_var("SOFTHSM2_CONF", &conf);
    Ok([
        ("SOFTHSM2_CONF", conf.display().to_string()),
        ("INFLUXION_PKCS11_MODULE", MODULE.to_owned()),
        ("INFLUXION_PKCS11_TOKEN", TOKEN.to_owned()),
        ("INFLUXION_PKCS11_PIN", PIN.to_owned()),
        ("INFLUXION_PKCS11_POOL", pool.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect())
}

/// SoftHSM's own ECDSA P-256 rate with the key of `CKA_ID` `id`: `concurrency` threads,
/// a session each (one login), `C_Sign` over 32-byte digests for `seconds`.
pub(crate) fn direct_rate(id: &[u8], concurrency: usize, seconds: u64) -> Result<f64> {
    let ctx = Pkcs11::new(MODULE)?;
    ctx.initialize(CInitializeArgs::OsThreads)?;
    let slot = ctx
        .get_slots_with_token()?
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .is_ok_and(|i| i.label().trim_end() == TOKEN)
        })
        .context("the bench token is not present")?;
    let sessions = (0..concurrency)
        .map(|_| ctx.open_rw_session(slot))
        .collect::<Result<Vec<_>, _>>()?;
    sessions[0].login(UserType::User, Some(&AuthPin::new(PIN.into())))?;
    let key = *sessions[0]
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(id.to_vec()),
        ])?
        .first()
        .context("the key is not on the token")?;
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let threads: Vec<_> = sessions
        .into_iter()
        .map(|s| {
            let stop = stop.clone();
            std::thread::spawn(move || -> Result<u64, String> {
                let digest = crate::random_digest();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    s.sign(&Mechanism::Ecdsa, key, &digest)
                        .map_err(|e| e.to_string())?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in threads {
        total += t
            .join()
            .map_err(|_| anyhow::anyhow!("a signing thread panicked"))?
            .map_err(anyhow::Error::msg)?;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}
