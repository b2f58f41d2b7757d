//! Azure for Influxion: the credential chain that reaches Key Vault (and, later, Azure
//! Database for PostgreSQL with Entra authentication). No Azure SDK types cross this
//! crate's edge; callers ask for a token for a resource.

pub mod credential;

use std::path::Path;
use std::time::Duration;

pub use credential::{AccessToken, Credential, CredentialError, Retry, Settings, Source};

/// The resource (audience) of Key Vault tokens in the public cloud.
pub const KEY_VAULT_RESOURCE: &str = "https://vault.azure.net";
/// Azure Database for PostgreSQL with Entra authentication: an access token for this
/// resource is the password (`https://ossrdbms-aad.database.windows.net/.default`).
pub const POSTGRES_RESOURCE: &str = "https://ossrdbms-aad.database.windows.net";

/// The HTTP client for the authority, the identity endpoints and the vault: the
/// system's trust roots plus, with `extra_roots` (`INFLUXION_VAULT_CA_FILE`), the PEM
/// certificates in that file, added, never replacing the system roots. No redirects:
/// a token request or a signature must reach exactly the endpoint named.
pub fn http_client(extra_roots: Option<&Path>) -> Result<reqwest::Client, CredentialError> {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = extra_roots {
        let pem = std::fs::read(path).map_err(|e| CredentialError::Config {
            setting: "INFLUXION_VAULT_CA_FILE",
            why: format!("reading {}: {e}", path.display()),
        })?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| CredentialError::Config {
                setting: "INFLUXION_VAULT_CA_FILE",
                why: format!("{} holds no PEM certificates ({e})", path.display()),
            })?;
        if certs.is_empty() {
            return Err(CredentialError::Config {
                setting: "INFLUXION_VAULT_CA_FILE",
                why: format!("{} holds no PEM certificates", path.display()),
            });
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| CredentialError::Config {
        setting: "INFLUXION_VAULT_CA_FILE",
        why: format!("building the HTTP client: {e}"),
    })
}
