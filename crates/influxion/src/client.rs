//! The CLI's HTTP side: obtaining an access token and calling the keyserver.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::config::ClientConfig;

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    cfg: ClientConfig,
    token: Option<Zeroizing<String>>,
}

#[derive(Deserialize)]
struct Discovery {
    token_endpoint: String,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
}

#[derive(Deserialize)]
struct Problem {
    #[serde(rename = "type")]
    kind: Option<String>,
    title: Option<String>,
    detail: Option<String>,
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            cfg,
            token: None,
        })
    }

    /// An access token by the client credentials grant (RFC 6749 4.4).
    async fn token(&mut self) -> Result<Zeroizing<String>> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let id = self.cfg.client_id.clone().ok_or_else(|| {
            anyhow!("no client id: set INFLUXION_AZURE_CLIENT_ID or pass --client-id")
        })?;
        let secret = self.cfg.client_secret.clone().ok_or_else(|| {
            anyhow!("no client secret: set INFLUXION_AZURE_CLIENT_SECRET or pass --client-secret")
        })?;
        let disc: Discovery = self
            .http
            .get(&self.cfg.metadata_url)
            .send()
            .await
            .with_context(|| {
                format!(
                    "fetching the OpenID Connect metadata from {}",
                    self.cfg.metadata_url
                )
            })?
            .error_for_status()
            .with_context(|| {
                format!(
                    "fetching the OpenID Connect metadata from {}",
                    self.cfg.metadata_url
                )
            })?
            .json()
            .await
            .context("the OpenID Connect metadata document does not parse")?;
        let resp = self
            .http
            .post(&disc.token_endpoint)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", id.as_str()),
                ("client_secret", secret.as_str()),
                ("scope", self.cfg.scope.as_str()),
            ])
            .send()
            .await
            .with_context(|| format!("requesting a token from {}", disc.token_endpoint))?;
        let status = resp.status();
        if !status.is_success() {
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            bail!(
                "the identity provider refused the client credentials ({status}): {} {}",
                body["error"].as_str().unwrap_or(""),
                body["error_description"].as_str().unwrap_or("")
            );
        }
        let t: TokenResponse = resp
            .json()
            .await
            .context("the token response does not parse")?;
        let t = Zeroizing::new(t.access_token);
        self.token = Some(t.clone());
        Ok(t)
    }

    pub async fn get<T: DeserializeOwned>(&mut self, path: &str) -> Result<T> {
        let token = self.token().await?;
        let resp = self
            .http
            .get(format!("{}{path}", self.cfg.server))
            .bearer_auth(token.as_str())
            .send()
            .await
            .with_context(|| format!("calling {}", self.cfg.server))?;
        decode(resp).await
    }

    pub async fn get_text(&mut self, path: &str) -> Result<String> {
        let token = self.token().await?;
        let resp = self
            .http
            .get(format!("{}{path}", self.cfg.server))
            .bearer_auth(token.as_str())
            .send()
            .await
            .with_context(|| format!("calling {}", self.cfg.server))?;
        if !resp.status().is_success() {
            return Err(problem(resp).await);
        }
        Ok(resp.text().await?)
    }

    pub async fn put<T: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T> {
        let (_, v) = self.call(reqwest::Method::PUT, path, Some(body)).await?;
        serde_json::from_value(v).context("the keyserver's response does not parse")
    }

    pub async fn post<T: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T> {
        let token = self.token().await?;
        let resp = self
            .http
            .post(format!("{}{path}", self.cfg.server))
            .bearer_auth(token.as_str())
            .json(body)
            .send()
            .await
            .with_context(|| format!("calling {}", self.cfg.server))?;
        decode(resp).await
    }
}

impl Client {
    /// Obtain the token now, so clones made for parallel requests share it.
    pub async fn prefetch_token(&mut self) -> Result<()> {
        self.token().await.map(drop)
    }

    /// Forget the cached token (after a 401, a long run's token has expired).
    pub fn reset_token(&mut self) {
        self.token = None;
    }

    /// Any method, without turning problems into errors: the status and raw body.
    /// Transport failures are errors.
    pub async fn call_raw(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(reqwest::StatusCode, Vec<u8>)> {
        let token = self.token().await?;
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.cfg.server))
            .bearer_auth(token.as_str());
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("calling {}", self.cfg.server))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(problem(resp).await);
        }
        Ok((status, resp.bytes().await?.to_vec()))
    }

    /// Any method; returns the status and the JSON body (null when empty). Problem
    /// responses become errors.
    pub async fn call(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(reqwest::StatusCode, serde_json::Value)> {
        let (status, bytes) = self.call_raw(method, path, body).await?;
        let v = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).context("the keyserver's response does not parse")?
        };
        Ok((status, v))
    }
}

/// A problem response from the keyserver: its status (for callers that retry) and a
/// readable message (what is displayed).
#[derive(Debug)]
pub struct ApiStatus {
    pub status: reqwest::StatusCode,
    message: String,
}

impl std::fmt::Display for ApiStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiStatus {}

async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T> {
    if !resp.status().is_success() {
        return Err(problem(resp).await);
    }
    resp.json()
        .await
        .context("the keyserver's response does not parse")
}

/// Turn a problem document into a readable error.
async fn problem(resp: reqwest::Response) -> anyhow::Error {
    let status = resp.status();
    let message = match resp.json::<Problem>().await {
        Ok(p) => format!(
            "{} ({}): {}{}",
            p.title.unwrap_or_default(),
            status.as_u16(),
            p.detail.unwrap_or_default(),
            p.kind.map(|k| format!(" [{k}]")).unwrap_or_default()
        ),
        Err(_) => format!("the keyserver answered {status}"),
    };
    anyhow::Error::new(ApiStatus { status, message })
}
