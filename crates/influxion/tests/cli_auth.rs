//! The CLI's ways to a token, end to end against the real binary: a person's PKCE
//! sign-in through the real OIDC provider's login page, the token cache and its
//! refresh, private_key_jwt against the real provider, and workload identity
//! federation against a loopback token endpoint that records what the CLI posts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

mod common;

use std::io::BufRead as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;

/// The CLI configured only by environment, without any client secret: it must use the
/// profile's cached sign-in (or whatever `extra` adds).
fn cli(
    ks: &Keyserver,
    d: &Path,
    client_id: &str,
    args: &[&str],
    extra: &[(&str, &str)],
) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .current_dir(d)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CI", "true")
        .env("INFLUXION_CONFIG_DIR", d.join("cfg"))
        .env("INFLUXION_SERVER", &ks.url)
        .env(
            "INFLUXION_OIDC_METADATA_URL",
            format!("{}/.well-known/openid-configuration", ks.issuer),
        )
        .env("INFLUXION_AZURE_CLIENT_ID", client_id)
        .env(
            "INFLUXION_AZURE_DEFAULT_SCOPE",
            format!("{AUDIENCE}/.default"),
        );
    for (k, v) in extra {
        c.env(k, v);
    }
    c
}

/// Start the CLI (it waits for a sign-in) and read its stderr line by line.
fn spawn_reading_stderr(
    mut c: Command,
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
) {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    (child, lines)
}

fn run(mut c: Command) -> Output {
    c.output().unwrap()
}

fn cache_of(d: &Path, profile: &str) -> std::path::PathBuf {
    d.join("cfg/tokens").join(format!("{profile}.json"))
}

