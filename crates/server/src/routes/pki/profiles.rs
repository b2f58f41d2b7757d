//! Certificate profiles: what a CA issues to devices (subject, key types, validity,
//! extensions, quota), created, replaced and deleted by key-admins.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use influxion_core::{KeyName, Role};
use influxion_pki::ProfileSpec;
use influxion_store::pki::ProfileRecord;
use influxion_store::{AuditEvent, Outcome};
use serde::Serialize;

use crate::extract::JsonBody;
use crate::routes::{audited, forbidden, require, require_any};
use crate::service::pki::{corrupt, lookup_ca, lookup_profile};
use crate::{ApiError, AppState, Caller};

#[derive(Serialize)]
pub(crate) struct ProfileView {
    name: String,
    #[serde(flatten)]
    spec: ProfileSpec,
    created_at: String,
    updated_at: String,
}

fn profile_view(r: &ProfileRecord) -> Result<ProfileView, ApiError> {
    Ok(ProfileView {
        name: r.name.clone(),
        spec: serde_json::from_str(&r.spec).map_err(|_| corrupt("profile"))?,
        created_at: r.created_at.clone(),
        updated_at: r.updated_at.clone(),
    })
}

#[derive(Serialize)]
pub(crate) struct ProfileList {
    profiles: Vec<ProfileView>,
}

pub(crate) async fn list(
    State(st): State<AppState>,
    c: Caller,
) -> Result<Json<ProfileList>, ApiError> {
    require_any(&c)?;
    let profiles = st
        .store
        .list_profiles()
        .await?
        .iter()
        .map(profile_view)
        .collect::<Result<_, _>>()?;
    Ok(Json(ProfileList { profiles }))
}

pub(crate) async fn show(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<ProfileView>, ApiError> {
    require_any(&c)?;
    Ok(Json(profile_view(&lookup_profile(&st, &name).await?.0)?))
}

/// `PUT /v1/profiles/{name}`: create (201) or replace (200) a profile.
pub(crate) async fn put(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    body: Result<JsonBody<ProfileSpec>, ApiError>,
) -> Result<(StatusCode, Json<ProfileView>), ApiError> {
    require(&st, &c, Role::KeyAdmin, &name, "profile.put").await?;
    audited(&st, &c.actor, "profile.put", &name, async {
        let name: KeyName = name.parse()?;
        let JsonBody(spec) = body?;
        spec.validate()
            .map_err(|e| ApiError::InvalidProfile(e.to_string()))?;
        let ca = lookup_ca(&st, &spec.ca).await.map_err(|_| {
            ApiError::InvalidProfile(format!("invalid profile: no CA named {}", spec.ca))
        })?;
        // Binding a profile to a CA lets provisioners issue under it: the caller must
        // administer that CA's name as well as the profile's.
        if !c.perms.allows(Role::KeyAdmin, &ca.name) {
            return Err(forbidden(
                &c.perms,
                &format!(
                    "binding a profile to CA {} needs the key-admin role on it",
                    ca.name
                ),
            ));
        }
        if let Some(old) = st.store.get_profile(name.as_str()).await? {
            if old.ca != ca.name && !c.perms.allows(Role::KeyAdmin, &old.ca) {
                return Err(forbidden(
                    &c.perms,
                    &format!(
                        "moving a profile away from CA {} needs the key-admin role on it",
                        old.ca
                    ),
                ));
            }
        }
        let (record, create) = crate::service::pki::put_profile(&st, &c.actor, &name, spec).await?;
        let status = if create {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok((status, Json(profile_view(&record)?)))
    })
    .await
}

pub(crate) async fn delete(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    require(&st, &c, Role::KeyAdmin, &name, "profile.delete").await?;
    audited(&st, &c.actor, "profile.delete", &name, async {
        let event =
            AuditEvent::new(c.actor.clone(), "profile.delete", Outcome::Ok).target(name.clone());
        st.store.delete_profile(&name, event).await?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
