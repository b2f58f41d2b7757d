//! Subjects and grants: managed by admins, every change audited with who made it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use influxion_core::access::{validate_pattern, validate_subject_name};
use influxion_core::{Grant, Role, SubjectRules};
use influxion_store::{AuditEvent, Outcome, SubjectRecord};
use serde::{Deserialize, Serialize};

use super::{audited, new_id, require};
use crate::extract::JsonBody;
use crate::{ApiError, AppState, Caller};

#[derive(Serialize)]
pub(crate) struct SubjectList {
    subjects: Vec<SubjectRecord>,
}

/// Reading subjects is for admins and auditors.
async fn require_read(st: &AppState, c: &Caller) -> Result<(), ApiError> {
    if c.perms.has_role(Role::Auditor) {
        return Ok(());
    }
    require(st, c, Role::Admin, "subjects", "subject.read").await
}

pub(crate) async fn list(
    State(st): State<AppState>,
    c: Caller,
) -> Result<Json<SubjectList>, ApiError> {
    require_read(&st, &c).await?;
    Ok(Json(SubjectList {
        subjects: st.store.subjects().await?.as_ref().clone(),
    }))
}

async fn find(st: &AppState, name: &str) -> Result<SubjectRecord, ApiError> {
    st.store
        .get_subject(name)
        .await?
        .ok_or_else(|| ApiError::UnknownSubject(name.chars().take(64).collect()))
}

