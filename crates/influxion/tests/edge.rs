//! The keyserver's HTTP edge against clients that stall, over real sockets to the real
//! binary: slow headers, a chunked body that never ends, a body shorter than its
//! Content-Length, and more idle connections than the cap. Each must end in a 408 or a
//! closed connection; the limits are set short here (`INFLUXION_HTTP_*`). Beside them,
//! what operators see of the edge: request ids, native TLS, readiness, the metrics
//! listener and per-subject rate limits.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

mod common;

use std::time::Duration;

use common::*;

const LIMITS: &[(&str, &str)] = &[
    ("INFLUXION_HTTP_HEADER_TIMEOUT_SECS", "1"),
    ("INFLUXION_HTTP_BODY_TIMEOUT_SECS", "1"),
    ("INFLUXION_HTTP_IDLE_TIMEOUT_SECS", "2"),
    ("INFLUXION_HTTP_MAX_CONNECTIONS", "6"),
];

/// Far above any limit above: only "closed at all" is asserted, never how fast.
const BOUND: Duration = Duration::from_secs(30);

#[test]
fn keyserver_ends_stalled_and_idle_connections() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let provider = start_provider(d);
    let ks = start_keyserver_env(d, &provider.issuer, AUDIENCE, LIMITS);
    let token = access_token(&ks, "ci-admin", "admin-secret-1234567890");

    // Headers one byte at a time: the connection is closed.
    let mut s = raw::connect(&ks.url);
    raw::drip(
        &s,
        b"GET /healthz HTTP/1.1\r\nHost: ks\r\n",
        b"X",
        Duration::from_millis(300),
    );
    raw::until_closed(&mut s, BOUND);

    // An authenticated request whose body never ends, or never arrives in full: 408,
    // as a problem document, and the connection closed.
    let head = |framing: &str| {
        format!(
            "POST /v1/keys HTTP/1.1\r\nHost: ks\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\n{framing}\r\n\r\n"
        )
    };
    for (framing, first, piece) in [
        (
            "Transfer-Encoding: chunked",
            "1\r\n \r\n",
            &b"1\r\n \r\n"[..],
        ),
        ("Content-Length: 100", "{\"name\":", &b""[..]),
    ] {
        let mut s = raw::connect(&ks.url);
        raw::drip(
            &s,
            format!("{}{first}", head(framing)).as_bytes(),
            piece,
            Duration::from_millis(200),
        );
        let got = raw::until_closed(&mut s, BOUND);
        assert!(got.starts_with("HTTP/1.1 408"), "{framing}: {got}");
        assert!(
            got.contains("application/problem+json")
                && got.contains("https://influxion.dev/problems/request-timeout"),
            "{framing}: {got}"
        );
    }

    // Far more idle connections than the cap: every one is closed (those beyond the
    // cap on accept, the others after the idle timeout), and the server still answers.
    let mut idle: Vec<_> = (0..20).map(|_| raw::connect(&ks.url)).collect();
    for s in &mut idle {
        raw::until_closed(s, BOUND);
    }
    let o = std::process::Command::new("curl")
        .args(["-fsS", &format!("{}/healthz", ks.url)])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ok");
}

/// Every answer carries a request id (the caller's when it is a plain token, else a new
/// one), and `INFLUXION_LOG_FORMAT=json` writes one JSON object per line whose spans
/// carry it; the bearer token is in no log line, even at debug level.
#[test]
fn request_ids_in_answers_and_json_logs() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let provider = start_provider(d);
    let port = free_port();
    let log = d.join("keyserver.log");
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("serve").current_dir(d);
    server_env(&mut cmd, &provider.issuer, &d.join("data"), port);
    let child = cmd
        .env("INFLUXION_LOG_FORMAT", "json")
        .env("INFLUXION_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut proc = Proc(child);
    let url = format!("http://127.0.0.1:{port}");
    assert!(
        healthy_or_exited(&mut proc, &url),
        "the keyserver did not start"
    );
    let ks = Keyserver {
        proc: Some(proc),
        url: url.clone(),
        data: d.join("data"),
        issuer: provider.issuer.clone(),
        audience: AUDIENCE.to_owned(),
    };
    let token = access_token(&ks, "ci-admin", "admin-secret-1234567890");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let get = |id: Option<&str>| {
        rt.block_on(async {
            let mut r = reqwest::Client::new()
                .get(format!("{url}/v1/keys"))
                .bearer_auth(&token);
            if let Some(id) = id {
                r = r.header("x-request-id", id);
            }
            let resp = r.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.headers()["x-request-id"].to_str().unwrap().to_owned()
        })
    };
    assert_eq!(get(Some("trace-4711.a_b")), "trace-4711.a_b");
    // A UUID, 8-4-4-4-12 hex digits.
    let is_uuid = |s: &str| {
        s.len() == 36
            && s.char_indices().all(|(i, c)| {
                if matches!(i, 8 | 13 | 18 | 23) {
                    c == '-'
                } else {
                    c.is_ascii_hexdigit()
                }
            })
    };
    let made = get(None);
    assert!(is_uuid(&made), "{made}");
    let forged = get(Some("x\", \"level\":\"ERROR"));
    assert!(is_uuid(&forged), "{forged}");

    drop(ks);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let with_id = |id: &str| {
        lines.iter().any(|l| {
            l["spans"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["request_id"] == id))
        })
    };
    assert!(with_id("trace-4711.a_b"), "{text}");
    assert!(with_id(&made), "{text}");
    assert!(!text.contains(&token), "the bearer token is in the log");
}

