//! A loopback HTTPS stand-in for the Azure Key Vault keys API (the operations Influxion
//! uses), after Microsoft's REST reference: `api-version` is required on every call;
//! `POST /keys/{name}/create`, `GET /keys/{name}[/{version}]` and `POST /keys/{name}/
//! {version}/sign` with the documented JSON shapes (a key bundle `{key: JWK, attributes}`,
//! a sign answer `{kid, value}` with ECDSA signatures as raw r‖s); errors as
//! `{"error":{"code","message"}}`; a missing or unknown bearer token answers 401 with
//! `WWW-Authenticate: Bearer authorization="…", resource="https://vault.azure.net"`;
//! throttling is 429 with `Retry-After`. Signatures are made with real keys it holds.
//! Its own test CA signs its certificate; tests trust it through a PEM file.
//!
//! Certificates: `GET /certificates/{name}[/{version}]` answers a certificate bundle
//! (`id`, `kid`, `sid`, `x5t`, `cer` as base64 DER, `attributes`, `policy`), and
//! `GET /secrets/{name}[/{version}]` the certificate's secret (`value`, `contentType`
//! `application/x-pkcs12` as base64 PFX without a password, or `application/x-pem-file`
//! with the key first; no private key when the certificate's key is not exportable).
//! A certificate's key is a key of the same name, usable through `keys/…/sign`, as in
//! Key Vault. Certificates are issued by a second test CA, `signing_ca_pem`.

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

/// What a certificate's secret is encoded as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretFormat {
    Pkcs12,
    Pem,
}

impl SecretFormat {
    fn content_type(self) -> &'static str {
        match self {
            SecretFormat::Pkcs12 => "application/x-pkcs12",
            SecretFormat::Pem => "application/x-pem-file",
        }
    }
}

/// The key type of a certificate the vault makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateKey {
    P256,
    P384,
    Rsa3072,
    /// The smallest RSA key Influxion binds (for MCUboot's RSA-2048 devices).
    Rsa2048,
}

struct CertVersion {
    id: String,
    cer: Vec<u8>,
    /// Certificates beyond the leaf (the issuing CA).
    rest: Vec<Vec<u8>>,
    /// PKCS#8 of the key when it is exportable.
    pkcs8: Option<Vec<u8>>,
    format: SecretFormat,
    key: CertificateKey,
}

#[derive(Default)]
struct Inner {
    keys: HashMap<String, Vec<Version>>,
    certificates: HashMap<String, Vec<CertVersion>>,
    /// The CA certificates are issued by (DER) and its key (PKCS#8).
    signing_ca: Option<(Vec<u8>, Vec<u8>)>,
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
            .route("/certificates/{name}", get(certificate_latest))
            .route("/certificates/{name}/{version}", get(certificate_version))
            .route("/secrets/{name}", get(secret_latest))
            .route("/secrets/{name}/{version}", get(secret_version))
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

    /// Make a certificate (a new version if it exists): a key of the same name, a
    /// certificate for it issued by the signing CA, and its secret. Returns the version.
    pub fn create_certificate(
        &self,
        name: &str,
        key: CertificateKey,
        format: SecretFormat,
        exportable: bool,
    ) -> Result<String, String> {
        use rsa::pkcs8::EncodePrivateKey as _;
        let mut rng = rand::thread_rng();
        let (private, pkcs8) = match key {
            CertificateKey::P256 => {
                let k = p256::ecdsa::SigningKey::random(&mut rng);
                let der = k.to_pkcs8_der().map_err(|e| e.to_string())?;
                (Private::P256(k), der.as_bytes().to_vec())
            }
            CertificateKey::P384 => {
                let k = p384::ecdsa::SigningKey::random(&mut rng);
                let der = k.to_pkcs8_der().map_err(|e| e.to_string())?;
                (Private::P384(k), der.as_bytes().to_vec())
            }
            CertificateKey::Rsa3072 | CertificateKey::Rsa2048 => {
                let bits = if key == CertificateKey::Rsa3072 {
                    3072
                } else {
                    2048
                };
                let k = rsa::RsaPrivateKey::new(&mut rng, bits).map_err(|e| e.to_string())?;
                let der = k.to_pkcs8_der().map_err(|e| e.to_string())?;
                (Private::Rsa(Box::new(k)), der.as_bytes().to_vec())
            }
        };
        let kty = if matches!(private, Private::Rsa(_)) {
            "RSA"
        } else {
            "EC"
        };
        let mut g = lock(&self.inner);
        if g.signing_ca.is_none() {
            g.signing_ca = Some(signing_ca()?);
        }
        let (ca_der, ca_key) = g.signing_ca.clone().ok_or("no signing CA")?;
        let cer = issue(name, &pkcs8, &ca_der, &ca_key)?;
        g.next_version += 1;
        let id = format!("{:032x}", g.next_version);
        g.keys.entry(name.to_owned()).or_default().push(Version {
            id: id.clone(),
            key: private,
            kty: kty.into(),
        });
        g.certificates
            .entry(name.to_owned())
            .or_default()
            .push(CertVersion {
                id: id.clone(),
                cer,
                rest: vec![ca_der],
                pkcs8: exportable.then_some(pkcs8),
                format,
                key,
            });
        Ok(id)
    }