pub(crate) async fn show(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<SubjectRecord>, ApiError> {
    require_read(&st, &c).await?;
    Ok(Json(find(&st, &name).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GrantBody {
    role: String,
    /// Key (or profile) name pattern with `*` wildcards; default `*`.
    pattern: Option<String>,
}

impl GrantBody {
    fn to_grant(&self) -> Result<Grant, ApiError> {
        let role: Role = self
            .role
            .parse()
            .map_err(|e: influxion_core::access::AccessError| {
                ApiError::InvalidRequest(e.to_string())
            })?;
        let pattern = self.pattern.clone().unwrap_or_else(|| "*".into());
        validate_pattern(&pattern).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
        // Admin implies every role on every name, so a narrower pattern would mislead.
        if role == Role::Admin && pattern != "*" {
            return Err(ApiError::InvalidRequest(
                "the admin role is granted on \"*\" only".into(),
            ));
        }
        Ok(Grant {
            id: new_id(),
            role,
            pattern,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubjectBody {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(flatten)]
    rules: SubjectRules,
    #[serde(default)]
    grants: Vec<GrantBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateBody {
    #[serde(default)]
    description: String,
    #[serde(flatten)]
    rules: SubjectRules,
}

fn check_rules(st: &AppState, rules: &SubjectRules, description: &str) -> Result<(), ApiError> {
    rules
        .validate()
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    // When tokens may come from several tenants, an app id or role alone would match
    // the same-named principal of every tenant: require the tenant.
    if st.validator.config().tenant_id.is_none() && rules.tenant_id.is_none() {
        return Err(ApiError::InvalidRequest(
            "this keyserver accepts several tenants: a subject must name its tenant_id".into(),
        ));
    }
    if description.len() > 500 {
        return Err(ApiError::InvalidRequest(
            "description is at most 500 characters".into(),
        ));
    }
    Ok(())
}

pub(crate) async fn create(
    State(st): State<AppState>,
    c: Caller,
    body: Result<JsonBody<SubjectBody>, ApiError>,
) -> Result<(StatusCode, Json<SubjectRecord>), ApiError> {
    require(&st, &c, Role::Admin, "subjects", "subject.create").await?;
    audited(&st, &c.actor, "subject.create", "subjects", async {
        let JsonBody(b) = body?;
        validate_subject_name(&b.name).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
        check_rules(&st, &b.rules, &b.description)?;
        if b.grants.len() > 32 {
            return Err(ApiError::InvalidRequest(
                "at most 32 grants per request".into(),
            ));
        }
        let grants = b
            .grants
            .iter()
            .map(GrantBody::to_grant)
            .collect::<Result<Vec<_>, _>>()?;
        let s = crate::service::subjects::create(
            &st.store,
            &c.actor,
            &b.name,
            &b.description,
            b.rules,
            grants,
        )
        .await?;
        Ok((StatusCode::CREATED, Json(s)))
    })
    .await
}

pub(crate) async fn update(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    body: Result<JsonBody<UpdateBody>, ApiError>,
) -> Result<Json<SubjectRecord>, ApiError> {
    require(&st, &c, Role::Admin, &name, "subject.update").await?;
    audited(&st, &c.actor, "subject.update", &name, async {
        let JsonBody(b) = body?;
        check_rules(&st, &b.rules, &b.description)?;
        let old = find(&st, &name).await?;
        let s = SubjectRecord {
            description: b.description,
            rules: b.rules.explicit(),
            ..old.clone()
        };
        let event = AuditEvent::new(c.actor.clone(), "subject.update", Outcome::Ok)
            .target(name.clone())
            .detail(serde_json::json!({"before": old.rules, "after": s.rules}));
        st.store.update_subject(s.clone(), event).await?;
        Ok(Json(s))
    })
    .await
}

/// Whether removing `grants_removed` from subject `subject_id` leaves no admin at all.
async fn would_remove_last_admin(
    st: &AppState,
    subject_id: &str,
    grants_removed: &[String],
) -> Result<bool, ApiError> {
    let subjects = st.store.subjects().await?;
    let remaining = subjects.iter().flat_map(|s| {
        s.grants
            .iter()
            .filter(move |g| !(s.id == subject_id && grants_removed.contains(&g.id)))
    });
    Ok(!remaining.into_iter().any(|g| g.role == Role::Admin))
}

pub(crate) async fn delete(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    require(&st, &c, Role::Admin, &name, "subject.delete").await?;
    audited(&st, &c.actor, "subject.delete", &name, async {
        let s = find(&st, &name).await?;
        let all: Vec<String> = s.grants.iter().map(|g| g.id.clone()).collect();
        if would_remove_last_admin(&st, &s.id, &all).await? {
            return Err(ApiError::LastAdmin);
        }
        let event = AuditEvent::new(c.actor.clone(), "subject.delete", Outcome::Ok)
            .target(name.clone())
            .detail(serde_json::json!({"rules": s.rules, "grants": s.grants}));
        st.store.delete_subject(&s.id, event).await?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

pub(crate) async fn add_grant(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    body: Result<JsonBody<GrantBody>, ApiError>,
) -> Result<(StatusCode, Json<Grant>), ApiError> {
    require(&st, &c, Role::Admin, &name, "grant.add").await?;
    audited(&st, &c.actor, "grant.add", &name, async {
        let g = body?.0.to_grant()?;
        let s = find(&st, &name).await?;
        let event = AuditEvent::new(c.actor.clone(), "grant.add", Outcome::Ok)
            .target(name.clone())
            .detail(serde_json::json!({"role": g.role, "pattern": g.pattern, "id": g.id}));
        st.store.add_grant(&s.id, g.clone(), event).await?;
        Ok((StatusCode::CREATED, Json(g)))
    })
    .await
}

pub(crate) async fn remove_grant(
    State(st): State<AppState>,
    c: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    require(&st, &c, Role::Admin, &name, "grant.remove").await?;
    audited(&st, &c.actor, "grant.remove", &name, async {
        let s = find(&st, &name).await?;
        let g = s.grants.iter().find(|g| g.id == id).ok_or_else(|| {
            ApiError::GrantConflict(format!(
                "no grant {} on {name}",
                id.chars().take(64).collect::<String>()
            ))
        })?;
        if would_remove_last_admin(&st, &s.id, std::slice::from_ref(&g.id)).await? {
            return Err(ApiError::LastAdmin);
        }
        let event = AuditEvent::new(c.actor.clone(), "grant.remove", Outcome::Ok)
            .target(name.clone())
            .detail(serde_json::json!({"role": g.role, "pattern": g.pattern, "id": g.id}));
        st.store.remove_grant(&s.id, &g.id, event).await?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
