//! The Azure Key Vault key backend (`azure-keyvault`): keys are created in the vault
//! as non-exportable keys and used through `keys/{name}/{version}/sign`, which takes
//! the digest Influxion already has, so private keys never leave the vault.
//!
//! A key's handle pins the vault, the vault key's name and version, and the public key
//! read when it was made. Every signature is one `sign` call (no key GET per
//! signature) and is verified against that public key before it is returned: a wrong
//! version or a misbehaving vault never reaches a device. ECDSA answers are raw r‖s
//! (IEEE P1363) and are returned as DER, as the API and the formats expect.

mod secret;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use influxion_azure::Credential;
use influxion_core::{
    BackendError, BoundKey, Digest, ExistingKey, GeneratedKey, KeyBackend, KeyType,
};
use influxion_keystore::MemoryKey;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use url::Url;

/// The REST API version sent on every call (Key Vault has no default).
pub const API_VERSION: &str = "7.5";

/// The backend's name, stored with each of its keys.
pub const NAME: &str = "azure-keyvault";

/// How the backend reaches its vault.
pub struct KeyVaultBackend {
    vault: Url,
    http: reqwest::Client,
    credential: Arc<Credential>,
    /// The token audience, and what a 401 challenge's `resource` must name.
    resource: String,
    /// `EC-HSM`/`RSA-HSM` keys (Premium vaults).
    hsm: bool,
    /// Retries of throttling and server errors stop after this long.
    deadline: Duration,
    calls: AtomicU64,
    /// Private keys read from certificate secrets (`--from-secret`), by secret
    /// name/version: in memory only, zeroized when dropped, read again after a restart.
    secrets: Mutex<HashMap<String, Arc<MemoryKey>>>,
}

/// What the key record holds for a vault key.
#[derive(Serialize, Deserialize)]
struct Handle {
    vault: String,
    name: String,
    version: String,
    key_type: String,
    /// DER SubjectPublicKeyInfo (base64), read when the key was made or bound.
    spki: String,
    /// The Key Vault certificate the key was bound through, if any (rotation reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    certificate: Option<String>,
    /// `name`/`version` are a certificate's secret whose private key signs in memory,
    /// not a vault key that signs in the vault.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    from_secret: bool,
}

/// `https://{vault}/{collection}/{name}/{version}` → (name, version), checking the URL
/// is of this vault's collection.
fn object_id(id: &str, collection: &str) -> Result<(String, String), BackendError> {
    let url = Url::parse(id)
        .map_err(|_| crypto(format!("the vault's {collection} id does not parse")))?;
    let parts: Vec<&str> = url.path_segments().map(|p| p.collect()).unwrap_or_default();
    match parts.as_slice() {
        [c, name, version] if *c == collection && valid_name(name) && valid_name(version) => {
            Ok(((*name).to_owned(), (*version).to_owned()))
        }
        _ => Err(crypto(format!(
            "the vault's id {id:?} is not of a {collection} version"
        ))),
    }
}

/// Key Vault object names and versions: letters, digits and dashes.
fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 127 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// `{collection}/{name}[/{version}]` for a name and version the vault allows.
fn object_path(
    collection: &str,
    name: &str,
    version: Option<&str>,
) -> Result<String, BackendError> {
    if !valid_name(name) || !version.is_none_or(valid_name) {
        return Err(unfit(format!(
            "{name:?} is not a Key Vault name (letters, digits and dashes)"
        )));
    }
    Ok(match version {
        Some(v) => format!("{collection}/{name}/{v}"),
        None => format!("{collection}/{name}"),
    })
}

fn unfit(m: impl Into<String>) -> BackendError {
    BackendError::Unfit(m.into())
}

