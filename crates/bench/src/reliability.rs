//! `--mode reliability`: two keyserver replicas on one PostgreSQL database under
//! sustained sign and certificate load, through faults, and a check afterwards that
//! nothing acknowledged was lost.
//!
//! Everything runs on loopback in a directory of its own: a PostgreSQL cluster
//! (`scripts/postgres.sh`, through `influxion_pgtest::Server`), the development OIDC
//! issuer in a runtime of its own (so stopping it closes every connection it had),
//! and two `influxion serve` processes with the same KEK. The load driver spreads
//! requests over both replicas and records every answer. The phases:
//!
//! 1. `steady`: nothing happens.
//! 2. `replica killed`: replica b gets `kill -9` halfway; a must keep serving.
//! 3. `provider down`: the OIDC issuer stops; cached signing keys must carry on.
//! 4. `provider rotated`: it comes back with a new signing key; a new token (new
//!    `kid`) must be accepted (picked up by a JWKS refresh).
//! 5. `database down`: PostgreSQL stops; both replicas must report not ready and
//!    answer 503 quickly; nothing hangs.
//! 6. `database back`: PostgreSQL starts again; both recover without a restart.
//!
//! Then the database is read directly: every signature and certificate a client
//! received has its audit record (lost = 0), no audit record exists for a request the
//! client got an error for, records for requests whose connection dropped are counted
//! as committed-unacknowledged, no serial repeats, and the chain verifies with the key.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use influxion_devidp::{DevClient, DevIdpState};
use rand::RngCore;

const AUDIENCE: &str = "api://influxion-reliability";
const ADMIN: &str = "reliability-admin";
const LOAD: &str = "reliability-load";
const KEY: &str = "rel-p256";
const PROFILE: &str = "rel-device";

const PHASES: [&str; 6] = [
    "steady",
    "replica b killed",
    "provider down",
    "provider rotated",
    "database down",
    "database back",
];

pub(crate) struct Options {
    pub influxion: PathBuf,
    pub concurrency: usize,
    /// Seconds per phase.
    pub phase_secs: u64,
    /// First of the ports used (PostgreSQL, the issuer, the replicas: five in a row).
    pub port: u16,
    /// The repository (for scripts/postgres.sh).
    pub repo: PathBuf,
}

/// The development issuer on a runtime of its own: stopping it drops the listener and
/// every connection, as a crashed provider would.
struct Idp {
    rt: Option<tokio::runtime::Runtime>,
}

impl Idp {
    fn start(port: u16, state: DevIdpState) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let router = influxion_devidp::router(&format!("http://127.0.0.1:{port}"), state)?;
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("binding the issuer on 127.0.0.1:{port}"))?;
        std_listener.set_nonblocking(true)?;
        let listener = {
            let _guard = rt.enter();
            tokio::net::TcpListener::from_std(std_listener)?
        };
        rt.spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self { rt: Some(rt) })
    }

    fn stop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One `influxion serve` process.
