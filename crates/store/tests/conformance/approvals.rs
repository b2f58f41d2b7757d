//! The approval workflow's invariants, enforced by the store: quorum, one vote per
//! approver, no self-approval, terminal states, and exactly one signature under races.

use influxion_core::{KeyStatus, KeyType};
use influxion_store::{
    Decision, KeyPolicy, KeyRecord, PolicyChange, RequestOutcome, SigningRequest, Store, StoreError,
};

use super::{ev, Backend, TestDb};

pub(crate) async fn store<B: Backend>() -> (TestDb, Store) {
    let db = B::fresh().await;
    let s = db.open().await;
    let key = KeyRecord {
        id: "k1".into(),
        name: "prod".parse().unwrap(),
        key_type: KeyType::EcP256,
        backend: "software".into(),
        status: KeyStatus::Active,
        public_key: vec![1],
        handle: vec![2],
        created_at: influxion_store::now_rfc3339(),
        created_by: influxion_store::Actor::id_only("t"),
        policy: KeyPolicy::default(),
        purpose: Default::default(),
        certificate_pem: None,
    };
    s.insert_key(key, ev("key.create")).await.unwrap();
    (db, s)
}

pub(crate) async fn request(s: &Store, id: &str, quorum: u32, expires_at: i64) {
    let r = SigningRequest {
        id: id.into(),
        key_id: "k1".into(),
        key_name: "prod".into(),
        algorithm: "ES256".into(),
        digest: "00".repeat(32),
        requester: influxion_store::Actor::id_only("app:t/requester"),
        reason: "release 2.1".into(),
        metadata: serde_json::json!({"file": "fw.bin"}),
        quorum,
        approver_subjects: vec![],
        status: "pending".into(),
        signature: None,
        created_at: influxion_store::now_rfc3339(),
        expires_at,
        finished_at: None,
        approvals: vec![],
    };
    s.create_request(r, ev("signing_request.create"))
        .await
        .unwrap();
}

pub(crate) const FUTURE: i64 = i64::MAX / 2;

pub(crate) fn vote(id: &str, approver: &str, approve: bool, sig: bool) -> Decision {
    Decision {
        request_id: id.into(),
        approver: influxion_store::Actor::id_only(approver),
        approve,
        comment: "ok".into(),
        now: 1000,
        signature: sig.then(|| vec![0xAA; 70]),
        signed_with: Default::default(),
    }
}

pub(crate) async fn signed_records(s: &Store) -> usize {
    s.recent_audit(10_000)
        .await
        .unwrap()
        .iter()
        .filter(|a| a.action == "sign")
        .count()
}

pub(crate) async fn two_of_n_and_three_of_n<B: Backend>() {
    let (_d, s) = store::<B>().await;
    for quorum in [2u32, 3] {
        let id = format!("r{quorum}");
        request(&s, &id, quorum, FUTURE).await;
        for i in 1..quorum {
            let a = s
                .decide(
                    vote(&id, &format!("app:t/a{i}"), true, false),
                    ev("approve"),
                )
                .await
                .unwrap();
            assert_eq!(
                a.outcome,
                Some(RequestOutcome::Approved {
                    approvals: i,
                    quorum
                })
            );
        }
        // The completing vote must carry the signature.
        let e = s
            .decide(vote(&id, "app:t/last", true, false), ev("approve"))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::NeedSignature));
        let a = s
            .decide(vote(&id, "app:t/last", true, true), ev("approve"))
            .await
            .unwrap();
        assert_eq!(a.outcome, Some(RequestOutcome::Signed));
        let r = s.get_request(&id).await.unwrap().unwrap();
        assert_eq!(r.status, "signed");
        assert_eq!(r.approvals_count(), quorum);
        assert!(r.signature.is_some());
    }
    assert_eq!(signed_records(&s).await, 2);
    assert!(matches!(
        s.verify_audit_chain().await.unwrap(),
        influxion_store::ChainReport::Intact { .. }
    ));
}

pub(crate) async fn self_approval_is_refused<B: Backend>() {
    let (_d, s) = store::<B>().await;
    request(&s, "r", 1, FUTURE).await;
    let e = s
        .decide(vote("r", "app:t/requester", true, true), ev("approve"))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::SelfApproval));
    assert_eq!(s.get_request("r").await.unwrap().unwrap().status, "pending");
}

