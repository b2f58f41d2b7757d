//! Key management: list, show, export, create, disable, policy.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use influxion_api::{CreateKey, KeyList, KeyView, PolicyRequest};
use influxion_core::{KeyName, KeyStatus, KeyType, Role};
use influxion_store::{AuditEvent, KeyPolicy, KeyRecord, Outcome};
use influxion_verify as public;
use serde::Deserialize;

use super::{audited, require, require_any};
use crate::extract::JsonBody;
use crate::{ApiError, AppState, Caller};

/// A key as the API shows it.
pub(crate) fn key_view(k: &KeyRecord) -> Result<KeyView, ApiError> {
    let corrupt = |_| ApiError::Store(influxion_store::StoreError::Corrupt("public key".into()));
    let mut jwk = public::to_jwk(k.key_type, &k.public_key).map_err(corrupt)?;
    if let Some(o) = jwk.as_object_mut() {
        o.insert("kid".into(), k.name.as_str().into());
        o.insert("use".into(), "sig".into());
        o.insert("alg".into(), k.key_type.default_algorithm().as_str().into());
    }
    Ok(KeyView {
        name: k.name.to_string(),
        key_type: k.key_type,
        algorithms: k.key_type.algorithms().to_vec(),
        default_algorithm: k.key_type.default_algorithm(),
        backend: k.backend.clone(),
        status: k.status,
        purpose: k.purpose.as_str().to_owned(),
        created_at: k.created_at.clone(),
        created_by: k.created_by.clone(),
        policy: k.policy.clone(),
        public_key_pem: public::to_pem(&k.public_key).map_err(corrupt)?,
        public_key_jwk: jwk,
    })
}

pub(crate) async fn list(State(st): State<AppState>, c: Caller) -> Result<Json<KeyList>, ApiError> {
    require_any(&c)?;
    let keys = st
        .store
        .list_keys()
        .await?
        .iter()
        .map(key_view)
        .collect::<Result<_, _>>()?;
    Ok(Json(KeyList { keys }))
}

pub(crate) async fn lookup(st: &AppState, name: &str) -> Result<KeyRecord, ApiError> {
    let name: KeyName = name.parse()?;
    st.store
        .get_key(&name)
        .await?
        .ok_or_else(|| ApiError::UnknownKey(name.to_string()))
}

pub(crate) async fn show(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    require_any(&c)?;
    Ok(Json(key_view(&lookup(&st, &name).await?)?))
}

#[derive(Deserialize)]
pub(crate) struct PublicQuery {
    format: Option<String>,
}

pub(crate) async fn public(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    Query(q): Query<PublicQuery>,
) -> Result<Response, ApiError> {
    require_any(&c)?;
    let view = key_view(&lookup(&st, &name).await?)?;
    match q.format.as_deref().unwrap_or("pem") {
        "pem" => Ok((
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            view.public_key_pem,
        )
            .into_response()),
        "jwk" => Ok((
            [(header::CONTENT_TYPE, "application/jwk+json")],
            Json(view.public_key_jwk),
        )
            .into_response()),
        other => Err(ApiError::InvalidRequest(format!(
            "format must be pem or jwk, not {other:?}"
        ))),
    }
}

pub(crate) async fn create(
    State(st): State<AppState>,
    c: Caller,
    body: Result<JsonBody<CreateKey>, ApiError>,
) -> Result<(StatusCode, Json<KeyView>), ApiError> {
    audited(&st, &c.actor, "key.create", "keys", async {
        let JsonBody(req) = body?;
        let name: KeyName = req.name.parse()?;
        let key_type: KeyType = req.key_type.parse()?;
        if !c.perms.allows(Role::KeyAdmin, name.as_str()) {
            return Err(super::forbidden(
                &c.perms,
                &format!("creating key {name} needs the key-admin role"),
            ));
        }
        let record = crate::service::keys::create(
            &st.store,
            &st.backends,
            &c.actor,
            name,
            key_type,
            req.backend.as_deref(),
        )
        .await?;
        Ok((StatusCode::CREATED, Json(key_view(&record)?)))
    })
    .await
}

pub(crate) async fn disable(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    require(&st, &c, Role::KeyAdmin, &name, "key.disable").await?;
    audited(&st, &c.actor, "key.disable", &name, async {
        let key = lookup(&st, &name).await?;
        let event = AuditEvent::new(c.actor.clone(), "key.disable", Outcome::Ok)
            .target(key.name.to_string());
        st.store
            .set_key_status(&key.name, KeyStatus::Disabled, event)
            .await?;
        key_view(&KeyRecord {
            status: KeyStatus::Disabled,
            ..key
        })
        .map(Json)
    })
    .await
}

pub(crate) async fn set_policy(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    body: Result<JsonBody<PolicyRequest>, ApiError>,
) -> Result<Response, ApiError> {
    require(&st, &c, Role::KeyAdmin, &name, "key.policy").await?;
    audited(&st, &c.actor, "key.policy", &name, async {
        let JsonBody(req) = body?;
        let key = lookup(&st, &name).await?;
        if req.approvals_required > 16 {
            return Err(ApiError::InvalidRequest(
                "approvals_required is at most 16".into(),
            ));
        }
        let ttl = req.approval_ttl_secs.unwrap_or(86_400);
        if !(60..=30 * 86_400).contains(&ttl) {
            return Err(ApiError::InvalidRequest(
                "approval_ttl_secs must be between 60 and 2592000".into(),
            ));
        }
        if req.reason.as_ref().is_some_and(|r| r.len() > 1000) {
            return Err(ApiError::InvalidRequest(
                "reason is at most 1000 characters".into(),
            ));
        }
        if req.approvers.len() > 64 {
            return Err(ApiError::InvalidRequest(
                "at most 64 approver subjects".into(),
            ));
        }
        for a in &req.approvers {
            if st.store.get_subject(a).await?.is_none() {
                return Err(ApiError::InvalidRequest(format!("no subject {a}")));
            }
        }
        if !req.approvers.is_empty() && req.approvers.len() < req.approvals_required as usize {
            return Err(ApiError::InvalidRequest(
                "fewer approver subjects than approvals required: no request could ever be signed"
                    .into(),
            ));
        }
        let policy = KeyPolicy {
            approvals_required: req.approvals_required,
            approval_ttl_secs: ttl,
            approver_subjects: req.approvers,
        };
        // Making signing harder is immediate. Making it easier is a change the key's
        // current approvers must approve, as they would a signature: otherwise a
        // key-admin who also signs could set approvals to 0 (or name approvers it
        // controls), sign alone and put the policy back. An admin who is not a signer
        // of the key may still act alone (admins can rewrite subjects anyway).
        let weakens = key.policy.weakenings(&policy);
        let alone =
            c.perms.is_admin() && !c.perms.holds_explicitly(Role::Signer, key.name.as_str());
        if !weakens.is_empty() && !alone {
            let pending = super::policy_changes::propose(
                &st,
                &c,
                &key,
                policy,
                weakens,
                req.reason.unwrap_or_default(),
            )
            .await?;
            let loc = pending.location.clone();
            return Ok((
                StatusCode::ACCEPTED,
                [(header::LOCATION, loc)],
                Json(pending),
            )
                .into_response());
        }
        let key = crate::service::keys::set_policy(&st.store, &c.actor, key, policy).await?;
        Ok(Json(key_view(&key)?).into_response())
    })
    .await
}
