//! Signing requests on keys that need approval: create, list, show, approve, reject,
//! cancel. The quorum and its exactly-once signature are enforced by the store.

use axum::extract::{Path, Query, State};
use axum::Json;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use influxion_api::{RequestList, RequestView};
use influxion_core::{Digest, Role, SignAlgorithm};
use influxion_store::{
    AuditEvent, Decision, KeyRecord, Outcome, RequestOutcome, SigningRequest, StoreError,
};

use influxion_api::PendingResponse;

use super::keys::lookup;
use super::pending::{self, DecisionBody};
use super::{audited, now_unix};
use crate::extract::JsonBody;
use crate::{ApiError, AppState, Caller};

pub(crate) async fn create(
    st: &AppState,
    c: &Caller,
    key: &KeyRecord,
    digest: &Digest,
    reason: String,
    metadata: serde_json::Map<String, serde_json::Value>,
) -> Result<PendingResponse, ApiError> {
    let id = super::new_id();
    let expires_at = now_unix() + key.policy.approval_ttl_secs as i64;
    let quorum = key.policy.approvals_required;
    let r = SigningRequest {
        id: id.clone(),
        key_id: key.id.clone(),
        key_name: key.name.to_string(),
        algorithm: digest.algorithm().as_str().to_owned(),
        digest: digest.to_hex(),
        requester: c.person(),
        reason: reason.clone(),
        metadata: serde_json::Value::Object(metadata.clone()),
        quorum,
        approver_subjects: key.policy.approver_subjects.clone(),
        status: "pending".into(),
        signature: None,
        created_at: influxion_store::now_rfc3339(),
        expires_at,
        finished_at: None,
        approvals: Vec::new(),
    };
    let event = AuditEvent::new(c.actor.clone(), "signing_request.create", Outcome::Ok)
        .target(id.clone())
        .detail(serde_json::json!({
            "key": key.name.as_str(),
            "algorithm": digest.algorithm().as_str(),
            "digest": digest.to_hex(),
            "reason": reason,
            "metadata": metadata,
            "quorum": quorum,
        }));
    st.store.create_request(r, event).await?;
    Ok(PendingResponse {
        location: format!("/v1/signing-requests/{id}"),
        request_id: id,
        status: "pending".into(),
        quorum,
        expires_at,
    })
}

/// A request as one caller sees it.
fn view(c: &Caller, mut r: SigningRequest) -> RequestView {
    let me = c.principal.identity();
    if r.status == "pending" && now_unix() > r.expires_at {
        // Shown as it will be recorded at the next attempt to change it.
        r.status = "expired".into();
    }
    let decided = r.approvals.iter().any(|a| a.approver.id == me);
    let can_decide =
        r.status == "pending" && r.requester.id != me && !decided && may_approve(c, &r);
    RequestView {
        approvals_count: r.approvals_count(),
        is_requester: r.requester.id == me,
        signature: r.signature.as_ref().map(|s| B64.encode(s)),
        can_decide,
        id: r.id,
        key_id: r.key_id,
        key_name: r.key_name,
        algorithm: r.algorithm,
        digest: r.digest,
        requester: r.requester,
        reason: r.reason,
        metadata: r.metadata,
        quorum: r.quorum,
        approver_subjects: r.approver_subjects,
        status: r.status,
        created_at: r.created_at,
        expires_at: r.expires_at,
        finished_at: r.finished_at,
        approvals: super::approvals(r.approvals),
    }
}

fn may_approve(c: &Caller, r: &SigningRequest) -> bool {
    pending::may_approve(c, &r.key_name, &r.approver_subjects)
}

fn may_see(c: &Caller, r: &SigningRequest) -> bool {
    r.requester.id == c.principal.identity() || c.perms.has_role(Role::Auditor) || may_approve(c, r)
}

