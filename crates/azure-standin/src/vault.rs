//! A loopback HTTPS stand-in for the Azure Key Vault keys API (the operations Influxion
//! uses), after Microsoft's REST reference: `api-version` is required on every call;
//! `POST /keys/{name}/create`, `GET /keys/{name}[/{version}]` and `POST /keys/{name}/
//! {version}/sign` with the documented JSON shapes (a key bundle `{key: JWK, attributes}`,
//! a sign answer `{kid, value}` with ECDSA signatures as raw r‖s); errors as
//! `{"error":{"code","message"}}`; a missing or unknown bearer token answers 401 with
//! `WWW-Authenticate: Bearer authorization="…", resource="https://vault.azure.net"`;
//! throttling is 429 with `Retry-After`. Signatures are made with real keys it holds.
//! Its own test CA signs its certificate; tests trust it through a PEM file.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::{lock, Fault};

/// A key the vault holds: every version, newest last.
enum Private {
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    Rsa(Box<rsa::RsaPrivateKey>),
}

struct Version {
    id: String,
    key: Private,
    kty: String,
}

#[derive(Default)]
struct Inner {
    keys: HashMap<String, Vec<Version>>,
    /// Bearer tokens accepted; any other answers 401.
    tokens: Vec<String>,
    /// Operations refused with 403 (`sign`, `get`, `create`).
    forbidden: Vec<&'static str>,
    faults: VecDeque<Fault>,
    /// (method, path, api-version, authorization present) of every request.
    seen: Vec<VaultRequest>,
    next_version: u64,
}

/// One request as the vault received it.
#[derive(Debug, Clone)]
pub struct VaultRequest {
    pub method: &'static str,
    pub path: String,
    pub api_version: Option<String>,
    pub bearer: Option<String>,
    pub body: Option<Value>,
}

/// The running vault.
#[derive(Clone)]
pub struct VaultStandIn {
    pub addr: SocketAddr,
    /// The PEM file of the CA that signed its certificate (`INFLUXION_VAULT_CA_FILE`).
    pub ca_file: PathBuf,
    /// Where its 401 challenges send clients (`authorization=`).
    pub authority: String,
    inner: Arc<Mutex<Inner>>,
}

fn vault_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

impl VaultStandIn {
    /// Start on 127.0.0.1 with TLS from a fresh test CA written into `dir`; its 401
    /// challenges name `authority` (`https://login.microsoftonline.com/{tenant}`).
    pub async fn start(dir: &Path, authority: &str) -> std::io::Result<Self> {
        let (ca_pem, cert_pem, key_pem) = test_certificates().map_err(std::io::Error::other)?;
        let ca_file = dir.join("vault-ca.pem");
        std::fs::write(&ca_file, ca_pem)?;
        let cert = dir.join("vault-cert.pem");
        let key = dir.join("vault-key.pem");
        std::fs::write(&cert, cert_pem)?;
        std::fs::write(&key, key_pem)?;
        let tls = influxion_edge::tls_config(&cert, &key)?;
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/keys/{name}/create", post(create))
            .route("/keys/{name}", get(get_latest))
            .route("/keys/{name}/{version}", get(get_version))
            .route("/keys/{name}/{version}/sign", post(sign))
            .with_state((inner.clone(), authority.to_owned()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = influxion_edge::serve(
                listener,
                app,
                influxion_edge::Limits::default(),
                Some(tls),
                std::future::pending(),
            )
            .await;
        });
        Ok(Self {
            addr,
            ca_file,
            authority: authority.to_owned(),
            inner,
        })
    }

    /// `https://localhost:port/` (the certificate names localhost and 127.0.0.1).
    pub fn url(&self) -> String {
        format!("https://localhost:{}/", self.addr.port())
    }

    /// Accept this bearer token (as issued by the identity stand-in).
    pub fn accept_token(&self, token: &str) {
        lock(&self.inner).tokens.push(token.to_owned());
    }