/// `influxion serve` with its own TLS (`INFLUXION_TLS_CERT_FILE`/`_KEY_FILE`): HTTPS
/// only, and a renewed certificate is taken on SIGHUP without a restart; a broken pair
/// on SIGHUP leaves the one in use.
#[test]
fn native_tls_and_certificate_reload_on_sighup() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in ["a", "b"] {
        let out = openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-subj",
                &format!("/CN=keyserver-{name}"),
                "-days",
                "2",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ],
            d,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let install = |name: &str| {
        std::fs::copy(d.join(format!("{name}.pem")), d.join("tls.pem")).unwrap();
        std::fs::copy(d.join(format!("{name}.key")), d.join("tls.key")).unwrap();
    };
    install("a");
    let provider = start_provider(d);
    let port = free_port();
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("serve").current_dir(d);
    server_env(&mut cmd, &provider.issuer, &d.join("data"), port);
    let child = cmd
        .env("INFLUXION_TLS_CERT_FILE", d.join("tls.pem"))
        .env("INFLUXION_TLS_KEY_FILE", d.join("tls.key"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let proc = Proc(child);
    let pid = proc.0.id().to_string();
    let https = format!("https://127.0.0.1:{port}/healthz");
    let trusted_by = |ca: &str| {
        std::process::Command::new("curl")
            .args(["-fsS", "--max-time", "5", "--cacert", ca, &https])
            .current_dir(d)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let until = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + BOUND;
        while !ok() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    until(
        "the keyserver did not answer HTTPS with certificate a",
        &|| trusted_by("a.pem"),
    );
    let plain = std::process::Command::new("curl")
        .args([
            "-fsS",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{port}/healthz"),
        ])
        .output()
        .unwrap();
    assert!(!plain.status.success(), "plain HTTP answered");

    // A renewed certificate: taken on SIGHUP, for new connections.
    install("b");
    let hup = || {
        assert!(std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success())
    };
    hup();
    until("certificate b was not taken on SIGHUP", &|| {
        trusted_by("b.pem")
    });
    assert!(
        !trusted_by("a.pem"),
        "the old certificate is still presented"
    );

    // A broken pair on SIGHUP: the certificate in use stays, the keyserver keeps going.
    std::fs::write(d.join("tls.pem"), "not a certificate").unwrap();
    hup();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        trusted_by("b.pem"),
        "a broken reload replaced the certificate"
    );
    drop(proc);
}

/// Readiness includes the identity provider's signing keys: a keyserver whose provider
/// cannot be reached is alive (`/healthz`) but not ready, and says why.
#[test]
fn not_ready_without_the_providers_keys() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    // Nothing listens there.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("serve").current_dir(d);
    server_env(&mut cmd, &nowhere, &d.join("data"), port);
    let child = cmd
        .env("INFLUXION_ALLOW_INSECURE_HTTP", "true")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut proc = Proc(child);
    let url = format!("http://127.0.0.1:{port}");
    assert!(
        healthy_or_exited(&mut proc, &url),
        "the keyserver did not start"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, body) = rt.block_on(async {
        let r = reqwest::get(format!("{url}/readyz")).await.unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    });
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["jwks"], "unavailable", "{body}");
    assert_eq!(body["database"], "ok", "{body}");
}