pub(crate) async fn list(
    State(st): State<AppState>,
    c: Caller,
    q: Result<Query<pending::PendingListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RequestList>, ApiError> {
    super::require_any(&c)?;
    let (status, limit) = pending::pending_list_params(
        q,
        &["pending", "signed", "rejected", "cancelled", "expired"],
    )?;
    let requests = st
        .store
        .list_requests(status.as_deref(), limit)
        .await?
        .into_iter()
        .filter(|r| may_see(&c, r))
        .map(|r| view(&c, r))
        .collect();
    Ok(Json(RequestList { requests }))
}

async fn fetch(st: &AppState, id: &str) -> Result<SigningRequest, ApiError> {
    pending::check_pending_id(id)?;
    st.store
        .get_request(id)
        .await?
        .ok_or_else(|| ApiError::UnknownRequest(id.to_owned()))
}

async fn visible(st: &AppState, c: &Caller, id: &str) -> Result<SigningRequest, ApiError> {
    pending::check_pending_id(id)?;
    match st.store.get_request(id).await? {
        Some(r) if may_see(c, &r) => Ok(r),
        // Requests the caller may not see are indistinguishable from missing ones.
        _ => Err(ApiError::UnknownRequest(id.to_owned())),
    }
}

pub(crate) async fn show(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<RequestView>, ApiError> {
    super::require_any(&c)?;
    let r = visible(&st, &c, &id).await?;
    Ok(Json(view(&c, r)))
}

/// The signature for `r`, and where it was made (for the quorum's `sign` record).
async fn sign_for(st: &AppState, r: &SigningRequest) -> Result<Signed, ApiError> {
    let key = lookup(st, &r.key_name).await?;
    // Keys are never renamed or deleted, but check identity and state anyway: nothing
    // is signed for a request whose key is not the one it was made for, or disabled.
    if key.id != r.key_id || key.status != influxion_core::KeyStatus::Active {
        return Err(ApiError::KeyDisabled(r.key_name.clone()));
    }
    let alg: SignAlgorithm = r.algorithm.parse()?;
    let bytes = hex::decode(&r.digest).map_err(|_| StoreError::Corrupt("request digest".into()))?;
    let digest = Digest::new(alg, bytes)?;
    let signature = st.backends.sign(&key, &digest).await?;
    let with = st.backends.describe(&key);
    Ok(Signed { signature, with })
}

struct Signed {
    signature: Vec<u8>,
    with: serde_json::Map<String, serde_json::Value>,
}

/// The key signed for this request, but the store kept no signature: another vote, a
/// rejection, expiry or cancellation won the race, or the key changed. That use of the
/// key is on record too (as `cert.discard` is for CA keys), with a fingerprint of the
/// signature that was thrown away and why.
async fn record_discarded_signature(
    st: &AppState,
    c: &Caller,
    r: &SigningRequest,
    signature: &[u8],
    result: &Result<influxion_store::Applied, ApiError>,
) {
    use sha2::Digest as _;
    let reason = match result {
        Ok(a) => match a.outcome {
            Some(RequestOutcome::Expired) => "request-expired".to_owned(),
            Some(RequestOutcome::Rejected) => "request-rejected".to_owned(),
            Some(RequestOutcome::Cancelled) => "request-cancelled".to_owned(),
            Some(RequestOutcome::Approved { .. }) => "quorum-not-reached".to_owned(),
            // Applied and Superseded end policy changes, never signing requests.
            Some(RequestOutcome::Signed | RequestOutcome::Applied | RequestOutcome::Superseded)
            | None => "not-stored".to_owned(),
        },
        Err(e) => e.slug().to_owned(),
    };
    let event = AuditEvent::new(c.actor.clone(), "sign.discard", Outcome::Refused)
        .target(r.id.clone())
        .detail(serde_json::json!({
            "key": r.key_name,
            "key_id": r.key_id,
            "algorithm": r.algorithm,
            "digest": r.digest,
            "signature_sha256": hex::encode(sha2::Sha256::digest(signature)),
            "reason": reason,
        }));
    if let Err(e) = st.store.audit(event).await {
        tracing::error!(error = %e, "could not audit a discarded signature");
    }
}

async fn decide(
    st: &AppState,
    c: &Caller,
    id: &str,
    approve: bool,
    body: Result<JsonBody<DecisionBody>, ApiError>,
) -> Result<Json<RequestView>, ApiError> {
    let action = if approve {
        "signing_request.approve"
    } else {
        "signing_request.reject"
    };
    let p = &c.principal;
    audited(st, &c.actor, action, id, async {
        let JsonBody(body) = body?;
        body.check(approve)?;
        super::require_any(c)?;
        let r = fetch(st, id).await?;
        let me = p.identity();
        if r.requester.id == me {
            return Err(ApiError::SelfApproval);
        }
        if !may_approve(c, &r) {
            return Err(super::forbidden(
                &c.perms,
                "deciding on this request needs the approver role on its key",
            ));
        }
        if r.status == "pending" && r.approvals.iter().any(|a| a.approver.id == me) {
            return Err(ApiError::AlreadyDecided);
        }
        // Sign ahead only when this vote may complete the quorum of a live request;
        // the store still decides, and discards the signature if another vote won.
        let live = r.status == "pending" && now_unix() <= r.expires_at;
        let started = std::time::Instant::now();
        let mut signature = if approve && live && r.approvals_count() + 1 >= r.quorum {
            Some(sign_for(st, &r).await?)
        } else {
            None
        };
        let event = || {
            AuditEvent::new(c.actor.clone(), action, Outcome::Ok)
                .target(id.to_owned())
                .detail(serde_json::json!({"key": r.key_name, "comment": body.comment}))
        };
        let mut attempt = 0;
        let result = loop {
            let d = Decision {
                request_id: id.to_owned(),
                approver: c.person(),
                approve,
                comment: body.comment.clone(),
                now: now_unix(),
                signature: signature.as_ref().map(|s| s.signature.clone()),
                signed_with: signature
                    .as_ref()
                    .map(|s| s.with.clone())
                    .unwrap_or_default(),
            };
            match st.store.decide(d, event()).await {
                Err(StoreError::NeedSignature) if attempt == 0 => {
                    attempt += 1;
                    signature = Some(sign_for(st, &r).await?);
                }
                other => break other.map_err(ApiError::from),
            }
        };
        if let Some(Signed { signature: sig, .. }) = &signature {
            let stored = matches!(&result, Ok(a) if a.outcome == Some(RequestOutcome::Signed));
            // The quorum's signature and its record: a sign operation like any other.
            st.metrics.sign(stored, started.elapsed());
            if !stored {
                record_discarded_signature(st, c, &r, sig, &result).await;
            }
        }
        let applied = result?;
        if applied.outcome == Some(RequestOutcome::Expired) {
            return Err(ApiError::RequestExpired);
        }
        let r = st
            .store
            .get_request(id)
            .await?
            .ok_or_else(|| ApiError::UnknownRequest(id.to_owned()))?;
        Ok(Json(view(c, r)))
    })
    .await
}

pub(crate) async fn approve(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
    body: Result<JsonBody<DecisionBody>, ApiError>,
) -> Result<Json<RequestView>, ApiError> {
    decide(&st, &c, &id, true, body).await
}

pub(crate) async fn reject(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
    body: Result<JsonBody<DecisionBody>, ApiError>,
) -> Result<Json<RequestView>, ApiError> {
    decide(&st, &c, &id, false, body).await
}

pub(crate) async fn cancel(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<RequestView>, ApiError> {
    let p = &c.principal;
    audited(&st, &c.actor, "signing_request.cancel", &id, async {
        let r = visible(&st, &c, &id).await?;
        let event = AuditEvent::new(c.actor.clone(), "signing_request.cancel", Outcome::Ok)
            .target(id.clone())
            .detail(serde_json::json!({"key": r.key_name}));
        let applied = st
            .store
            .cancel_request(&id, &p.identity(), now_unix(), event)
            .await?;
        if applied.outcome == Some(RequestOutcome::Expired) {
            return Err(ApiError::RequestExpired);
        }
        let r = st
            .store
            .get_request(&id)
            .await?
            .ok_or_else(|| ApiError::UnknownRequest(id.clone()))?;
        Ok(Json(view(&c, r)))
    })
    .await
}