fn cached(d: &Path, field: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache_of(d, "default")).unwrap()).unwrap();
    v[field].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkce_login_cache_refresh_and_logout() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 30 s access tokens: shorter than the CLI's refresh margin, so every later
    // command refreshes from the cache.
    let provider = start_provider_with(d, None, 30);
    let ks = start_keyserver(d, &provider.issuer);
    ok(&ks.admin(
        &[
            "subjects",
            "create",
            "alice",
            "--object-id",
            &user_oid("alice"),
            "--grant",
            "signer",
        ],
        d,
    ));
    ok(&ks.admin(&["keys", "create", "line-1"], d));

    let (mut login, mut lines) = spawn_reading_stderr(cli(
        &ks,
        d,
        CLI_CLIENT_ID,
        &["login", "--no-browser", "--timeout", "60"],
        &[],
    ));
    let auth_url = loop {
        let line = lines.next().expect("login printed no URL").unwrap();
        if line.trim_start().starts_with("http") {
            break line.trim().to_owned();
        }
    };
    let u = url::Url::parse(&auth_url).unwrap();
    let q: std::collections::HashMap<String, String> = u.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert_eq!(q["response_type"], "code");
    assert!(
        q["scope"].contains("api://influxion-test/access_as_user"),
        "{}",
        q["scope"]
    );
    let redirect = q["redirect_uri"].clone();
    assert!(
        redirect.starts_with("http://127.0.0.1:") && redirect.ends_with("/callback"),
        "{redirect}"
    );
    let plain = reqwest::Client::new();

    // A callback with the wrong state is refused, and the CLI keeps waiting.
    let r = plain
        .get(format!("{redirect}?code=forged&state=wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // The real login page; the provider sends the browser to the CLI's listener.
    let callback = provider_login(&cookie_client(), auth_url.clone(), "alice", &redirect).await;
    let r = plain.get(&callback).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let status = login.wait().unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(status.success(), "login failed: {rest:?}");
    // The listener took exactly one callback and is gone.
    assert!(
        plain
            .get(&callback)
            .send()
            .await
            .map(|r| r.status() == 400)
            .unwrap_or(true),
        "a second callback was accepted"
    );

    // The cache: owner-only, and it works for signing without any client secret.
    let cache = cache_of(d, "default");
    assert_eq!(
        std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(cache.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    write_firmware(d, "fw.bin", 50_000);
    let before = cached(d, "access_token");
    let before_refresh = cached(d, "refresh_token");
    ok(&run(cli(
        &ks,
        d,
        CLI_CLIENT_ID,
        &["sign", "--key", "line-1", "fw.bin", "-o", "fw.sig"],
        &[],
    )));
    ok(&run(cli(
        &ks,
        d,
        CLI_CLIENT_ID,
        &["keys", "public", "line-1", "-o", "k.pem"],
        &[],
    )));
    assert_sha256_verifies(d, "k.pem", "fw.sig", "fw.bin");
    // The access token was near expiry: it was refreshed (and the refresh token rotated).
    let after = cached(d, "access_token");
    assert_ne!(before, after, "no refresh happened");
    assert_ne!(before_refresh, cached(d, "refresh_token"));
    assert_eq!(
        std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let me = ok(&run(cli(&ks, d, CLI_CLIENT_ID, &["whoami"], &[])));
    assert!(
        me.contains(&user_oid("alice")) && me.contains("signer"),
        "{me}"
    );
    // --output json: one JSON document on stdout, for any command.
    let j = ok(&run(cli(
        &ks,
        d,
        CLI_CLIENT_ID,
        &["--output", "json", "whoami"],
        &[],
    )));
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert!(
        v["principal_id"]
            .as_str()
            .unwrap()
            .contains(&user_oid("alice")),
        "{v}"
    );
    let j = ok(&run(cli(
        &ks,
        d,
        CLI_CLIENT_ID,
        &[
            "sign", "--output", "json", "--key", "line-1", "fw.bin", "-o", "fw2.sig",
        ],
        &[],
    )));
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(v["signed"], true, "{v}");
    assert_eq!(v["key"], "line-1");
    let j = ok(&run(cli(
        &ks,
        d,
        CLI_CLIENT_ID,
        &["keys", "list"],
        &[("INFLUXION_OUTPUT", "json")],
    )));
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert!(v["keys"].as_array().is_some(), "{v}");
    // `token` prints it; nothing else does.
    let t = ok(&run(cli(&ks, d, CLI_CLIENT_ID, &["token"], &[])));
    assert!(
        t.starts_with("eyJ") && t.trim().split('.').count() == 3,
        "{t}"
    );
    assert!(!me.contains("eyJ"));

    // A cache others can read is refused.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(cli(&ks, d, CLI_CLIENT_ID, &["whoami"], &[]));
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("readable by others")
    );
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Logout removes the cache; then the CLI is not signed in: exit code 4.
    ok(&run(cli(&ks, d, CLI_CLIENT_ID, &["logout"], &[])));
    assert!(!cache.exists());
    let o = run(cli(&ks, d, CLI_CLIENT_ID, &["whoami"], &[]));
    assert_eq!(
        o.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("influxion login"));
    let o = run(cli(
        &ks,
        d,
        CLI_CLIENT_ID,
        &["--output", "json", "whoami"],
        &[],
    ));
    let e: serde_json::Value = serde_json::from_slice(&o.stderr).unwrap();
    assert_eq!(e["exit_code"], 4, "{e}");
    assert!(o.stdout.is_empty());
}

/// PKCE is enforced for the CLI's client: a code redeemed without its verifier, or with
/// a wrong one, is refused by the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_without_its_verifier_is_refused() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let provider = start_provider(dir.path());
    let md: serde_json::Value = reqwest::get(format!(
        "{}/.well-known/openid-configuration",
        provider.issuer
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let redirect = "http://127.0.0.1:9/callback";
    for verifier in [None, Some("x".repeat(43))] {
        // S256 of the verifier "a" x 43.
        use base64::Engine as _;
        use sha2::Digest as _;
        let right = "a".repeat(43);
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(right.as_bytes()));
        let mut auth = url::Url::parse(md["authorization_endpoint"].as_str().unwrap()).unwrap();
        auth.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", CLI_CLIENT_ID)
            .append_pair("redirect_uri", redirect)
            .append_pair("scope", "openid api://influxion-test/access_as_user")
            .append_pair("state", "s")
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let back = provider_login(
            &cookie_client(),
            auth.to_string(),
            "alice",
            "http://127.0.0.1:9/",
        )
        .await;
        let code: String = url::Url::parse(&back)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "code")
            .unwrap()
            .1
            .into_owned();
        let mut form = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code),
            ("redirect_uri", redirect.to_owned()),
            ("client_id", CLI_CLIENT_ID.to_owned()),
        ];
        if let Some(v) = &verifier {
            form.push(("code_verifier", v.clone()));
        }
        let r = reqwest::Client::new()
            .post(md["token_endpoint"].as_str().unwrap())
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_grant", "{body}");
    }
}