pub(crate) async fn one_approver_counts_once<B: Backend>() {
    let (_d, s) = store::<B>().await;
    request(&s, "r", 2, FUTURE).await;
    s.decide(vote("r", "app:t/a", true, false), ev("approve"))
        .await
        .unwrap();
    let e = s
        .decide(vote("r", "app:t/a", true, true), ev("approve"))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::AlreadyDecided));
    let r = s.get_request("r").await.unwrap().unwrap();
    assert_eq!((r.status.as_str(), r.approvals_count()), ("pending", 1));
}

pub(crate) async fn nothing_after_reject_cancel_or_expiry<B: Backend>() {
    let (_d, s) = store::<B>().await;
    request(&s, "rej", 2, FUTURE).await;
    let a = s
        .decide(vote("rej", "app:t/a", false, false), ev("reject"))
        .await
        .unwrap();
    assert_eq!(a.outcome, Some(RequestOutcome::Rejected));
    assert!(matches!(
        s.decide(vote("rej", "app:t/b", true, true), ev("approve")).await,
        Err(StoreError::RequestClosed { status }) if status == "rejected"
    ));

    request(&s, "can", 1, FUTURE).await;
    assert!(matches!(
        s.cancel_request("can", "app:t/someone-else", 1000, ev("cancel"))
            .await,
        Err(StoreError::NotRequester)
    ));
    let a = s
        .cancel_request("can", "app:t/requester", 1000, ev("cancel"))
        .await
        .unwrap();
    assert_eq!(a.outcome, Some(RequestOutcome::Cancelled));
    assert!(matches!(
        s.decide(vote("can", "app:t/b", true, true), ev("approve")).await,
        Err(StoreError::RequestClosed { status }) if status == "cancelled"
    ));

    request(&s, "old", 1, 999).await;
    let a = s
        .decide(vote("old", "app:t/b", true, true), ev("approve"))
        .await
        .unwrap();
    assert_eq!(a.outcome, Some(RequestOutcome::Expired));
    let r = s.get_request("old").await.unwrap().unwrap();
    assert_eq!(r.status, "expired");
    assert!(r.signature.is_none());
    assert!(matches!(
        s.decide(vote("old", "app:t/c", true, true), ev("approve"))
            .await,
        Err(StoreError::RequestExpired)
    ));
    assert_eq!(signed_records(&s).await, 0);
}

pub(crate) async fn racing_last_votes_sign_exactly_once<B: Backend>() {
    let (_d, s) = store::<B>().await;
    request(&s, "r", 3, FUTURE).await;
    s.decide(vote("r", "app:t/a1", true, false), ev("approve"))
        .await
        .unwrap();
    s.decide(vote("r", "app:t/a2", true, false), ev("approve"))
        .await
        .unwrap();
    // 32 approvers all believe theirs is the last vote, each with a signature.
    let mut tasks = Vec::new();
    for i in 0..32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.decide(
                vote("r", &format!("app:t/racer{i}"), true, true),
                ev("approve"),
            )
            .await
        }));
    }
    let mut signed = 0;
    let mut closed = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(a) if a.outcome == Some(RequestOutcome::Signed) => signed += 1,
            Err(StoreError::RequestClosed { .. }) => closed += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((signed, closed), (1, 31));
    assert_eq!(signed_records(&s).await, 1);
    let r = s.get_request("r").await.unwrap().unwrap();
    assert_eq!((r.status.as_str(), r.approvals_count()), ("signed", 3));
}

pub(crate) async fn disabled_key_never_signs_through_approval<B: Backend>() {
    let (_d, s) = store::<B>().await;
    request(&s, "r", 1, FUTURE).await;
    s.set_key_status(
        &"prod".parse().unwrap(),
        KeyStatus::Disabled,
        ev("key.disable"),
    )
    .await
    .unwrap();
    let e = s
        .decide(vote("r", "app:t/a", true, true), ev("approve"))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::KeyNotActive(_)));
    assert_eq!(s.get_request("r").await.unwrap().unwrap().status, "pending");
}