/// The Influxion key type of a Key Vault JWK.
fn key_type_of(jwk: &Value) -> Result<KeyType, BackendError> {
    let kty = jwk["kty"].as_str().unwrap_or("");
    match kty.trim_end_matches("-HSM") {
        "EC" => match jwk["crv"].as_str() {
            Some("P-256") => Ok(KeyType::EcP256),
            Some("P-384") => Ok(KeyType::EcP384),
            other => Err(unfit(format!(
                "the vault key is on curve {other:?}; Influxion signs with P-256 and P-384"
            ))),
        },
        "RSA" => {
            let bits = jwk["n"]
                .as_str()
                .and_then(|n| B64URL.decode(n).ok())
                .map(|n| n.iter().skip_while(|b| **b == 0).count() * 8)
                .unwrap_or(0);
            match bits {
                2048 => Ok(KeyType::Rsa2048),
                3072 => Ok(KeyType::Rsa3072),
                4096 => Ok(KeyType::Rsa4096),
                _ => Err(unfit(format!(
                    "the vault key is RSA-{bits}; Influxion signs with RSA-2048, RSA-3072 and RSA-4096"
                ))),
            }
        }
        other => Err(unfit(format!(
            "the vault key is of type {other:?}, which cannot sign"
        ))),
    }
}

fn crypto(what: impl Into<String>) -> BackendError {
    BackendError::Crypto(what.into())
}

impl KeyVaultBackend {
    /// `vault` is the vault's URL (`https://contoso.vault.azure.net/`), `resource` the
    /// token audience (`https://vault.azure.net`; another cloud's for sovereign ones).
    pub fn new(
        vault: Url,
        http: reqwest::Client,
        credential: Arc<Credential>,
        resource: &str,
    ) -> Self {
        Self {
            vault,
            http,
            credential,
            resource: resource.trim_end_matches('/').to_owned(),
            hsm: false,
            deadline: Duration::from_secs(30),
            calls: AtomicU64::new(0),
            secrets: Mutex::new(HashMap::new()),
        }
    }

    /// Create `EC-HSM`/`RSA-HSM` keys (a Premium vault).
    pub fn hsm(mut self, yes: bool) -> Self {
        self.hsm = yes;
        self
    }

    /// How long throttled or failing calls are retried before `Unavailable`.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = d;
        self
    }

    /// Requests sent to the vault so far (the benchmark reports calls per signature).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn url(&self, path: &str) -> Result<Url, BackendError> {
        let mut u = self
            .vault
            .join(path)
            .map_err(|e| crypto(format!("vault URL: {e}")))?;
        u.query_pairs_mut().append_pair("api-version", API_VERSION);
        Ok(u)
    }

    /// One call, with the credential's token; 401 challenges, throttling and server
    /// errors are handled here. Returns the answer's JSON.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Value, BackendError> {
        let url = self.url(path)?;
        let started = Instant::now();
        let mut backoff = Duration::from_millis(500);
        let mut challenged = false;
        loop {
            let token = self
                .credential
                .token(&self.resource)
                .await
                .map_err(|e| BackendError::Unavailable(format!("Azure credential: {e}")))?;
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(token.token.as_str());
            if let Some(b) = body {
                req = req.json(b);
            }
            self.calls.fetch_add(1, Ordering::Relaxed);
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    if started.elapsed() + backoff > self.deadline {
                        return Err(BackendError::Unavailable(format!(
                            "Key Vault {} is unreachable ({})",
                            self.vault,
                            if e.is_timeout() {
                                "timed out"
                            } else {
                                "connection failed"
                            }
                        )));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(16));
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let text = resp.bytes().await.unwrap_or_default();
            let answer: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
            match status {
                200..=299 => return Ok(answer),
                401 if !challenged => {
                    // The vault names the resource it wants a token for; a resource of
                    // another cloud (or anyone's) is refused, never fetched a token for.
                    let resource = challenge.as_deref().and_then(challenge_resource);
                    if resource.as_deref().map(|r| r.trim_end_matches('/')) != Some(self.resource.as_str()) {
                        return Err(BackendError::Refused(format!(
                            "Key Vault {} asks for a token for {:?}, not {}; refusing",
                            self.vault, resource, self.resource
                        )));
                    }
                    challenged = true;
                    continue;
                }
                429 | 500..=599 => {
                    let wait = retry_after.unwrap_or(backoff).min(Duration::from_secs(16));
                    if started.elapsed() + wait > self.deadline {
                        return Err(BackendError::Unavailable(format!(
                            "Key Vault {} is throttling or failing ({status}: {})",
                            self.vault,
                            error_code(&answer)
                        )));
                    }
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_secs(16));
                }
                401 => {
                    return Err(BackendError::Refused(format!(
                        "Key Vault {} does not accept the keyserver's token ({}): check the identity's tenant and the vault's",
                        self.vault,
                        error_code(&answer)
                    )))
                }
                403 => {
                    return Err(BackendError::Refused(format!(
                        "Key Vault {} refused to {what} ({}): grant the keyserver's identity the Key Vault Crypto User role (or keys get/sign access policy) on this vault",
                        self.vault,
                        error_code(&answer)
                    )))
                }
                404 => {
                    return Err(BackendError::Refused(format!(
                        "Key Vault {} has no such key or version ({what}): {}",
                        self.vault,
                        error_code(&answer)
                    )))
                }
                _ => {
                    return Err(crypto(format!(
                        "Key Vault {} answered {status} to {what}: {}",
                        self.vault,
                        error_code(&answer)
                    )))
                }
            }
        }
    }

    fn handle(&self, key_type: KeyType, handle: &[u8]) -> Result<(Handle, Vec<u8>), BackendError> {
        let h: Handle = serde_json::from_slice(handle)
            .map_err(|_| crypto("the Key Vault key handle does not parse"))?;
        if h.key_type != key_type.as_str() {
            return Err(crypto(format!(
                "the Key Vault handle is of a {} key, the record says {key_type}",
                h.key_type
            )));
        }
        if h.vault != self.vault.as_str() {
            return Err(BackendError::Unavailable(format!(
                "the key lives in Key Vault {}, this keyserver is configured for {}",
                h.vault, self.vault
            )));
        }
        if !valid_name(&h.name) || !valid_name(&h.version) {
            return Err(crypto(
                "the Key Vault handle names an invalid key or version",
            ));
        }
        let spki = B64
            .decode(&h.spki)
            .map_err(|_| crypto("the Key Vault handle's public key does not parse"))?;
        if influxion_verify::detect_key_type(&spki) != Some(key_type) {
            return Err(crypto(
                "the Key Vault handle's public key is not of its key type",
            ));
        }
        Ok((h, spki))
    }
}