/// A pipeline authenticating with a certificate: a private_key_jwt client assertion,
/// accepted by the real provider, whose token the keyserver accepts.
#[test]
fn private_key_jwt_client_assertion() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keypair = |name: &str| {
        ok(&openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
                "-days",
                "1",
                "-subj",
                "/CN=jwt-client",
            ],
            d,
        ));
        let pem = std::fs::read_to_string(d.join(format!("{name}.key"))).unwrap()
            + &std::fs::read_to_string(d.join(format!("{name}.crt"))).unwrap();
        std::fs::write(d.join(format!("{name}.pem")), pem).unwrap();
    };
    keypair("jwt");
    keypair("other");
    let public = ok(&openssl(
        &["x509", "-in", "jwt.crt", "-pubkey", "-noout"],
        d,
    ));
    let provider = start_provider_clients(
        d,
        None,
        3600,
        vec![serde_json::json!({
            "client_id": "jwt-client",
            "public_key_pem": public,
            "roles": ["Influxion.Sign"],
        })],
    );
    let ks = start_keyserver(d, &provider.issuer);
    ok(&ks.admin(
        &[
            "subjects",
            "create",
            "jwt",
            "--app-id",
            "jwt-client",
            "--grant",
            "signer",
        ],
        d,
    ));
    ok(&ks.admin(&["keys", "create", "ci-jwt"], d));
    write_firmware(d, "fw.bin", 10_000);

    let with = |pem: &str| {
        let path = d.join(pem).display().to_string();
        run(cli(
            &ks,
            d,
            "jwt-client",
            &["sign", "--key", "ci-jwt", "fw.bin", "-o", "fw.sig"],
            &[("INFLUXION_AZURE_CLIENT_CERTIFICATE_PATH", &path)],
        ))
    };
    ok(&with("jwt.pem"));
    ok(&ks.signer(
        &[
            "verify",
            "--key",
            "ci-jwt",
            "fw.bin",
            "--signature",
            "fw.sig",
        ],
        d,
    ));
    // A certificate the provider does not know: refused, exit code 4.
    let o = with("other.pem");
    assert_eq!(
        o.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid_client"));
}

// ------------------------------------------------------------------ workload identity

/// A loopback issuer standing in for Entra ID and Azure DevOps: it records the token
/// requests it gets, answers the exact federated exchange, and signs tokens the
/// keyserver trusts (its JWKS is the keyserver's).
struct MiniIssuer {
    issuer: String,
    encoding: jsonwebtoken::EncodingKey,
    jwk: serde_json::Value,
    forms: std::sync::Mutex<Vec<std::collections::BTreeMap<String, String>>>,
}

const FILE_TOKEN: &str = "federated-token-from-file";
const ADO_TOKEN: &str = "federated-token-from-azure-devops";

impl MiniIssuer {
    fn token(&self, client: &str, roles: &[&str]) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let oid = format!("00000000-0000-4000-8000-{:012x}", client.len() * 7919);
        let claims = serde_json::json!({
            "iss": self.issuer, "aud": AUDIENCE, "tid": TENANT, "ver": "2.0",
            "azp": client, "oid": oid, "sub": oid, "idtyp": "app", "roles": roles,
            "iat": now, "nbf": now, "exp": now + 600,
        });
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some("mini".into());
        h.typ = Some("JWT".into());
        jsonwebtoken::encode(&h, &claims, &self.encoding).unwrap()
    }
}

