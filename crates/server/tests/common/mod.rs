//! Test harness: a loopback identity provider whose keys the test controls, and the
//! keyserver router over a real SQLite store and software keystore.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use http_body_util::BodyExt;
use influxion_auth::{AuthConfig, Validator};
use influxion_core::{Grant, Role, SubjectRules};
use influxion_keystore::{Kek, SoftwareKeystore};
use influxion_server::AppState;
use influxion_store::Store;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::EncodePrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use tower::ServiceExt;

pub(crate) const TENANT: &str = "11111111-2222-3333-4444-555555555555";
pub(crate) const AUDIENCE: &str = "api://influxion-test";
pub(crate) const API_CLIENT_ID: &str = "6f1c9a52-0000-4000-8000-00000000a91d";
pub(crate) const SIGN_ROLE: &str = "Influxion.Sign";
pub(crate) const ADMIN_ROLE: &str = "Influxion.Admin";

/// A signing key the test IdP may publish.
pub(crate) struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
    /// PEM of the public key (used to forge HS256 tokens with it as the secret).
    pub public_pem: String,
}

fn rsa_key(kid: &str) -> TestKey {
    let k = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
    let der = k.to_pkcs1_der().unwrap();
    let pubk = k.to_public_key();
    use rsa::pkcs8::EncodePublicKey;
    TestKey {
        kid: kid.into(),
        alg: Algorithm::RS256,
        encoding: EncodingKey::from_rsa_der(der.as_bytes()),
        jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "n": B64URL.encode(pubk.n().to_bytes_be()), "e": B64URL.encode(pubk.e().to_bytes_be())}),
        public_pem: pubk.to_public_key_pem(rsa::pkcs8::LineEnding::LF).unwrap(),
    }
}

fn ec_key(kid: &str) -> TestKey {
    let k = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let der = k.to_pkcs8_der().unwrap();
    let mut jwk: Value = serde_json::from_str(&k.public_key().to_jwk_string()).unwrap();
    jwk["kid"] = kid.into();
    TestKey {
        kid: kid.into(),
        alg: Algorithm::ES256,
        encoding: EncodingKey::from_ec_der(der.as_bytes()),
        jwk,
        public_pem: String::new(),
    }
}

/// Keys are generated once per test binary: RSA generation is the slow part.
pub(crate) struct Keys {
    pub rsa1: TestKey,
    pub rsa2: TestKey,
    pub ec1: TestKey,
    pub attacker: TestKey,
}

pub(crate) fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        rsa1: rsa_key("rsa-1"),
        rsa2: rsa_key("rsa-2"),
        ec1: ec_key("ec-1"),
        attacker: rsa_key("rsa-1"),
    })
}

#[derive(Clone)]
struct IdpState {
    base: String,
    issuer: String,
    jwks: Arc<RwLock<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
}