/// Prometheus metrics on their own listener (`INFLUXION_METRICS_LISTEN`), and a
/// per-subject rate limit from the configuration file: a signature, a refused token and
/// a rate-limited signature are counted with their labels, `/metrics` is not on the
/// API's port, and `config check` shows both settings.
#[test]
fn metrics_listener_and_rate_limits() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let provider = start_provider(d);
    let config = d.join("influxion.toml");
    std::fs::write(
        &config,
        "[rate_limits]\ncertificates_per_minute = 100\n\n\
         [rate_limits.subjects.ci]\nsignatures_per_minute = 1\n",
    )
    .unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let settings = [
        ("INFLUXION_METRICS_LISTEN", metrics.as_str()),
        ("INFLUXION_CONFIG", config.to_str().unwrap()),
    ];

    // config check names both.
    let mut check = std::process::Command::new(BIN);
    check.args(["config", "check"]).current_dir(d);
    server_env(&mut check, &provider.issuer, &d.join("data"), free_port());
    let out = ok(&check.envs(settings).output().unwrap());
    assert!(
        out.contains(&format!("metrics_listen = {metrics:?}\n")),
        "{out}"
    );
    assert!(
        out.contains(
            "[rate_limits]\nsignatures_per_minute = \"unlimited\"\ncertificates_per_minute = 100\n"
        ),
        "{out}"
    );
    assert!(
        out.contains("[rate_limits.subjects.\"ci\"]\nsignatures_per_minute = 1\ncertificates_per_minute = 100\n"),
        "{out}"
    );

    let ks = start_keyserver_env(d, &provider.issuer, AUDIENCE, &settings);
    ok(&ks.admin(&["keys", "create", "fw", "--type", "ec-p256"], d));
    let signer = access_token(&ks, "ci-signer", "s3cret-value-1234567890");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();
    let sign = || {
        rt.block_on(async {
            let r = http
                .post(format!("{}/v1/keys/fw/sign", ks.url))
                .bearer_auth(&signer)
                .json(&serde_json::json!({"digest": "ab".repeat(32)}))
                .send()
                .await
                .unwrap();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            (r.status().as_u16(), retry, r.text().await.unwrap())
        })
    };
    let get = |url: String, token: Option<&str>| {
        rt.block_on(async {
            let mut r = http.get(url);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };

    let (status, _, body) = sign();
    assert_eq!(status, 200, "{body}");
    // The subject ci may sign once a minute.
    let (status, retry, body) = sign();
    assert_eq!(status, 429, "{body}");
    assert!(
        body.contains("https://influxion.dev/problems/rate-limited"),
        "{body}"
    );
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let (status, _) = get(format!("{}/v1/keys", ks.url), Some("not-a-token"));
    assert_eq!(status, 401);
    // Not on the API's port.
    let (status, body) = get(format!("{}/metrics", ks.url), None);
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("https://influxion.dev/problems/not-found"),
        "{body}"
    );

    let (status, text) = get(format!("http://{metrics}/metrics"), None);
    assert_eq!(status, 200, "{text}");
    let value = |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse::<f64>().unwrap())
    };
    for (series, want) in [
        (
            r#"influxion_http_requests_total{route="/v1/keys/{name}/sign",method="POST",status="200"}"#,
            1.0,
        ),
        (
            r#"influxion_http_requests_total{route="/v1/keys/{name}/sign",method="POST",status="429"}"#,
            1.0,
        ),
        (
            r#"influxion_http_requests_total{route="/v1/keys",method="GET",status="401"}"#,
            1.0,
        ),
        (
            r#"influxion_http_requests_total{route="unmatched",method="GET",status="404"}"#,
            1.0,
        ),
        (
            r#"influxion_token_refusals_total{reason="token-malformed"}"#,
            1.0,
        ),
        (
            r#"influxion_sign_duration_seconds_count{outcome="ok"}"#,
            1.0,
        ),
        (r#"influxion_rate_limited_total{operation="sign"}"#, 1.0),
        (
            r#"influxion_approval_queue_depth{kind="signing_request"}"#,
            0.0,
        ),
    ] {
        assert_eq!(value(series), Some(want), "{series} in\n{text}");
    }
    assert!(
        value(r#"influxion_jwks_refreshes_total{outcome="ok"}"#).is_some_and(|n| n >= 1.0),
        "{text}"
    );
    // The store's writer reports its batches, and the read pool its connections.
    assert!(
        value("influxion_audit_batch_size_count").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        value(r#"influxion_db_pool_connections{state="idle"}"#).is_some(),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    // Nothing but /metrics there.
    let (status, _) = get(format!("http://{metrics}/v1/keys"), Some(&signer));
    assert_eq!(status, 404);
}
