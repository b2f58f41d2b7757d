//! `influxion-bench`: how fast does the keyserver sign, end to end, compared with the
//! raw signing rate of the same key measured in the same run?
//!
//! 1. Starts the real `influxion dev` binary (keyserver + development issuer, SQLite,
//!    software keystore) in a fresh data directory.
//! 2. Raw baseline: unwraps the `demo` key from that data directory and signs digests
//!    in-process on every core for the given duration.
//! 3. End to end: obtains a token by client credentials, then drives `POST
//!    /v1/keys/demo/sign` at the given concurrency for the given duration. Every
//!    response is returned only after its audit record is committed with
//!    `synchronous=FULL` (group commit).
//! 4. Prints requests/s, p50/p99 latency, the keyserver's peak RSS, and the ratio.
//!
//! With `--mode certs` the same is done for device certificates: the raw baseline is
//! in-process issuance (CSR parse and proof-of-possession check, profile, certificate
//! built and signed by the development device CA's software key), the end-to-end
//! figure is `POST /v1/profiles/device/certificates` with P-256 CSRs, each answered
//! after the certificate's record and audit record are committed.
//!
//! With `--mode web` it measures what the keyclient (the web app's backend-for-frontend)
//! adds: a person (`bob`) signs in through the development issuer, then `GET /v1/me` is
//! driven directly at the keyserver with a bearer token (the baseline) and through the
//! keyclient's `/api/v1/me` with the session cookie (session lookup, decryption and the
//! proxy hop added), at the same concurrency, one after the other.
//!
//! With `--mode vault` the key is in Azure Key Vault: the loopback HTTPS vault stand-in
//! and the instance-metadata stand-in run in this process, `influxion dev` is pointed
//! at them (`INFLUXION_VAULT_URL`, `INFLUXION_IMDS_ENDPOINT`, `INFLUXION_VAULT_CA_FILE`)
//! and creates a P-256 key there. The baseline is the stand-in's own rate for `POST
//! keys/{name}/{version}/sign` driven directly over HTTPS at the same concurrency; the
//! end-to-end figure is `POST /v1/keys/vault-demo/sign`; vault sign calls are counted
//! per signature the keyserver returned (it must be 1.0).
//!
//! With `--mode formats` the client side is measured on a large file: `sha256sum`
//! beside Influxion's streaming hash, and `influxion sign --format F` for each format
//! with its wall time and peak RSS (see `formats.rs`).
//!
//! With `--mode pkcs11` the key is on a SoftHSM2 token (a token made in the bench's
//! directory, `--pool` sessions in the keyserver): the baseline is SoftHSM's own sign
//! rate through the same module driven directly in this process at the same
//! concurrency, the end-to-end figure is `POST /v1/keys/hsm-demo/sign`.

mod formats;
mod lean;
mod pkcs11;
mod reliability;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use influxion_core::{Digest, KeyName, SignAlgorithm};
use influxion_keystore::{Kek, SoftwareKeystore};
use rand::RngCore;

#[derive(Parser)]
struct Args {
    /// The influxion binary to benchmark.
    #[arg(long, default_value = "target/release/influxion")]
    influxion: PathBuf,
    /// Concurrent in-flight requests.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds of measurement for each phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 18400)]
    port: u16,
    /// `sign`: digests with the demo key; `certs`: device certificates from P-256 CSRs
    /// with the development device CA (software CA key); `web`: GET /v1/me directly vs
    /// through the keyclient with a session cookie; `vault`: a Key Vault key through the
    /// stand-in vault, beside the stand-in's own sign rate; `pkcs11`: a
    /// SoftHSM2 key, beside SoftHSM's own sign rate; `reliability`: two replicas on one
    /// PostgreSQL under load through a crash, a provider outage and rotation, and a
    /// database restart (`--seconds` per phase), then every response checked against the
    /// database.
    #[arg(long, default_value = "sign")]
    mode: String,
    /// With `--mode pkcs11`: the keyserver's session pool (INFLUXION_PKCS11_POOL).
    #[arg(long, default_value_t = 4)]
    pool: usize,
    /// With `--mode formats`: the size of the file signed, in MiB.
    #[arg(long, default_value_t = 2048)]
    size_mib: usize,
    /// Run this command, wait for it, and print its peak RSS in KiB (used by `--mode
    /// formats` to measure the CLI).
    #[arg(long, num_args = 1.., allow_hyphen_values = true)]
    rss_of: Vec<String>,
}

