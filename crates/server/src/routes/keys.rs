//! Key management: list, show, export, create, disable, policy.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use influxion_api::{
    CertifyKey, CreateKey, ImportKey, KeyCertificate, KeyList, KeyView, PolicyRequest, RotateKey,
};
use influxion_core::{ExistingKey, KeyName, KeyStatus, KeyType, Role};
use influxion_store::{AuditEvent, KeyPolicy, KeyRecord, Outcome};
use influxion_verify as public;
use serde::Deserialize;

use super::{audited, require, require_any};
use crate::extract::JsonBody;
use crate::{ApiError, AppState, Caller};

/// A key as the API shows it.
pub(crate) fn key_view(st: &AppState, k: &KeyRecord) -> Result<KeyView, ApiError> {
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
        has_certificate: k.certificate_pem.is_some(),
        location: {
            let mut m = st.backends.describe(k);
            m.remove("backend");
            m
        },
    })
}

pub(crate) async fn list(State(st): State<AppState>, c: Caller) -> Result<Json<KeyList>, ApiError> {
    require_any(&c)?;
    let keys = st
        .store
        .list_keys()
        .await?
        .iter()
        .map(|k| key_view(&st, k))
        .collect::<Result<_, _>>()?;
    Ok(Json(KeyList { keys }))
}

pub(crate) async fn lookup(st: &AppState, name: &str) -> Result<KeyRecord, ApiError> {
    Ok((*lookup_shared(st, name).await?).clone())
}

/// [`lookup`] without copying the record: the signing path's.
pub(crate) async fn lookup_shared(st: &AppState, name: &str) -> Result<Arc<KeyRecord>, ApiError> {
    let name: KeyName = name.parse()?;
    st.store
        .key(&name)
        .await?
        .ok_or_else(|| ApiError::UnknownKey(name.to_string()))
}

pub(crate) async fn show(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    require_any(&c)?;
    Ok(Json(key_view(&st, &lookup(&st, &name).await?)?))
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
    let view = key_view(&st, &lookup(&st, &name).await?)?;
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
        Ok((StatusCode::CREATED, Json(key_view(&st, &record)?)))
    })
    .await
}

/// `POST /v1/keys/{name}/import`: bind an existing backend key as key `name`.
pub(crate) async fn import(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    body: Result<JsonBody<ImportKey>, ApiError>,
) -> Result<(StatusCode, Json<KeyView>), ApiError> {
    require(&st, &c, Role::KeyAdmin, &name, "key.import").await?;
    audited(&st, &c.actor, "key.import", &name, async {
        let JsonBody(req) = body?;
        let key_name: KeyName = name.parse()?;
        let (backend, existing) = existing_key(&req)?;
        let record = crate::service::keys::import(
            &st.store,
            &st.backends,
            &c.actor,
            key_name,
            &backend,
            existing,
        )
        .await?;
        Ok((StatusCode::CREATED, Json(key_view(&st, &record)?)))
    })
    .await
}

/// The backends imports go to, by name: the server depends on neither crate.
const VAULT_BACKEND: &str = "azure-keyvault";
const PKCS11_BACKEND: &str = "pkcs11";

/// What an import names, checked at the edge: exactly one source, each a vault name
/// (letters, digits, dashes; at most 127) and an optional 32-hex version, or a token
/// label (printable, at most 128) or id (hex, at most 64 bytes); and the backend it
/// is in, which must be of the source's kind (`pkcs11:line-1` for a token key).
fn existing_key(req: &ImportKey) -> Result<(String, ExistingKey), ApiError> {
    let token = req.pkcs11_label.is_some() || req.pkcs11_id.is_some();
    let vault = req.vault_key.is_some() || req.vault_certificate.is_some();
    if req.allow_extractable && !token {
        return Err(ApiError::InvalidRequest(
            "allow_extractable applies to pkcs11_label and pkcs11_id only".into(),
        ));
    }
    let kind = if token { PKCS11_BACKEND } else { VAULT_BACKEND };
    let backend = match req.backend.as_deref() {
        None => kind.to_owned(),
        Some(b) if b.len() > 64 => {
            return Err(ApiError::InvalidRequest(
                "backend is a backend's name, at most 64 characters".into(),
            ))
        }
        Some(b) if b == kind || b.strip_prefix(kind).is_some_and(|t| t.starts_with(':')) => {
            b.to_owned()
        }
        Some(b) => {
            return Err(ApiError::InvalidRequest(format!(
                "backend {b:?} does not hold {} keys; name {kind} or {kind}:NAME",
                if token { "token" } else { "vault" }
            )))
        }
    };
    if token {
        if vault {
            return Err(ApiError::InvalidRequest(
                "name exactly one of vault_key, vault_certificate, pkcs11_label and pkcs11_id"
                    .into(),
            ));
        }
        return token_key(req).map(|k| (backend, k));
    }
    vault_key(req).map(|k| (backend, k))
}

