//! The CLI's HTTP side: obtaining an access token and calling the keyserver.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::config::ClientConfig;
use crate::{login, profiles};

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    cfg: ClientConfig,
    /// Shared by clones: parallel requests of a run use one token, and one refetch
    /// after it expires serves them all.
    token: std::sync::Arc<tokio::sync::Mutex<Option<Zeroizing<String>>>>,
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
            // Never follow redirects: a form with a secret, a refresh token or an
            // assertion must reach exactly the endpoint named, never another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            cfg,
            token: Default::default(),
        })
    }

    /// An access token, from the first source configured: a client secret (client
    /// credentials), a certificate (private_key_jwt), a federated token (workload
    /// identity federation), else the profile's cached sign-in (refreshed as needed).
    async fn token(&mut self) -> Result<Zeroizing<String>> {
        let mut slot = self.token.lock().await;
        if let Some(t) = &*slot {
            return Ok(t.clone());
        }
        let t = self.obtain().await?;
        *slot = Some(t.clone());
        Ok(t)
    }

    async fn obtain(&self) -> Result<Zeroizing<String>> {
        let cfg = &self.cfg;
        let confidential = cfg.client_secret.is_some()
            || cfg.certificate_path.is_some()
            || cfg.federated.is_some();
        let (Some(id), true) = (&cfg.client_id, confidential) else {
            return self.cached_sign_in().await;
        };
        let md = login::discover(&self.http, &cfg.metadata_url).await?;
        let assertion = match (&cfg.client_secret, &cfg.certificate_path, &cfg.federated) {
            (Some(_), _, _) => None,
            (None, Some(path), _) => {
                let pem = Zeroizing::new(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("reading the certificate {}", path.display()))?,
                );
                Some(Zeroizing::new(login::client_assertion(
                    &pem,
                    id,
                    &md.token_endpoint,
                )?))
            }
            (None, None, fed) => Some(
                fed.as_ref()
                    .context("no client credential")?
                    .token(&self.http)
                    .await?,
            ),
        };
        let auth = match (&cfg.client_secret, &assertion) {
            (Some(secret), _) => login::ClientAuth::Secret(secret),
            (None, Some(a)) => login::ClientAuth::Assertion(a),
            (None, None) => anyhow::bail!("no client credential"),
        };
        login::client_credentials(&self.http, &md.token_endpoint, id, &cfg.scope, auth).await
    }

    /// The profile's cached sign-in from `influxion login`, refreshed when it is about
    /// to expire.
    async fn cached_sign_in(&self) -> Result<Zeroizing<String>> {
        let profile = &self.cfg.profile;
        let Some(t) = profiles::load_token(profile)? else {
            return Err(login::auth_failure(format!(
                "not signed in (profile {profile}): run `influxion login`, or configure a client id with a secret, certificate or federated token"
            )));
        };
        if t.metadata_url != self.cfg.metadata_url {
            return Err(login::auth_failure(format!(
                "the sign-in of profile {profile} is for another identity provider ({}); run `influxion login`",
                t.metadata_url
            )));
        }
        if login::fresh(&t) {
            return Ok(Zeroizing::new(t.access_token.clone()));
        }
        let lock = {
            let profile = profile.clone();
            tokio::task::spawn_blocking(move || profiles::lock_token(&profile))
                .await
                .context("waiting for the token cache lock")??
        };
        // Another process may have refreshed while this one waited for the lock.
        let t = profiles::load_token(profile)?.unwrap_or(t);
        if login::fresh(&t) {
            return Ok(Zeroizing::new(t.access_token.clone()));
        }
        let next = login::refresh(&self.http, &t).await?;
        profiles::save_token(profile, &next)?;
        drop(lock);
        Ok(Zeroizing::new(next.access_token.clone()))
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
}

impl Client {
    /// Obtain the token now, so clones made for parallel requests share it.
    pub async fn prefetch_token(&mut self) -> Result<()> {
        self.token().await.map(drop)
    }

    /// The token obtained so far (after [`Client::prefetch_token`]).
    pub async fn current_token(&self) -> Option<Zeroizing<String>> {
        self.token.lock().await.clone()
    }

    /// Forget the token `failed` (after a 401: a long run's token has expired), unless
    /// another request has already replaced it.
    pub async fn reset_token(&mut self, failed: &str) {
        let mut slot = self.token.lock().await;
        if slot.as_ref().is_some_and(|t| t.as_str() == failed) {
            *slot = None;
        }
    }

    /// The token the next request will use (to pass to [`Client::reset_token`]).
    pub async fn token_now(&mut self) -> Result<Zeroizing<String>> {
        self.token().await
    }

    /// Any method; the status and the raw body. Problem responses and transport
    /// failures are errors.
    pub async fn call_raw<B: Serialize + ?Sized>(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
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

    /// Any method; the answer as the API type `T` (an empty body reads as JSON null).
    /// Problem responses become errors.
    pub async fn call<T: DeserializeOwned, B: Serialize + ?Sized>(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Reply<T>> {
        let (status, bytes) = self.call_raw(method, path, body).await?;
        let raw = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).context("the keyserver's response does not parse")?
        };
        let body = T::deserialize(&raw)
            .context("the keyserver's response is not what the API describes")?;
        Ok(Reply { status, body, raw })
    }

    /// [`Client::call`] without a request body.
    pub async fn fetch<T: DeserializeOwned>(
        &mut self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<Reply<T>> {
        self.call(method, path, None::<&()>).await
    }
}

/// A keyserver's answer: its status, its body read as the API type, and the body as
/// it came. Commands read fields from `body`; `--output json` prints `raw`, so a
/// pipeline sees the server's document itself, including fields newer than this CLI.
pub struct Reply<T> {
    pub status: reqwest::StatusCode,
    pub body: T,
    pub raw: serde_json::Value,
}

impl Reply<serde_json::Value> {
    /// The body as `U`, for answers whose type depends on the status (200 or 202).
    pub fn read<U: DeserializeOwned>(&self) -> Result<U> {
        U::deserialize(&self.raw).context("the keyserver's response is not what the API describes")
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
