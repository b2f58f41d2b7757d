//! Where the keyserver's PostgreSQL connections get their password at run time: a file
//! an operator can rotate, or an Entra access token (Azure Database for PostgreSQL)
//! from the same credential chain as Key Vault. The store asks again before a token
//! expires; connections already open are unaffected.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use influxion_store::{DatabasePassword, Secret};
use zeroize::Zeroizing;

use crate::config::DatabaseAuth;

/// The password source `auth` names, if any.
pub(crate) fn password_source(auth: &DatabaseAuth) -> Result<Option<Arc<dyn DatabasePassword>>> {
    Ok(match auth {
        DatabaseAuth::Url => None,
        DatabaseAuth::PasswordFile(p) => Some(Arc::new(PasswordFile(p.clone()))),
        DatabaseAuth::Azure {
            credential,
            ca_file,
        } => {
            let http = influxion_azure::http_client(ca_file.as_deref())
                .context("INFLUXION_AZURE_CA_FILE")?;
            Some(Arc::new(EntraToken(influxion_azure::Credential::new(
                credential.clone(),
                http,
            ))))
        }
    })
}

struct PasswordFile(PathBuf);

#[async_trait::async_trait]
impl DatabasePassword for PasswordFile {
    async fn password(&self) -> Result<Secret, String> {
        let text = tokio::fs::read_to_string(&self.0)
            .await
            .map_err(|e| format!("INFLUXION_DATABASE_PASSWORD_FILE {}: {e}", self.0.display()))?;
        let value = Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_owned());
        Ok(Secret {
            value,
            valid_for: None,
        })
    }
}

struct EntraToken(influxion_azure::Credential);

#[async_trait::async_trait]
impl DatabasePassword for EntraToken {
    async fn password(&self) -> Result<Secret, String> {
        let t = self
            .0
            .token(influxion_azure::POSTGRES_RESOURCE)
            .await
            .map_err(|e| format!("Entra token for the database: {e}"))?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let left = u64::try_from(t.expires_on - now).unwrap_or(0);
        Ok(Secret {
            value: t.token,
            valid_for: Some(Duration::from_secs(left)),
        })
    }
}