fn token_key(req: &ImportKey) -> Result<ExistingKey, ApiError> {
    let (label, id) = match (&req.pkcs11_label, &req.pkcs11_id) {
        (Some(l), None) => {
            if l.is_empty() || l.len() > 128 || l.chars().any(char::is_control) {
                return Err(ApiError::InvalidRequest(format!(
                    "pkcs11_label {l:?} is not a token object label (1 to 128 printable characters)"
                )));
            }
            (Some(l.clone()), None)
        }
        (None, Some(i)) => match hex::decode(i) {
            Ok(b) if !b.is_empty() && b.len() <= 64 => (None, Some(b)),
            _ => {
                return Err(ApiError::InvalidRequest(format!(
                    "pkcs11_id {i:?} is not a token object id (1 to 64 bytes, hex)"
                )))
            }
        },
        _ => {
            return Err(ApiError::InvalidRequest(
                "name exactly one of pkcs11_label and pkcs11_id".into(),
            ))
        }
    };
    Ok(ExistingKey::TokenKey {
        label,
        id,
        allow_extractable: req.allow_extractable,
    })
}

fn vault_key(req: &ImportKey) -> Result<ExistingKey, ApiError> {
    let vault_name = |what: &str, s: &str| {
        if s.is_empty()
            || s.len() > 127
            || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            Err(ApiError::InvalidRequest(format!(
                "{what} {s:?} is not a Key Vault name (1 to 127 letters, digits and dashes)"
            )))
        } else {
            Ok(s.to_owned())
        }
    };
    match (&req.vault_key, &req.vault_certificate) {
        (Some(k), None) => {
            if req.from_secret {
                return Err(ApiError::InvalidRequest(
                    "from_secret applies to vault_certificate only".into(),
                ));
            }
            let (name, version) = match k.split_once('/') {
                Some((n, v)) => (n, Some(vault_name("vault key version", v)?)),
                None => (k.as_str(), None),
            };
            Ok(ExistingKey::VaultKey {
                name: vault_name("vault key", name)?,
                version,
            })
        }
        (None, Some(c)) => Ok(ExistingKey::VaultCertificate {
            name: vault_name("vault certificate", c)?,
            from_secret: req.from_secret,
        }),
        _ => Err(ApiError::InvalidRequest(
            "name exactly one of vault_key and vault_certificate".into(),
        )),
    }
}

/// `POST /v1/keys/{name}/rotate`: bind another version of the key's backend key.
pub(crate) async fn rotate(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    body: Result<JsonBody<RotateKey>, ApiError>,
) -> Result<Json<KeyView>, ApiError> {
    require(&st, &c, Role::KeyAdmin, &name, "key.rotate").await?;
    audited(&st, &c.actor, "key.rotate", &name, async {
        let JsonBody(req) = body?;
        if let Some(v) = &req.version {
            if v.is_empty()
                || v.len() > 127
                || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                return Err(ApiError::InvalidRequest(format!(
                    "version {v:?} is not a Key Vault version"
                )));
            }
        }
        let key = lookup(&st, &name).await?;
        let key = crate::service::keys::rotate(
            &st.store,
            &st.backends,
            &c.actor,
            key,
            req.version.as_deref(),
        )
        .await?;
        Ok(Json(key_view(&st, &key)?))
    })
    .await
}