    /// Accept every token the identity stand-in issues (they share a prefix).
    pub fn accept_standin_tokens(&self) {
        lock(&self.inner).tokens.push("standin-".into());
    }

    /// Refuse `operation` (`sign`, `get`, `create`) with 403 from now on.
    pub fn forbid(&self, operation: &'static str) {
        lock(&self.inner).forbidden.push(operation);
    }

    /// Grant `operation` again.
    pub fn allow(&self, operation: &'static str) {
        lock(&self.inner).forbidden.retain(|o| *o != operation);
    }

    pub fn fail_next(&self, faults: &[Fault]) {
        lock(&self.inner).faults.extend(faults.iter().cloned());
    }

    /// Remove a key (every version), as an operator deleting it would.
    pub fn delete_key(&self, name: &str) {
        lock(&self.inner).keys.remove(name);
    }

    /// Add a new version of an existing key (rotation in the vault).
    pub fn rotate(&self, name: &str) -> Option<String> {
        let mut g = lock(&self.inner);
        g.next_version += 1;
        let id = format!("{:032x}", g.next_version);
        let versions = g.keys.get_mut(name)?;
        let last = versions.last()?;
        let (key, kty) = match &last.key {
            Private::P256(_) => (
                Private::P256(p256::ecdsa::SigningKey::random(&mut rand::thread_rng())),
                "EC",
            ),
            Private::P384(_) => (
                Private::P384(p384::ecdsa::SigningKey::random(&mut rand::thread_rng())),
                "EC",
            ),
            Private::Rsa(k) => {
                let bits = rsa::traits::PublicKeyParts::size(k.as_ref()) * 8;
                (
                    Private::Rsa(Box::new(
                        rsa::RsaPrivateKey::new(&mut rand::thread_rng(), bits).ok()?,
                    )),
                    "RSA",
                )
            }
        };
        versions.push(Version {
            id: id.clone(),
            key,
            kty: kty.into(),
        });
        Some(id)
    }

    pub fn requests(&self) -> Vec<VaultRequest> {
        lock(&self.inner).seen.clone()
    }
}

/// A CA, and a server certificate it signed for localhost and 127.0.0.1 (PEM each).
fn test_certificates() -> Result<(String, String, String), rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Influxion test vault CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()])?;
    leaf.subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    Ok((ca_cert.pem(), leaf_cert.pem(), leaf_key.serialize_pem()))
}

type St = State<(Arc<Mutex<Inner>>, String)>;

/// Record the request, then refuse it if it lacks an api-version, a known token, or
/// meets a queued fault or a forbidden operation.
fn admit(
    st: &(Arc<Mutex<Inner>>, String),
    method: &'static str,
    path: String,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    body: Option<Value>,
    operation: &'static str,
) -> Result<(), Box<Response>> {
    let (inner, authority) = st;
    let mut g = lock(inner);
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    g.seen.push(VaultRequest {
        method,
        path,
        api_version: q.get("api-version").cloned(),
        bearer: bearer.clone(),
        body,
    });
    if let Some(f) = g.faults.pop_front() {
        let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut r = vault_error(
            status,
            if f.status == 429 {
                "Throttled"
            } else {
                "ServiceUnavailable"
            },
            "Request was not processed because too many requests were received.",
        );
        if let Some(s) = f
            .retry_after
            .and_then(|s| HeaderValue::from_str(&s.to_string()).ok())
        {
            r.headers_mut().insert("retry-after", s);
        }
        return Err(Box::new(r));
    }
    if !q.contains_key("api-version") {
        return Err(Box::new(vault_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "The 'api-version' query parameter is required.",
        )));
    }
    let known = bearer
        .as_deref()
        .is_some_and(|b| g.tokens.iter().any(|t| b.starts_with(t.as_str())));
    if !known {
        let mut r = vault_error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "AKV10000: Request is missing a Bearer or PoP token.",
        );
        if let Ok(v) = HeaderValue::from_str(&format!(
            "Bearer authorization=\"{authority}\", resource=\"https://vault.azure.net\""
        )) {
            r.headers_mut().insert("www-authenticate", v);
        }
        return Err(Box::new(r));
    }
    if g.forbidden.contains(&operation) {
        return Err(Box::new(vault_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!("Caller is not authorized to perform action on resource. Action: 'Microsoft.KeyVault/vaults/keys/{operation}/action'."),
        )));
    }
    Ok(())
}

