//! The keyclient (backend-for-frontend) end to end: the real `influxion` binary
//! (keyserver and keyclient), the real OIDC provider with its real login page, and
//! Debian's Chromium driven by playwright-core.
//!
//! Needs what e2e.rs needs, plus `/usr/bin/chromium` and `npm ci --prefix tests/browser`.
//! Without them these tests fail, naming what is missing (scripts/test.sh installs it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use futures::StreamExt;

const SESSION_KEY: &str = "S2V5Y2xpZW50IHNlc3Npb24ga2V5IGZvciB0ZXN0cyE=";
const API_SCOPE: &str = "api://influxion-test/access_as_user";

fn browser_prerequisites() -> bool {
    if !prerequisites() {
        return false;
    }
    let mut missing = Vec::new();
    if !repo_root()
        .join("tests/browser/node_modules/playwright-core")
        .exists()
    {
        missing.push("tests/browser/node_modules (run: npm ci --prefix tests/browser)");
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        missing.push("chromium (apt-get install chromium)");
    }
    require(&missing)
}

struct Keyclient {
    _proc: Proc,
    url: String,
    log: std::path::PathBuf,
}

fn log_of(dir: &Path, port: u16) -> std::path::PathBuf {
    dir.join(format!("keyclient-{port}.log"))
}

fn keyclient_command(dir: &Path, port: u16, ks: &Keyserver) -> Command {
    let web = WebClient {
        id: KEYCLIENT_ID,
        secret: KEYCLIENT_SECRET,
        scope: API_SCOPE,
        session_key: SESSION_KEY,
    };
    web.command(dir, port, ks, &log_of(dir, port))
}

fn start_keyclient(dir: &Path, port: u16, ks: &Keyserver) -> Keyclient {
    let mut child = Proc(keyclient_command(dir, port, ks).spawn().unwrap());
    let url = format!("http://127.0.0.1:{port}");
    let log = log_of(dir, port);
    assert!(
        healthy_or_exited(&mut child, &url),
        "the keyclient did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    Keyclient {
        _proc: child,
        url,
        log,
    }
}

/// Provider, keyserver and keyclient; alice approves `rel-*` keys (and audits).
fn setup(d: &Path) -> (Provider, Keyserver, Keyclient) {
    let port = free_port();
    // Access tokens shorter-lived than the keyclient's refresh margin: every API call
    // through the keyclient refreshes first, so refresh is exercised throughout.
    let provider = start_provider_with(d, Some(port), 30);
    let ks = start_keyserver(d, &provider.issuer);
    let alice = user_oid("alice");
    ok(&ks.admin(
        &[
            "subjects",
            "create",
            "alice",
            "--object-id",
            &alice,
            "--grant",
            "approver:rel-*",
            "--grant",
            "auditor",
        ],
        d,
    ));
    let kc = start_keyclient(d, port, &ks);
    (provider, ks, kc)
}