async fn start_mini_issuer() -> std::sync::Arc<MiniIssuer> {
    use axum::extract::{Query, State};
    use axum::routing::{get, post};
    use p256::pkcs8::EncodePrivateKey as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let der = key.to_pkcs8_der().unwrap();
    let mut jwk: serde_json::Value =
        serde_json::from_str(&key.public_key().to_jwk_string()).unwrap();
    jwk["kid"] = "mini".into();
    jwk["alg"] = "ES256".into();
    jwk["use"] = "sig".into();
    let mini = std::sync::Arc::new(MiniIssuer {
        issuer: issuer.clone(),
        encoding: jsonwebtoken::EncodingKey::from_ec_der(der.as_bytes()),
        jwk,
        forms: Default::default(),
    });
    type Form = std::collections::BTreeMap<String, String>;
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(|State(m): State<std::sync::Arc<MiniIssuer>>| async move {
                axum::Json(serde_json::json!({
                    "issuer": m.issuer,
                    "jwks_uri": format!("{}/jwks", m.issuer),
                    "token_endpoint": format!("{}/token", m.issuer),
                }))
            }),
        )
        .route(
            "/jwks",
            get(|State(m): State<std::sync::Arc<MiniIssuer>>| async move {
                axum::Json(serde_json::json!({"keys": [m.jwk]}))
            }),
        )
        .route(
            "/token",
            post(
                |State(m): State<std::sync::Arc<MiniIssuer>>, axum::Form(f): axum::Form<Form>| async move {
                    m.forms.lock().unwrap().push(f.clone());
                    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
                    let token = match (get("client_id"), get("client_secret"), get("client_assertion")) {
                        ("ci-admin", "admin-secret-1234567890", _) => m.token("ci-admin", &["Influxion.Admin"]),
                        ("ci-signer", "s3cret-value-1234567890", _) => m.token("ci-signer", &["Influxion.Sign"]),
                        ("wif-client", "", a) if a == FILE_TOKEN || a == ADO_TOKEN => {
                            m.token("wif-client", &["Influxion.Sign"])
                        }
                        _ => {
                            return (
                                axum::http::StatusCode::UNAUTHORIZED,
                                axum::Json(serde_json::json!({"error": "invalid_client"})),
                            )
                        }
                    };
                    (
                        axum::http::StatusCode::OK,
                        axum::Json(serde_json::json!({"access_token": token, "token_type": "Bearer", "expires_in": 600})),
                    )
                },
            ),
        )
        .route(
            "/ado/oidc",
            post(|headers: axum::http::HeaderMap, Query(q): Query<Form>| async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
                let ok = auth == Some("Bearer job-access-token")
                    && q.get("serviceConnectionId").map(String::as_str) == Some("sc-123")
                    && q.get("api-version").map(String::as_str) == Some("7.1");
                if ok {
                    (axum::http::StatusCode::OK, axum::Json(serde_json::json!({"oidcToken": ADO_TOKEN})))
                } else {
                    (axum::http::StatusCode::UNAUTHORIZED, axum::Json(serde_json::json!({})))
                }
            }),
        )
        .with_state(mini.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    mini
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_federation() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mini = start_mini_issuer().await;
    let ks = start_keyserver(d, &mini.issuer);
    ok(&ks.admin(
        &[
            "subjects",
            "create",
            "pipeline",
            "--app-role",
            "Influxion.Sign",
            "--app-id",
            "wif-client",
            "--grant",
            "signer",
        ],
        d,
    ));
    ok(&ks.admin(&["keys", "create", "wif"], d));
    write_firmware(d, "fw.bin", 10_000);
    std::fs::write(d.join("federated.jwt"), format!("{FILE_TOKEN}\n")).unwrap();
    let file = d.join("federated.jwt").display().to_string();
    let ado = format!("{}/ado/oidc", mini.issuer);
    let cases: [(&str, Vec<(&str, &str)>); 2] = [
        (
            FILE_TOKEN,
            vec![("AZURE_FEDERATED_TOKEN_FILE", file.as_str())],
        ),
        (
            ADO_TOKEN,
            vec![
                ("SYSTEM_OIDCREQUESTURI", ado.as_str()),
                ("SYSTEM_ACCESSTOKEN", "job-access-token"),
                ("AZURESUBSCRIPTION_SERVICE_CONNECTION_ID", "sc-123"),
            ],
        ),
    ];
    for (assertion, env) in cases {
        mini.forms.lock().unwrap().clear();
        ok(&run(cli(
            &ks,
            d,
            "wif-client",
            &["sign", "--key", "wif", "fw.bin", "-o", "fw.sig"],
            &env,
        )));
        // Exactly this form reached the token endpoint: nothing more, nothing less.
        let forms = mini.forms.lock().unwrap().clone();
        ok(&ks.signer(
            &["verify", "--key", "wif", "fw.bin", "--signature", "fw.sig"],
            d,
        ));
        let expected: std::collections::BTreeMap<String, String> = [
            ("grant_type", "client_credentials"),
            ("client_id", "wif-client"),
            ("scope", "api://influxion-test/.default"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(forms, vec![expected]);
    }
    // The Azure DevOps job token is required, and a wrong one is refused (exit 4).
    let o = run(cli(
        &ks,
        d,
        "wif-client",
        &["whoami"],
        &[
            ("SYSTEM_OIDCREQUESTURI", ado.as_str()),
            ("SYSTEM_ACCESSTOKEN", "wrong"),
            ("AZURESUBSCRIPTION_SERVICE_CONNECTION_ID", "sc-123"),
        ],
    ));
    assert_eq!(
        o.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Named service connection, no job token: the setting is named.
    let o = run(cli(
        &ks,
        d,
        "wif-client",
        &["whoami"],
        &[
            ("SYSTEM_OIDCREQUESTURI", ado.as_str()),
            ("AZURESUBSCRIPTION_SERVICE_CONNECTION_ID", "sc-123"),
        ],
    ));
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("SYSTEM_ACCESSTOKEN")
    );
    // Azure DevOps sets SYSTEM_OIDCREQUESTURI in every job: a pipeline with a client
    // secret is not affected by it.
    ok(&run(cli(
        &ks,
        d,
        "ci-signer",
        &["whoami"],
        &[
            ("SYSTEM_OIDCREQUESTURI", ado.as_str()),
            ("INFLUXION_AZURE_CLIENT_SECRET", "s3cret-value-1234567890"),
        ],
    )));
}

/// A production-line run: certificates for a list of devices and a signature for each
/// device's firmware image. A run that fails part-way resumes from its journal: no
/// device gets a second certificate, and every device ends with both files.
#[test]
fn provision_run_resumes_without_duplicates() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let provider = start_provider(d);
    let ks = start_keyserver(d, &provider.issuer);
    ok(&ks.admin(
        &[
            "ca",
            "create",
            "line-root",
            "--cn",
            "Line Root",
            "--org",
            "Acme",
        ],
        d,
    ));
    ok(&ks.admin(
        &[
            "profiles",
            "set",
            "line",
            "--ca",
            "line-root",
            "--cn",
            "{device_id}",
            "--max-per-device",
            "1",
        ],
        d,
    ));
    ok(&ks.admin(&["keys", "create", "fw-line"], d));
    let ids = ["dev-001", "dev-002", "dev-003", "dev-004"];
    std::fs::write(d.join("ids.txt"), ids.join("\n")).unwrap();
    std::fs::create_dir_all(d.join("fw")).unwrap();
    for id in ids.iter().filter(|i| **i != "dev-003") {
        write_firmware(&d.join("fw"), &format!("{id}.bin"), 4096);
    }
    let run = || {
        ks.cli(
            "ci-admin",
            "admin-secret-1234567890",
            &[
                "--output",
                "json",
                "provision",
                "--profile",
                "line",
                "--device-ids",
                "ids.txt",
                "--out-dir",
                "out",
                "--sign-key",
                "fw-line",
                "--firmware-dir",
                "fw",
                "--concurrency",
                "2",
            ],
            d,
        )
    };
    // dev-003's image is missing: its certificate is issued, its signature fails.
    let first = run();
    assert_eq!(first.status.code(), Some(1), "{first:?}");
    let v: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(
        (v["issued"].as_u64(), v["failed"].as_u64()),
        (Some(3), Some(1)),
        "{v}"
    );
    assert_eq!(v["errors"][0]["device_id"], "dev-003");

    write_firmware(&d.join("fw"), "dev-003.bin", 4096);
    let second = run();
    let v: serde_json::Value = serde_json::from_slice(&ok(&second).into_bytes()).unwrap();
    assert_eq!(
        (
            v["issued"].as_u64(),
            v["already_done"].as_u64(),
            v["failed"].as_u64()
        ),
        (Some(1), Some(3), Some(0)),
        "{v}"
    );
    ok(&ks.signer(&["keys", "public", "fw-line", "-o", "fw.pem"], d));
    for id in ids {
        assert!(d.join(format!("out/{id}.pem")).exists());
        assert_sha256_verifies(
            d,
            "fw.pem",
            &format!("out/{id}.sig"),
            &format!("fw/{id}.bin"),
        );
    }
    // Exactly one certificate per device, whatever the retries and the resume did.
    let list = ok(&ks.admin(
        &["--output", "json", "cert", "list", "--profile", "line"],
        d,
    ));
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let mut devices: Vec<&str> = v["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["device_id"].as_str().unwrap())
        .collect();
    devices.sort();
    assert_eq!(devices, ids);
    // A third run has nothing to do.
    let v: serde_json::Value = serde_json::from_slice(&ok(&run()).into_bytes()).unwrap();
    assert_eq!(
        (v["issued"].as_u64(), v["already_done"].as_u64()),
        (Some(0), Some(4))
    );
}

/// Equipment without a browser: the device code flow. The person enters the code at
/// the provider's device page (driven here by form posts) and signs in; the waiting
/// CLI gets its token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_code_login() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let provider = start_provider(d);
    let ks = start_keyserver(d, &provider.issuer);
    ok(&ks.admin(
        &[
            "subjects",
            "create",
            "alice",
            "--object-id",
            &user_oid("alice"),
            "--grant",
            "signer",
        ],
        d,
    ));
    let (mut login, mut lines) = spawn_reading_stderr(cli(
        &ks,
        d,
        CLI_CLIENT_ID,
        &["login", "--device-code", "--timeout", "60"],
        &[],
    ));
    let line = loop {
        let l = lines.next().expect("no device code printed").unwrap();
        if l.contains("enter the code") {
            break l;
        }
    };
    // "To sign in, open <uri> and enter the code <code>"
    let words: Vec<&str> = line.split_whitespace().collect();
    let uri = words[words.iter().position(|w| *w == "open").unwrap() + 1].to_owned();
    let code = words.last().unwrap().to_string();

    // The provider's pages: the code form, the confirmation, the login form, done.
    let idp = cookie_client();
    let mut next = idp.get(&uri).send().await.unwrap();
    let mut url = uri.clone();
    for _ in 0..15 {
        let status = next.status().as_u16();
        if (300..400).contains(&status) {
            url = absolute(&url, next.headers()["location"].to_str().unwrap());
            next = idp.get(&url).send().await.unwrap();
            continue;
        }
        let body = next.text().await.unwrap();
        assert_eq!(status, 200, "{url}: {body}");
        let Some(action) = body
            .split("action=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
        else {
            break; // the success page
        };
        let mut form = hidden_inputs(&body);
        for (k, v) in [
            ("user_code", code.as_str()),
            ("login", "alice"),
            ("password", "any"),
        ] {
            if !form.iter().any(|(n, _)| n == k) {
                form.push((k.to_owned(), v.to_owned()));
            }
        }
        let target = absolute(&url, action);
        next = idp.post(&target).form(&form).send().await.unwrap();
        url = target;
    }
    let status = login.wait().unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(status.success(), "device login failed: {rest:?}");
    let me = ok(&run(cli(&ks, d, CLI_CLIENT_ID, &["whoami"], &[])));
    assert!(me.contains(&user_oid("alice")), "{me}");
}
