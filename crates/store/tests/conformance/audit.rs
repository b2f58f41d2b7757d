//! The audit chain: appends form one chain, and every kind of damage is pinpointed.

use influxion_core::{KeyStatus, KeyType};
use influxion_store::audit::GENESIS;
use influxion_store::test_helpers::HeadRow;
use influxion_store::{AuditEvent, AuditKey, ChainReport, KeyRecord, Outcome, Store, StoreError};

use super::{broken, ev, key, store_with, Backend};

async fn head(s: &Store) -> HeadRow {
    s.tamper().audit_head().await.unwrap().unwrap()
}

async fn set_actor(s: &Store, seq: i64, actor: &str) {
    let mut r = s.tamper().audit_row(seq).await.unwrap().unwrap();
    r.actor = actor.into();
    s.tamper().put_audit_row(&r).await.unwrap();
}

pub(crate) async fn intact_chain_verifies<B: Backend>() {
    let (_d, s) = store_with::<B>(5).await;
    assert!(matches!(
        s.verify_audit_chain().await.unwrap(),
        ChainReport::Intact { records: 5, .. }
    ));
}

pub(crate) async fn concurrent_appends_form_one_chain<B: Backend>() {
    let (_d, s) = store_with::<B>(0).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.audit(
                AuditEvent::new(influxion_store::Actor::id_only("t"), "x", Outcome::Ok)
                    .target(i.to_string()),
            )
            .await
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    assert!(matches!(
        s.verify_audit_chain().await.unwrap(),
        ChainReport::Intact { records: 200, .. }
    ));
}

pub(crate) async fn altered_record_is_pinpointed<B: Backend>() {
    let (_d, s) = store_with::<B>(5).await;
    set_actor(&s, 3, "mallory").await;
    match s.verify_audit_chain().await.unwrap() {
        ChainReport::Broken { seq, .. } => assert_eq!(seq, 3),
        other => panic!("{other:?}"),
    }
}