/// Three approvers: approver-1 (a pipeline, through the CLI), eve (a person whose
/// identity provider calls her by an HTML snippet, through the keyclient's proxy), then
/// alice in the browser. The card and the audit log name them by their labels, as text.
#[test]
fn approve_in_the_browser_as_the_third_approver() {
    if !browser_prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_provider, ks, kc) = setup(d);
    write_firmware(d, "fw.bin", 100_000);
    ok(&ks.admin(&["keys", "create", "rel-web"], d));
    ok(&ks.admin(
        &[
            "subjects",
            "create",
            "approver-1",
            "--app-id",
            "approver-1",
            "--grant",
            "approver:rel-*",
        ],
        d,
    ));
    ok(&ks.admin(
        &[
            "subjects",
            "create",
            "eve",
            "--object-id",
            &user_oid("eve"),
            "--grant",
            "approver:rel-*",
        ],
        d,
    ));
    ok(&ks.admin(
        &[
            "keys",
            "policy",
            "rel-web",
            "--approvals",
            "3",
            "--approver",
            "approver-1",
            "--approver",
            "eve",
            "--approver",
            "alice",
        ],
        d,
    ));
    let signer = ks.spawn_signer(
        &[
            "sign",
            "--key",
            "rel-web",
            "fw.bin",
            "--reason",
            "release 3.0 from the web test",
            "--meta",
            "version=3.0",
            "-o",
            "web.sig",
        ],
        d,
    );
    let id = pending_id(&ks, d);
    ok(&ks.cli(
        "approver-1",
        "approver-1-secret-123456",
        &["approvals", "approve", &id, "--comment", "first"],
        d,
    ));
    // Eve approves through the keyclient, as her browser would (sign-in, CSRF header).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let b = Browser::new(&kc.url);
        let (_, eve, _) = b.sign_in("eve").await;
        let r = b
            .send(
                b.req(
                    reqwest::Method::POST,
                    &format!("/api/v1/signing-requests/{id}/approve"),
                    Some(&eve),
                )
                .header("x-influxion-csrf", "1")
                .header("origin", &kc.url)
                .header("content-type", "application/json")
                .body(serde_json::json!({"comment": "<b>second</b>"}).to_string()),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["approvals_count"], 2, "{v}");
        // The API passes her name on as it came (cleaned of control characters only).
        let labels = v["approvals"].to_string();
        assert!(
            labels.contains(&serde_json::json!(HOSTILE_NAME).to_string()),
            "{v}"
        );
    });
    let eve_id = format!("{TENANT}/{}", user_oid("eve"));

    let shots = repo_root().join("target/web-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(repo_root().join("tests/browser/approve.mjs"))
        .env("KEYCLIENT_URL", &kc.url)
        .env("LOGIN_USER", "alice")
        .env("REQUEST_ID", &id)
        .env("COMMENT", "approved in the browser")
        .env("SCREENSHOT_DIR", &shots)
        .env(
            "FORBIDDEN",
            serde_json::json!([KEYCLIENT_SECRET, SESSION_KEY]).to_string(),
        )
        .env(
            "EXPECT_DECIDERS",
            serde_json::json!(["approver-1 (app)", HOSTILE_NAME]).to_string(),
        )
        .env(
            "EXPECT_AUDIT_ACTORS",
            serde_json::json!(["Alice Approver", "approver-1 (app)", HOSTILE_NAME]).to_string(),
        )
        .env("HOSTILE_NAME", HOSTILE_NAME)
        .env("HOSTILE_ID", &eve_id)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser test failed\nstdout: {stdout}\nstderr: {}\nkeyclient log: {}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&kc.log).unwrap_or_default()
    );
    println!("browser: {stdout}screenshots in {}", shots.display());

    // The CLI that was waiting receives the signature, and openssl accepts it.
    let out = signer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(&ks.signer(&["keys", "public", "rel-web", "-o", "web.pem"], d));
    assert_sha256_verifies(d, "web.pem", "web.sig", "fw.bin");
    let shown = ok(&ks.signer(&["approvals", "show", &id], d));
    assert!(shown.contains("approved in the browser"), "{shown}");
}

// ------------------------------------------------------------------ HTTP-level checks

/// Requests to the keyclient with cookies handled by hand (to tamper with them), and
/// a cookie-keeping client for the provider's login pages.
struct Browser {
    kc: reqwest::Client,
    idp: reqwest::Client,
    base: String,
}

struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Resp {
    fn slug(&self) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.body).unwrap_or_default();
        v["type"]
            .as_str()
            .unwrap_or_default()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned()
    }
    fn location(&self) -> String {
        self.headers
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }
    /// The `Set-Cookie` header of cookie `name`, if this response sets it.
    fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .find(|v| v.starts_with(&format!("{name}=")))
    }
    /// The value of cookie `name` this response sets, if any (not a deletion).
    fn cookie_named(&self, name: &str) -> Option<String> {
        let set = self.set_cookie(name)?;
        let v = set.split(';').next()?.split_once('=')?.1;
        (!v.is_empty()).then(|| v.to_owned())
    }
    /// The session cookie this response sets (value), if any.
    fn cookie(&self) -> Option<String> {
        self.cookie_named("__Host-influxion")
    }
    /// The sign-in cookie `/login` sets (value).
    fn login_cookie(&self) -> Option<String> {
        self.cookie_named("__Host-influxion-login")
    }
}

