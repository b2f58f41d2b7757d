//! Certificate revocation lists: the public CRL of each CA, reissued when stale, and
//! an explicit reissue.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use influxion_core::{Actor, Role};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::cas::{current_view, CaView};
use crate::routes::{audited, require};
use crate::service::pki::{lookup_ca, regenerate_crl, CRL_VALIDITY_DAYS};
use crate::{ApiError, AppState, Caller};

/// `GET /crl/{ca}.crl`: the CA's current CRL (DER), public like any CRL.
pub(crate) async fn crl(
    State(st): State<AppState>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let name = file.strip_suffix(".crl").unwrap_or(&file).to_owned();
    let mut ca = lookup_ca(&st, &name).await?;
    let next_update = ca
        .crl_next_update
        .as_deref()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
    let this_update = next_update.map(|t| t - time::Duration::days(CRL_VALIDITY_DAYS));
    // Reissue when close to nextUpdate, or when a revocation is newer than the CRL
    // (its regeneration at revocation time failed).
    let newest = st.store.latest_revocation(&name).await?;
    let stale = next_update.is_none_or(|t| t - OffsetDateTime::now_utc() < time::Duration::days(1))
        || newest
            .as_deref()
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
            .zip(this_update)
            .is_some_and(|(r, t)| r > t);
    if stale && ca.certificate.is_some() {
        match regenerate_crl(&st, &name, &Actor::id_only("influxion")).await {
            Ok(()) => ca = lookup_ca(&st, &name).await?,
            // Serve the CRL we have while it is still valid.
            Err(e) => tracing::error!(ca = %name, error = %e, "CRL regeneration failed"),
        }
    }
    let der = ca.crl.ok_or(ApiError::NotFound)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/pkix-crl"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        der,
    )
        .into_response())
}

/// `POST /v1/cas/{name}/crl`: issue a fresh CRL now.
pub(crate) async fn refresh(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<CaView>, ApiError> {
    require(&st, &c, Role::KeyAdmin, &name, "crl.issue").await?;
    audited(&st, &c.actor, "crl.issue", &name, async {
        regenerate_crl(&st, &name, &c.actor).await?;
        current_view(&st, &name).await
    })
    .await
}
