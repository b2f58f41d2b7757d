//! The Entra setup guide's layout: **one app registration** that is the keyclient's web
//! client (redirect URI, client secret), exposes the `keyserver` scope and carries the
//! app role for pipelines. Its ID tokens then carry `aud` = the API's own client id
//! (and a user's app roles), so the keyserver must tell them from access tokens by
//! more than the audience (issue 12, item 1).
//!
//! The real binary (keyserver and keyclient) against the real test OIDC provider
//! configured that way (v2 tokens, keyclient client id = API client id), plus tokens
//! minted with the provider's own signing key for the attacks of items 1–3.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

/// APPLICATION_ID: the one registration (web client, API and app role).
const APP_ID: &str = "3f9c1a52-7b1e-4c55-9d1a-5a0e5f0c2b7e";
/// CLIENT_SECRET of that registration.
const APP_SECRET: &str = "one-registration-secret-1234567890";
const SCOPE: &str = "keyserver";
/// The Application ID URI clients ask for; v2 tokens carry the bare APP_ID as `aud`.
const APP_URI: &str = "api://3f9c1a52-7b1e-4c55-9d1a-5a0e5f0c2b7e";
const APP_ROLE: &str = "Influxion.Sign";
const SESSION_KEY: &str = "T25lIHJlZ2lzdHJhdGlvbiBzZXNzaW9uIGtleSEhISE=";
const KID: &str = "one-registration-rsa";
const GRAPH: &str = "00000003-0000-0000-c000-000000000000";

/// The provider's signing key, made here so the test can mint tokens with it: the
/// private JWK for the provider's config, and the same key for jsonwebtoken.
fn provider_key() -> (Value, jsonwebtoken::EncodingKey) {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::{PrivateKeyParts, PublicKeyParts};
    let mut key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    key.precompute().unwrap();
    let b = |n: &rsa::BigUint| B64URL.encode(n.to_bytes_be());
    let jwk = json!({
        "kty": "RSA", "kid": KID, "use": "sig", "alg": "RS256",
        "n": b(key.n()), "e": b(key.e()), "d": b(key.d()),
        "p": b(&key.primes()[0]), "q": b(&key.primes()[1]),
        "dp": b(key.dp().unwrap()), "dq": b(key.dq().unwrap()),
        "qi": b(&key.crt_coefficient().unwrap()),
    });
    let der = key.to_pkcs1_der().unwrap();
    (jwk, jsonwebtoken::EncodingKey::from_rsa_der(der.as_bytes()))
}

fn mint(key: &jsonwebtoken::EncodingKey, claims: &Value) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some(KID.into());
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