fn kid(headers: &HeaderMap, name: &str, version: &str) -> String {
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    format!("https://{host}/keys/{name}/{version}")
}

fn bundle(headers: &HeaderMap, name: &str, v: &Version) -> Value {
    use rsa::traits::PublicKeyParts;
    let mut key = match &v.key {
        Private::P256(k) => {
            let p = k.verifying_key().to_encoded_point(false);
            json!({"kty": v.kty, "crv": "P-256", "x": p.x().map(|x| B64URL.encode(x)).unwrap_or_default(), "y": p.y().map(|y| B64URL.encode(y)).unwrap_or_default()})
        }
        Private::P384(k) => {
            let p = k.verifying_key().to_encoded_point(false);
            json!({"kty": v.kty, "crv": "P-384", "x": p.x().map(|x| B64URL.encode(x)).unwrap_or_default(), "y": p.y().map(|y| B64URL.encode(y)).unwrap_or_default()})
        }
        Private::Rsa(k) => {
            json!({"kty": v.kty, "n": B64URL.encode(k.n().to_bytes_be()), "e": B64URL.encode(k.e().to_bytes_be())})
        }
    };
    key["kid"] = json!(kid(headers, name, &v.id));
    key["key_ops"] = json!(["sign", "verify"]);
    json!({
        "key": key,
        "attributes": {"enabled": true, "created": 1764669600, "updated": 1764669600,
                       "recoveryLevel": "Recoverable+Purgeable", "exportable": false},
    })
}

async fn create(
    State(st): St,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Response {
    if let Err(r) = admit(
        &st,
        "POST",
        format!("/keys/{name}/create"),
        &headers,
        &q,
        Some(body.clone()),
        "create",
    ) {
        return *r;
    }
    let kty = body["kty"].as_str().unwrap_or("");
    let mut rng = rand::thread_rng();
    let key = match (kty, body["crv"].as_str(), body["key_size"].as_u64()) {
        ("EC" | "EC-HSM", Some("P-256"), _) => {
            Private::P256(p256::ecdsa::SigningKey::random(&mut rng))
        }
        ("EC" | "EC-HSM", Some("P-384"), _) => {
            Private::P384(p384::ecdsa::SigningKey::random(&mut rng))
        }
        ("RSA" | "RSA-HSM", _, Some(bits @ (2048 | 3072 | 4096))) => {
            let bits = usize::try_from(bits).unwrap_or(3072);
            match rsa::RsaPrivateKey::new(&mut rng, bits) {
                Ok(k) => Private::Rsa(Box::new(k)),
                Err(e) => {
                    return vault_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "InternalError",
                        &e.to_string(),
                    )
                }
            }
        }
        _ => {
            return vault_error(
                StatusCode::BAD_REQUEST,
                "BadParameter",
                "Property has invalid value: kty, crv or key_size.",
            )
        }
    };
    let (inner, _) = &st;
    let mut g = lock(inner);
    g.next_version += 1;
    let id = format!("{:032x}", g.next_version);
    let v = Version {
        id,
        key,
        kty: kty.trim_end_matches("-HSM").to_owned(),
    };
    let answer = bundle(&headers, &name, &v);
    g.keys.entry(name).or_default().push(v);
    Json(answer).into_response()
}

fn not_found(name: &str) -> Response {
    vault_error(
        StatusCode::NOT_FOUND,
        "KeyNotFound",
        &format!("A key with (name/id) {name} was not found in this key vault."),
    )
}

