//! `/v1/subjects`: who is who, by rules over the token, and the roles they hold.

use influxion_core::{Grant, SubjectRules};
use serde::{Deserialize, Serialize};

/// A subject with its match rules and grants.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subject {
    pub id: String,
    pub name: String,
    pub description: String,
    #[serde(flatten)]
    pub rules: SubjectRules,
    pub grants: Vec<Grant>,
    pub created_at: String,
    /// Who made it: `id` is `kind:tenant/object`; `label` is what to show.
    pub created_by: influxion_core::Actor,
}

/// `GET /v1/subjects`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubjectList {
    pub subjects: Vec<Subject>,
}

/// A grant to add: `POST /v1/subjects/{name}/grants`, and each of `SubjectBody.grants`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    pub role: String,
    /// Key (or profile) name pattern with `*` wildcards; default `*`.
    pub pattern: Option<String>,
}

/// `POST /v1/subjects`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectBody {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(flatten)]
    pub rules: SubjectRules,
    #[serde(default)]
    pub grants: Vec<GrantBody>,
}

/// `PUT /v1/subjects/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    #[serde(default)]
    pub description: String,
    #[serde(flatten)]
    pub rules: SubjectRules,
}