impl Browser {
    fn new(base: &str) -> Self {
        let b = || reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        Self {
            // A fresh connection per request: the keyclient closes one after refusing an
            // oversized body, and a pooled connection would then fail the next request.
            kc: b().pool_max_idle_per_host(0).build().unwrap(),
            idp: cookie_client(),
            base: base.to_owned(),
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Resp {
        let r = rb.send().await.unwrap();
        Resp {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.text().await.unwrap(),
        }
    }

    fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        cookie: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        let mut rb = self.kc.request(method, url);
        if let Some(c) = cookie {
            rb = rb.header("cookie", format!("__Host-influxion={c}"));
        }
        rb
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> Resp {
        self.send(self.req(reqwest::Method::GET, path, cookie))
            .await
    }

    /// `/login`, then the provider's real login form as `user`; returns the sign-in
    /// cookie and the callback URL the provider sends the browser to.
    async fn to_callback(&self, user: &str) -> (String, String) {
        let r = self.get("/login?return_to=%2F%23%2Fapprovals", None).await;
        assert_eq!(r.status, 303, "{}", r.body);
        let set = r.set_cookie("__Host-influxion-login").unwrap();
        for attr in [
            "Path=/",
            "Secure",
            "HttpOnly",
            "SameSite=Lax",
            "Max-Age=600",
        ] {
            assert!(set.contains(attr), "{set}");
        }
        let pre = r.login_cookie().expect("a sign-in cookie");
        let callback = provider_login(&self.idp, r.location(), user, &self.base).await;
        (pre, callback)
    }

    /// The callback with the sign-in cookie `login` and the session cookie `session`.
    async fn callback(&self, url: &str, login: Option<&str>, session: Option<&str>) -> Resp {
        let mut rb = self.req(reqwest::Method::GET, url, session);
        if let Some(l) = login {
            rb = rb.header("cookie", format!("__Host-influxion-login={l}"));
        }
        self.send(rb).await
    }

    /// A complete sign-in: (sign-in cookie, signed-in cookie, callback URL).
    async fn sign_in(&self, user: &str) -> (String, String, String) {
        let (pre, callback) = self.to_callback(user).await;
        let r = self.callback(&callback, Some(&pre), None).await;
        assert_eq!(r.status, 303, "callback: {}", r.body);
        assert_eq!(r.location(), "/#/approvals");
        let set = r.headers.get("set-cookie").unwrap().to_str().unwrap();
        for attr in [
            "__Host-influxion=",
            "Path=/",
            "Secure",
            "HttpOnly",
            "SameSite=Lax",
        ] {
            assert!(set.contains(attr), "{set}");
        }
        let user_cookie = r.cookie().unwrap();
        assert_ne!(user_cookie, pre, "the session id must change at sign-in");
        // The sign-in cookie is spent with it.
        let cleared = r.set_cookie("__Host-influxion-login").unwrap();
        assert!(cleared.contains("Max-Age=0"), "{cleared}");
        (pre, user_cookie, callback)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyclient_refuses_csrf_bad_state_tampered_cookies_fixation_and_open_redirects() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Starting the servers blocks; this runtime has a second worker for that.
    let (_provider, ks, kc) = setup(dir.path());
    let b = Browser::new(&kc.url);

    // Security headers on every page.
    for path in ["/", "/session", "/api/v1/me", "/nope"] {
        let r = b.get(path, None).await;
        let h = |n: &str| {
            r.headers
                .get(n)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        assert!(
            h("content-security-policy").contains("frame-ancestors 'none'"),
            "{path}"
        );
        assert!(
            h("content-security-policy").contains("script-src 'self'"),
            "{path}"
        );
        assert_eq!(h("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(h("referrer-policy"), "no-referrer", "{path}");
        assert_eq!(h("x-frame-options"), "DENY", "{path}");
    }
    let r = b.get("/api/v1/me", None).await;
    assert_eq!((r.status, r.slug().as_str()), (401, "not-signed-in"));

    // Open redirects via return_to are refused before anything else happens.
    for evil in [
        "https%3A%2F%2Fevil.example%2F",
        "%2F%2Fevil.example",
        "%2F%5Cevil.example",
    ] {
        let r = b.get(&format!("/login?return_to={evil}"), None).await;
        assert_eq!(
            (r.status, r.slug().as_str()),
            (400, "invalid-return-to"),
            "{evil}"
        );
        assert!(r.location().is_empty());
    }

    // A query over 2 KiB is refused, not redirected (docs/problems.md).
    let r = b
        .get(
            &format!("/login?return_to=%2F&pad={}", "a".repeat(2100)),
            None,
        )
        .await;
    assert_eq!((r.status, r.slug().as_str()), (400, "invalid-request"));
    assert!(r.location().is_empty());

    // A wrong state is refused, and the browser's sign-in cookie is cleared.
    let (pre, callback) = b.to_callback("alice").await;
    let mut wrong = url::Url::parse(&callback).unwrap();
    let pairs: Vec<(String, String)> = wrong
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "state" {
                format!("{v}x")
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    wrong.query_pairs_mut().clear().extend_pairs(pairs);
    let r = b.callback(wrong.as_str(), Some(&pre), None).await;
    assert_eq!(
        (r.status, r.slug().as_str()),
        (400, "invalid-state"),
        "{}",
        r.body
    );
    assert!(r
        .set_cookie("__Host-influxion-login")
        .is_some_and(|c| c.contains("Max-Age=0")));
    // A tampered sign-in cookie opens nothing.
    let mut bad = pre.clone().into_bytes();
    bad[20] = if bad[20] == b'A' { b'B' } else { b'A' };
    let r = b
        .callback(&callback, Some(&String::from_utf8(bad).unwrap()), None)
        .await;
    assert_eq!((r.status, r.slug().as_str()), (400, "invalid-state"));
    // A callback with no sign-in started in this browser.
    let r = b.get(&callback, None).await;
    assert_eq!((r.status, r.slug().as_str()), (400, "invalid-state"));

    // A good sign-in; then the replayed callback is refused, with the sign-in cookie
    // (it completed once) or the session cookie.
    let (pre, user, callback) = b.sign_in("alice").await;
    for (login, session) in [(Some(pre.as_str()), None), (None, Some(user.as_str()))] {
        let r = b.callback(&callback, login, session).await;
        assert_eq!((r.status, r.slug().as_str()), (400, "invalid-state"));
    }
    for _ in 0..2 {
        let r = b.get("/api/v1/me", Some(&user)).await;
        assert_eq!(
            r.status,
            200,
            "{}\nkeyclient log: {}",
            r.body,
            std::fs::read_to_string(&kc.log).unwrap_or_default()
        );
        assert!(r.body.contains("approver"), "{}", r.body);
    }
    // Those went out with refreshed access tokens (rotated refresh tokens included).
    let log = std::fs::read_to_string(&kc.log).unwrap();
    assert!(
        log.matches("refreshed the access token").count() >= 2,
        "{log}"
    );
    // A second replica sharing the session database and key: the session works on
    // both, and concurrent refreshes through both (every call refreshes here) never
    // spend one rotating refresh token twice (the refresh lease in the database).
    let port2 = free_port();
    let mut kc2 = Proc(keyclient_command(dir.path(), port2, &ks).spawn().unwrap());
    let url2 = format!("http://127.0.0.1:{port2}");
    assert!(healthy_or_exited(&mut kc2, &url2));
    let b2 = Browser::new(&url2);
    let calls = (0..12).map(|i| {
        let replica = if i % 2 == 0 { &b } else { &b2 };
        replica.get("/api/v1/me", Some(&user))
    });
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = b.get("/session", Some(&user)).await;
    let s: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(s["authenticated"], true);
    assert_eq!(s["user"]["username"], "alice");
    // No token and no secret in anything the browser receives.
    for body in [&r.body, &b.get("/api/v1/me", Some(&user)).await.body] {
        assert!(
            !body.contains("eyJ") && !body.contains(KEYCLIENT_SECRET),
            "{body}"
        );
    }

    // Session fixation: the sign-in cookie value opens no session after sign-in.
    let r = b.get("/api/v1/me", Some(&pre)).await;
    assert_eq!((r.status, r.slug().as_str()), (401, "not-signed-in"));
    let r = b.get("/session", Some(&pre)).await;
    assert!(r.body.contains("\"authenticated\":false"), "{}", r.body);

    // A tampered cookie is no session.
    let mut tampered = user.clone().into_bytes();
    tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for c in [tampered.as_str(), "x", &format!("{user}x")] {
        let r = b.get("/api/v1/me", Some(c)).await;
        assert_eq!((r.status, r.slug().as_str()), (401, "not-signed-in"), "{c}");
    }

    // CSRF: a state-changing request needs the header and this very origin.
    let approve = "/api/v1/signing-requests/00000000-0000-0000-0000-000000000000/approve";
    let post = |csrf: bool, origin: Option<&str>| {
        let mut rb = b
            .req(reqwest::Method::POST, approve, Some(&user))
            .header("content-type", "application/json")
            .body("{\"comment\":\"x\"}");
        if csrf {
            rb = rb.header("x-influxion-csrf", "1");
        }
        if let Some(o) = origin {
            rb = rb.header("origin", o);
        }
        rb
    };
    let evil = "http://evil.example";
    for (csrf, origin) in [
        (false, Some(kc.url.as_str())),
        (true, Some(evil)),
        (true, None),
        (false, None),
    ] {
        let r = b.send(post(csrf, origin)).await;
        assert_eq!(
            (r.status, r.slug().as_str()),
            (403, "csrf"),
            "{csrf} {origin:?}"
        );
    }
    let r = b
        .send(post(true, Some(&kc.url)).header("sec-fetch-site", "cross-site"))
        .await;
    assert_eq!((r.status, r.slug().as_str()), (403, "csrf"));
    // With both, the request reaches the keyserver (which knows no such request).
    let r = b.send(post(true, Some(&kc.url))).await;
    assert_eq!(
        (r.status, r.slug().as_str()),
        (404, "unknown-request"),
        "{}",
        r.body
    );
    // The proxy forwards only the web app's routes, and bounded bodies. Signing, key
    // creation, policy changes and server-side key generation are not among them.
    let r = b.get("/api/healthz", Some(&user)).await;
    assert_eq!((r.status, r.slug().as_str()), (404, "not-found"));
    for (method, path) in [
        (reqwest::Method::POST, "/api/v1/keys/rel-prod/sign"),
        (reqwest::Method::PUT, "/api/v1/keys/rel-prod/policy"),
        (reqwest::Method::POST, "/api/v1/keys"),
        (reqwest::Method::POST, "/api/v1/profiles/device/keys"),
        (reqwest::Method::POST, "/api/v1/keys/..%2F..%2Fhealthz"),
    ] {
        let r = b
            .send(
                b.req(method.clone(), path, Some(&user))
                    .header("x-influxion-csrf", "1")
                    .header("origin", &kc.url)
                    .header("content-type", "application/json")
                    .body("{}"),
            )
            .await;
        assert_eq!(
            (r.status, r.slug().as_str()),
            (404, "not-found"),
            "{method} {path}"
        );
    }
    // Percent-encoding in a proxied path is refused, never decoded into a route.
    for path in ["/api/v1/keys%2fdemo", "/api/v1/keys/de%6do", "/api/v1/m%65"] {
        let r = b.get(path, Some(&user)).await;
        assert_eq!(
            (r.status, r.slug().as_str()),
            (404, "not-found"),
            "{path}: {}",
            r.body
        );
    }
    let big = vec![b'x'; 2 * 1024 * 1024];
    let r = b
        .send(
            b.req(reqwest::Method::POST, approve, Some(&user))
                .header("x-influxion-csrf", "1")
                .header("origin", &kc.url)
                .header("content-type", "application/json")
                .body(big),
        )
        .await;
    assert_eq!((r.status, r.slug().as_str()), (413, "body-too-large"));

    // Logout needs the CSRF defence too, ends the session, and points at the provider.
    let r = b
        .send(b.req(reqwest::Method::POST, "/logout", Some(&user)))
        .await;
    assert_eq!((r.status, r.slug().as_str()), (403, "csrf"));
    let r = b
        .send(
            b.req(reqwest::Method::POST, "/logout", Some(&user))
                .header("x-influxion-csrf", "1")
                .header("origin", &kc.url),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let logout_url = v["logout_url"].as_str().unwrap();
    assert!(
        logout_url.contains("post_logout_redirect_uri"),
        "{logout_url}"
    );
    assert!(!logout_url.contains("id_token_hint"), "{logout_url}");
    let r = b.get("/api/v1/me", Some(&user)).await;
    assert_eq!((r.status, r.slug().as_str()), (401, "not-signed-in"));
}

/// `/login` is unauthenticated: a link to it (or a forged callback) must not sign the
/// browser out, and any number of calls must not fill a table that blocks sign-ins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_links_keep_the_session_and_store_nothing() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_provider, _ks, kc) = setup(dir.path());
    let b = Browser::new(&kc.url);
    let (_, user, _) = b.sign_in("alice").await;

    // A cross-site link to /login, and a forged callback: the session stays.
    let r = b.get("/login?return_to=%2F", Some(&user)).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(r.set_cookie("__Host-influxion").is_none());
    let r = b
        .get(
            "/login/oauth2/code/keyserver-client?state=x&code=y",
            Some(&user),
        )
        .await;
    assert_eq!((r.status, r.slug().as_str()), (400, "invalid-state"));
    assert!(r.set_cookie("__Host-influxion").is_none());
    let r = b.get("/api/v1/me", Some(&user)).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // More unauthenticated sign-ins than the old table allowed (10 000): every one is
    // answered, and a real sign-in afterwards still works.
    let flood = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = format!("{}/login", kc.url);
    let statuses: Vec<u16> = futures::stream::iter(0..10_001)
        .map(|_| {
            let (flood, url) = (flood.clone(), url.clone());
            async move { flood.get(&url).send().await.unwrap().status().as_u16() }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 303));
    let (_, again, _) = b.sign_in("alice").await;
    let r = b.get("/api/v1/me", Some(&again)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Signing in anew ends the session the browser had.
    let (pre, callback) = b.to_callback("alice").await;
    let r = b.callback(&callback, Some(&pre), Some(&again)).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let third = r.cookie().unwrap();
    let r = b.get("/api/v1/me", Some(&again)).await;
    assert_eq!((r.status, r.slug().as_str()), (401, "not-signed-in"));
    let r = b.get("/api/v1/me", Some(&third)).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// The keyclient's HTTP edge (shared with the keyserver): slow headers and a body that
/// never ends are cut off, and connections beyond the cap are closed on accept while
/// the others stay open; once those go, the keyclient answers again.
#[test]
fn keyclient_ends_stalled_connections_and_caps_them() {
    if !prerequisites() {
        return;
    }
    let bound = std::time::Duration::from_secs(30);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_provider, ks, _kc) = setup(d);
    let port = free_port();
    let mut cmd = keyclient_command(d, port, &ks);
    cmd.env("INFLUXION_HTTP_HEADER_TIMEOUT_SECS", "1")
        .env("INFLUXION_HTTP_BODY_TIMEOUT_SECS", "1")
        .env("INFLUXION_HTTP_IDLE_TIMEOUT_SECS", "3600")
        .env("INFLUXION_HTTP_MAX_CONNECTIONS", "4");
    let mut child = Proc(cmd.spawn().unwrap());
    let url = format!("http://127.0.0.1:{port}");
    assert!(healthy_or_exited(&mut child, &url));

    let mut s = raw::connect(&url);
    raw::drip(
        &s,
        b"GET /healthz HTTP/1.1\r\nHost: kc\r\n",
        b"X",
        std::time::Duration::from_millis(300),
    );
    raw::until_closed(&mut s, bound);
    let mut s = raw::connect(&url);
    raw::drip(
        &s,
        b"POST /logout HTTP/1.1\r\nHost: kc\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n",
        b"1\r\nx\r\n",
        std::time::Duration::from_millis(200),
    );
    let got = raw::until_closed(&mut s, bound);
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 4"), "{got}");

    // Let the probes above go, then fill every slot.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut held: Vec<_> = (0..4).map(|_| raw::connect(&url)).collect();
    let mut beyond = raw::connect(&url);
    raw::until_closed(&mut beyond, bound);
    for h in &mut held {
        assert!(raw::still_open(h), "a connection within the cap was closed");
    }
    drop(held);
    let deadline = std::time::Instant::now() + bound;
    loop {
        let o = Command::new("curl")
            .args(["-fsS", &format!("{url}/healthz")])
            .output()
            .unwrap();
        if o.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no answer after the held connections closed"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A new, empty PostgreSQL database on the test server (`INFLUXION_TEST_POSTGRES_URL`,
/// which scripts/test.sh starts and exports); its URL.
async fn fresh_postgres_database() -> String {
    use sqlx::Connection as _;
    let admin = std::env::var("INFLUXION_TEST_POSTGRES_URL").expect(
        "INFLUXION_TEST_POSTGRES_URL is not set: run the tests through scripts/test.sh, \
         or start a server with `scripts/postgres.sh start DIR` and export its URL",
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!("kc_{}_{nanos}", std::process::id());
    let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    // postgres://user@host:port/database?query: the database is after the third slash.
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&name);
    url.to_string()
}

/// Keyclient replicas on different hosts, sharing nothing but a PostgreSQL database
/// (each has a data directory of its own): a browser signed in through one is signed
/// in on the other, its callback is spent on both, refreshes through both never spend
/// one rotating refresh token twice, and signing out on one ends the session on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyclient_replicas_share_sessions_on_postgres() {
    use sqlx::Connection as _;
    if !prerequisites() {
        return;
    }
    let database = fresh_postgres_database().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    // Access tokens shorter-lived than the refresh margin: every API call refreshes.
    let provider = start_provider_with(d, Some(port), 30);
    let ks = start_keyserver(d, &provider.issuer);
    ok(&ks.admin(
        &[
            "subjects",
            "create",
            "alice",
            "--object-id",
            &user_oid("alice"),
            "--grant",
            "approver:rel-*",
        ],
        d,
    ));
    let replica = |port: u16| {
        let own = d.join(format!("replica-{port}"));
        std::fs::create_dir_all(&own).unwrap();
        let mut cmd = keyclient_command(d, port, &ks);
        cmd.env("INFLUXION_KEYCLIENT_DATABASE_URL", &database)
            .env("INFLUXION_DATA_DIR", &own);
        let mut child = Proc(cmd.spawn().unwrap());
        let url = format!("http://127.0.0.1:{port}");
        assert!(
            healthy_or_exited(&mut child, &url),
            "the keyclient did not start: {}",
            std::fs::read_to_string(log_of(d, port)).unwrap_or_default()
        );
        (child, url, own)
    };
    let port2 = free_port();
    let (_kc1, url1, own1) = replica(port);
    let (_kc2, url2, own2) = replica(port2);
    let (b1, b2) = (Browser::new(&url1), Browser::new(&url2));
    let logs = || {
        [port, port2]
            .map(|p| std::fs::read_to_string(log_of(d, p)).unwrap_or_default())
            .join("\n----\n")
    };

    // Signed in through the first (the provider redirects there).
    let (pre, user, callback) = b1.sign_in("alice").await;
    let r = b2.get("/session", Some(&user)).await;
    let s: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(s["authenticated"], true, "{}\n{}", r.body, logs());
    assert_eq!(s["user"]["username"], "alice");
    // The callback is spent on the other replica too.
    let r = b2.callback(&callback, Some(&pre), None).await;
    assert_eq!((r.status, r.slug().as_str()), (400, "invalid-state"));

    // Every call refreshes first; the replicas take turns through the lease.
    let calls = (0..12).map(|i| {
        let b = if i % 2 == 0 { &b1 } else { &b2 };
        b.get("/api/v1/me", Some(&user))
    });
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.status, 200, "{}\n{}", r.body, logs());
        assert!(r.body.contains("approver"), "{}", r.body);
    }
    for p in [port, port2] {
        let log = std::fs::read_to_string(log_of(d, p)).unwrap();
        assert!(log.contains("refreshed the access token"), "{log}");
    }

    // Signing out on the second ends the session on the first.
    let r = b2
        .send(
            b2.req(reqwest::Method::POST, "/logout", Some(&user))
                .header("x-influxion-csrf", "1")
                .header("origin", &url2),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = b1.get("/api/v1/me", Some(&user)).await;
    assert_eq!((r.status, r.slug().as_str()), (401, "not-signed-in"));

    // Nothing went to a file: the sessions are in PostgreSQL.
    for own in [own1, own2] {
        assert!(!own.join("keyclient.db").exists(), "{}", own.display());
    }
    let mut c = sqlx::PgConnection::connect(&database).await.unwrap();
    let (sessions, logins): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM web_sessions), (SELECT COUNT(*) FROM completed_logins)",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!((sessions, logins), (0, 1));
}

/// `influxion dev` runs the keyclient too: a person signs in at the development
/// issuer's login page and reaches the keyserver through the web app's proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_web_sign_in() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_dev, port) = start_dev(dir.path());
    let b = Browser::new(&format!("http://127.0.0.1:{}", port + 2));
    let (_, user, _) = b.sign_in("bob").await;
    let r = b.get("/api/v1/me", Some(&user)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let me: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(me["principal"]["kind"], "user", "{me}");
    let roles = me["roles"].to_string();
    assert!(
        roles.contains("approver") && roles.contains("auditor"),
        "{me}"
    );
    let r = b
        .get("/api/v1/signing-requests?status=pending", Some(&user))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// With a certificate configured, the keyclient serves HTTPS itself (rustls) and sends
/// HSTS; the session cookie then travels only over TLS.
#[test]
fn keyclient_serves_tls() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_provider, ks, _kc) = setup(d);
    ok(&openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "web.key",
            "-out",
            "web.pem",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        d,
    ));
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let mut cmd = keyclient_command(d, port, &ks);
    cmd.env("INFLUXION_KEYCLIENT_TLS_CERT", d.join("web.pem"))
        .env("INFLUXION_KEYCLIENT_TLS_KEY", d.join("web.key"))
        .env("INFLUXION_KEYCLIENT_PUBLIC_URL", &url);
    let mut child = Proc(cmd.spawn().unwrap());
    let curl = |args: &[&str]| {
        Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(d.join("web.pem"))
            .args(args)
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let o = curl(&[&format!("{url}/healthz")]);
        if o.status.success() {
            assert_eq!(String::from_utf8_lossy(&o.stdout), "ok");
            break;
        }
        assert!(
            child.0.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline,
            "the TLS keyclient did not start: {}",
            std::fs::read_to_string(log_of(d, port)).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let head = String::from_utf8_lossy(
        &curl(&["-D", "-", "-o", "/dev/null", &format!("{url}/login")]).stdout,
    )
    .to_lowercase();
    assert!(
        head.contains("strict-transport-security: max-age="),
        "{head}"
    );
    assert!(
        head.contains("set-cookie: __host-influxion-login="),
        "{head}"
    );
    // Plain HTTP on the TLS port gets no page.
    let plain = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://127.0.0.1:{port}/healthz"),
        ])
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200");
}