/// Drive requests made by `make` at `concurrency` for `seconds` (after 2 s of warm-up):
/// the sorted latencies in µs of the successful ones, the elapsed seconds, the errors.
async fn drive(
    concurrency: usize,
    seconds: u64,
    make: Arc<dyn Fn() -> reqwest::RequestBuilder + Send + Sync>,
) -> Result<(Vec<u32>, f64, u64)> {
    let (lat, elapsed, errors, _) = drive_counting(concurrency, seconds, make).await?;
    Ok((lat, elapsed, errors))
}

/// As [`drive`], and also how many requests succeeded in all, warm-up included.
async fn drive_counting(
    concurrency: usize,
    seconds: u64,
    make: Arc<dyn Fn() -> reqwest::RequestBuilder + Send + Sync>,
) -> Result<(Vec<u32>, f64, u64, u64)> {
    let all_ok = Arc::new(AtomicU64::new(0));
    let phase = Phase::default();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (make, phase, all_ok) = (make.clone(), phase.clone(), all_ok.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            while phase.running() {
                let t = Instant::now();
                let ok = match make().send().await {
                    Ok(resp) if resp.status().is_success() => resp.bytes().await.is_ok(),
                    _ => false,
                };
                if ok {
                    all_ok.fetch_add(1, Ordering::Relaxed);
                }
                phase.record(ok, t, &mut lat);
            }
            lat
        }));
    }
    let (lat, elapsed, errors) = phase.run(seconds, tasks).await?;
    Ok((lat, elapsed, errors, all_ok.load(Ordering::Relaxed)))
}

/// What the concurrent clients of one load phase share: when to stop, whether the
/// measured window is open, and the errors counted in it.
#[derive(Clone, Default)]
struct Phase {
    stop: Arc<AtomicBool>,
    measuring: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
}

impl Phase {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }

    /// One request that started at `t`: its latency if it succeeded, an error if not,
    /// and nothing outside the measured window.
    fn record(&self, ok: bool, t: Instant, lat: &mut Vec<u32>) {
        if !self.measuring.load(Ordering::Relaxed) {
            return;
        }
        if ok {
            lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// 2 s of warm-up, `seconds` measured, then stop the clients (`tasks`) and gather
    /// their latencies in µs, sorted; the elapsed seconds; the errors.
    async fn run(
        &self,
        seconds: u64,
        tasks: Vec<tokio::task::JoinHandle<Vec<u32>>>,
    ) -> Result<(Vec<u32>, f64, u64)> {
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.measuring.store(true, Ordering::Relaxed);
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        self.measuring.store(false, Ordering::Relaxed);
        let elapsed = start.elapsed().as_secs_f64();
        self.stop.store(true, Ordering::Relaxed);
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await?);
        }
        lat.sort_unstable();
        Ok((lat, elapsed, self.errors.load(Ordering::Relaxed)))
    }
}

/// Sign `user` in at the keyclient through the development issuer's user picker;
/// returns the session cookie value.
async fn web_sign_in(kc: &str, user: &str) -> Result<String> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let cookie = |r: &reqwest::Response| {
        r.headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("__Host-influxion="))
            .and_then(|v| v.split(';').next())
            .map(str::to_owned)
            .context("no session cookie")
    };
    let location = |r: &reqwest::Response| {
        r.headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .context("no redirect")
    };
    let r = http.get(format!("{kc}/login?return_to=%2F")).send().await?;
    let pre = cookie(&r)?;
    let authorize = location(&r)?;
    let page = http.get(&authorize).send().await?.text().await?;
    let interaction = page
        .split("name=\"interaction\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .context("no sign-in form at the development issuer")?
        .to_owned();
    let idp = reqwest::Url::parse(&authorize)?.join("/authorize/login")?;
    let r = http
        .post(idp)
        .form(&[("interaction", interaction.as_str()), ("username", user)])
        .send()
        .await?;
    let callback = location(&r)?;
    let r = http
        .get(callback)
        .header("cookie", format!("__Host-influxion={pre}"))
        .send()
        .await?;
    cookie(&r)
}

/// A pool of P-256 CSRs, made before measuring.
fn csr_pool(n: usize) -> Result<Vec<String>> {
    (0..n)
        .map(|i| {
            influxion_pki::encode::local_key_and_csr(
                influxion_pki::DeviceKeyType::EcP256,
                &format!("bench-{i:05}"),
            )
            .map(|(_, csr)| csr)
            .map_err(anyhow::Error::from)
        })
        .collect()
}

