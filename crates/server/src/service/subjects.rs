//! Subjects: who a token must be to act, and the roles that gives.

use influxion_core::access::validate_subject_name;
use influxion_core::{Actor, Grant, Role, SubjectRules};
use influxion_store::{AuditEvent, Outcome, Store, SubjectRecord};

use crate::ApiError;

/// A grant of `role` on names matching `pattern`, with a fresh id.
pub fn grant(role: Role, pattern: impl Into<String>) -> Grant {
    Grant {
        id: crate::routes::new_id(),
        role,
        pattern: pattern.into(),
    }
}

/// Create a subject and record `subject.create` for `actor`. The rules are stored with
/// their caller rule written out, so what a subject admits never changes with defaults.
pub async fn create(
    store: &Store,
    actor: &Actor,
    name: &str,
    description: &str,
    rules: SubjectRules,
    grants: Vec<Grant>,
) -> Result<SubjectRecord, ApiError> {
    validate_subject_name(name).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    rules
        .validate()
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    if description.len() > 500 {
        return Err(ApiError::InvalidRequest(
            "description is at most 500 characters".into(),
        ));
    }
    let s = SubjectRecord {
        id: crate::routes::new_id(),
        name: name.to_owned(),
        description: description.to_owned(),
        rules: rules.explicit(),
        grants,
        created_at: influxion_store::now_rfc3339(),
        created_by: actor.clone(),
    };
    let event = AuditEvent::new(actor.clone(), "subject.create", Outcome::Ok)
        .target(s.name.clone())
        .detail(serde_json::json!({"rules": s.rules, "grants": s.grants}));
    store.create_subject(s.clone(), event).await?;
    Ok(s)
}