fn payload(jwt: &str) -> Value {
    serde_json::from_slice(&B64URL.decode(jwt.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

/// Cookies by name, as a browser keeps them for one site (the keyclient's cookies are
/// `Secure`, which reqwest's own store would not send over loopback http).
#[derive(Default)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    fn take(&mut self, headers: &reqwest::header::HeaderMap) {
        for v in headers.get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let pair = v.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            let expired = value.is_empty() || v.to_ascii_lowercase().contains("max-age=0");
            if expired {
                self.0.remove(name);
            } else {
                self.0.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

struct Site {
    http: reqwest::Client,
    base: String,
    jar: Jar,
}

impl Site {
    async fn send(
        &mut self,
        rb: reqwest::RequestBuilder,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let r = rb.header("cookie", self.jar.header()).send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        self.jar.take(&headers);
        (status, headers, r.text().await.unwrap())
    }

    async fn get(&mut self, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        let rb = self.http.get(url);
        self.send(rb).await
    }
}

fn location(h: &reqwest::header::HeaderMap) -> String {
    h["location"].to_str().unwrap().to_owned()
}

/// Authorization code flow of the one registration, straight at the provider: the
/// token response (access and ID token) the keyclient would receive.
async fn code_flow(issuer: &str, redirect_uri: &str, nonce: Option<&str>) -> Value {
    let idp = cookie_client();
    let mut url = url::Url::parse(&format!("{issuer}/auth")).unwrap();
    url.query_pairs_mut()
        .append_pair("client_id", APP_ID)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", &format!("openid profile {APP_URI}/{SCOPE}"))
        .append_pair("state", "state-1");
    if let Some(n) = nonce {
        url.query_pairs_mut().append_pair("nonce", n);
    }
    let callback = provider_login(&idp, url.to_string(), "alice", redirect_uri).await;
    let code = url::Url::parse(&callback)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("a code in the callback");
    let r = reqwest::Client::new()
        .post(format!("{issuer}/token"))
        .basic_auth(APP_ID, Some(APP_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", redirect_uri),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn me(ks: &Keyserver, token: &str) -> (u16, String, Value) {
    let r = reqwest::Client::new()
        .get(format!("{}/v1/me", ks.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, challenge, r.json().await.unwrap_or_default())
}

#[track_caller]
fn assert_refused(got: (u16, String, Value), slug: &str) {
    let (status, challenge, body) = got;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        body["type"].as_str().unwrap_or_default().rsplit('/').next(),
        Some(slug),
        "{body}"
    );
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
}

fn keyclient(d: &Path, port: u16, ks: &Keyserver) -> (Proc, String) {
    let log = d.join("keyclient.log");
    let scope = format!("{APP_URI}/{SCOPE}");
    // The one registration is the web client too.
    let web = WebClient {
        id: APP_ID,
        secret: APP_SECRET,
        scope: &scope,
        session_key: SESSION_KEY,
    };
    let mut child = Proc(web.command(d, port, ks, &log).spawn().unwrap());
    let url = format!("http://127.0.0.1:{port}");
    assert!(
        healthy_or_exited(&mut child, &url),
        "the keyclient did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    (child, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_app_registration_signs_in_approves_and_refuses_its_id_tokens() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let redirect_uri = format!("http://127.0.0.1:{port}/login/oauth2/code/keyserver-client");
    let (jwk, signing_key) = provider_key();
    let provider = start_provider_config(
        d,
        &json!({
            "audience": APP_URI,
            "access_token_audience": APP_ID,
            "tenant_id": TENANT,
            "scope": SCOPE,
            "clients": [
                {"client_id": APP_ID, "client_secret": APP_SECRET, "roles": [APP_ROLE],
                 "redirect_uris": [redirect_uri],
                 "post_logout_redirect_uris": [format!("http://127.0.0.1:{port}/")]},
                {"client_id": "ci-admin", "client_secret": "admin-secret-1234567890", "roles": ["Influxion.Admin"]},
                {"client_id": "ci-signer", "client_secret": "s3cret-value-1234567890", "roles": [APP_ROLE]},
            ],
            // Alice is assigned the app role: Entra then puts it in her ID token too.
            "users": {"alice": {"name": "Alice Approver", "roles": [APP_ROLE]}},
            "signing_keys": {"keys": [jwk]},
            "id_token_claims": true,
        }),
    );
    let issuer = provider.issuer.clone();
    let extra_issuers =
        "https://login.microsoftonline.com/{tenantid}/v2.0,https://sts.windows.net/{tenantid}/";
    let mut ks = start_keyserver_env(
        d,
        &issuer,
        APP_URI,
        &[
            ("INFLUXION_AZURE_API_CLIENT_ID", APP_ID),
            ("INFLUXION_REQUIRED_SCOPE", SCOPE),
            ("INFLUXION_APP_ROLE", APP_ROLE),
            // Entra's issuer forms, trusted with the provider's keys, for item 3.
            ("INFLUXION_EXTRA_ISSUERS", extra_issuers),
            ("INFLUXION_TOKEN_VERSIONS", "1.0,2.0"),
        ],
    );
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
    // The registration's app-only tokens (client credentials or a federated pipeline).
    ok(&ks.admin(
        &[
            "subjects", "create", "pipeline", "--app-id", APP_ID, "--grant", "signer",
        ],
        d,
    ));
    ok(&ks.admin(&["keys", "create", "rel-one"], d));
    ok(&ks.admin(
        &[
            "keys",
            "policy",
            "rel-one",
            "--approvals",
            "1",
            "--approver",
            "alice",
        ],
        d,
    ));
    let (_kc, kc_url) = keyclient(d, port, &ks);

    // The pipeline (the registration's own client credentials) asks for a signature.
    write_firmware(d, "fw.bin", 50_000);
    let signer = ks
        .command(
            APP_ID,
            APP_SECRET,
            &[
                "sign",
                "--key",
                "rel-one",
                "fw.bin",
                "--reason",
                "one registration",
                "-o",
                "one.sig",
            ],
            d,
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Alice signs in through the keyclient at the provider's real login page.
    let mut web = Site {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        base: kc_url.clone(),
        jar: Jar::default(),
    };
    let (status, h, body) = web.get("/login?return_to=%2F").await;
    assert_eq!(status, 303, "{body}");
    let callback = provider_login(&cookie_client(), location(&h), "alice", &kc_url).await;
    let (status, _, body) = web.get(&callback).await;
    assert_eq!(status, 303, "callback: {body}");
    let (status, _, body) = web.get("/api/v1/me").await;
    assert_eq!(status, 200, "{body}");
    let who: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(who["principal"]["kind"], "user", "{who}");
    // A person signing in through the registration is not its pipeline (issue 12 item 5).
    assert_eq!(who["subjects"], json!(["alice"]), "{who}");

    // She finds the pipeline's request and approves it in the web app's API.
    let id = {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let (status, _, body) = web.get("/api/v1/signing-requests?status=pending").await;
            assert_eq!(status, 200, "{body}");
            let list: Value = serde_json::from_str(&body).unwrap();
            if let Some(id) = list["requests"][0]["id"].as_str() {
                break id.to_owned();
            }
            assert!(std::time::Instant::now() < deadline, "no request: {body}");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    };
    let rb = web
        .http
        .post(format!("{kc_url}/api/v1/signing-requests/{id}/approve"))
        .header("x-influxion-csrf", "1")
        .header("origin", &kc_url)
        .json(&json!({"comment": "approved with the one registration"}));
    let (status, _, body) = web.send(rb).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "signed"
    );
    let out = signer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(&ks.admin(&["keys", "public", "rel-one", "-o", "one.pem"], d));
    assert_sha256_verifies(d, "one.pem", "one.sig", "fw.bin");

    // The registration's own tokens: its access token is accepted, its ID tokens
    // (aud = the API's client id, Alice's app role in `roles`) are not.
    let t = code_flow(&issuer, &redirect_uri, Some("nonce-1")).await;
    let access = t["access_token"].as_str().unwrap();
    let (status, _, body) = me(&ks, access).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["principal"]["kind"], "user");
    let id_token = t["id_token"].as_str().unwrap();
    let claims = payload(id_token);
    assert_eq!(claims["aud"], APP_ID, "{claims}");
    assert_eq!(claims["roles"], json!([APP_ROLE]), "{claims}");
    assert_eq!(claims["nonce"], "nonce-1", "{claims}");
    assert_refused(me(&ks, id_token).await, "token-not-access-token");
    let r = reqwest::Client::new()
        .post(format!("{}/v1/keys/rel-one/sign", ks.url))
        .bearer_auth(id_token)
        .json(&json!({"digest": "ab".repeat(32)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Without a nonce the ID token still names no client (no azp).
    let t = code_flow(&issuer, &redirect_uri, None).await;
    let id_token = t["id_token"].as_str().unwrap();
    assert!(payload(id_token).get("nonce").is_none());
    assert_refused(me(&ks, id_token).await, "token-not-access-token");

    // Tokens minted with the provider's own signing key.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let app = |iss: &str| {
        json!({
            "iss": iss, "aud": APP_ID, "tid": TENANT, "ver": "2.0",
            "oid": "9a0c0000-0000-4000-8000-000000000001",
            "sub": "9a0c0000-0000-4000-8000-000000000001",
            "azp": APP_ID, "idtyp": "app", "roles": [APP_ROLE],
            "iat": now, "nbf": now, "exp": now + 600,
        })
    };
    let (status, _, body) = me(&ks, &mint(&signing_key, &app(&issuer))).await;
    assert_eq!(status, 200, "the minted baseline is valid: {body}");
    // Item 1: an ID token shaped like Entra's for this registration.
    let mut id_like = app(&issuer);
    let o = id_like.as_object_mut().unwrap();
    for k in ["azp", "idtyp"] {
        o.remove(k);
    }
    o.insert("nonce".into(), json!("n"));
    assert_refused(
        me(&ks, &mint(&signing_key, &id_like)).await,
        "token-not-access-token",
    );
    // Item 2: an audience array naming this API and Microsoft Graph.
    let mut multi = app(&issuer);
    multi["aud"] = json!([APP_ID, GRAPH]);
    assert_refused(me(&ks, &mint(&signing_key, &multi)).await, "token-audience");
    // Item 3: `ver` contradicting the issuer form.
    let v2_iss = format!("https://login.microsoftonline.com/{TENANT}/v2.0");
    let v1_iss = format!("https://sts.windows.net/{TENANT}/");
    let (status, _, body) = me(&ks, &mint(&signing_key, &app(&v2_iss))).await;
    assert_eq!(status, 200, "{body}");
    let mut c = app(&v2_iss);
    c["ver"] = json!("1.0");
    c["appid"] = json!(APP_ID);
    assert_refused(me(&ks, &mint(&signing_key, &c)).await, "token-version");
    assert_refused(
        me(&ks, &mint(&signing_key, &app(&v1_iss))).await,
        "token-version",
    );
    ks.stop();
}