/// Raw in-process issuance on every core: parse and verify the CSR, check it against
/// the profile, build and sign the certificate with the CA key (no HTTP, no token, no
/// database).
async fn raw_cert_rate(
    data: &std::path::Path,
    seconds: u64,
    csrs: Arc<Vec<String>>,
) -> Result<f64> {
    let kek = Kek::from_text(&std::fs::read_to_string(data.join("kek"))?)?;
    let store = influxion_store::Store::open(
        &format!("sqlite://{}/influxion.db", data.display()),
        influxion_store::AuditKey::new(kek.audit_mac_key()),
    )
    .await?;
    let profile: influxion_pki::ProfileSpec = serde_json::from_str(
        &store
            .get_profile("device")
            .await?
            .context("device profile missing")?
            .spec,
    )?;
    let ca = store.get_ca(&profile.ca).await?.context("CA missing")?;
    let ca_cert = ca.certificate.context("CA certificate missing")?;
    let key = store
        .get_key_by_id(&ca.key_id)
        .await?
        .context("CA key missing")?;
    let ks = Arc::new(SoftwareKeystore::new(kek));
    let threads = cores();
    on_every_core(seconds, move |t, stop| {
        let signer = |digest: &[u8]| {
            let d =
                Digest::new(SignAlgorithm::Es256, digest.to_vec()).map_err(|e| e.to_string())?;
            ks.sign_blocking(&key.id, key.key_type, &key.handle, &d)
                .map_err(|e| e.to_string())
        };
        let ca_key = influxion_pki::CaKey::new(
            influxion_pki::CaKeyAlg::EcdsaP256Sha256,
            &key.public_key,
            signer,
        )
        .map_err(|e| e.to_string())?;
        let mut n = 0u64;
        let mut i = t;
        while !stop.load(Ordering::Relaxed) {
            let csr = influxion_pki::csr::parse(csrs[i % csrs.len()].as_bytes())
                .map_err(|e| e.to_string())?;
            let spec = profile.enforce(&csr, None).map_err(|e| e.to_string())?;
            let serial = influxion_pki::build::random_serial();
            influxion_pki::build::device_certificate(
                &spec,
                &serial,
                &ca_cert,
                &ca_key,
                Some("http://x/crl"),
            )
            .map_err(|e| e.to_string())?;
            n += 1;
            i += threads;
        }
        Ok(n)
    })
    .await
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Run `work(thread index, stop flag)` on every core for `seconds`; each returns how
/// many operations it did. The result is operations per second.
async fn on_every_core(
    seconds: u64,
    work: impl Fn(usize, &AtomicBool) -> Result<u64, String> + Send + Sync + 'static,
) -> Result<f64> {
    let work = Arc::new(work);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..cores())
        .map(|t| {
            let (work, stop) = (work.clone(), stop.clone());
            std::thread::spawn(move || work(t, &stop))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut count = 0;
    for h in handles {
        count += h
            .join()
            .map_err(|_| anyhow::anyhow!("raw thread panicked"))?
            .map_err(anyhow::Error::msg)?;
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn random_digest() -> Vec<u8> {
    let mut d = vec![0u8; 32];
    rand::thread_rng().fill_bytes(&mut d);
    d
}

/// Raw in-process signing with the same key on all cores.
async fn raw_rate(data: &std::path::Path, seconds: u64) -> Result<f64> {
    let kek = std::fs::read_to_string(data.join("kek"))?;
    let url = format!("sqlite://{}/influxion.db", data.display());
    raw_rate_of(&url, &kek, "demo", seconds).await
}

/// Raw in-process signing on all cores with the software key `name` of the store at
/// `url` (unwrapped with `kek`): the keystore's own rate, no HTTP, no database.
async fn raw_rate_of(url: &str, kek: &str, name: &str, seconds: u64) -> Result<f64> {
    let kek = Kek::from_text(kek)?;
    let store =
        influxion_store::Store::open(url, influxion_store::AuditKey::new(kek.audit_mac_key()))
            .await?;
    let name: KeyName = name.parse()?;
    let key = store
        .get_key(&name)
        .await?
        .with_context(|| format!("key {name} missing"))?;
    let ks = Arc::new(SoftwareKeystore::new(kek));
    on_every_core(seconds, move |_, stop| {
        let digest =
            Digest::new(SignAlgorithm::Es256, random_digest()).map_err(|e| e.to_string())?;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            ks.sign_blocking(&key.id, key.key_type, &key.handle, &digest)
                .map_err(|e| e.to_string())?;
            n += 1;
        }
        Ok(n)
    })
    .await
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // A percentile's rank: p is in [0, 1], so the product is a valid, non-negative index.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> Result<std::process::ExitCode> {
    let args = Args::parse();
    if !args.rss_of.is_empty() {
        return formats::rss_of(&args.rss_of);
    }
    if args.mode == "reliability" || args.mode == "replicas" {
        let o = reliability::Options {
            influxion: args.influxion.clone(),
            concurrency: args.concurrency,
            phase_secs: args.seconds,
            port: args.port,
            repo: std::env::current_dir()?,
        };
        return if args.mode == "reliability" {
            reliability::run(&o).await
        } else {
            reliability::bench(&o).await
        };
    }
    let dir = std::env::temp_dir().join(format!("influxion-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let vault = if args.mode == "vault" {
        Some(vault_standins(&dir).await?)
    } else {
        None
    };
    let mut dev = Command::new(&args.influxion);
    dev.args(["dev", "--data-dir"])
        .arg(&dir)
        .args(["--port", &args.port.to_string()])
        .env("INFLUXION_LOG", "warn");
    if let Some((_, v)) = &vault {
        dev.env("INFLUXION_VAULT_URL", v.url())
            .env("INFLUXION_VAULT_CA_FILE", &v.ca_file);
    }
    if let Some((idp, _)) = &vault {
        dev.env("INFLUXION_IMDS_ENDPOINT", idp.url());
    }
    if args.mode == "pkcs11" {
        dev.envs(pkcs11::token_env(&dir, args.pool)?);
    }
    let server = Guard(
        dev.stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", args.influxion.display()))?,
    );
    let base = format!("http://127.0.0.1:{}", args.port);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        if Instant::now() > deadline {
            bail!("the keyserver did not start");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let env = std::fs::read_to_string(dir.join("dev.env"))?;
    let get = |k: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("export {k}=")).map(str::to_owned))
            .unwrap_or_default()
    };
    let tok: serde_json::Value = http
        .post(format!("http://127.0.0.1:{}/token", args.port + 1))
        .basic_auth(
            get("INFLUXION_AZURE_CLIENT_ID"),
            Some(get("INFLUXION_AZURE_CLIENT_SECRET")),
        )
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", &get("INFLUXION_AZURE_DEFAULT_SCOPE")),
        ])
        .send()
        .await?
        .json()
        .await?;
    let token = Arc::new(tok["access_token"].as_str().context("no token")?.to_owned());

    if args.mode == "web" {
        return web(&args, &http, &base, token, server, &dir)
            .await
            .map(|()| std::process::ExitCode::SUCCESS);
    }
    if let Some((_idp, v)) = vault {
        return vault_mode(&args, &http, &base, token, server, &dir, v)
            .await
            .map(|()| std::process::ExitCode::SUCCESS);
    }
    if args.mode == "pkcs11" {
        return pkcs11_mode(&args, &http, &base, token, server, &dir)
            .await
            .map(|()| std::process::ExitCode::SUCCESS);
    }
    if args.mode == "formats" {
        formats::run(&args.influxion, &dir, &env, args.size_mib)?;
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let cpus = cores();
    let certs = args.mode == "certs";
    let csrs = Arc::new(if certs { csr_pool(512)? } else { Vec::new() });
    let raw = if certs {
        eprintln!(
            "raw: issuing certificates in-process on {cpus} threads for {}s",
            args.seconds
        );
        raw_cert_rate(&dir, args.seconds, csrs.clone()).await?
    } else {
        eprintln!(
            "raw: signing with the demo key on {cpus} threads for {}s",
            args.seconds
        );
        raw_rate(&dir, args.seconds).await?
    };

    eprintln!(
        "end to end: concurrency {} for {}s (after 2s warm-up)",
        args.concurrency, args.seconds
    );
    let path = if certs {
        "/v1/profiles/device/certificates"
    } else {
        "/v1/keys/demo/sign"
    };
    // Bodies made before the run: certificate requests cycle through the CSR pool,
    // signatures through 8192 random digests.
    let bodies = if certs {
        csrs.iter()
            .map(|csr| serde_json::json!({ "csr": csr }).to_string().into())
            .collect()
    } else {
        (0..8192)
            .map(|_| format!(r#"{{"digest":"{}"}}"#, hex::encode(random_digest())).into())
            .collect()
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], args.port));
    let requests = Arc::new(lean::Requests {
        addr,
        host: addr.to_string(),
        path: path.to_owned(),
        authorization: format!("Bearer {token}"),
        bodies,
    });
    let (lat, elapsed, errors) = lean::drive(args.concurrency, args.seconds, requests).await?;
    let rps = lat.len() as f64 / elapsed;
    let rss = peak_rss_kib(server.0.id()).unwrap_or(0);
    let audit = audit_verify(&args.influxion, &dir)?;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);

    if certs {
        println!("raw in-process issuance (CSR verify + profile + P-256 CA signature), {cpus} threads: {raw:.0} certificates/s");
    } else {
        println!("raw ECDSA P-256 signing, same key, {cpus} threads: {raw:.0} signatures/s");
    }
    println!(
        "end-to-end {} over HTTP, concurrency {}: {rps:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms, errors {}",
        if certs { "certificate issuance" } else { "sign" },
        args.concurrency,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        errors
    );
    println!("keyserver peak RSS: {:.1} MiB", rss as f64 / 1024.0);
    println!("ratio end-to-end / raw: {:.3}", rps / raw);
    // The machine's own limit for the same algorithm, measured now: our raw rate is a
    // baseline only as good as the crypto library behind it.
    match openssl_p256_limit(args.seconds.min(5)) {
        Some(limit) => println!(
            "machine limit (openssl speed -multi {cpus} ecdsap256, same run): {limit:.0} signatures/s; raw / limit: {:.3}; end-to-end / limit: {:.3}",
            raw / limit,
            rps / limit
        ),
        None => println!("machine limit: openssl speed did not run"),
    }
    println!("{}", String::from_utf8_lossy(&audit.stdout).trim());
    Ok(std::process::ExitCode::SUCCESS)
}