pub(crate) async fn deleted_record_is_pinpointed<B: Backend>() {
    let (_d, s) = store_with::<B>(5).await;
    s.tamper().delete_audit_rows(2..=2).await.unwrap();
    match s.verify_audit_chain().await.unwrap() {
        ChainReport::Broken { seq, reason } => {
            assert_eq!(seq, 2);
            assert!(reason.contains("missing"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

pub(crate) fn sign_event() -> AuditEvent {
    AuditEvent::new(influxion_store::Actor::id_only("t"), "sign", Outcome::Ok)
}

/// A key `fw` (id `k1`), active and needing no approval, in a fresh store.
pub(crate) async fn store_with_a_key<B: Backend>() -> (super::TestDb, Store, KeyRecord) {
    let (d, s) = store_with::<B>(0).await;
    let key = KeyRecord {
        id: "k1".into(),
        name: "fw".parse().unwrap(),
        key_type: KeyType::EcP256,
        backend: "software".into(),
        status: KeyStatus::Active,
        public_key: vec![1],
        handle: vec![2],
        created_at: influxion_store::now_rfc3339(),
        created_by: influxion_store::Actor::id_only("t"),
        policy: Default::default(),
        purpose: Default::default(),
        certificate_pem: None,
    };
    s.insert_key(key.clone(), ev("key.create")).await.unwrap();
    (d, s, key)
}

pub(crate) async fn key_use_of_a_disabled_key_writes_nothing<B: Backend>() {
    let (_d, s, key) = store_with_a_key::<B>().await;
    assert_eq!(s.audit_key_use(&key, sign_event()).await.unwrap(), 2);
    let name = "fw".parse().unwrap();
    s.set_key_status(&name, KeyStatus::Disabled, ev("key.disable"))
        .await
        .unwrap();
    let r = s.audit_key_use(&key, sign_event()).await;
    assert!(matches!(r, Err(StoreError::KeyNotActive(_))), "{r:?}");
    assert_eq!(s.recent_audit(1).await.unwrap()[0].action, "key.disable");
}

/// A signature made from a record read before a rotation or before the key came to
/// need approval (a stale cache on another replica) is refused when it would commit.
pub(crate) async fn key_use_of_a_changed_key_writes_nothing<B: Backend>() {
    let (_d, s, key) = store_with_a_key::<B>().await;
    let rebind = influxion_store::Rebind {
        key_id: key.id.clone(),
        expected_handle: key.handle.clone(),
        handle: vec![3],
        public_key: vec![4],
        certificate_pem: None,
    };
    s.rebind_key(rebind, ev("key.rotate")).await.unwrap();
    let r = s.audit_key_use(&key, sign_event()).await;
    assert!(matches!(r, Err(StoreError::KeyChanged(_))), "{r:?}");
    let rotated = s.key(&key.name).await.unwrap().unwrap();
    assert_eq!(rotated.handle, [3]);
    s.audit_key_use(&rotated, sign_event()).await.unwrap();

    let policy = influxion_store::KeyPolicy {
        approvals_required: 1,
        ..Default::default()
    };
    s.set_key_policy(&key.id, &rotated.policy, policy, ev("key.policy"))
        .await
        .unwrap();
    let r = s.audit_key_use(&rotated, sign_event()).await;
    assert!(matches!(r, Err(StoreError::KeyChanged(_))), "{r:?}");
    assert_eq!(s.recent_audit(1).await.unwrap()[0].action, "key.policy");
}

/// Key uses queued behind a `key.disable` (one writer batch, most likely, reading the
/// key's row once) are refused, and those ahead of it keep their records.
pub(crate) async fn key_uses_queued_behind_a_disable_are_refused<B: Backend>() {
    let (_d, s, key) = store_with_a_key::<B>().await;
    let name = key.name.clone();
    // join_all polls in order, and each submission is queued on its first poll: the
    // writer sees 100 uses, the disable, 100 uses, in that order.
    let uses = |n| {
        (0..n)
            .map(|_| {
                let (s, key) = (s.clone(), key.clone());
                async move { s.audit_key_use(&key, sign_event()).await }
            })
            .collect::<Vec<_>>()
    };
    let disable = async {
        s.set_key_status(&name, KeyStatus::Disabled, ev("key.disable"))
            .await
    };
    let (before, disabled, after) = futures::join!(
        futures::future::join_all(uses(100)),
        disable,
        futures::future::join_all(uses(100))
    );
    let disabled = disabled.unwrap();
    for r in before {
        assert!(r.unwrap() < disabled);
    }
    for r in after {
        assert!(matches!(r, Err(StoreError::KeyNotActive(_))), "{r:?}");
    }
    assert_eq!(s.recent_audit(1).await.unwrap()[0].action, "key.disable");
    assert!(matches!(
        s.verify_audit_chain().await.unwrap(),
        ChainReport::Intact { records: 102, .. }
    ));
}

/// Key records are cached; every change through the store is seen by the next read.
pub(crate) async fn the_key_cache_sees_every_change<B: Backend>() {
    let (_d, s, key) = store_with_a_key::<B>().await;
    let name = key.name.clone();
    let first = s.key(&name).await.unwrap().unwrap();
    assert_eq!(first.status, KeyStatus::Active);
    // (Whether the second read came from the cache is not observable here: on
    // PostgreSQL the store's own change notification may arrive between the reads.)
    let again = s.key(&name).await.unwrap().unwrap();
    assert_eq!(again.handle, first.handle);
    s.set_key_status(&name, KeyStatus::Disabled, ev("key.disable"))
        .await
        .unwrap();
    assert_eq!(
        s.key(&name).await.unwrap().unwrap().status,
        KeyStatus::Disabled
    );
    s.set_key_status(&name, KeyStatus::Active, ev("key.enable"))
        .await
        .unwrap();
    let policy = influxion_store::KeyPolicy {
        approvals_required: 2,
        ..Default::default()
    };
    s.set_key_policy(&key.id, &key.policy, policy, ev("key.policy"))
        .await
        .unwrap();
    let now = s.get_key(&name).await.unwrap().unwrap();
    assert_eq!(
        (now.status, now.policy.approvals_required),
        (KeyStatus::Active, 2)
    );
    assert!(s.key(&"nope".parse().unwrap()).await.unwrap().is_none());
}

pub(crate) async fn writes_stop_after_the_tail_was_deleted<B: Backend>() {
    let (_d, s) = store_with::<B>(3).await;
    s.tamper().delete_audit_rows(3..=3).await.unwrap();
    let r = s
        .audit(AuditEvent::new(
            influxion_store::Actor::id_only("t"),
            "x",
            Outcome::Ok,
        ))
        .await;
    assert!(r.is_err(), "{r:?}");
    match s.verify_audit_chain().await.unwrap() {
        ChainReport::Broken { seq, .. } => assert_eq!(seq, 3),
        other => panic!("{other:?}"),
    }
}

pub(crate) async fn deleted_tail_is_detected<B: Backend>() {
    let (_d, s) = store_with::<B>(5).await;
    s.tamper().delete_audit_rows(5..=5).await.unwrap();
    match s.verify_audit_chain().await.unwrap() {
        ChainReport::Broken { seq, .. } => assert_eq!(seq, 5),
        other => panic!("{other:?}"),
    }
}

pub(crate) async fn fresh_empty_log_is_intact_and_keyed<B: Backend>() {
    let (_d, s) = store_with::<B>(0).await;
    assert_eq!(
        s.verify_audit_chain().await.unwrap(),
        ChainReport::Intact {
            records: 0,
            head: GENESIS.into(),
            unkeyed: 0,
            keyed: true
        }
    );
}

pub(crate) async fn truncation_with_a_rewritten_head_is_broken<B: Backend>() {
    let (_d, s) = store_with::<B>(5).await;
    s.tamper().truncate_audit(3).await.unwrap();
    let (seq, reason) = broken(s.verify_audit_chain().await.unwrap());
    assert_eq!(seq, 4);
    assert!(reason.contains("head's MAC does not verify"), "{reason}");
    // A record's MAC is no head MAC: the labels differ.
    let record_mac = s.tamper().audit_row(3).await.unwrap().unwrap().mac;
    let h = HeadRow {
        mac: record_mac,
        ..head(&s).await
    };
    s.tamper().put_audit_head(Some(&h)).await.unwrap();
    let (seq, reason) = broken(s.verify_audit_chain().await.unwrap());
    assert_eq!((seq, reason.contains("MAC")), (4, true), "{reason}");
    // Nor can the writer be used to bless the truncation with a fresh seal.
    let r = s
        .audit(AuditEvent::new(
            influxion_store::Actor::id_only("t"),
            "x",
            Outcome::Ok,
        ))
        .await;
    assert!(matches!(r, Err(StoreError::ChainHeadMismatch(_))), "{r:?}");
    let r = s
        .reseal_audit(
            1,
            AuditEvent::new(
                influxion_store::Actor::id_only("t"),
                "audit.reseal",
                Outcome::Ok,
            ),
        )
        .await;
    assert!(matches!(r, Err(StoreError::Reseal(_))), "{r:?}");
}

pub(crate) async fn rewritten_record_with_recomputed_hash_fails_its_mac<B: Backend>() {
    let (_d, s) = store_with::<B>(5).await;
    let r = s.recent_audit(1).await.unwrap().remove(0);
    let mut forged = influxion_store::AuditRecord {
        actor: "mallory".into(),
        ..r
    };
    forged.hash = forged.computed_hash();
    s.tamper().put_audit_row(&forged).await.unwrap();
    let h = HeadRow {
        hash: forged.hash.clone(),
        ..head(&s).await
    };
    s.tamper().put_audit_head(Some(&h)).await.unwrap();
    let (seq, reason) = broken(s.verify_audit_chain().await.unwrap());
    assert_eq!(seq, 5);
    assert!(reason.contains("record's MAC does not verify"), "{reason}");
}

pub(crate) async fn missing_head_after_records_existed_is_broken<B: Backend>() {
    let (_d, s) = store_with::<B>(3).await;
    s.tamper().delete_audit_rows(1..=i64::MAX).await.unwrap();
    s.tamper().put_audit_head(None).await.unwrap();
    let (seq, reason) = broken(s.verify_audit_chain().await.unwrap());
    assert_eq!(seq, 1);
    assert!(reason.contains("head is missing"), "{reason}");
    let r = s
        .audit(AuditEvent::new(
            influxion_store::Actor::id_only("t"),
            "x",
            Outcome::Ok,
        ))
        .await;
    assert!(matches!(r, Err(StoreError::ChainHeadMismatch(_))), "{r:?}");
    // An empty log loses its sealed genesis head the same way.
    let (_d, s) = store_with::<B>(0).await;
    s.tamper().put_audit_head(None).await.unwrap();
    assert_eq!(broken(s.verify_audit_chain().await.unwrap()).0, 1);
    // And an unsealed head is not accepted in place of a sealed one.
    let (_d, s) = store_with::<B>(2).await;
    let h = HeadRow {
        mac: None,
        ..head(&s).await
    };
    s.tamper().put_audit_head(Some(&h)).await.unwrap();
    let (seq, reason) = broken(s.verify_audit_chain().await.unwrap());
    assert_eq!(seq, 3);
    assert!(reason.contains("not sealed"), "{reason}");
}

pub(crate) async fn verifying_without_the_key_checks_links_only<B: Backend>() {
    let db = B::fresh().await;
    let s = db.open().await;
    s.audit(AuditEvent::new(
        influxion_store::Actor::id_only("t"),
        "x",
        Outcome::Ok,
    ))
    .await
    .unwrap();
    let other = AuditKey::new(zeroize::Zeroizing::new([8u8; 32]));
    let (seq, reason) = broken(
        Store::verify_database(&db.url, Some(&other), None)
            .await
            .unwrap(),
    );
    assert_eq!(seq, 1);
    assert!(reason.contains("MAC"), "{reason}");
    assert!(matches!(
        Store::verify_database(&db.url, None, None).await.unwrap(),
        ChainReport::Intact {
            records: 1,
            keyed: false,
            ..
        }
    ));
    assert!(matches!(
        Store::verify_database(&db.url, Some(&key()), None)
            .await
            .unwrap(),
        ChainReport::Intact {
            records: 1,
            keyed: true,
            ..
        }
    ));
}

/// Records without a MAC of their own before keyed ones (as a log keyed on upgrade has)
/// verify through the links, and a re-seal gives them one, audited.
pub(crate) async fn stripped_macs_verify_as_unkeyed_and_reseal_restores_them<B: Backend>() {
    let (_d, s) = store_with::<B>(4).await;
    for seq in 1..=3 {
        let mut r = s.tamper().audit_row(seq).await.unwrap().unwrap();
        r.mac = None;
        s.tamper().put_audit_row(&r).await.unwrap();
    }
    assert!(matches!(
        s.verify_audit_chain().await.unwrap(),
        ChainReport::Intact {
            records: 4,
            unkeyed: 3,
            keyed: true,
            ..
        }
    ));
    let r = s
        .reseal_audit(2, ev("audit.reseal").target("audit"))
        .await
        .unwrap();
    assert_eq!((r.sealed, r.seq, r.head_was_unsealed), (2, 5, false));
    let rec = s.recent_audit(1).await.unwrap().remove(0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&rec.detail).unwrap(),
        serde_json::json!({"from": 2, "sealed": 2, "through": 4, "head_was_unsealed": false})
    );
    assert!(matches!(
        s.verify_audit_chain().await.unwrap(),
        ChainReport::Intact {
            records: 5,
            unkeyed: 1,
            keyed: true,
            ..
        }
    ));
    // A MAC-less record after keyed ones was inserted or stripped without the key.
    let mut r = s.tamper().audit_row(4).await.unwrap().unwrap();
    r.mac = None;
    s.tamper().put_audit_row(&r).await.unwrap();
    let (seq, reason) = broken(s.verify_audit_chain().await.unwrap());
    assert_eq!(seq, 4);
    assert!(reason.contains("no MAC"), "{reason}");
}

pub(crate) async fn incremental_verification_checks_only_new_records<B: Backend>() {
    let (_d, s) = store_with::<B>(10).await;
    assert!(matches!(
        s.verify_audit_chain_incremental().await.unwrap(),
        ChainReport::Intact { records: 10, .. }
    ));
    assert_eq!(s.audit_records_checked(), 10);
    for _ in 0..3 {
        s.audit(AuditEvent::new(
            influxion_store::Actor::id_only("t"),
            "x",
            Outcome::Ok,
        ))
        .await
        .unwrap();
    }
    assert!(matches!(
        s.verify_audit_chain_incremental().await.unwrap(),
        ChainReport::Intact { records: 13, .. }
    ));
    assert_eq!(s.audit_records_checked(), 13);
    // Truncating behind the checkpoint is still noticed (the checkpoint record is gone).
    s.tamper().truncate_audit(11).await.unwrap();
    let (seq, reason) = broken(s.verify_audit_chain_incremental().await.unwrap());
    assert_eq!(seq, 13);
    assert!(reason.contains("verified earlier"), "{reason}");
}
