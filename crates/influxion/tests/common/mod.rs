//! Helpers shared by the end-to-end tests: the real binary, a real OIDC provider.

#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_influxion");
pub(crate) const TENANT: &str = "11111111-2222-3333-4444-555555555555";
pub(crate) const AUDIENCE: &str = "api://influxion-test";
/// The `name` claim the test provider gives `eve`: markup, which every client must
/// show as the text it is.
pub(crate) const HOSTILE_NAME: &str = "<img src=x onerror=window.__pwned=1>Eve";

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Whether the external tools are here; under CI their absence is a failure.
pub(crate) fn prerequisites() -> bool {
    let node_modules = repo_root().join("tests/oidc-provider/node_modules/oidc-provider");
    let mut missing = Vec::new();
    if !node_modules.exists() {
        missing.push("tests/oidc-provider/node_modules (run: npm ci --prefix tests/oidc-provider)");
    }
    if !pkilint("lint_pkix_cert").exists() {
        missing.push("pkilint (scripts/test.sh installs it into target/pkilint)");
    }
    for tool in ["node", "openssl", "curl"] {
        if Command::new(tool).arg("--version").output().is_err()
            && Command::new(tool).arg("version").output().is_err()
        {
            missing.push(tool);
        }
    }
    require(&missing)
}

/// True if nothing is missing; otherwise the test fails, naming what to install. A
/// test never passes by skipping, in CI or in a newcomer's run (`scripts/test.sh`
/// installs everything).
pub(crate) fn require(missing: &[&str]) -> bool {
    assert!(
        missing.is_empty(),
        "prerequisites are missing (scripts/test.sh installs them): {missing:?}"
    );
    true
}

/// A pkilint command: from `PKILINT_BIN` if set, else the virtualenv scripts/test.sh
/// makes in target/pkilint.
pub(crate) fn pkilint(cmd: &str) -> PathBuf {
    std::env::var_os("PKILINT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/pkilint/bin"))
        .join(cmd)
}

/// A child process killed when the test ends, however it ends.
pub(crate) struct Proc(pub Child);

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

pub(crate) struct Provider {
    pub _proc: Proc,
    pub issuer: String,
}

pub(crate) fn start_provider(dir: &Path) -> Provider {
    start_provider_for(dir, None)
}

/// The keyclient's registration at the test provider.
pub(crate) const KEYCLIENT_ID: &str = "keyclient";
pub(crate) const KEYCLIENT_SECRET: &str = "keyclient-secret-1234567890-abcdef";

/// A provider that also knows the keyclient (a confidential web client) when its port
/// is given, and a few people who sign in on its login page.
pub(crate) fn start_provider_for(dir: &Path, keyclient_port: Option<u16>) -> Provider {
    start_provider_with(dir, keyclient_port, 3600)
}

/// As [`start_provider_for`], with access tokens living `access_token_ttl` seconds.
pub(crate) fn start_provider_with(
    dir: &Path,
    keyclient_port: Option<u16>,
    access_token_ttl: u64,
) -> Provider {
    start_provider_clients(dir, keyclient_port, access_token_ttl, vec![])
}

/// The public client the CLI signs people in with (any loopback port, RFC 8252).
pub(crate) const CLI_CLIENT_ID: &str = "cli-public";

/// As [`start_provider_with`], with more clients (client metadata as the provider's
/// config takes it).
pub(crate) fn start_provider_clients(
    dir: &Path,
    keyclient_port: Option<u16>,
    access_token_ttl: u64,
    extra_clients: Vec<serde_json::Value>,
) -> Provider {
    let mut clients = vec![
        serde_json::json!({"client_id": "ci-signer", "client_secret": "s3cret-value-1234567890", "roles": ["Influxion.Sign"]}),
        serde_json::json!({"client_id": "ci-admin", "client_secret": "admin-secret-1234567890", "roles": ["Influxion.Admin"]}),
        serde_json::json!({"client_id": "no-role", "client_secret": "no-role-secret-1234567890", "roles": []}),
        serde_json::json!({"client_id": "approver-1", "client_secret": "approver-1-secret-123456", "roles": ["Influxion.Sign"]}),
        serde_json::json!({"client_id": "approver-2", "client_secret": "approver-2-secret-123456", "roles": ["Influxion.Sign"]}),
    ];
    clients.push(serde_json::json!({
        "client_id": CLI_CLIENT_ID,
        "public": true,
        "redirect_uris": ["http://127.0.0.1/callback"],
    }));
    clients.extend(extra_clients);
    if let Some(port) = keyclient_port {
        clients.push(serde_json::json!({
            "client_id": KEYCLIENT_ID,
            "client_secret": KEYCLIENT_SECRET,
            "redirect_uris": [format!("http://127.0.0.1:{port}/login/oauth2/code/keyserver-client")],
            "post_logout_redirect_uris": [format!("http://127.0.0.1:{port}/")],
        }));
    }
    let cfg = serde_json::json!({
        "audience": AUDIENCE,
        "tenant_id": TENANT,
        "scope": "access_as_user",
        "clients": clients,
        "users": {
            "alice": {"name": "Alice Approver"},
            "mallory": {"name": "Mallory"},
            "eve": {"name": HOSTILE_NAME},
        },
        "signing_keys": null,
        "access_token_ttl": access_token_ttl,
        "rotate_refresh_tokens": true
    });
    start_provider_config(dir, &cfg)
}