/// A loopback OIDC provider: discovery and JWKS, with keys the test can rotate.
pub(crate) struct TestIdp {
    pub addr: SocketAddr,
    pub base: String,
    pub issuer: String,
    jwks: Arc<RwLock<Vec<Value>>>,
    pub fetches: Arc<AtomicUsize>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestIdp {
    /// `issuer_path` lets a test publish a templated issuer such as `/{tenantid}/v2.0`.
    pub(crate) async fn start(issuer_path: &str, published: &[&TestKey]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let base = format!("http://{addr}");
        let issuer = format!("{base}{issuer_path}");
        let jwks = Arc::new(RwLock::new(
            published.iter().map(|k| k.jwk.clone()).collect(),
        ));
        let fetches = Arc::new(AtomicUsize::new(0));
        let state = IdpState {
            base: base.clone(),
            issuer: issuer.clone(),
            jwks: jwks.clone(),
            fetches: fetches.clone(),
        };
        let app = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(|State(s): State<IdpState>| async move {
                    Json(json!({"issuer": s.issuer, "jwks_uri": format!("{}/jwks", s.base)}))
                }),
            )
            .route(
                "/jwks",
                get(|State(s): State<IdpState>| async move {
                    s.fetches.fetch_add(1, Ordering::SeqCst);
                    Json(json!({"keys": *s.jwks.read().unwrap()}))
                }),
            )
            .with_state(state);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            base,
            issuer,
            jwks,
            fetches,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub(crate) fn metadata_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.base)
    }

    pub(crate) fn publish(&self, keys: &[&TestKey]) {
        *self.jwks.write().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    pub(crate) fn publish_raw(&self, jwks: Vec<Value>) {
        *self.jwks.write().unwrap() = jwks;
    }

    pub(crate) fn jwks_fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Stop serving and return once the listener is closed (a fixed sleep instead
    /// would race on a loaded machine).
    pub(crate) async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims of a valid app-only token, shaped like Entra ID v2.
pub(crate) fn app_claims(issuer: &str) -> Value {
    let n = now();
    json!({
        "iss": issuer,
        "aud": AUDIENCE,
        "tid": TENANT,
        "oid": "aaaaaaaa-0000-4000-8000-000000000001",
        "sub": "aaaaaaaa-0000-4000-8000-000000000001",
        "azp": "ci-signer",
        "idtyp": "app",
        "ver": "2.0",
        "roles": [SIGN_ROLE],
        "iat": n,
        "nbf": n,
        "exp": n + 600,
    })
}

/// Claims of a valid delegated (user) token.
pub(crate) fn user_claims(issuer: &str) -> Value {
    let mut c = app_claims(issuer);
    let o = c.as_object_mut().unwrap();
    o.remove("roles");
    o.insert("idtyp".into(), "user".into());
    o.insert("scp".into(), "access_as_user".into());
    o.insert("oid".into(), "bbbbbbbb-0000-4000-8000-000000000002".into());
    o.insert("name".into(), "Alice Approver".into());
    c
}

pub(crate) fn token(key: &TestKey, claims: &Value) -> String {
    let mut h = Header::new(key.alg);
    h.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&h, claims, &key.encoding).unwrap()
}

/// Build a token from raw header JSON, payload JSON and a signature made by `sign`.
pub(crate) fn raw_token(header: &Value, claims: &Value, sign: impl Fn(&str) -> String) -> String {
    let h = B64URL.encode(header.to_string());
    let p = B64URL.encode(claims.to_string());
    let input = format!("{h}.{p}");
    let s = sign(&input);
    format!("{input}.{s}")
}

pub(crate) fn auth_config(idp: &TestIdp) -> AuthConfig {
    AuthConfig {
        metadata_url: idp.metadata_url(),
        audiences: vec![AUDIENCE.into(), API_CLIENT_ID.into()],
        tenant_id: Some(TENANT.into()),
        allowed_tenants: vec![],
        extra_issuers: vec![],
        required_scope: "access_as_user".into(),
        app_roles: vec![SIGN_ROLE.into(), ADMIN_ROLE.into()],
        accepted_versions: vec!["2.0".into()],
        algorithms: AuthConfig::DEFAULT_ALGORITHMS.to_vec(),
        clock_skew: Duration::from_secs(300),
        jwks_refresh_interval: Duration::from_secs(3600),
        jwks_min_refresh_interval: Duration::from_secs(0),
        jwks_max_age: Duration::from_secs(24 * 3600),
        max_token_bytes: 16 * 1024,
        allow_insecure_http: false,
    }
}

pub(crate) struct Harness {
    pub state: AppState,
    pub router: Router,
    _dir: tempfile::TempDir,
}

/// The database the suite runs on: SQLite in `dir`, or a new database on the test
/// PostgreSQL server when `INFLUXION_TEST_DATABASE=postgres` (scripts/test.sh runs the
/// suite both ways).
pub(crate) async fn database_url(dir: &tempfile::TempDir) -> String {
    match std::env::var("INFLUXION_TEST_DATABASE").as_deref() {
        Ok("postgres") => influxion_pgtest::fresh_database().await,
        Ok("sqlite") | Err(_) => format!("sqlite://{}/t.db", dir.path().display()),
        Ok(other) => panic!("INFLUXION_TEST_DATABASE={other}: expected sqlite or postgres"),
    }
}

impl Harness {
    pub(crate) async fn new(cfg: AuthConfig) -> Self {
        Self::with_backend(cfg, Arc::new(SoftwareKeystore::new(Kek::generate()))).await
    }

    /// As [`Harness::new`], with keys in `backend` (a real keystore, possibly wrapped
    /// by a test to control when it answers).
    pub(crate) async fn with_backend(
        cfg: AuthConfig,
        backend: Arc<dyn influxion_core::KeyBackend>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kek = Kek::generate();
        let store = Store::open(
            &database_url(&dir).await,
            influxion_store::AuditKey::new(kek.audit_mac_key()),
        )
        .await
        .unwrap();
        let state = AppState::new(influxion_server::Services {
            store,
            backends: influxion_core::Backends::new(backend),
            validator: Validator::new(cfg).unwrap(),
            refusals: Default::default(),
            pki: Arc::new(influxion_server::PkiSettings {
                public_url: Some("http://keys.test".into()),
                est_profile: Some("device".into()),
            }),
            pki_cache: Default::default(),
            feed: Default::default(),
            metrics: Default::default(),
            rate_limits: Default::default(),
        });
        let h = Self {
            router: influxion_server::app(state.clone()),
            state,
            _dir: dir,
        };
        // The callers most tests use: an admin application and a CI signer.
        h.add_subject(
            "admins",
            SubjectRules {
                app_id: Some("key-admin".into()),
                ..Default::default()
            },
            &[(Role::Admin, "*")],
        )
        .await;
        h.add_subject(
            "ci",
            SubjectRules {
                app_id: Some("ci-signer".into()),
                ..Default::default()
            },
            &[(Role::Signer, "*")],
        )
        .await;
        h
    }

    /// The same store and identity provider behind other key backends, as after a
    /// restart with another backend configuration.
    pub(crate) fn with_backends(mut self, backends: influxion_core::Backends) -> Self {
        let mut services = (*self.state).clone();
        services.backends = backends;
        self.state = AppState::new(services);
        self.router = influxion_server::app(self.state.clone());
        self
    }

    /// The same store and identity provider with per-subject rate limits, as after a
    /// restart with a `[rate_limits]` table.
    pub(crate) fn with_rate_limits(mut self, limits: influxion_server::RateLimits) -> Self {
        let mut services = (*self.state).clone();
        services.rate_limits = Arc::new(influxion_server::SubjectLimiter::new(limits));
        self.state = AppState::new(services);
        self.router = influxion_server::app(self.state.clone());
        self
    }

    /// Create a subject directly in the store (as the bootstrap does).
    pub(crate) async fn add_subject(
        &self,
        name: &str,
        rules: SubjectRules,
        grants: &[(Role, &str)],
    ) {
        let s = influxion_store::SubjectRecord {
            id: format!("sub-{name}"),
            name: name.into(),
            description: String::new(),
            rules,
            grants: grants
                .iter()
                .enumerate()
                .map(|(i, (role, pattern))| Grant {
                    id: format!("g-{name}-{i}"),
                    role: *role,
                    pattern: (*pattern).into(),
                })
                .collect(),
            created_at: influxion_store::now_rfc3339(),
            created_by: influxion_store::Actor::id_only("test"),
        };
        self.state
            .store
            .create_subject(
                s,
                influxion_store::AuditEvent::new(
                    influxion_store::Actor::id_only("test"),
                    "subject.create",
                    influxion_store::Outcome::Ok,
                ),
            )
            .await
            .unwrap();
    }

    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        self.send(req).await
    }

    pub(crate) async fn send(&self, req: Request<Body>) -> Resp {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Resp {
            status,
            www_authenticate: headers
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned()),
            content_type: headers
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned()),
            json,
            text: String::from_utf8_lossy(&bytes).into_owned(),
            headers,
        }
    }

    /// Create a key directly (as an admin would).
    pub(crate) async fn create_key(&self, admin_token: &str, name: &str, key_type: &str) -> Resp {
        self.call(
            "POST",
            "/v1/keys",
            Some(admin_token),
            Some(json!({"name": name, "key_type": key_type})),
        )
        .await
    }

    pub(crate) async fn last_audit(&self) -> influxion_store::AuditRecord {
        self.state.store.recent_audit(1).await.unwrap().remove(0)
    }
}

#[derive(Debug)]
pub(crate) struct Resp {
    pub status: StatusCode,
    pub www_authenticate: Option<String>,
    pub content_type: Option<String>,
    pub json: Value,
    pub text: String,
    pub headers: axum::http::HeaderMap,
}

impl Resp {
    pub(crate) fn problem_type(&self) -> &str {
        self.json["type"].as_str().unwrap_or("")
    }

    /// Assert a problem response: status, `type` slug, and the problem media type.
    #[track_caller]
    pub(crate) fn assert_problem(&self, status: u16, slug: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text);
        assert_eq!(
            self.problem_type(),
            format!("https://influxion.dev/problems/{slug}"),
            "body: {}",
            self.text
        );
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/problem+json")
        );
        assert_eq!(self.json["status"].as_u64(), Some(status as u64));
    }

    #[track_caller]
    pub(crate) fn assert_invalid_token(&self, slug: &str) {
        self.assert_problem(401, slug);
        let h = self
            .www_authenticate
            .as_deref()
            .expect("401 must carry WWW-Authenticate");
        assert!(h.starts_with("Bearer "), "{h}");
        assert!(h.contains(r#"error="invalid_token""#), "{h}");
    }
}