    /// A new version of a certificate, with a new key of the same type.
    pub fn renew_certificate(&self, name: &str) -> Result<String, String> {
        let (key, format, exportable) = {
            let g = lock(&self.inner);
            let last = g
                .certificates
                .get(name)
                .and_then(|v| v.last())
                .ok_or("no such certificate")?;
            (last.key, last.format, last.pkcs8.is_some())
        };
        self.create_certificate(name, key, format, exportable)
    }

    /// The PKCS#8 private key in a certificate's newest secret (for tests asserting it
    /// never lands anywhere it should not).
    pub fn exportable_key(&self, name: &str) -> Option<Vec<u8>> {
        let g = lock(&self.inner);
        g.certificates.get(name)?.last()?.pkcs8.clone()
    }

    /// The PEM of the CA that issues the vault's certificates (a test's trust anchor).
    pub fn signing_ca_pem(&self) -> Option<String> {
        let g = lock(&self.inner);
        g.signing_ca
            .as_ref()
            .map(|(der, _)| pem::encode(&pem::Pem::new("CERTIFICATE", der.clone())))
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

/// The CA the vault's certificates are issued by: (certificate DER, key PKCS#8).
fn signing_ca() -> Result<(Vec<u8>, Vec<u8>), String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Influxion test vault signing CA");
    let cert = ca.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.der().to_vec(), key.serialize_der()))
}

/// A code-signing certificate named `name` for the key `pkcs8`, issued by the CA.
fn issue(name: &str, pkcs8: &[u8], ca_der: &[u8], ca_key: &[u8]) -> Result<Vec<u8>, String> {
    use rcgen::{
        CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose,
    };
    let e = |e: rcgen::Error| e.to_string();
    let ca_key = KeyPair::try_from(ca_key).map_err(e)?;
    let issuer = Issuer::from_ca_cert_der(&ca_der.to_vec().into(), ca_key).map_err(e)?;
    let subject_key = subject_key(pkcs8)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    let cert = params.signed_by(&subject_key, &issuer).map_err(e)?;
    Ok(cert.der().to_vec())
}

/// The public half of a PKCS#8 key, as rcgen takes it for a certificate's subject.
fn subject_key(pkcs8: &[u8]) -> Result<rcgen::SubjectPublicKeyInfo, String> {
    use p256::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};
    let spki = if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_der(pkcs8) {
        k.verifying_key().to_public_key_der()
    } else if let Ok(k) = p384::ecdsa::SigningKey::from_pkcs8_der(pkcs8) {
        k.verifying_key().to_public_key_der()
    } else {
        rsa::RsaPrivateKey::from_pkcs8_der(pkcs8)
            .map_err(|e| e.to_string())?
            .to_public_key()
            .to_public_key_der()
    }
    .map_err(|e| e.to_string())?;
    rcgen::SubjectPublicKeyInfo::from_der(spki.as_bytes()).map_err(|e| e.to_string())
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
            &format!(
                "Caller is not authorized to perform action on resource. Action: '{}'.",
                data_action(operation)
            ),
        )));
    }
    Ok(())
}