/// `PUT /v1/keys/{name}/certificate`: give the key a certificate chain (PEM, leaf
/// first) whose leaf carries the key's public key.
pub(crate) async fn set_certificate(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    body: Result<JsonBody<KeyCertificate>, ApiError>,
) -> Result<Json<KeyView>, ApiError> {
    require(&st, &c, Role::KeyAdmin, &name, "key.certificate").await?;
    audited(&st, &c.actor, "key.certificate", &name, async {
        // The body limit (16 KiB) bounds the chain.
        let JsonBody(req) = body?;
        let chain = influxion_pki::encode::certs_from_pem_or_der(req.chain.as_bytes())
            .map_err(|e| ApiError::BadKeyCertificate(e.to_string()))?;
        let key = lookup(&st, &name).await?;
        let key = crate::service::keys::set_certificate(
            &st.store,
            &c.actor,
            key,
            chain,
            serde_json::json!("given"),
        )
        .await?;
        Ok(Json(key_view(&st, &key)?))
    })
    .await
}

/// `POST /v1/keys/{name}/certify`: a code-signing certificate for the key from one of
/// the keyserver's own certificate profiles.
pub(crate) async fn certify(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    body: Result<JsonBody<CertifyKey>, ApiError>,
) -> Result<Json<KeyView>, ApiError> {
    require(&st, &c, Role::KeyAdmin, &name, "key.certify").await?;
    audited(&st, &c.actor, "key.certify", &name, async {
        let JsonBody(req) = body?;
        // The profile's CA issues the certificate: as for any issuance, the caller
        // needs the provisioner role on the profile, not only on the key.
        if !c.perms.allows(Role::Provisioner, &req.profile) {
            return Err(super::forbidden(
                &c.perms,
                &format!(
                    "certifying with profile {} needs the provisioner role on it",
                    req.profile
                ),
            ));
        }
        let key = lookup(&st, &name).await?;
        let key = crate::service::pki::certify_key(&st, &c.actor, key, &req.profile).await?;
        Ok(Json(key_view(&st, &key)?))
    })
    .await
}

/// `GET /v1/keys/{name}/certificate`: the key's certificate chain, PEM, leaf first.
pub(crate) async fn certificate(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    require_any(&c)?;
    let key = lookup(&st, &name).await?;
    let pem = key
        .certificate_pem
        .ok_or_else(|| ApiError::NoCertificate(key.name.to_string()))?;
    Ok((
        [(header::CONTENT_TYPE, "application/pem-certificate-chain")],
        pem,
    )
        .into_response())
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
        key_view(
            &st,
            &KeyRecord {
                status: KeyStatus::Disabled,
                ..key
            },
        )
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
        Ok(Json(key_view(&st, &key)?).into_response())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_import(backend: Option<&str>) -> ImportKey {
        ImportKey {
            pkcs11_label: Some("fw".into()),
            backend: backend.map(str::to_owned),
            ..Default::default()
        }
    }

    #[test]
    fn an_import_names_a_backend_of_its_sources_kind() {
        let (b, k) = existing_key(&token_import(None)).unwrap();
        assert_eq!(b, "pkcs11");
        assert!(matches!(k, ExistingKey::TokenKey { label: Some(l), .. } if l == "fw"));
        assert_eq!(
            existing_key(&token_import(Some("pkcs11:line-1")))
                .unwrap()
                .0,
            "pkcs11:line-1"
        );
        for wrong in ["software", "azure-keyvault", "pkcs11x", "pkcs11line"] {
            assert!(
                matches!(existing_key(&token_import(Some(wrong))), Err(ApiError::InvalidRequest(m)) if m.contains("does not hold token keys")),
                "{wrong}"
            );
        }
        let long = format!("pkcs11:{}", "a".repeat(60));
        assert!(matches!(
            existing_key(&token_import(Some(&long))),
            Err(ApiError::InvalidRequest(m)) if m.contains("at most 64")
        ));
        let vault = ImportKey {
            vault_key: Some("fw".into()),
            backend: Some("pkcs11:line-1".into()),
            ..Default::default()
        };
        assert!(
            matches!(existing_key(&vault), Err(ApiError::InvalidRequest(m)) if m.contains("vault keys"))
        );
    }
}
