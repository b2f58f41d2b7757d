//! Key management: list, show, export, create, disable.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use influxion_core::{KeyName, KeyStatus, KeyType};
use influxion_keystore::public;
use influxion_store::{AuditEvent, KeyRecord, Outcome};
use serde::{Deserialize, Serialize};

use super::{refused, require_admin};
use crate::routes::sign::json_body;
use crate::{ApiError, AppState, Authenticated};

#[derive(Serialize)]
pub struct KeyView {
    name: String,
    key_type: KeyType,
    algorithms: Vec<&'static str>,
    default_algorithm: &'static str,
    backend: String,
    status: KeyStatus,
    created_at: String,
    created_by: String,
    public_key_pem: String,
    public_key_jwk: serde_json::Value,
}

impl KeyView {
    pub(crate) fn from_record(k: &KeyRecord) -> Result<Self, ApiError> {
        let corrupt =
            |_| ApiError::Store(influxion_store::StoreError::Corrupt("public key".into()));
        let mut jwk = public::to_jwk(k.key_type, &k.public_key).map_err(corrupt)?;
        if let Some(o) = jwk.as_object_mut() {
            o.insert("kid".into(), k.name.as_str().into());
            o.insert("use".into(), "sig".into());
            o.insert("alg".into(), k.key_type.default_algorithm().as_str().into());
        }
        Ok(Self {
            name: k.name.to_string(),
            key_type: k.key_type,
            algorithms: k.key_type.algorithms().iter().map(|a| a.as_str()).collect(),
            default_algorithm: k.key_type.default_algorithm().as_str(),
            backend: k.backend.clone(),
            status: k.status,
            created_at: k.created_at.clone(),
            created_by: k.created_by.clone(),
            public_key_pem: public::to_pem(&k.public_key).map_err(corrupt)?,
            public_key_jwk: jwk,
        })
    }
}

#[derive(Serialize)]
pub struct KeyList {
    keys: Vec<KeyView>,
}

pub async fn list(
    State(st): State<AppState>,
    Authenticated(_p): Authenticated,
) -> Result<Json<KeyList>, ApiError> {
    let keys = st
        .store
        .list_keys()
        .await?
        .iter()
        .map(KeyView::from_record)
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

pub async fn show(
    State(st): State<AppState>,
    Authenticated(_p): Authenticated,
    Path(name): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    Ok(Json(KeyView::from_record(&lookup(&st, &name).await?)?))
}

#[derive(Deserialize)]
pub struct PublicQuery {
    format: Option<String>,
}

pub async fn public(
    State(st): State<AppState>,
    Authenticated(_p): Authenticated,
    Path(name): Path<String>,
    Query(q): Query<PublicQuery>,
) -> Result<Response, ApiError> {
    let view = KeyView::from_record(&lookup(&st, &name).await?)?;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    name: String,
    key_type: String,
}

pub async fn create(
    State(st): State<AppState>,
    Authenticated(p): Authenticated,
    body: Result<Json<CreateKey>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<KeyView>), ApiError> {
    require_admin(&st, &p, "key.create", "keys").await?;
    let result = async {
        let req = json_body(body)?;
        let name: KeyName = req.name.parse()?;
        let key_type: KeyType = req.key_type.parse()?;
        let id = uuid::Uuid::new_v4().to_string();
        if st.store.get_key(&name).await?.is_some() {
            return Err(ApiError::KeyExists(name.to_string()));
        }
        let generated = st.backend.generate(&id, key_type).await?;
        let record = KeyRecord {
            id,
            name: name.clone(),
            key_type,
            backend: st.backend.name().to_owned(),
            status: KeyStatus::Active,
            public_key: generated.public_key_der,
            handle: generated.handle,
            created_at: influxion_store::now_rfc3339(),
            created_by: p.audit_id(),
        };
        let event = AuditEvent::new(p.audit_id(), "key.create", Outcome::Ok)
            .target(name.to_string())
            .detail(serde_json::json!({"key_type": key_type.as_str(), "backend": record.backend}));
        st.store.insert_key(record.clone(), event).await?;
        KeyView::from_record(&record)
    }
    .await;
    match result {
        Ok(v) => Ok((StatusCode::CREATED, Json(v))),
        Err(e) => {
            refused(&st, &p, "key.create", "keys", &e).await;
            Err(e)
        }
    }
}

pub async fn disable(
    State(st): State<AppState>,
    Authenticated(p): Authenticated,
    Path(name): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    require_admin(&st, &p, "key.disable", &name).await?;
    let result = async {
        let key = lookup(&st, &name).await?;
        let event =
            AuditEvent::new(p.audit_id(), "key.disable", Outcome::Ok).target(key.name.to_string());
        st.store
            .set_key_status(&key.name, KeyStatus::Disabled, event)
            .await?;
        KeyView::from_record(&KeyRecord {
            status: KeyStatus::Disabled,
            ..key
        })
    }
    .await;
    match result {
        Ok(v) => Ok(Json(v)),
        Err(e) => {
            refused(&st, &p, "key.disable", &name, &e).await;
            Err(e)
        }
    }
}