/// The RBAC data action an operation needs, as Key Vault names it in a 403.
fn data_action(operation: &str) -> String {
    match operation {
        "get" => "Microsoft.KeyVault/vaults/keys/read".into(),
        "certificates-get" => "Microsoft.KeyVault/vaults/certificates/read".into(),
        "secrets-get" => "Microsoft.KeyVault/vaults/secrets/getSecret/action".into(),
        op => format!("Microsoft.KeyVault/vaults/keys/{op}/action"),
    }
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

fn object_url(headers: &HeaderMap, collection: &str, name: &str, version: &str) -> String {
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    format!("https://{host}/{collection}/{name}/{version}")
}

/// Find a certificate version (the newest when `version` is `None`) and run `f` on it.
fn with_certificate(
    st: &(Arc<Mutex<Inner>>, String),
    name: &str,
    version: Option<&str>,
    code: &str,
    f: impl FnOnce(&CertVersion) -> Response,
) -> Response {
    let g = lock(&st.0);
    let found = g.certificates.get(name).and_then(|vs| match version {
        Some(id) => vs.iter().find(|v| v.id == id),
        None => vs.last(),
    });
    match found {
        Some(v) => f(v),
        None => vault_error(
            StatusCode::NOT_FOUND,
            code,
            &format!("A certificate with (name/id) {name} was not found in this key vault."),
        ),
    }
}

async fn certificate_latest(
    st: St,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    q: Query<HashMap<String, String>>,
) -> Response {
    certificate(st, name, None, headers, q).await
}

async fn certificate_version(
    st: St,
    UrlPath((name, version)): UrlPath<(String, String)>,
    headers: HeaderMap,
    q: Query<HashMap<String, String>>,
) -> Response {
    certificate(st, name, Some(version), headers, q).await
}

async fn certificate(
    State(st): St,
    name: String,
    version: Option<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let path = match &version {
        Some(v) => format!("/certificates/{name}/{v}"),
        None => format!("/certificates/{name}"),
    };
    if let Err(r) = admit(&st, "GET", path, &headers, &q, None, "certificates-get") {
        return *r;
    }
    use base64::engine::general_purpose::STANDARD as B64;
    use sha1::Digest as _;
    with_certificate(&st, &name, version.as_deref(), "CertificateNotFound", |v| {
        let key_props = match v.key {
            CertificateKey::P256 => json!({"kty": "EC", "crv": "P-256"}),
            CertificateKey::P384 => json!({"kty": "EC", "crv": "P-384"}),
            CertificateKey::Rsa3072 => json!({"kty": "RSA", "key_size": 3072}),
            CertificateKey::Rsa2048 => json!({"kty": "RSA", "key_size": 2048}),
        };
        let mut key_props = key_props;
        key_props["exportable"] = json!(v.pkcs8.is_some());
        key_props["reuse_key"] = json!(false);
        Json(json!({
            "id": object_url(&headers, "certificates", &name, &v.id),
            "kid": object_url(&headers, "keys", &name, &v.id),
            "sid": object_url(&headers, "secrets", &name, &v.id),
            "x5t": B64URL.encode(sha1::Sha1::digest(&v.cer)),
            "cer": B64.encode(&v.cer),
            "attributes": {"enabled": true, "created": 1764669600, "updated": 1764669600,
                           "recoveryLevel": "Recoverable+Purgeable"},
            "policy": {
                "id": object_url(&headers, "certificates", &name, "policy"),
                "key_props": key_props,
                "secret_props": {"contentType": v.format.content_type()},
                "x509_props": {"subject": format!("CN={name}"), "ekus": ["1.3.6.1.5.5.7.3.3"],
                               "key_usage": ["digitalSignature"], "validity_months": 12},
                "issuer": {"name": "Unknown"},
            },
        }))
        .into_response()
    })
}

async fn secret_latest(
    st: St,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    q: Query<HashMap<String, String>>,
) -> Response {
    secret(st, name, None, headers, q).await
}

async fn secret_version(
    st: St,
    UrlPath((name, version)): UrlPath<(String, String)>,
    headers: HeaderMap,
    q: Query<HashMap<String, String>>,
) -> Response {
    secret(st, name, Some(version), headers, q).await
}

/// The secret Key Vault keeps beside a certificate, in its policy's content type.
fn secret_value(v: &CertVersion) -> Result<String, String> {
    use base64::engine::general_purpose::STANDARD as B64;
    let chain: Vec<&Vec<u8>> = std::iter::once(&v.cer).chain(&v.rest).collect();
    match v.format {
        SecretFormat::Pem => {
            let mut out = String::new();
            if let Some(k) = &v.pkcs8 {
                out.push_str(&pem::encode(&pem::Pem::new("PRIVATE KEY", k.clone())));
            }
            for c in chain {
                out.push_str(&pem::encode(&pem::Pem::new("CERTIFICATE", c.clone())));
            }
            Ok(out)
        }
        SecretFormat::Pkcs12 => {
            let certs = chain
                .iter()
                .map(|c| p12_keystore::Certificate::from_der(c))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let mut ks = p12_keystore::KeyStore::new();
            match &v.pkcs8 {
                Some(k) => {
                    let entry = p12_keystore::PrivateKeyChain::new(k, [1u8; 20], certs);
                    ks.add_entry("1", p12_keystore::KeyStoreEntry::PrivateKeyChain(entry));
                }
                None => {
                    for (i, c) in certs.into_iter().enumerate() {
                        ks.add_entry(&i.to_string(), p12_keystore::KeyStoreEntry::Certificate(c));
                    }
                }
            }
            // Key Vault's exports: no password, legacy 3DES and SHA-1 MAC.
            let der = ks
                .writer("")
                .encryption_algorithm(
                    p12_keystore::EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc,
                )
                .mac_algorithm(p12_keystore::MacAlgorithm::HmacSha1)
                .encryption_iterations(2048)
                .mac_iterations(2048)
                .write()
                .map_err(|e| e.to_string())?;
            Ok(B64.encode(der))
        }
    }
}

async fn secret(
    State(st): St,
    name: String,
    version: Option<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let path = match &version {
        Some(v) => format!("/secrets/{name}/{v}"),
        None => format!("/secrets/{name}"),
    };
    if let Err(r) = admit(&st, "GET", path, &headers, &q, None, "secrets-get") {
        return *r;
    }
    with_certificate(
        &st,
        &name,
        version.as_deref(),
        "SecretNotFound",
        |v| match secret_value(v) {
            Ok(value) => Json(json!({
                "value": value,
                "contentType": v.format.content_type(),
                "id": object_url(&headers, "secrets", &name, &v.id),
                "kid": object_url(&headers, "keys", &name, &v.id),
                "managed": true,
                "attributes": {"enabled": true, "created": 1764669600, "updated": 1764669600,
                               "recoveryLevel": "Recoverable+Purgeable"},
            }))
            .into_response(),
            Err(e) => vault_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &e),
        },
    )
}
