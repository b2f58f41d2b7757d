//! The Azure Key Vault key backend (`azure-keyvault`): keys are created in the vault
//! as non-exportable keys and used through `keys/{name}/{version}/sign`, which takes
//! the digest Influxion already has, so private keys never leave the vault.
//!
//! A key's handle pins the vault, the vault key's name and version, and the public key
//! read when it was made. Every signature is one `sign` call (no key GET per
//! signature) and is verified against that public key before it is returned: a wrong
//! version or a misbehaving vault never reaches a device. ECDSA answers are raw r‖s
//! (IEEE P1363) and are returned as DER, as the API and the formats expect.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use influxion_azure::Credential;
use influxion_core::{BackendError, Digest, GeneratedKey, KeyBackend, KeyType};
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
        let valid_name = |s: &str| {
            !s.is_empty()
                && s.len() <= 127
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
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
        KeyType::Rsa3072 | KeyType::Rsa4096 => {
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

/// Key Vault's raw r‖s as DER (the API's and the formats' encoding).
fn ecdsa_der(key_type: KeyType, rs: &[u8]) -> Result<Vec<u8>, BackendError> {
    let bad = || crypto("the vault's ECDSA signature is not r‖s of the curve's size");
    Ok(match key_type {
        KeyType::EcP256 => p256::ecdsa::Signature::from_slice(rs)
            .map_err(|_| bad())?
            .to_der()
            .as_bytes()
            .to_vec(),
        KeyType::EcP384 => p384::ecdsa::Signature::from_slice(rs)
            .map_err(|_| bad())?
            .to_der()
            .as_bytes()
            .to_vec(),
        _ => rs.to_vec(),
    })
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
            m.insert("vault_key".into(), json!(h.name));
            m.insert("vault_key_version".into(), json!(h.version));
        }
        m
    }

    async fn check(
        &self,
        _key_id: &str,
        key_type: KeyType,
        handle: &[u8],
    ) -> Result<(), BackendError> {
        let (h, spki) = self.handle(key_type, handle)?;
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