/// `--mode web`: the keyclient's overhead over calling the keyserver directly.
async fn web(
    args: &Args,
    http: &reqwest::Client,
    base: &str,
    token: Arc<String>,
    server: Guard,
    dir: &std::path::Path,
) -> Result<()> {
    let kc = format!("http://127.0.0.1:{}", args.port + 2);
    let cookie = Arc::new(format!(
        "__Host-influxion={}",
        web_sign_in(&kc, "bob").await?
    ));
    eprintln!(
        "direct: GET /v1/me with a bearer token, concurrency {} for {}s",
        args.concurrency, args.seconds
    );
    let (client, url) = (http.clone(), format!("{base}/v1/me"));
    let direct: Arc<dyn Fn() -> reqwest::RequestBuilder + Send + Sync> =
        Arc::new(move || client.get(url.as_str()).bearer_auth(token.as_str()));
    let (d_lat, d_elapsed, d_err) = drive(args.concurrency, args.seconds, direct).await?;
    eprintln!(
        "keyclient: GET /api/v1/me with the session cookie, concurrency {} for {}s",
        args.concurrency, args.seconds
    );
    let (client, url) = (http.clone(), format!("{kc}/api/v1/me"));
    let via: Arc<dyn Fn() -> reqwest::RequestBuilder + Send + Sync> =
        Arc::new(move || client.get(url.as_str()).header("cookie", cookie.as_str()));
    let (k_lat, k_elapsed, k_err) = drive(args.concurrency, args.seconds, via).await?;
    let rss = peak_rss_kib(server.0.id()).unwrap_or(0);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
    let d_rps = d_lat.len() as f64 / d_elapsed;
    let k_rps = k_lat.len() as f64 / k_elapsed;
    println!(
        "direct GET /v1/me (bearer), concurrency {}: {d_rps:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms, errors {d_err}",
        args.concurrency,
        percentile(&d_lat, 0.50),
        percentile(&d_lat, 0.99)
    );
    println!(
        "through the keyclient GET /api/v1/me (cookie), concurrency {}: {k_rps:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms, errors {k_err}",
        args.concurrency,
        percentile(&k_lat, 0.50),
        percentile(&k_lat, 0.99)
    );
    println!(
        "influxion dev (keyserver + keyclient) peak RSS: {:.1} MiB",
        rss as f64 / 1024.0
    );
    println!("ratio keyclient / direct: {:.3}", k_rps / d_rps);
    Ok(())
}