impl KeyVaultBackend {
    /// A vault key, at `version` or the newest: its type, version and public key,
    /// refused if it is disabled or may not sign.
    async fn read_key(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<(KeyType, String, Vec<u8>), BackendError> {
        let path = object_path("keys", name, version)?;
        let answer = self
            .call(
                reqwest::Method::GET,
                &path,
                None,
                &format!("read key {name}"),
            )
            .await?;
        let jwk = &answer["key"];
        let key_type = key_type_of(jwk)?;
        let kid = jwk["kid"]
            .as_str()
            .ok_or_else(|| crypto("the vault's answer names no kid"))?;
        let (_, version) = object_id(kid, "keys")?;
        if let Some(ops) = jwk["key_ops"].as_array() {
            if !ops.iter().any(|o| o == "sign") {
                return Err(unfit(format!(
                    "vault key {name}/{version} does not allow sign (key_ops {ops:?})"
                )));
            }
        }
        if answer["attributes"]["enabled"] == json!(false) {
            return Err(unfit(format!(
                "vault key {name}/{version} is disabled in the vault"
            )));
        }
        Ok((key_type, version, spki_of(key_type, jwk)?))
    }

    /// Read a certificate's secret (`secrets/{name}[/{version}]`): its version and
    /// what it holds.
    async fn read_secret(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<(String, secret::SecretContents), BackendError> {
        let path = object_path("secrets", name, version)?;
        let mut answer = self
            .call(
                reqwest::Method::GET,
                &path,
                None,
                &format!("read the secret of certificate {name}"),
            )
            .await?;
        let id = answer["id"]
            .as_str()
            .ok_or_else(|| crypto("the vault's secret has no id"))?;
        let (_, version) = object_id(id, "secrets")?;
        // Moved out of the answer so that it is zeroized when dropped.
        let value = match answer["value"].take() {
            Value::String(v) => zeroize::Zeroizing::new(v),
            _ => return Err(crypto("the vault's secret has no value")),
        };
        let content_type = answer["contentType"].as_str().unwrap_or("");
        Ok((version, secret::parse(content_type, &value)?))
    }

    /// Bind a certificate through its key: the key signs in the vault; the chain is
    /// the certificate's `cer`, extended from its secret when the identity may read it.
    async fn bind_certificate(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<BoundKey, BackendError> {
        let path = object_path("certificates", name, version)?;
        let answer = self
            .call(
                reqwest::Method::GET,
                &path,
                None,
                &format!("read certificate {name}"),
            )
            .await?;
        let cer = answer["cer"]
            .as_str()
            .and_then(|c| B64.decode(c).ok())
            .ok_or_else(|| crypto("the vault's certificate has no cer"))?;
        let kid = answer["kid"]
            .as_str()
            .ok_or_else(|| crypto("the vault's certificate names no kid"))?;
        let (key_name, key_version) = object_id(kid, "keys")?;
        let (key_type, key_version, spki) = self.read_key(&key_name, Some(&key_version)).await?;
        if secret::certificate_spki(&cer)? != spki {
            return Err(crypto(format!(
                "certificate {name} does not certify its key {key_name}/{key_version}"
            )));
        }
        let mut chain = vec![cer.clone()];
        if let Some(sid) = answer["sid"].as_str() {
            let (secret_name, secret_version) = object_id(sid, "secrets")?;
            // The chain beyond the leaf is only in the secret. Without secrets/get the
            // leaf alone is served; other failures are real and reported.
            match self.read_secret(&secret_name, Some(&secret_version)).await {
                Ok((_, contents)) => {
                    let rest = contents.chain.into_iter().filter(|c| *c != cer);
                    chain.extend(rest);
                }
                Err(BackendError::Refused(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let handle = Handle {
            vault: self.vault.to_string(),
            name: key_name,
            version: key_version,
            key_type: key_type.as_str().to_owned(),
            spki: B64.encode(&spki),
            certificate: Some(name.to_owned()),
            from_secret: false,
        };
        Ok(BoundKey {
            key_type,
            handle: serde_json::to_vec(&handle).map_err(|e| crypto(e.to_string()))?,
            public_key_der: spki,
            certificate_chain: chain,
        })
    }

    /// Bind a certificate through its secret: the private key is held in memory.
    async fn bind_secret(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<BoundKey, BackendError> {
        let (version, contents) = self.read_secret(name, version).await?;
        let Some(key) = contents.key else {
            return Err(unfit(format!(
                "the secret of certificate {name} holds no private key (its key is not exportable): bind it without --from-secret, so it signs in the vault"
            )));
        };
        let key_type = key.key_type().filter(|t| *t != KeyType::Ed25519).ok_or_else(|| {
            unfit(format!("the private key of certificate {name} is of a type Influxion does not sign with"))
        })?;
        let spki = key.public_key_der()?;
        let Some(leaf) = contents.chain.first() else {
            return Err(unfit(format!(
                "the secret of certificate {name} holds no certificate"
            )));
        };
        if secret::certificate_spki(leaf)? != spki {
            return Err(unfit(format!(
                "the secret of certificate {name}: its first certificate is not of its private key"
            )));
        }
        let handle = Handle {
            vault: self.vault.to_string(),
            name: name.to_owned(),
            version: version.clone(),
            key_type: key_type.as_str().to_owned(),
            spki: B64.encode(&spki),
            certificate: Some(name.to_owned()),
            from_secret: true,
        };
        if let Ok(mut cache) = self.secrets.lock() {
            cache.insert(format!("{name}/{version}"), Arc::new(key));
        }
        Ok(BoundKey {
            key_type,
            handle: serde_json::to_vec(&handle).map_err(|e| crypto(e.to_string()))?,
            public_key_der: spki,
            certificate_chain: contents.chain,
        })
    }

    /// The in-memory key of a secret-mode handle, read from the vault if this process
    /// has not read it yet (after a restart), and checked against the pinned key.
    async fn secret_key(&self, h: &Handle, spki: &[u8]) -> Result<Arc<MemoryKey>, BackendError> {
        let id = format!("{}/{}", h.name, h.version);
        if let Some(k) = self.secrets.lock().ok().and_then(|c| c.get(&id).cloned()) {
            return Ok(k);
        }
        let (_, contents) = self.read_secret(&h.name, Some(&h.version)).await?;
        let key = contents.key.ok_or_else(|| {
            BackendError::Refused(format!(
                "the secret {id} in Key Vault {} no longer holds a private key",
                self.vault
            ))
        })?;
        if key.public_key_der()? != spki {
            return Err(crypto(format!(
                "the secret {id} holds another key than the one this record was bound to"
            )));
        }
        let key = Arc::new(key);
        if let Ok(mut cache) = self.secrets.lock() {
            cache.insert(id, key.clone());
        }
        Ok(key)
    }
}

/// `Bearer authorization="…", resource="…"` → the resource.
fn challenge_resource(h: &str) -> Option<String> {
    let rest = h.strip_prefix("Bearer ")?;
    rest.split(',').find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        (k.trim() == "resource").then(|| v.trim().trim_matches('"').to_owned())
    })
}

fn error_code(answer: &Value) -> String {
    let code = answer["error"]["code"].as_str().unwrap_or("no error code");
    let msg: String = answer["error"]["message"]
        .as_str()
        .unwrap_or("")
        .chars()
        .take(300)
        .collect();
    format!("{code}: {msg}")
}

/// The public key of a Key Vault JWK as DER SubjectPublicKeyInfo.
fn spki_of(key_type: KeyType, jwk: &Value) -> Result<Vec<u8>, BackendError> {
    use p256::pkcs8::EncodePublicKey as _;
    let field = |k: &str| {
        jwk[k]
            .as_str()
            .and_then(|v| B64URL.decode(v).ok())
            .ok_or_else(|| crypto(format!("the vault's key has no {k}")))
    };
    let der = match key_type {
        KeyType::EcP256 | KeyType::EcP384 => {
            let (x, y) = (field("x")?, field("y")?);
            let mut sec1 = vec![4u8];
            sec1.extend_from_slice(&x);
            sec1.extend_from_slice(&y);
            if key_type == KeyType::EcP256 {
                p256::PublicKey::from_sec1_bytes(&sec1)
                    .map_err(|_| crypto("the vault's P-256 key is not on the curve"))?
                    .to_public_key_der()
            } else {
                p384::PublicKey::from_sec1_bytes(&sec1)
                    .map_err(|_| crypto("the vault's P-384 key is not on the curve"))?
                    .to_public_key_der()
            }
        }
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            let n = rsa::BigUint::from_bytes_be(&field("n")?);
            let e = rsa::BigUint::from_bytes_be(&field("e")?);
            rsa::RsaPublicKey::new(n, e)
                .map_err(|_| crypto("the vault's RSA key is not valid"))?
                .to_public_key_der()
        }
        KeyType::Ed25519 => return Err(BackendError::Unsupported(key_type)),
    };
    let der = der.map_err(|e| crypto(e.to_string()))?.as_bytes().to_vec();
    if influxion_verify::detect_key_type(&der) != Some(key_type) {
        return Err(crypto(format!("the vault's key is not a {key_type} key")));
    }
    Ok(der)
}

/// Key Vault's raw r‖s as DER (the API's and the formats' encoding); RSA as it is.
fn ecdsa_der(key_type: KeyType, rs: &[u8]) -> Result<Vec<u8>, BackendError> {
    match key_type {
        KeyType::EcP256 | KeyType::EcP384 => influxion_verify::ecdsa_raw_to_der(key_type, rs)
            .ok_or_else(|| crypto("the vault's ECDSA signature is not r‖s of the curve's size")),
        _ => Ok(rs.to_vec()),
    }
}

#[async_trait::async_trait]
impl KeyBackend for KeyVaultBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn generate(
        &self,
        key_id: &str,
        key_type: KeyType,
    ) -> Result<GeneratedKey, BackendError> {
        let hsm = if self.hsm { "-HSM" } else { "" };
        let body = match key_type {
            KeyType::EcP256 => json!({"kty": format!("EC{hsm}"), "crv": "P-256"}),
            KeyType::EcP384 => json!({"kty": format!("EC{hsm}"), "crv": "P-384"}),
            KeyType::Rsa2048 => json!({"kty": format!("RSA{hsm}"), "key_size": 2048}),
            KeyType::Rsa3072 => json!({"kty": format!("RSA{hsm}"), "key_size": 3072}),
            KeyType::Rsa4096 => json!({"kty": format!("RSA{hsm}"), "key_size": 4096}),
            // Key Vault has no Ed25519 keys.
            KeyType::Ed25519 => return Err(BackendError::Unsupported(key_type)),
        };
        let mut body = body;
        body["key_ops"] = json!(["sign", "verify"]);
        body["attributes"] = json!({"enabled": true, "exportable": false});
        body["tags"] = json!({"influxion-key-id": key_id});
        // Vault key names allow letters, digits and dashes; key ids are UUIDs.
        let name: String = format!("influxion-{key_id}")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(127)
            .collect();
        let answer = self
            .call(
                reqwest::Method::POST,
                &format!("keys/{name}/create"),
                Some(&body),
                "create a key",
            )
            .await?;
        let kid = answer["key"]["kid"]
            .as_str()
            .ok_or_else(|| crypto("the vault's answer names no kid"))?;
        let version = kid
            .rsplit('/')
            .next()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| crypto("the vault's kid has no version"))?
            .to_owned();
        let spki = spki_of(key_type, &answer["key"])?;
        let handle = Handle {
            vault: self.vault.to_string(),
            name,
            version,
            key_type: key_type.as_str().to_owned(),
            spki: B64.encode(&spki),
            certificate: None,
            from_secret: false,
        };
        Ok(GeneratedKey {
            handle: serde_json::to_vec(&handle).map_err(|e| crypto(e.to_string()))?,
            public_key_der: spki,
        })
    }

    async fn sign(
        &self,
        _key_id: &str,
        key_type: KeyType,
        handle: &[u8],
        digest: &Digest,
    ) -> Result<Vec<u8>, BackendError> {
        let (h, spki) = self.handle(key_type, handle)?;
        if !key_type.allows(digest.algorithm()) {
            return Err(BackendError::AlgorithmMismatch);
        }
        if h.from_secret {
            let key = self.secret_key(&h, &spki).await?;
            let d = digest.clone();
            // An RSA private operation takes milliseconds: off the async workers.
            let sig = tokio::task::spawn_blocking(move || key.sign(&d))
                .await
                .map_err(|e| crypto(e.to_string()))??;
            return match influxion_verify::verify(key_type, &spki, digest, &sig) {
                Ok(true) => Ok(sig),
                _ => Err(crypto(
                    "a signature made with a certificate's secret key does not verify",
                )),
            };
        }
        let body =
            json!({"alg": digest.algorithm().as_str(), "value": B64URL.encode(digest.as_bytes())});
        let answer = self
            .call(
                reqwest::Method::POST,
                &format!("keys/{}/{}/sign", h.name, h.version),
                Some(&body),
                &format!("sign with key {}/{}", h.name, h.version),
            )
            .await?;
        let raw = answer["value"]
            .as_str()
            .and_then(|v| B64URL.decode(v).ok())
            .ok_or_else(|| crypto("the vault's sign answer has no value"))?;
        let sig = ecdsa_der(key_type, &raw)?;
        match influxion_verify::verify(key_type, &spki, digest, &sig) {
            Ok(true) => Ok(sig),
            _ => {
                tracing::error!(vault = %self.vault, key = %h.name, version = %h.version, "a signature from the vault does not verify with the key's public key");
                Err(crypto(format!(
                    "the signature from Key Vault key {}/{} does not verify with the key's public key",
                    h.name, h.version
                )))
            }
        }
    }

    fn describe(&self, handle: &[u8]) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        if let Ok(h) = serde_json::from_slice::<Handle>(handle) {
            m.insert("vault".into(), json!(h.vault));
            if h.from_secret {
                m.insert("vault_secret".into(), json!(h.name));
                m.insert("vault_secret_version".into(), json!(h.version));
            } else {
                m.insert("vault_key".into(), json!(h.name));
                m.insert("vault_key_version".into(), json!(h.version));
            }
            if let Some(c) = h.certificate {
                m.insert("vault_certificate".into(), json!(c));
            }
        }
        m
    }

    async fn bind(&self, _key_id: &str, existing: &ExistingKey) -> Result<BoundKey, BackendError> {
        match existing {
            ExistingKey::VaultKey { name, version } => {
                let (key_type, version, spki) = self.read_key(name, version.as_deref()).await?;
                let handle = Handle {
                    vault: self.vault.to_string(),
                    name: name.clone(),
                    version,
                    key_type: key_type.as_str().to_owned(),
                    spki: B64.encode(&spki),
                    certificate: None,
                    from_secret: false,
                };
                Ok(BoundKey {
                    key_type,
                    handle: serde_json::to_vec(&handle).map_err(|e| crypto(e.to_string()))?,
                    public_key_der: spki,
                    certificate_chain: Vec::new(),
                })
            }
            ExistingKey::VaultCertificate {
                name,
                from_secret: false,
            } => self.bind_certificate(name, None).await,
            ExistingKey::VaultCertificate {
                name,
                from_secret: true,
            } => self.bind_secret(name, None).await,
            ExistingKey::TokenKey { .. } => Err(unfit(
                "a PKCS#11 token key cannot be bound in Azure Key Vault".to_owned(),
            )),
        }
    }

    async fn rotate(
        &self,
        key_id: &str,
        key_type: KeyType,
        handle: &[u8],
        version: Option<&str>,
    ) -> Result<BoundKey, BackendError> {
        let (h, _) = self.handle(key_type, handle)?;
        let bound = match (&h.certificate, h.from_secret) {
            (Some(c), true) => self.bind_secret(c, version).await?,
            (Some(c), false) => self.bind_certificate(c, version).await?,
            (None, _) => {
                let existing = ExistingKey::VaultKey {
                    name: h.name.clone(),
                    version: version.map(str::to_owned),
                };
                self.bind(key_id, &existing).await?
            }
        };
        if bound.key_type != key_type {
            return Err(unfit(format!(
                "the newer version is a {} key; the Influxion key is {key_type} (create a new key instead)",
                bound.key_type
            )));
        }
        Ok(bound)
    }

    async fn check(
        &self,
        _key_id: &str,
        key_type: KeyType,
        handle: &[u8],
    ) -> Result<(), BackendError> {
        let (h, spki) = self.handle(key_type, handle)?;
        if h.from_secret {
            return self.secret_key(&h, &spki).await.map(|_| ());
        }
        let answer = self
            .call(
                reqwest::Method::GET,
                &format!("keys/{}/{}", h.name, h.version),
                None,
                &format!("read key {}/{}", h.name, h.version),
            )
            .await?;
        if spki_of(key_type, &answer["key"])? != spki {
            return Err(crypto(format!(
                "Key Vault key {}/{} is not the key this record was made with",
                h.name, h.version
            )));
        }
        if answer["attributes"]["enabled"] == json!(false) {
            return Err(BackendError::Refused(format!(
                "Key Vault key {}/{} is disabled in the vault",
                h.name, h.version
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_name_their_resource() {
        assert_eq!(
            challenge_resource("Bearer authorization=\"https://login.microsoftonline.com/t\", resource=\"https://vault.azure.net\"").as_deref(),
            Some("https://vault.azure.net")
        );
        assert_eq!(challenge_resource("Basic realm=x"), None);
        assert_eq!(challenge_resource("Bearer authorization=\"x\""), None);
    }

    #[test]
    fn raw_signatures_become_der() {
        assert!(ecdsa_der(KeyType::EcP256, &[1u8; 64])
            .unwrap()
            .starts_with(&[0x30]));
        assert!(ecdsa_der(KeyType::EcP256, &[1u8; 63]).is_err());
        assert!(ecdsa_der(KeyType::EcP384, &[1u8; 96])
            .unwrap()
            .starts_with(&[0x30]));
        assert_eq!(
            ecdsa_der(KeyType::Rsa3072, &[7u8; 384]).unwrap(),
            vec![7u8; 384]
        );
    }
}