struct Replica {
    name: &'static str,
    port: u16,
    env: Vec<(String, String)>,
    influxion: PathBuf,
    /// Where its log goes (kept out of the report; read it when something failed).
    log: PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> Result<()> {
        let child = Command::new(&self.influxion)
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)?,
            ))
            .spawn()
            .with_context(|| format!("starting replica {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// `kill -9`: no shutdown, no flush, connections cut.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn ready(&self, http: &reqwest::Client) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Ready, not only alive: the database, the key backends and the
            // provider's signing keys are usable (a replica that has not fetched the
            // JWKS yet would fail every request once the provider stops).
            if let Ok(r) = http.get(format!("{}/readyz", self.url())).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("replica {} did not become ready", self.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
enum Op {
    Sign,
    Cert,
}

/// What the client got.
#[derive(Clone, Debug)]
enum Got {
    /// 2xx, with the certificate's serial for issuance.
    Ok(Option<String>),
    /// An HTTP answer other than 2xx: status and problem type.
    Refused(u16, String),
    /// No answer: connection refused or reset, or the client's timeout.
    NoAnswer,
}

#[derive(Clone, Debug)]
struct Sent {
    phase: usize,
    op: Op,
    replica: usize,
    /// The digest (sign) or request_key (certificate), unique per request.
    id: String,
    got: Got,
    micros: u32,
    /// When the answer came.
    at: Instant,
}

/// The shared state of the load driver.
struct Load {
    phase: AtomicUsize,
    stop: AtomicBool,
    token: RwLock<String>,
    sent: Mutex<Vec<Sent>>,
}

pub(crate) async fn run(o: &Options) -> Result<std::process::ExitCode> {
    let dir = std::env::temp_dir().join(format!("influxion-reliability-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (pg_port, idp_port) = (o.port, o.port + 1);
    let ports = [o.port + 2, o.port + 3];

    eprintln!("PostgreSQL on 127.0.0.1:{pg_port}");
    let (pg, db_url) = postgres(o, &dir, pg_port).await?;
    let clients = clients();
    let state = DevIdpState::generate(AUDIENCE, clients.clone())?;
    let mut idp = Idp::start(idp_port, state.clone())?;
    let issuer = format!("http://127.0.0.1:{idp_port}");

    let kek = base64::engine::general_purpose::STANDARD.encode(random_bytes(32));
    let mut replicas: Vec<Replica> = ["a", "b"]
        .iter()
        .zip(ports)
        .map(|(name, port)| replica(o, &dir, name, port, &db_url, &kek, &issuer))
        .collect();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(o.concurrency)
        .timeout(Duration::from_secs(10))
        .build()?;
    // Both at once, as a deployment starts them: migrations and the bootstrap admin
    // must tolerate the race.
    for r in &mut replicas {
        r.spawn()?;
    }
    for r in &replicas {
        r.ready(&http).await?;
    }
    eprintln!(
        "replicas a ({}) and b ({}) on one database",
        replicas[0].url(),
        replicas[1].url()
    );

    let admin = token(&http, &issuer, &clients[0]).await?;
    setup(&http, &replicas[0].url(), &admin).await?;
    let load = Arc::new(Load {
        phase: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        token: RwLock::new(token(&http, &issuer, &clients[1]).await?),
        sent: Mutex::new(Vec::new()),
    });
    let csrs = Arc::new(crate::csr_pool(256)?);
    let urls = Arc::new(replicas.iter().map(Replica::url).collect::<Vec<_>>());
    // The subject was made through replica a; b learns of it from the change feed.
    let token_now = load.token.read().map(|t| t.clone()).unwrap_or_default();
    let converged = converge(&http, &urls, &token_now).await?;
    eprintln!("replica b saw the new subject after {converged:?}");
    let mut workers = Vec::new();
    for w in 0..o.concurrency {
        workers.push(tokio::spawn(worker(
            w,
            http.clone(),
            urls.clone(),
            csrs.clone(),
            load.clone(),
        )));
    }

    let phase = Duration::from_secs(o.phase_secs);
    let mut notes: Vec<String> = Vec::new();
    eprintln!(
        "load: concurrency {}, {} s per phase",
        o.concurrency, o.phase_secs
    );
    // 0: steady.
    tokio::time::sleep(phase).await;
    // 1: kill -9 replica b halfway.
    load.phase.store(1, Ordering::SeqCst);
    tokio::time::sleep(phase / 2).await;
    replicas[1].kill9();
    eprintln!("replica b killed (-9)");
    tokio::time::sleep(phase / 2).await;
    replicas[1].spawn()?;
    replicas[1].ready(&http).await?;
    eprintln!("replica b restarted");
    // 2: the provider stops.
    load.phase.store(2, Ordering::SeqCst);
    idp.stop();
    eprintln!("OIDC provider stopped");
    tokio::time::sleep(phase).await;
    // 3: back with a new signing key; the load switches to a token signed by it.
    let mut rotated = state.clone();
    rotated.signing_key_pem = DevIdpState::generate(AUDIENCE, vec![])?.signing_key_pem;
    idp = Idp::start(idp_port, rotated)?;
    let new_token = token(&http, &issuer, &clients[1]).await?;
    if let Ok(mut t) = load.token.write() {
        *t = new_token;
    }
    load.phase.store(3, Ordering::SeqCst);
    eprintln!("OIDC provider back with a new signing key; load uses a token signed by it");
    tokio::time::sleep(phase).await;
    // 4: the database stops; readiness is watched meanwhile.
    load.phase.store(4, Ordering::SeqCst);
    pg.stop().map_err(anyhow::Error::msg)?;
    eprintln!("PostgreSQL stopped");
    let not_ready = watch_ready(&http, &urls, phase, false).await;
    notes.push(format!(
        "database down: /readyz answered 503 to every poll on {} (a: {}, b: {})",
        if not_ready.iter().all(|x| *x) {
            "both replicas"
        } else {
            "NOT every replica"
        },
        not_ready[0],
        not_ready[1]
    ));
    // 5: back.
    pg.restart().map_err(anyhow::Error::msg)?;
    load.phase.store(5, Ordering::SeqCst);
    eprintln!("PostgreSQL started again");
    let ready_again = watch_ready(&http, &urls, phase, true).await;
    notes.push(format!(
        "database back: both replicas ready again without a restart: {}",
        ready_again.iter().all(|x| *x)
    ));
    load.stop.store(true, Ordering::SeqCst);
    for w in workers {
        let _ = w.await;
    }
    drop(idp);

    let sent = std::mem::take(&mut *load.sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let table = phase_table(&sent);
    let a_in_crash = sent
        .iter()
        .filter(|s| s.phase == 1 && s.replica == 0)
        .collect::<Vec<_>>();
    notes.insert(
        0,
        format!(
            "replica b killed: replica a answered {} of the {} requests it got",
            a_in_crash
                .iter()
                .filter(|s| matches!(s.got, Got::Ok(_)))
                .count(),
            a_in_crash.len()
        ),
    );
    let check = check(&db_url, &kek, &sent).await?;
    for r in &mut replicas {
        r.kill9();
    }
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);

    println!("{table}");
    for n in &notes {
        println!("{n}");
    }
    println!("{}", check.report);
    println!(
        "database phases: every error a 503 database-unavailable, every request answered: {}",
        database_phases_answer_503(&sent)
    );
    let ok = check.passed
        && not_ready.iter().all(|x| *x)
        && ready_again.iter().all(|x| *x)
        && phase_ok(&sent, 0)
        && survivor_ok(&sent, 1, 0)
        && phase_ok(&sent, 2)
        && phase_ok(&sent, 3)
        && database_phases_answer_503(&sent)
        && recovered(&sent, 5);
    println!("reliability: {}", if ok { "PASSED" } else { "FAILED" });
    Ok(if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// `influxion serve` on `db_url` with the harness's issuer and KEK (not started).
fn replica(
    o: &Options,
    dir: &Path,
    name: &'static str,
    port: u16,
    db_url: &str,
    kek: &str,
    issuer: &str,
) -> Replica {
    let data = dir.join(format!("replica-{name}"));
    let env = [
        ("INFLUXION_LISTEN", format!("127.0.0.1:{port}")),
        ("INFLUXION_DATA_DIR", data.display().to_string()),
        ("INFLUXION_DATABASE_URL", db_url.to_owned()),
        ("INFLUXION_KEK", kek.to_owned()),
        (
            "INFLUXION_OIDC_METADATA_URL",
            format!("{issuer}/.well-known/openid-configuration"),
        ),
        (
            "INFLUXION_AZURE_TENANT_ID",
            influxion_devidp::DEV_TENANT_ID.to_owned(),
        ),
        ("INFLUXION_AZURE_AUDIENCE", AUDIENCE.to_owned()),
        ("INFLUXION_TOKEN_VERSIONS", "2.0".to_owned()),
        ("INFLUXION_BOOTSTRAP_ADMIN", format!("app_id={ADMIN}")),
        ("INFLUXION_PUBLIC_URL", format!("http://127.0.0.1:{port}")),
        // A rotated provider key is fetched at most this often on an unknown kid.
        ("INFLUXION_JWKS_MIN_REFRESH_SECS", "1".to_owned()),
        ("INFLUXION_LOG", "error".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Replica {
        name,
        port,
        env,
        influxion: o.influxion.clone(),
        log: dir.join(format!("replica-{name}.log")),
        child: None,
    }
}

/// The harness's two clients: an admin (the bootstrap admin) and the load's signer.
fn clients() -> Vec<DevClient> {
    let secret = |n: &str| format!("{n}-{}", hex::encode(random_bytes(16)));
    vec![
        DevClient {
            client_id: ADMIN.into(),
            client_secret: secret(ADMIN),
            roles: vec!["Influxion.Admin".into(), "Influxion.Sign".into()],
        },
        DevClient {
            client_id: LOAD.into(),
            client_secret: secret(LOAD),
            roles: vec!["Influxion.Sign".into()],
        },
    ]
}

/// A PostgreSQL cluster in `dir/pg` with an empty database `influxion`; its URL.
async fn postgres(
    o: &Options,
    dir: &Path,
    port: u16,
) -> Result<(influxion_pgtest::Server, String)> {
    // The cluster runs as an unprivileged user under root, who must reach it.
    set_mode(dir, 0o755)?;
    let pg = influxion_pgtest::Server::start(&o.repo, &dir.join("pg"), port)
        .map_err(anyhow::Error::msg)?;
    let admin = pg.url().to_owned();
    let mut c: sqlx::PgConnection = sqlx::Connection::connect(&admin).await?;
    sqlx::query("CREATE DATABASE influxion")
        .execute(&mut c)
        .await?;
    Ok((pg, influxion_pgtest::with_database(&admin, "influxion")))
}

/// `--mode replicas`: sign/s and certificates/s on SQLite, on PostgreSQL with one
/// replica and with two (requests spread over both), beside the machine's limit, in
/// one run on one machine.
pub(crate) async fn bench(o: &Options) -> Result<std::process::ExitCode> {
    let dir = std::env::temp_dir().join(format!("influxion-replicas-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (pg, db_url) = postgres(o, &dir, o.port).await?;
    let clients = clients();
    let idp_port = o.port + 1;
    let _idp = Idp::start(idp_port, DevIdpState::generate(AUDIENCE, clients.clone())?)?;
    let issuer = format!("http://127.0.0.1:{idp_port}");
    let kek = base64::engine::general_purpose::STANDARD.encode(random_bytes(32));
    let sqlite_url = format!("sqlite://{}/lite.db", dir.display());
    let mut servers = vec![
        replica(o, &dir, "a", o.port + 2, &db_url, &kek, &issuer),
        replica(o, &dir, "b", o.port + 3, &db_url, &kek, &issuer),
        replica(o, &dir, "sqlite", o.port + 4, &sqlite_url, &kek, &issuer),
    ];
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(o.concurrency)
        .timeout(Duration::from_secs(10))
        .build()?;
    for s in &mut servers {
        s.spawn()?;
    }
    for s in &servers {
        s.ready(&http).await?;
    }
    let admin = token(&http, &issuer, &clients[0]).await?;
    setup(&http, &servers[0].url(), &admin).await?;
    setup(&http, &servers[2].url(), &admin).await?;
    let load = Arc::new(token(&http, &issuer, &clients[1]).await?);
    let csrs = Arc::new(crate::csr_pool(256)?);

    let runs: [(&str, Vec<String>); 3] = [
        ("SQLite, one keyserver", vec![servers[2].url()]),
        ("PostgreSQL, one replica", vec![servers[0].url()]),
        (
            "PostgreSQL, two replicas",
            vec![servers[0].url(), servers[1].url()],
        ),
    ];
    let mut rows = Vec::new();
    for (label, urls) in runs {
        let mut row = (label, Vec::new());
        for op in [Op::Sign, Op::Cert] {
            eprintln!(
                "{label}: {op:?} for {}s at concurrency {}",
                o.phase_secs, o.concurrency
            );
            let next = Arc::new(AtomicUsize::new(0));
            let (client, urls, csrs, load) =
                (http.clone(), urls.clone(), csrs.clone(), load.clone());
            let make: Arc<dyn Fn() -> reqwest::RequestBuilder + Send + Sync> =
                Arc::new(move || {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let base = &urls[n % urls.len()];
                    let req = match op {
                        Op::Sign => client
                            .post(format!("{base}/v1/keys/{KEY}/sign"))
                            .json(&serde_json::json!({"digest": hex::encode(random_bytes(32))})),
                        Op::Cert => client
                            .post(format!("{base}/v1/profiles/{PROFILE}/certificates"))
                            .json(&serde_json::json!({"csr": csrs[n % csrs.len()]})),
                    };
                    req.bearer_auth(load.as_str())
                });
            let (lat, elapsed, errors) = crate::drive(o.concurrency, o.phase_secs, make).await?;
            row.1.push((
                lat.len() as f64 / elapsed,
                crate::percentile(&lat, 0.99),
                errors,
            ));
        }
        rows.push(row);
    }
    for s in &mut servers {
        s.kill9();
    }
    eprintln!(
        "raw: the same key's in-process signing rate for {}s",
        o.phase_secs.min(5)
    );
    let raw = crate::raw_rate_of(&db_url, &kek, KEY, o.phase_secs.min(5)).await?;
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "raw in-process ECDSA P-256 signing (software keystore, same key), {} threads: {raw:.0} signatures/s",
        crate::cores()
    );
    let limit = crate::openssl_p256_limit(o.phase_secs.min(5));
    let cores = crate::cores();
    match limit {
        Some(l) => println!(
            "machine limit (openssl speed -multi {cores} ecdsap256, same run): {l:.0} signatures/s"
        ),
        None => println!("machine limit: openssl speed did not run"),
    }
    println!(
        "| database | sign/s | p99 ms | errors | / limit | certificates/s | p99 ms | errors | / limit |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (label, r) in rows {
        let ratio = |x: f64| limit.map_or("-".to_owned(), |l| format!("{:.3}", x / l));
        let cell = |(rate, p99, errors): (f64, f64, u64)| {
            format!("{rate:.0} | {p99:.1} | {errors} | {}", ratio(rate))
        };
        println!("| {label} | {} | {} |", cell(r[0]), cell(r[1]));
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut b);
    b
}

async fn token(http: &reqwest::Client, issuer: &str, c: &DevClient) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http
            .post(format!("{issuer}/token"))
            .basic_auth(&c.client_id, Some(&c.client_secret))
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", &format!("{AUDIENCE}/.default")),
            ])
            .send()
            .await;
        if let Ok(r) = r {
            let v: serde_json::Value = r.json().await?;
            return v["access_token"]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("no token for {}: {v}", c.client_id));
        }
        if Instant::now() > deadline {
            bail!("the issuer does not answer");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The load's subject, key, CA and profile, through replica a.
async fn setup(http: &reqwest::Client, base: &str, admin: &str) -> Result<()> {
    let calls = [
        (
            "/v1/subjects",
            serde_json::json!({
                "name": "reliability-load",
                "app_id": LOAD,
                "grants": [{"role": "signer", "pattern": KEY}, {"role": "provisioner", "pattern": PROFILE}],
            }),
        ),
        (
            "/v1/keys",
            serde_json::json!({"name": KEY, "key_type": "ec-p256"}),
        ),
        (
            "/v1/cas",
            serde_json::json!({
                "name": "rel-ca", "key_type": "ec-p256",
                "subject": {"common_name": "Reliability CA"}, "validity_days": 30,
            }),
        ),
    ];
    for (path, body) in calls {
        let r = http
            .post(format!("{base}{path}"))
            .bearer_auth(admin)
            .json(&body)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("POST {path}: {} {}", r.status(), r.text().await?);
        }
    }
    let r = http
        .put(format!("{base}/v1/profiles/{PROFILE}"))
        .bearer_auth(admin)
        .json(&serde_json::json!({
            "ca": "rel-ca", "validity_days": 30, "key_types": ["ec-p256"],
            "subject": {"common_name": "{device_id}"}, "max_per_device": 0,
        }))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("PUT profile: {} {}", r.status(), r.text().await?);
    }
    Ok(())
}

/// Wait until every replica lets the load's token read the key: the subject made
/// through one replica has reached the others' caches. How long it took.
async fn converge(http: &reqwest::Client, urls: &[String], token: &str) -> Result<Duration> {
    let start = Instant::now();
    for u in urls {
        loop {
            let r = http
                .get(format!("{u}/v1/keys/{KEY}"))
                .bearer_auth(token)
                .send()
                .await?;
            if r.status().is_success() {
                break;
            }
            if start.elapsed() > Duration::from_secs(40) {
                bail!("{u} never granted the load's subject: {}", r.status());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(start.elapsed())
}

/// One unit of concurrency: alternates between replicas, one certificate in five.
async fn worker(
    w: usize,
    http: reqwest::Client,
    urls: Arc<Vec<String>>,
    csrs: Arc<Vec<String>>,
    load: Arc<Load>,
) {
    let mut mine = Vec::new();
    let mut n = 0usize;
    while !load.stop.load(Ordering::Relaxed) {
        n += 1;
        let replica = (w + n) % urls.len();
        let op = if n.is_multiple_of(5) {
            Op::Cert
        } else {
            Op::Sign
        };
        let token = load.token.read().map(|t| t.clone()).unwrap_or_default();
        let (id, req) = match op {
            Op::Sign => {
                let digest = hex::encode(random_bytes(32));
                let req = http
                    .post(format!("{}/v1/keys/{KEY}/sign", urls[replica]))
                    .json(&serde_json::json!({ "digest": digest }));
                (digest, req)
            }
            Op::Cert => {
                let key = format!("rel-{}", hex::encode(random_bytes(12)));
                let req = http
                    .post(format!(
                        "{}/v1/profiles/{PROFILE}/certificates?format=json",
                        urls[replica]
                    ))
                    .json(&serde_json::json!({
                        "csr": csrs[(w * 7919 + n) % csrs.len()],
                        "request_key": key,
                    }));
                (key, req)
            }
        };
        let t = Instant::now();
        let got = match req.bearer_auth(token).send().await {
            Err(_) => Got::NoAnswer,
            Ok(r) if r.status().is_success() => match r.json::<serde_json::Value>().await {
                Ok(v) => Got::Ok(v["serial"].as_str().map(str::to_owned)),
                Err(_) => Got::NoAnswer,
            },
            Ok(r) => {
                let status = r.status().as_u16();
                let kind = r
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| {
                        v["type"]
                            .as_str()
                            .map(|t| t.rsplit('/').next().unwrap_or(t).to_owned())
                    })
                    .unwrap_or_default();
                Got::Refused(status, kind)
            }
        };
        let micros = u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX);
        // A request counts in the phase it ended in: one in flight when a fault began
        // meets that fault.
        let phase = load.phase.load(Ordering::Relaxed);
        let failed = !matches!(got, Got::Ok(_));
        mine.push(Sent {
            phase,
            op,
            replica,
            id,
            got,
            micros,
            at: Instant::now(),
        });
        // A dead replica refuses at once: don't spin.
        if failed {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    if let Ok(mut all) = load.sent.lock() {
        all.extend(mine);
    }
}

/// Poll /readyz of every replica for `span`. For each replica: with `want_ready`,
/// whether it answered 200 at least once (it came back); without, whether every poll
/// answered 503 (it never claimed to be ready while the database was away).
async fn watch_ready(
    http: &reqwest::Client,
    urls: &[String],
    span: Duration,
    want_ready: bool,
) -> Vec<bool> {
    let mut ready_once = vec![false; urls.len()];
    let mut always_503 = vec![true; urls.len()];
    let mut polled = vec![0u32; urls.len()];
    let end = Instant::now() + span;
    while Instant::now() < end {
        for (i, u) in urls.iter().enumerate() {
            let status = http
                .get(format!("{u}/readyz"))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .map(|r| r.status().as_u16());
            polled[i] += 1;
            match status {
                Ok(200) => {
                    ready_once[i] = true;
                    always_503[i] = false;
                }
                Ok(503) => {}
                _ => always_503[i] = false,
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if want_ready {
        ready_once
    } else {
        always_503
            .iter()
            .zip(&polled)
            .map(|(a, n)| *a && *n > 0)
            .collect()
    }
}

/// While the database is away and as it comes back, a request either succeeds or is
/// answered 503 `database-unavailable`: never left without an answer, never another
/// error.
fn database_phases_answer_503(sent: &[Sent]) -> bool {
    sent.iter().filter(|s| s.phase >= 4).all(|s| match &s.got {
        Got::Ok(_) => true,
        Got::Refused(503, kind) => kind == "database-unavailable",
        _ => false,
    })
}

fn percentile_ms(sorted: &[u32], p: f64) -> String {
    if sorted.is_empty() {
        return "-".into();
    }
    format!("{:.1}", crate::percentile(sorted, p))
}

fn phase_table(sent: &[Sent]) -> String {
    let mut out = String::from(
        "| phase | requests | ok | errors by type | p50 ok ms | p99 ok ms | p99 error ms |\n|---|---|---|---|---|---|---|\n",
    );
    for (i, name) in PHASES.iter().enumerate() {
        let of: Vec<&Sent> = sent.iter().filter(|s| s.phase == i).collect();
        let mut ok: Vec<u32> = of
            .iter()
            .filter(|s| matches!(s.got, Got::Ok(_)))
            .map(|s| s.micros)
            .collect();
        let mut err: Vec<u32> = of
            .iter()
            .filter(|s| !matches!(s.got, Got::Ok(_)))
            .map(|s| s.micros)
            .collect();
        ok.sort_unstable();
        err.sort_unstable();
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        for s in &of {
            match &s.got {
                Got::Ok(_) => {}
                Got::Refused(st, k) => *kinds.entry(format!("{st} {k}")).or_default() += 1,
                Got::NoAnswer => *kinds.entry("no answer".into()).or_default() += 1,
            }
        }
        let kinds = if kinds.is_empty() {
            "0".to_owned()
        } else {
            kinds
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "| {name} | {} | {} | {kinds} | {} | {} | {} |\n",
            of.len(),
            ok.len(),
            percentile_ms(&ok, 0.50),
            percentile_ms(&ok, 0.99),
            percentile_ms(&err, 0.99),
        ));
    }
    out
}

/// Phases in which nothing at all may fail.
fn phase_ok(sent: &[Sent], phase: usize) -> bool {
    let of: Vec<&Sent> = sent.iter().filter(|s| s.phase == phase).collect();
    !of.is_empty() && of.iter().all(|s| matches!(s.got, Got::Ok(_)))
}

/// While the other replica was killed, `replica` answered every request it got.
fn survivor_ok(sent: &[Sent], phase: usize, replica: usize) -> bool {
    let of: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.phase == phase && s.replica == replica)
        .collect();
    !of.is_empty() && of.iter().all(|s| matches!(s.got, Got::Ok(_)))
}

/// After the database is back, both replicas answer again without a restart: each
/// succeeded in the phase, and the last request each got succeeded.
fn recovered(sent: &[Sent], phase: usize) -> bool {
    (0..2).all(|r| {
        let mine: Vec<&Sent> = sent
            .iter()
            .filter(|s| s.phase == phase && s.replica == r)
            .collect();
        mine.iter()
            .max_by_key(|s| s.at)
            .is_some_and(|s| matches!(s.got, Got::Ok(_)))
    })
}

struct Check {
    passed: bool,
    report: String,
}

/// Every acknowledged response against the database, read directly.
async fn check(db_url: &str, kek: &str, sent: &[Sent]) -> Result<Check> {
    use sqlx::Row;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(db_url)
        .await?;
    // Ranges the store marked: committed while the callers were told it failed.
    let mut marked: Vec<(i64, i64)> = Vec::new();
    for row in sqlx::query("SELECT detail FROM audit_log WHERE action = 'audit.unacknowledged'")
        .fetch_all(&pool)
        .await?
    {
        let d: String = row.try_get("detail")?;
        let v: serde_json::Value = serde_json::from_str(&d).unwrap_or_default();
        if let (Some(a), Some(b)) = (v["first_seq"].as_i64(), v["last_seq"].as_i64()) {
            marked.push((a, b));
        }
    }
    let is_marked = |seq: i64| marked.iter().any(|(a, b)| (*a..=*b).contains(&seq));
    let mut audited_digests: HashMap<String, usize> = HashMap::new();
    let mut digest_seq: HashMap<String, i64> = HashMap::new();
    for row in sqlx::query("SELECT seq, detail FROM audit_log WHERE action = 'sign'")
        .fetch_all(&pool)
        .await?
    {
        let d: String = row.try_get("detail")?;
        let v: serde_json::Value = serde_json::from_str(&d).unwrap_or_default();
        if let Some(x) = v["digest"].as_str() {
            *audited_digests.entry(x.to_owned()).or_default() += 1;
            digest_seq.insert(x.to_owned(), row.try_get("seq")?);
        }
    }
    let mut audited_serials: HashMap<String, usize> = HashMap::new();
    let mut serial_seq: HashMap<String, i64> = HashMap::new();
    for row in sqlx::query("SELECT seq, detail FROM audit_log WHERE action = 'cert.issue'")
        .fetch_all(&pool)
        .await?
    {
        let d: String = row.try_get("detail")?;
        let v: serde_json::Value = serde_json::from_str(&d).unwrap_or_default();
        if let Some(x) = v["serial"].as_str() {
            *audited_serials.entry(x.to_owned()).or_default() += 1;
            serial_seq.insert(x.to_owned(), row.try_get("seq")?);
        }
    }
    let mut cert_by_key: HashMap<String, String> = HashMap::new();
    for row in
        sqlx::query("SELECT serial, request_key FROM certificates WHERE request_key IS NOT NULL")
            .fetch_all(&pool)
            .await?
    {
        cert_by_key.insert(row.try_get("request_key")?, row.try_get("serial")?);
    }
    pool.close().await;

    let (mut acked, mut lost, mut refused_but_committed, mut unacknowledged) = (0, 0, 0, 0);
    let mut marked_in_doubt = 0;
    let mut unanswered_elsewhere = 0;
    let mut received_serials: HashMap<String, usize> = HashMap::new();
    let sent_ids: HashSet<&str> = sent.iter().map(|s| s.id.as_str()).collect();
    for s in sent {
        let committed = match s.op {
            Op::Sign => audited_digests.contains_key(&s.id),
            Op::Cert => cert_by_key
                .get(&s.id)
                .is_some_and(|serial| audited_serials.contains_key(serial)),
        };
        match &s.got {
            Got::Ok(serial) => {
                acked += 1;
                if let (Op::Cert, Some(serial)) = (s.op, serial) {
                    *received_serials.entry(serial.clone()).or_default() += 1;
                    if cert_by_key.get(&s.id) != Some(serial) {
                        lost += 1;
                        continue;
                    }
                }
                if !committed {
                    lost += 1;
                }
            }
            Got::Refused(status, kind) if committed => {
                let seq = match s.op {
                    Op::Sign => digest_seq.get(&s.id).copied(),
                    Op::Cert => cert_by_key
                        .get(&s.id)
                        .and_then(|x| serial_seq.get(x).copied()),
                };
                if seq.is_some_and(is_marked) {
                    marked_in_doubt += 1;
                } else {
                    refused_but_committed += 1;
                    eprintln!(
                        "committed but answered {status} {kind}, unmarked: {:?} in phase {:?} on replica {}",
                        s.op, PHASES[s.phase], s.replica
                    );
                }
            }
            // Only a killed replica may commit and then not answer.
            Got::NoAnswer if committed && s.phase == 1 && s.replica == 1 => unacknowledged += 1,
            Got::NoAnswer if committed => {
                unanswered_elsewhere += 1;
                eprintln!(
                    "committed but not answered by a live replica: {:?} in phase {:?} on replica {}",
                    s.op, PHASES[s.phase], s.replica
                );
            }
            _ => {}
        }
    }
    // Records of requests nobody sent (digests are random per request).
    let unknown = audited_digests
        .keys()
        .filter(|d| !sent_ids.contains(d.as_str()))
        .count();
    let dup_received = received_serials.values().filter(|n| **n > 1).count();
    let dup_audited = audited_serials.values().filter(|n| **n > 1).count()
        + audited_digests.values().filter(|n| **n > 1).count();

    let key = influxion_keystore::Kek::from_text(kek)?;
    let audit_key = influxion_store::AuditKey::new(key.audit_mac_key());
    let chain = influxion_store::Store::verify_database(db_url, Some(&audit_key), None).await?;
    let intact = matches!(chain, influxion_store::ChainReport::Intact { .. });

    let passed = lost == 0
        && refused_but_committed == 0
        && unanswered_elsewhere == 0
        && unknown == 0
        && dup_received == 0
        && dup_audited == 0
        && intact;
    let report = format!(
        "acknowledged responses: {acked}\n\
         lost records (acknowledged, no committed record): {lost} (must be 0)\n\
         records of requests answered with an error, unmarked: {refused_but_committed} (must be 0)\n\
         records of requests answered with an error, marked audit.unacknowledged (commit answer lost): {marked_in_doubt}\n\
         records of requests never sent: {unknown} (must be 0)\n\
         committed, not acknowledged: replica b killed before answering: {unacknowledged}; a live replica: {unanswered_elsewhere} (must be 0)\n\
         duplicate serials received: {dup_received}, duplicate records: {dup_audited} (must be 0)\n\
         audit chain: {chain:?}"
    );
    Ok(Check { passed, report })
}