/// The identity and vault stand-ins for `--mode vault`, on loopback in this process.
async fn vault_standins(
    dir: &std::path::Path,
) -> Result<(
    influxion_azure_standin::IdentityStandIn,
    influxion_azure_standin::VaultStandIn,
)> {
    let idp = influxion_azure_standin::IdentityStandIn::start().await?;
    let vault = influxion_azure_standin::VaultStandIn::start(
        dir,
        "https://login.microsoftonline.com/bench",
    )
    .await?;
    vault.accept_standin_tokens();
    Ok((idp, vault))
}

/// `--mode vault`: a Key Vault key through the keyserver, beside the vault's own rate.
async fn vault_mode(
    args: &Args,
    http: &reqwest::Client,
    base: &str,
    token: Arc<String>,
    server: Guard,
    dir: &std::path::Path,
    vault: influxion_azure_standin::VaultStandIn,
) -> Result<()> {
    let created: serde_json::Value = http
        .post(format!("{base}/v1/keys"))
        .bearer_auth(token.as_str())
        .json(&serde_json::json!({"name": "vault-demo", "key_type": "ec-p256", "backend": "azure-keyvault"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let at = &created["location"];
    let (name, version) = (
        at["vault_key"].as_str().context("no vault key")?.to_owned(),
        at["vault_key_version"]
            .as_str()
            .context("no vault key version")?
            .to_owned(),
    );
    let vault_http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(
            &vault.ca_file,
        )?)?)
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    eprintln!(
        "vault stand-in directly: POST keys/{name}/{version}/sign, concurrency {} for {}s",
        args.concurrency, args.seconds
    );
    let sign_url = format!("{}keys/{name}/{version}/sign?api-version=7.5", vault.url());
    let client = vault_http.clone();
    let direct: Arc<dyn Fn() -> reqwest::RequestBuilder + Send + Sync> = Arc::new(move || {
        let value = base64_url(&random_digest());
        client
            .post(sign_url.as_str())
            .bearer_auth("standin-bench")
            .json(&serde_json::json!({"alg": "ES256", "value": value}))
    });
    let (d_lat, d_elapsed, d_err) = drive(args.concurrency, args.seconds, direct).await?;
    let vault_signs = |v: &influxion_azure_standin::VaultStandIn| {
        v.requests()
            .iter()
            .filter(|r| r.path.ends_with("/sign") && r.bearer.as_deref() != Some("standin-bench"))
            .count() as u64
    };
    let signs_before = vault_signs(&vault);
    eprintln!(
        "end to end: POST /v1/keys/vault-demo/sign, concurrency {} for {}s (after 2s warm-up)",
        args.concurrency, args.seconds
    );
    let (client, url) = (http.clone(), format!("{base}/v1/keys/vault-demo/sign"));
    let e2e = sign_requests(client, url, token);
    let (lat, elapsed, errors, returned) =
        drive_counting(args.concurrency, args.seconds, e2e).await?;
    let calls = vault_signs(&vault) - signs_before;
    let rss = peak_rss_kib(server.0.id()).unwrap_or(0);
    let audit = audit_verify(&args.influxion, dir)?;
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
    let d_rps = d_lat.len() as f64 / d_elapsed;
    let rps = lat.len() as f64 / elapsed;
    println!(
        "vault stand-in sign (ES256) over HTTPS directly, concurrency {}: {d_rps:.0} signatures/s, p50 {:.2} ms, p99 {:.2} ms, errors {d_err}",
        args.concurrency,
        percentile(&d_lat, 0.50),
        percentile(&d_lat, 0.99)
    );
    println!(
        "end-to-end sign with the vault key over HTTP, concurrency {}: {rps:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms, errors {errors}",
        args.concurrency,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99)
    );
    println!(
        "vault sign calls per returned signature: {:.3} ({calls} calls, {returned} signatures)",
        calls as f64 / returned.max(1) as f64
    );
    println!("keyserver peak RSS: {:.1} MiB", rss as f64 / 1024.0);
    println!("ratio end-to-end / vault direct: {:.3}", rps / d_rps);
    print_machine_limit(args.seconds, "vault stand-in direct", d_rps);
    println!("{}", String::from_utf8_lossy(&audit.stdout).trim());
    Ok(())
}

