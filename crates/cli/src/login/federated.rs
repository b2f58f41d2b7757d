//! Workload identity federation: a token another system issues for this workload
//! (a file kept fresh by Kubernetes or GitHub Actions, or Azure DevOps' OIDC endpoint),
//! presented as the client assertion.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::auth_failure;

/// Where a workload identity federation token comes from.
#[derive(Clone)]
pub enum Federated {
    /// A file another system keeps fresh (Kubernetes, GitHub Actions via azure/login).
    File(std::path::PathBuf),
    /// Azure DevOps: the job asks its OIDC endpoint with its own access token.
    AzureDevOps {
        request_uri: String,
        access_token: Zeroizing<String>,
        service_connection_id: String,
    },
}

impl Federated {
    pub async fn token(&self, http: &reqwest::Client) -> Result<Zeroizing<String>> {
        match self {
            Self::File(p) => {
                let t = std::fs::read_to_string(p).with_context(|| {
                    format!("reading AZURE_FEDERATED_TOKEN_FILE {}", p.display())
                })?;
                let t = Zeroizing::new(t.trim().to_owned());
                if t.is_empty() {
                    bail!("AZURE_FEDERATED_TOKEN_FILE {} is empty", p.display());
                }
                Ok(t)
            }
            Self::AzureDevOps {
                request_uri,
                access_token,
                service_connection_id,
            } => {
                let mut url = url::Url::parse(request_uri).context("SYSTEM_OIDCREQUESTURI")?;
                url.query_pairs_mut()
                    .append_pair("api-version", "7.1")
                    .append_pair("serviceConnectionId", service_connection_id);
                let resp = http
                    .post(url)
                    .bearer_auth(access_token.as_str())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    // A bad job token then answers 401, not a sign-in page.
                    .header("X-TFS-FedAuthRedirect", "Suppress")
                    .body("{}")
                    .send()
                    .await
                    .context("requesting the Azure DevOps OIDC token")?;
                let status = resp.status();
                if !status.is_success() {
                    return Err(auth_failure(format!(
                        "Azure DevOps refused the OIDC token request ({status}); is SYSTEM_ACCESSTOKEN mapped into the step's environment?"
                    )));
                }
                #[derive(Deserialize)]
                struct Oidc {
                    #[serde(rename = "oidcToken")]
                    oidc_token: String,
                }
                let o: Oidc = resp
                    .json()
                    .await
                    .context("the Azure DevOps OIDC response does not parse")?;
                Ok(Zeroizing::new(o.oidc_token))
            }
        }
    }
}