pub(crate) async fn a_policy_change_decided_against_a_stale_policy_writes_nothing<B: Backend>() {
    let (_d, s) = store::<B>().await;
    let two = KeyPolicy {
        approvals_required: 2,
        ..KeyPolicy::default()
    };
    s.set_key_policy("k1", &KeyPolicy::default(), two.clone(), ev("key.policy"))
        .await
        .unwrap();
    let before = s.recent_audit(1).await.unwrap()[0].seq;
    // Another change, judged "no weaker" against the default, arrives after `two`
    // committed: it would lower the quorum, so it is refused and not recorded.
    let one = KeyPolicy {
        approvals_required: 1,
        ..KeyPolicy::default()
    };
    let r = s
        .set_key_policy("k1", &KeyPolicy::default(), one, ev("key.policy"))
        .await;
    assert!(
        matches!(r, Err(StoreError::PolicyChanged(ref k)) if k == "prod"),
        "{r:?}"
    );
    let key = s.get_key(&"prod".parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(key.policy, two);
    assert_eq!(s.recent_audit(1).await.unwrap()[0].seq, before);
    let r = s
        .set_key_policy("nope", &two, KeyPolicy::default(), ev("key.policy"))
        .await;
    assert!(matches!(r, Err(StoreError::NoSuchKey(_))), "{r:?}");
}

pub(crate) fn change(
    id: &str,
    base: &KeyPolicy,
    policy: KeyPolicy,
    expires_at: i64,
) -> PolicyChange {
    PolicyChange {
        id: id.into(),
        key_id: "k1".into(),
        key_name: "prod".into(),
        requester: influxion_store::Actor::id_only("t/mallory"),
        reason: "test".into(),
        weakens: base.weakenings(&policy),
        base_policy: base.clone(),
        policy,
        quorum: base.approvals_required,
        approver_subjects: base.approver_subjects.clone(),
        status: "pending".into(),
        created_at: influxion_store::now_rfc3339(),
        expires_at,
        finished_at: None,
        approvals: vec![],
    }
}

/// A weakening proposed as a policy change: applied by the vote that completes the
/// quorum of the policy it was proposed against, and only while that policy is in force.
pub(crate) async fn a_policy_change_applies_at_quorum_and_only_over_its_base_policy<B: Backend>() {
    let (_d, s) = store::<B>().await;
    let two = KeyPolicy {
        approvals_required: 2,
        ..KeyPolicy::default()
    };
    s.set_key_policy("k1", &KeyPolicy::default(), two.clone(), ev("key.policy"))
        .await
        .unwrap();
    let off = KeyPolicy::default();
    let longer = KeyPolicy {
        approval_ttl_secs: 7 * 86_400,
        ..two.clone()
    };
    s.create_policy_change(change("c1", &two, off.clone(), FUTURE), ev("create"))
        .await
        .unwrap();
    s.create_policy_change(change("c2", &two, longer, FUTURE), ev("create"))
        .await
        .unwrap();
    s.create_policy_change(change("c3", &two, off.clone(), 10), ev("create"))
        .await
        .unwrap();
    let decide =
        |id: &str, who: &str| s.decide_policy_change(vote(id, who, true, false), ev("approve"));
    assert!(matches!(
        decide("c1", "t/mallory").await,
        Err(StoreError::SelfApproval)
    ));
    assert_eq!(
        decide("c1", "a1").await.unwrap().outcome,
        Some(RequestOutcome::Approved {
            approvals: 1,
            quorum: 2
        })
    );
    assert!(matches!(
        decide("c1", "a1").await,
        Err(StoreError::AlreadyDecided)
    ));
    let key = || async { s.get_key(&"prod".parse().unwrap()).await.unwrap().unwrap() };
    assert_eq!(key().await.policy, two, "one vote changes nothing");
    assert_eq!(
        decide("c1", "a2").await.unwrap().outcome,
        Some(RequestOutcome::Applied)
    );
    assert_eq!(key().await.policy, off);
    let a = &s.recent_audit(1).await.unwrap()[0];
    assert_eq!(
        (a.actor.as_str(), a.action.as_str()),
        ("system:quorum", "key.policy")
    );
    assert_eq!(
        s.get_policy_change("c1").await.unwrap().unwrap().status,
        "applied"
    );
    assert!(matches!(
        decide("c1", "a3").await,
        Err(StoreError::RequestClosed { .. })
    ));
    // c2 was proposed against `two`, no longer in force: it ends without effect.
    decide("c2", "a1").await.unwrap();
    assert_eq!(
        decide("c2", "a2").await.unwrap().outcome,
        Some(RequestOutcome::Superseded)
    );
    assert_eq!(key().await.policy, off);
    assert_eq!(
        s.get_policy_change("c2").await.unwrap().unwrap().status,
        "superseded"
    );
    // Past its expiry a change only expires.
    assert_eq!(
        decide("c3", "a1").await.unwrap().outcome,
        Some(RequestOutcome::Expired)
    );
    assert_eq!(
        s.get_policy_change("c3").await.unwrap().unwrap().status,
        "expired"
    );
    assert_eq!(
        s.list_policy_changes(Some("pending"), 10)
            .await
            .unwrap()
            .len(),
        0
    );
}