/// `--mode pkcs11`: a SoftHSM key through the keyserver, beside SoftHSM driven directly.
async fn pkcs11_mode(
    args: &Args,
    http: &reqwest::Client,
    base: &str,
    token: Arc<String>,
    server: Guard,
    dir: &std::path::Path,
) -> Result<()> {
    let created: serde_json::Value = http
        .post(format!("{base}/v1/keys"))
        .bearer_auth(token.as_str())
        .json(&serde_json::json!({"name": "hsm-demo", "key_type": "ec-p256", "backend": "pkcs11"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = hex::decode(
        created["location"]["key_id"]
            .as_str()
            .context("no CKA_ID in the key's location")?,
    )?;
    eprintln!(
        "SoftHSM directly: C_Sign CKM_ECDSA on {} sessions for {}s",
        args.concurrency, args.seconds
    );
    let (concurrency, seconds) = (args.concurrency, args.seconds);
    let direct =
        tokio::task::spawn_blocking(move || pkcs11::direct_rate(&id, concurrency, seconds))
            .await??;
    eprintln!(
        "end to end: POST /v1/keys/hsm-demo/sign, concurrency {} for {}s (after 2s warm-up), pool {}",
        args.concurrency, args.seconds, args.pool
    );
    let (client, url) = (http.clone(), format!("{base}/v1/keys/hsm-demo/sign"));
    let e2e = sign_requests(client, url, token);
    let (lat, elapsed, errors) = drive(args.concurrency, args.seconds, e2e).await?;
    let rss = peak_rss_kib(server.0.id()).unwrap_or(0);
    let audit = audit_verify(&args.influxion, dir)?;
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
    let rps = lat.len() as f64 / elapsed;
    println!(
        "SoftHSM ECDSA P-256 directly ({}), {} sessions: {direct:.0} signatures/s",
        pkcs11::MODULE,
        args.concurrency
    );
    println!(
        "end-to-end sign with the SoftHSM key over HTTP, concurrency {}, pool {}: {rps:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms, errors {errors}",
        args.concurrency,
        args.pool,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99)
    );
    println!("keyserver peak RSS: {:.1} MiB", rss as f64 / 1024.0);
    println!("ratio end-to-end / SoftHSM direct: {:.3}", rps / direct);
    print_machine_limit(args.seconds, "SoftHSM direct", direct);
    println!("{}", String::from_utf8_lossy(&audit.stdout).trim());
    Ok(())
}

/// `POST {url}` with a fresh random digest each time, as `token`.
fn sign_requests(
    client: reqwest::Client,
    url: String,
    token: Arc<String>,
) -> Arc<dyn Fn() -> reqwest::RequestBuilder + Send + Sync> {
    Arc::new(move || {
        client
            .post(url.as_str())
            .bearer_auth(token.as_str())
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"digest":"{}"}}"#,
                hex::encode(random_digest())
            ))
    })
}