/// The test provider with exactly this configuration (see tests/oidc-provider/README.md).
pub(crate) fn start_provider_config(dir: &Path, cfg: &serde_json::Value) -> Provider {
    let cfg_path = dir.join("oidc.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let mut child = Command::new("node")
        .arg(repo_root().join("tests/oidc-provider/provider.mjs"))
        .env("OIDC_PORT", "0")
        .env("OIDC_CONFIG", &cfg_path)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("oidc.log")).unwrap())
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
        .unwrap_or_else(|_| {
            let pid = child.0.id();
            let ps = Command::new("ps")
                .args(["-o", "pid,stat,wchan:32,cmd", "-p", &pid.to_string()])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            panic!(
                "the OIDC provider did not report ready within 60 s; its stderr: {}\n{ps}",
                std::fs::read_to_string(dir.join("oidc.log")).unwrap_or_default()
            )
        });
    let ready: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("provider said {line:?}: {e}"));
    Provider {
        _proc: child,
        issuer: ready["issuer"].as_str().unwrap().to_owned(),
    }
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) struct Keyserver {
    pub proc: Option<Proc>,
    pub url: String,
    pub data: PathBuf,
    pub issuer: String,
    /// The API's audience, for the scope the CLI asks for.
    pub audience: String,
}

/// The test keyservers' key-encryption key (also needed to verify their audit chain).
pub(crate) const KEK: &str = "qNyQ3e3Yq8Vh0m3G2mH8l8mW2l0Zp2b3Qy0rJ8v6dXE=";

/// `influxion audit <args>` with the test KEK, as an auditor holding it runs it.
pub(crate) fn audit_cmd(args: &[&str], data: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("audit")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env("INFLUXION_KEK", KEK);
    c
}

pub(crate) fn server_env(cmd: &mut Command, issuer: &str, data: &Path, port: u16) {
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
        .env("INFLUXION_KEK", KEK)
        .env("INFLUXION_BOOTSTRAP_ADMIN", "app_id=ci-admin")
        .env("INFLUXION_PUBLIC_URL", format!("http://127.0.0.1:{port}"))
        .env("INFLUXION_EST_PROFILE", "device")
        .env("INFLUXION_LOG", "warn");
}