async fn get_latest(
    st: St,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    q: Query<HashMap<String, String>>,
) -> Response {
    get_key(st, name, None, headers, q).await
}

async fn get_version(
    st: St,
    UrlPath((name, version)): UrlPath<(String, String)>,
    headers: HeaderMap,
    q: Query<HashMap<String, String>>,
) -> Response {
    get_key(st, name, Some(version), headers, q).await
}

async fn get_key(
    State(st): St,
    name: String,
    version: Option<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let path = match &version {
        Some(v) => format!("/keys/{name}/{v}"),
        None => format!("/keys/{name}"),
    };
    if let Err(r) = admit(&st, "GET", path, &headers, &q, None, "get") {
        return *r;
    }
    let g = lock(&st.0);
    let Some(versions) = g.keys.get(&name) else {
        return not_found(&name);
    };
    let v = match &version {
        Some(id) => versions.iter().find(|v| &v.id == id),
        None => versions.last(),
    };
    match v {
        Some(v) => Json(bundle(&headers, &name, v)).into_response(),
        None => not_found(&format!("{name}/{}", version.unwrap_or_default())),
    }
}

async fn sign(
    State(st): St,
    UrlPath((name, version)): UrlPath<(String, String)>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Response {
    if let Err(r) = admit(
        &st,
        "POST",
        format!("/keys/{name}/{version}/sign"),
        &headers,
        &q,
        Some(body.clone()),
        "sign",
    ) {
        return *r;
    }
    let bad = |m: &str| vault_error(StatusCode::BAD_REQUEST, "BadParameter", m);
    let Some(digest) = body["value"].as_str().and_then(|v| B64URL.decode(v).ok()) else {
        return bad("value must be base64url.");
    };
    let alg = body["alg"].as_str().unwrap_or("").to_owned();
    let g = lock(&st.0);
    let Some(v) = g
        .keys
        .get(&name)
        .and_then(|vs| vs.iter().find(|v| v.id == version))
    else {
        return not_found(&format!("{name}/{version}"));
    };
    use signature::hazmat::PrehashSigner;
    let sig: Result<Vec<u8>, String> = match (&v.key, alg.as_str(), digest.len()) {
        (Private::P256(k), "ES256", 32) => {
            PrehashSigner::<p256::ecdsa::Signature>::sign_prehash(k, &digest)
                .map(|s| s.to_bytes().to_vec())
                .map_err(|e| e.to_string())
        }
        (Private::P384(k), "ES384", 48) => {
            PrehashSigner::<p384::ecdsa::Signature>::sign_prehash(k, &digest)
                .map(|s| s.to_bytes().to_vec())
                .map_err(|e| e.to_string())
        }
        (Private::Rsa(k), alg, n) => {
            let mut rng = rand::thread_rng();
            let r = match (alg, n) {
                ("RS256", 32) => k.sign(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &digest),
                ("RS384", 48) => k.sign(rsa::Pkcs1v15Sign::new::<sha2::Sha384>(), &digest),
                ("RS512", 64) => k.sign(rsa::Pkcs1v15Sign::new::<sha2::Sha512>(), &digest),
                ("PS256", 32) => {
                    k.sign_with_rng(&mut rng, rsa::Pss::new::<sha2::Sha256>(), &digest)
                }
                ("PS384", 48) => {
                    k.sign_with_rng(&mut rng, rsa::Pss::new::<sha2::Sha384>(), &digest)
                }
                ("PS512", 64) => {
                    k.sign_with_rng(&mut rng, rsa::Pss::new::<sha2::Sha512>(), &digest)
                }
                _ => return bad("The algorithm or the digest length does not fit the key."),
            };
            r.map_err(|e| e.to_string())
        }
        _ => return bad("The algorithm or the digest length does not fit the key."),
    };
    match sig {
        Ok(s) => Json(json!({"kid": kid(&headers, &name, &version), "value": B64URL.encode(s)}))
            .into_response(),
        Err(e) => vault_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &e),
    }
}