/// `influxion audit verify` of the bench's data directory: the chain after the run.
fn audit_verify(
    influxion: &std::path::Path,
    dir: &std::path::Path,
) -> Result<std::process::Output> {
    Ok(Command::new(influxion)
        .args(["audit", "verify", "--data-dir"])
        .arg(dir)
        .output()?)
}

/// `openssl speed` measured now, and `direct` (what `what` did) as a share of it.
fn print_machine_limit(seconds: u64, what: &str, direct: f64) {
    match openssl_p256_limit(seconds.min(5)) {
        Some(limit) => println!(
            "machine limit (openssl speed -multi {} ecdsap256): {limit:.0} signatures/s; {what} / limit: {:.3}",
            cores(),
            direct / limit
        ),
        None => println!("machine limit: openssl speed did not run"),
    }
}

/// The machine's limit for ECDSA P-256 signing: `openssl speed -multi <cores>
/// ecdsap256` for `seconds`, in signatures/s (`None` if openssl is missing or its
/// machine-readable `+F4` line does not parse).
fn openssl_p256_limit(seconds: u64) -> Option<f64> {
    let out = Command::new("openssl")
        .args([
            "speed",
            "-mr",
            "-seconds",
            &seconds.to_string(),
            "-multi",
            &cores().to_string(),
            "ecdsap256",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // `+F4:<index>:<bits>:<signs/s>:<verifies/s>`; with -multi the last is the sum.
    text.lines()
        .rev()
        .find(|l| l.starts_with("+F4:"))?
        .split(':')
        .nth(3)?
        .parse()
        .ok()
}

fn base64_url(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}