/// Wait until `url` answers /healthz, or the process has exited (false).
pub(crate) fn healthy_or_exited(child: &mut Proc, url: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && child.0.try_wait().unwrap().is_none() {
        let ok = Command::new("curl")
            .args(["-fsS", &format!("{url}/healthz")])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

pub(crate) fn start_keyserver(dir: &Path, issuer: &str) -> Keyserver {
    start_keyserver_env(dir, issuer, AUDIENCE, &[])
}

/// As [`start_keyserver`], for an API known as `audience`, with more settings.
pub(crate) fn start_keyserver_env(
    dir: &Path,
    issuer: &str,
    audience: &str,
    extra_env: &[(&str, &str)],
) -> Keyserver {
    let data = dir.join("data");
    let (child, url) = spawn_keyserver(dir, issuer, audience, &data, extra_env);
    let ks = Keyserver {
        proc: Some(child),
        url,
        data,
        issuer: issuer.to_owned(),
        audience: audience.to_owned(),
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

/// `influxion serve` on a free port, healthy. A port found free can be taken by another
/// test's process before the keyserver binds it; the keyserver then exits and we pick
/// another.
fn spawn_keyserver(
    dir: &Path,
    issuer: &str,
    audience: &str,
    data: &Path,
    extra_env: &[(&str, &str)],
) -> (Proc, String) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let port = free_port();
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").current_dir(dir);
        server_env(&mut cmd, issuer, data, port);
        cmd.env("INFLUXION_AZURE_AUDIENCE", audience)
            .envs(extra_env.iter().copied());
        let mut child = Proc(cmd.stdout(Stdio::null()).spawn().unwrap());
        let url = format!("http://127.0.0.1:{port}");
        if healthy_or_exited(&mut child, &url) {
            return (child, url);
        }
        assert!(attempt < 5, "the keyserver did not start on a free port");
    }
}

impl Keyserver {
    /// Stop the keyserver and start it again on the same data (a new port).
    pub(crate) fn restart(&mut self, dir: &Path, extra_env: &[(&str, &str)]) {
        self.stop();
        let (child, url) =
            spawn_keyserver(dir, &self.issuer, &self.audience, &self.data, extra_env);
        self.proc = Some(child);
        self.url = url;
    }

    /// Run the CLI as client `id`.
    /// The CLI as client `id`, configured only through the environment.
    pub(crate) fn command(&self, id: &str, secret: &str, args: &[&str], cwd: &Path) -> Command {
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
                format!("{}/.default", self.audience),
            );
        c
    }

    /// Run the CLI as client `id`.
    pub(crate) fn cli(&self, id: &str, secret: &str, args: &[&str], cwd: &Path) -> Output {
        self.command(id, secret, args, cwd).output().unwrap()
    }

    pub(crate) fn signer(&self, args: &[&str], cwd: &Path) -> Output {
        self.cli("ci-signer", "s3cret-value-1234567890", args, cwd)
    }

    pub(crate) fn admin(&self, args: &[&str], cwd: &Path) -> Output {
        self.cli("ci-admin", "admin-secret-1234567890", args, cwd)
    }

    /// The CLI as a child process (for `sign`, which waits for approvals).
    pub(crate) fn spawn_signer(&self, args: &[&str], cwd: &Path) -> Child {
        self.command("ci-signer", "s3cret-value-1234567890", args, cwd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub(crate) fn stop(&mut self) {
        self.proc.take();
    }
}

#[track_caller]
pub(crate) fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn openssl(args: &[&str], cwd: &Path) -> Output {
    Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

/// openssl accepts `sig` as a SHA-256 signature of `file` by the public key `pem`
/// (paths relative to `d`).
#[track_caller]
pub(crate) fn assert_sha256_verifies(d: &Path, pem: &str, sig: &str, file: &str) {
    let v = openssl(
        &["dgst", "-sha256", "-verify", pem, "-signature", sig, file],
        d,
    );
    assert_eq!(
        String::from_utf8_lossy(&v.stdout).trim(),
        "Verified OK",
        "{sig} over {file}"
    );
}

pub(crate) fn write_firmware(dir: &Path, name: &str, len: usize) {
    let data: Vec<u8> = (0..len)
        .map(|i| u8::try_from(i * 7 % 251).unwrap())
        .collect();
    std::fs::write(dir.join(name), data).unwrap();
}

pub(crate) fn pending_id(ks: &Keyserver, d: &Path) -> String {
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

pub(crate) fn access_token(ks: &Keyserver, id: &str, secret: &str) -> String {
    let disc = Command::new("curl")
        .args([
            "-sf",
            &format!("{}/.well-known/openid-configuration", ks.issuer),
        ])
        .output()
        .unwrap();
    let disc: serde_json::Value = serde_json::from_slice(&disc.stdout).unwrap();
    let out = Command::new("curl")
        .args([
            "-sf",
            "-u",
            &format!("{id}:{secret}"),
            "-d",
            "grant_type=client_credentials",
        ])
        .args(["-d", &format!("scope={AUDIENCE}/.default")])
        .arg(disc["token_endpoint"].as_str().unwrap())
        .output()
        .unwrap();
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    t["access_token"].as_str().unwrap().to_owned()
}

/// The `oid` the test provider gives a person (its `stableUuid('user', login)`).
pub(crate) fn user_oid(login: &str) -> String {
    use sha2::Digest as _;
    let h = hex::encode(sha2::Sha256::digest(format!("influxion-test:user:{login}")));
    let variant = (u8::from_str_radix(&h[16..17], 16).unwrap() & 0x3) | 0x8;
    format!(
        "{}-{}-5{}-{variant:x}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// `influxion dev` in `dir/devdata`: it takes the port, the next one for its issuer and
/// the one after for the keyclient. Another test's process may take one between our
/// probe and its bind; then `dev` exits and we try again.
pub(crate) fn start_dev(dir: &Path) -> (Proc, u16) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let port = loop {
            let p = free_port();
            let free = |q: u16| TcpListener::bind(("127.0.0.1", q)).is_ok();
            if p < u16::MAX - 2 && free(p + 1) && free(p + 2) {
                break p;
            }
        };
        let mut dev = Proc(
            Command::new(BIN)
                .args(["dev", "--data-dir", "devdata", "--port", &port.to_string()])
                .current_dir(dir)
                .env("INFLUXION_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let url = format!("http://127.0.0.1:{port}");
        if healthy_or_exited(&mut dev, &url)
            && healthy_or_exited(&mut dev, &format!("http://127.0.0.1:{}", port + 2))
        {
            return (dev, port);
        }
        assert!(attempt < 5, "influxion dev did not start on free ports");
    }
}

/// `name`/`value` of the hidden inputs of an HTML page (the login forms are simple).
pub(crate) fn hidden_inputs(html: &str) -> Vec<(String, String)> {
    let attr = |tag: &str, name: &str| {
        tag.split(&format!("{name}=\""))
            .nth(1)?
            .split('"')
            .next()
            .map(str::to_owned)
    };
    html.split("<input")
        .skip(1)
        .filter_map(|t| t.split('>').next())
        .filter(|t| t.contains("type=\"hidden\""))
        .filter_map(|t| Some((attr(t, "name")?, attr(t, "value").unwrap_or_default())))
        .collect()
}

pub(crate) fn absolute(base: &str, loc: &str) -> String {
    url::Url::parse(base)
        .unwrap()
        .join(loc)
        .unwrap()
        .to_string()
}

/// Sign in at the provider's login page (oidc-provider's or the development issuer's)
/// starting from `url`, following redirects with `idp` (a client that keeps cookies),
/// until the provider sends the browser to a URL starting with `until`; returns it.
pub(crate) async fn provider_login(
    idp: &reqwest::Client,
    mut url: String,
    user: &str,
    until: &str,
) -> String {
    for _ in 0..12 {
        if url.starts_with(until) {
            return url;
        }
        let r = idp.get(&url).send().await.unwrap();
        let status = r.status().as_u16();
        let location = r
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = r.text().await.unwrap();
        if (300..400).contains(&status) {
            url = absolute(&url, &location.unwrap());
            continue;
        }
        assert_eq!(status, 200, "{url}: {body}");
        let action = body
            .split("action=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("a form on the login page")
            .to_owned();
        // Its hidden fields, and the answers either login page wants: oidc-provider's
        // (login, password) or the development issuer's (a username button).
        let mut form = hidden_inputs(&body);
        for (k, v) in [("login", user), ("password", "any"), ("username", user)] {
            form.push((k.to_owned(), v.to_owned()));
        }
        let r = idp
            .post(absolute(&url, &action))
            .form(&form)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert!(
            (300..400).contains(&status),
            "login post: {}",
            r.text().await.unwrap()
        );
        url = absolute(&url, r.headers()["location"].to_str().unwrap());
    }
    panic!("the provider never redirected to {until}");
}

/// A reqwest client that keeps cookies and follows no redirects.
pub(crate) fn cookie_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()
        .unwrap()
}

/// Raw HTTP/1.1 over TCP, for clients that misbehave on purpose.
pub(crate) mod raw {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    pub(crate) fn connect(url: &str) -> TcpStream {
        let addr = url.trim_start_matches("http://").trim_end_matches('/');
        TcpStream::connect(addr).unwrap()
    }

    /// Write `first`, then `piece` every `every` from a thread, until a write fails.
    pub(crate) fn drip(s: &TcpStream, first: &[u8], piece: &'static [u8], every: Duration) {
        let mut w = s.try_clone().unwrap();
        w.write_all(first).unwrap();
        std::thread::spawn(move || loop {
            std::thread::sleep(every);
            if piece.is_empty() || w.write_all(piece).is_err() {
                return;
            }
        });
    }

    /// Read until the server closes the connection, which must happen within `bound`;
    /// returns whatever it sent before closing.
    #[track_caller]
    pub(crate) fn until_closed(s: &mut TcpStream, bound: Duration) -> String {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let deadline = Instant::now() + bound;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                // Reset by the server: closed as well.
                Err(_) => break,
            }
            assert!(
                Instant::now() < deadline,
                "the server kept the connection open for {bound:?}; it sent: {}",
                String::from_utf8_lossy(&got)
            );
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    /// Whether the connection is still open now (nothing to read, no EOF).
    pub(crate) fn still_open(s: &mut TcpStream) -> bool {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 1];
        matches!(s.read(&mut buf), Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
    }
}

/// A keyclient's registration at the provider, and its session key.
pub(crate) struct WebClient<'a> {
    pub id: &'a str,
    pub secret: &'a str,
    pub scope: &'a str,
    pub session_key: &'a str,
}

impl WebClient<'_> {
    /// `influxion keyclient` on `port` in front of `ks`, logging to `log`.
    pub(crate) fn command(&self, dir: &Path, port: u16, ks: &Keyserver, log: &Path) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("keyclient")
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("INFLUXION_KEYCLIENT_LISTEN", format!("127.0.0.1:{port}"))
            .env("INFLUXION_SERVER", &ks.url)
            .env(
                "INFLUXION_OIDC_METADATA_URL",
                format!("{}/.well-known/openid-configuration", ks.issuer),
            )
            .env("INFLUXION_KEYCLIENT_CLIENT_ID", self.id)
            .env("INFLUXION_KEYCLIENT_CLIENT_SECRET", self.secret)
            .env("INFLUXION_KEYCLIENT_SCOPE", self.scope)
            .env("INFLUXION_KEYCLIENT_SESSION_KEY", self.session_key)
            .env("INFLUXION_DATA_DIR", dir.join("keyclient"))
            .env("INFLUXION_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        std::fs::create_dir_all(dir.join("keyclient")).unwrap();
        cmd
    }
}

/// Lint a certificate (or CRL) with pkilint, an independent X.509 linter; any finding
/// at WARNING or above fails.
/// A PEM file with several certificates (a chain) is linted one certificate at a time:
/// pkilint reads one document per file.
#[track_caller]
pub(crate) fn lint_clean(args: &[&str], file: &Path) {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    const END: &str = "-----END CERTIFICATE-----";
    if text.matches(END).count() > 1 {
        for (i, pem) in text
            .split_inclusive(END)
            .filter(|p| p.contains("BEGIN"))
            .enumerate()
        {
            let one = file.with_extension(format!("{i}.pem"));
            std::fs::write(&one, pem.trim_start()).unwrap();
            lint_clean(args, &one);
        }
        return;
    }
    let (cmd, rest) = args.split_first().unwrap();
    let out = Command::new(pkilint(cmd))
        .args(rest)
        .args(["-s", "WARNING"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout.iter().all(u8::is_ascii_whitespace),
        "pkilint {cmd} {}: {}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl cms -verify` of a detached DER signature over `content`, trusting `ca`:
/// whether it verified, and what openssl said.
pub(crate) fn openssl_cms_verifies(d: &Path, p7s: &str, content: &str, ca: &str) -> (bool, String) {
    let out = openssl(
        &[
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            p7s,
            "-content",
            content,
            "-CAfile",
            ca,
            "-purpose",
            "any",
            "-out",
            "/dev/null",
        ],
        d,
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// MCUboot's imgtool from PyPI, in the virtualenv scripts/test.sh makes.
pub(crate) fn imgtool() -> PathBuf {
    let p = repo_root().join("target/imgtool/bin/imgtool");
    assert!(
        p.exists(),
        "imgtool is missing: scripts/test.sh installs it into target/imgtool"
    );
    p
}

/// `prog args` in `d`: whether it succeeded, and its stdout and stderr.
pub(crate) fn tool(d: &Path, prog: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> (bool, String) {
    let prog = prog.as_ref();
    let out = Command::new(prog)
        .args(args)
        .current_dir(d)
        .output()
        .unwrap_or_else(|e| panic!("{prog:?} (scripts/test.sh installs it): {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `imgtool verify -k public image` in `d`.
pub(crate) fn imgtool_verifies(d: &Path, public: &str, image: &str) -> (bool, String) {
    tool(d, imgtool(), &["verify", "-k", public, image])
}

/// `name` compiled by mingw-w64 from `source` with `flags`: test PE files are built,
/// not downloaded.
pub(crate) fn mingw(d: &Path, name: &str, source: &str, flags: &[&str]) {
    let c = format!("{name}.c");
    std::fs::write(d.join(&c), source).unwrap();
    let out = Command::new("x86_64-w64-mingw32-gcc")
        .args(["-O2", "-o", name, &c])
        .args(flags)
        .current_dir(d)
        .output()
        .expect(
            "x86_64-w64-mingw32-gcc (Debian gcc-mingw-w64-x86-64; scripts/test.sh installs it)",
        );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
