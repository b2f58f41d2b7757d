//! `Store::migrate_to`: a SQLite store holding every kind of row, copied into a new
//! PostgreSQL database (`INFLUXION_TEST_POSTGRES_URL`), read back through the public
//! API; a target that holds anything, and a damaged source, are refused and nothing is
//! written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

// The suite's helpers; its tests run in sqlite.rs and postgres.rs.
#[allow(dead_code)]
mod conformance;

use conformance::approvals::{change, request, vote, FUTURE};
use conformance::pki::{ca, ca_key, cert, root_with_profile, LATER};
use conformance::{ev, key, Backend, TestDb};
use influxion_core::{Grant, KeyPolicy, Role, SubjectRules};
use influxion_store::{Actor, AuditEvent, ChainReport, Outcome, Store, StoreError, SubjectRecord};

struct Sqlite;

impl Backend for Sqlite {
    async fn fresh() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db", dir.path().display());
        TestDb::new(url, dir)
    }
}

async fn pg() -> String {
    influxion_pgtest::fresh_database().await
}

/// More audit records than one page of the copy (1000).
const RECORDS: usize = 1100;

/// A SQLite store with keys, subjects and grants, signing requests in every state with
/// their votes, policy changes with theirs, a root and an intermediate CA with a CRL,
/// a profile, a valid and a revoked certificate, and more than a page of audit records.
async fn populated() -> (TestDb, Store) {
    let (db, s) = conformance::approvals::store::<Sqlite>().await;
    let labelled = Actor {
        name: Some("Ada Admin".into()),
        ..Actor::id_only("t/ada")
    };
    let subject = SubjectRecord {
        id: "sub-1".into(),
        name: "release-team".into(),
        description: "people who ship".into(),
        rules: SubjectRules {
            group_id: Some("g-1".into()),
            ..SubjectRules::default()
        },
        grants: vec![],
        created_at: influxion_store::now_rfc3339(),
        created_by: labelled.clone(),
    };
    s.create_subject(subject, ev("subject.create"))
        .await
        .unwrap();
    for (i, role) in [Role::Approver, Role::Signer].into_iter().enumerate() {
        let g = Grant {
            id: format!("g{i}"),
            role,
            pattern: "prod*".into(),
        };
        s.add_grant("sub-1", g, ev("grant.add")).await.unwrap();
    }

    // Requests: signed (two votes), pending (one), rejected.
    request(&s, "r-signed", 2, FUTURE).await;
    s.decide(vote("r-signed", "app:t/a1", true, false), ev("approve"))
        .await
        .unwrap();
    s.decide(vote("r-signed", "app:t/a2", true, true), ev("approve"))
        .await
        .unwrap();
    request(&s, "r-pending", 2, FUTURE).await;
    let mut labelled_vote = vote("r-pending", "t/ada", true, false);
    labelled_vote.approver = labelled;
    s.decide(labelled_vote, ev("approve")).await.unwrap();
    request(&s, "r-rejected", 1, FUTURE).await;
    s.decide(vote("r-rejected", "app:t/a1", false, false), ev("reject"))
        .await
        .unwrap();

    // A policy change with a vote.
    let two = KeyPolicy {
        approvals_required: 2,
        ..KeyPolicy::default()
    };
    s.set_key_policy("k1", &KeyPolicy::default(), two.clone(), ev("key.policy"))
        .await
        .unwrap();
    s.create_policy_change(
        change("c1", &two, KeyPolicy::default(), FUTURE),
        ev("create"),
    )
    .await
    .unwrap();
    s.decide_policy_change(vote("c1", "a1", true, false), ev("approve"))
        .await
        .unwrap();

    // The device CA: "int" sorts before its parent "root".
    root_with_profile(&s).await;
    s.create_ca(ca_key("k-int"), ca("int", "k-int", Some("root")), ev("ca"))
        .await
        .unwrap();
    s.activate_ca("int", vec![0x30, 1], "PEM".into(), LATER.into(), ev("ca"))
        .await
        .unwrap();
    let mut generated = cert("01", "d1");
    generated.key_generated = true;
    generated.request_key = Some("rk-1".into());
    s.record_certificate(generated, "k-root", 1, ev("issue"))
        .await
        .unwrap();
    s.record_certificate(cert("02", "d2"), "k-root", 1, ev("issue"))
        .await
        .unwrap();
    s.revoke_certificate("02", LATER, "keyCompromise", ev("revoke"))
        .await
        .unwrap();
    s.store_crl("root", 1, vec![0x30, 0x82, 7], LATER.into(), ev("crl"))
        .await
        .unwrap();

    let tasks: Vec<_> = (0..RECORDS)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.audit(
                    AuditEvent::new(Actor::id_only("tester"), "test", Outcome::Ok)
                        .target(format!("t{i}"))
                        .detail(serde_json::json!({"i": i, "text": "ünïcode ✓"})),
                )
                .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    (db, s)
}

fn intact(r: ChainReport) -> (u64, String) {
    match r {
        ChainReport::Intact { records, head, .. } => (records, head),
        other => panic!("chain not intact: {other:?}"),
    }
}

fn texts<T: std::fmt::Debug>(what: &str, items: &[T]) -> Vec<String> {
    items.iter().map(|i| format!("{what}: {i:?}")).collect()
}

/// What the public API shows of a store, as text, to compare two stores field by field.
async fn everything(s: &Store) -> Vec<String> {
    let mut requests = s.list_requests(None, 100).await.unwrap();
    requests.sort_by(|a, b| a.id.cmp(&b.id));
    for r in &mut requests {
        r.approvals
            .sort_by(|a, b| a.approver.id.cmp(&b.approver.id));
    }
    [
        texts("key", &s.list_keys().await.unwrap()),
        texts("subject", &s.subjects().await.unwrap()),
        texts("request", &requests),
        texts(
            "policy change",
            &s.list_policy_changes(None, 100).await.unwrap(),
        ),
        texts("ca", &s.list_cas().await.unwrap()),
        texts("profile", &s.list_profiles().await.unwrap()),
        texts(
            "certificate",
            &s.search_certificates(&Default::default()).await.unwrap(),
        ),
        texts("revoked", &s.revoked_for_ca("root").await.unwrap()),
        texts("audit", &s.recent_audit(10_000).await.unwrap()),
    ]
    .concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_is_copied_to_postgres_and_the_chain_continues() {
    let (src_db, src) = populated().await;
    let (records, head) = intact(src.verify_audit_chain().await.unwrap());
    assert!(records > RECORDS as u64, "{records}");
    let target = pg().await;

    // The source is still open (a live file): the copy reads one snapshot of it.
    let report = Store::migrate_to(&src_db.url, &target, &key(), None, None)
        .await
        .unwrap();
    assert_eq!(
        (report.records, report.head_seq, report.head_hash.as_str()),
        (records, records, head.as_str())
    );
    assert_eq!(report.source_newer_records, 0);
    let rows = |t: &str| {
        report
            .tables
            .iter()
            .find(|r| r.table == t)
            .map(|r| r.rows)
            .unwrap()
    };
    assert_eq!(rows("keys"), 3);
    assert_eq!(rows("subjects"), 1);
    assert_eq!(rows("grants"), 2);
    assert_eq!(rows("signing_requests"), 3);
    assert_eq!(rows("approvals"), 4);
    assert_eq!(rows("policy_changes"), 1);
    assert_eq!(rows("policy_change_approvals"), 1);
    assert_eq!(rows("cas"), 2);
    assert_eq!(rows("profiles"), 1);
    assert_eq!(rows("certificates"), 2);
    assert_eq!(rows("audit_log"), records);
    assert!(report.rows_compared >= 20, "{}", report.rows_compared);

    let dst = Store::open(&target, key()).await.unwrap();
    assert_eq!(everything(&dst).await, everything(&src).await);
    assert_eq!(
        intact(dst.verify_audit_chain().await.unwrap()),
        (records, head)
    );

    // Spelled out, what the comparison above covers.
    let signed = dst.get_request("r-signed").await.unwrap().unwrap();
    assert_eq!(signed.status, "signed");
    assert_eq!(signed.signature, Some(vec![0xAA; 70]));
    assert_eq!(signed.approvals_count(), 2);
    let pending = dst.get_request("r-pending").await.unwrap().unwrap();
    assert_eq!(
        pending.approvals[0].approver.name.as_deref(),
        Some("Ada Admin")
    );
    let revoked = dst.get_certificate("02").await.unwrap().unwrap();
    assert_eq!(
        (
            revoked.status.as_str(),
            revoked.revocation_reason.as_deref()
        ),
        ("revoked", Some("keyCompromise"))
    );
    let generated = dst.get_certificate("01").await.unwrap().unwrap();
    assert!(generated.key_generated);
    assert!(dst
        .certificate_by_request_key("dev", "rk-1")
        .await
        .unwrap()
        .is_some());
    let root = dst.get_ca("root").await.unwrap().unwrap();
    assert_eq!(
        (root.crl_number, root.crl.as_deref()),
        (1, Some(&[0x30, 0x82, 7][..]))
    );
    let int = dst.get_ca("int").await.unwrap().unwrap();
    assert_eq!(int.parent.as_deref(), Some("root"));
    let subject = dst.get_subject("release-team").await.unwrap().unwrap();
    assert_eq!(subject.grants.len(), 2);
    assert_eq!(
        dst.get_policy_change("c1")
            .await
            .unwrap()
            .unwrap()
            .approvals
            .len(),
        1
    );

    // The keyserver carries on where the SQLite one stopped.
    let seq = dst.audit(ev("after.migration")).await.unwrap();
    assert_eq!(seq, records + 1);
    dst.decide(vote("r-pending", "app:t/a9", true, true), ev("approve"))
        .await
        .unwrap();
    assert_eq!(
        dst.get_request("r-pending").await.unwrap().unwrap().status,
        "signed"
    );
    let last = u64::try_from(dst.recent_audit(1).await.unwrap()[0].seq).unwrap();
    assert!(last > seq + 1, "{last}");
    assert_eq!(intact(dst.verify_audit_chain().await.unwrap()).0, last);
    assert!(matches!(
        Store::verify_database(&target, Some(&key()), None)
            .await
            .unwrap(),
        ChainReport::Intact { .. }
    ));

    // A second migration into it is refused and changes nothing.
    let before = everything(&dst).await;
    let r = Store::migrate_to(&src_db.url, &target, &key(), None, None).await;
    assert!(matches!(r, Err(StoreError::TargetNotEmpty { .. })), "{r:?}");
    assert_eq!(everything(&dst).await, before);
}

#[tokio::test]
async fn a_target_with_any_row_is_refused_and_keeps_what_it_has() {
    let (src_db, _src) = store_with_records(3).await;
    // A keyserver already ran on it and wrote one audit record.
    let target = pg().await;
    let t = Store::open(&target, key()).await.unwrap();
    t.audit(ev("started")).await.unwrap();
    let r = Store::migrate_to(&src_db.url, &target, &key(), None, None).await;
    assert!(
        matches!(r, Err(StoreError::TargetNotEmpty { ref table }) if table == "audit_log"),
        "{r:?}"
    );
    assert_eq!(intact(t.verify_audit_chain().await.unwrap()).0, 1);
    assert!(t.list_keys().await.unwrap().is_empty());
}

async fn store_with_records(n: usize) -> (TestDb, Store) {
    conformance::store_with::<Sqlite>(n).await
}

#[tokio::test]
async fn a_damaged_source_or_another_key_is_refused_and_nothing_is_written() {
    let (src_db, src) = store_with_records(5).await;
    let target = pg().await;
    let other = influxion_store::AuditKey::new(zeroize::Zeroizing::new([8u8; 32]));
    let r = Store::migrate_to(&src_db.url, &target, &other, None, None).await;
    assert!(matches!(r, Err(StoreError::MigrationRefused(_))), "{r:?}");

    let mut rec = src.tamper().audit_row(3).await.unwrap().unwrap();
    rec.detail = r#"{"altered":true}"#.into();
    src.tamper().put_audit_row(&rec).await.unwrap();
    let r = Store::migrate_to(&src_db.url, &target, &key(), None, None).await;
    match r {
        Err(StoreError::MigrationRefused(why)) => assert!(why.contains("record 3"), "{why}"),
        other => panic!("{other:?}"),
    }
    // The target was not touched: a keyserver starts on it as on a new database.
    let t = Store::open(&target, key()).await.unwrap();
    assert_eq!(intact(t.verify_audit_chain().await.unwrap()).0, 0);
    assert!(t.list_keys().await.unwrap().is_empty());
    t.audit(ev("first")).await.unwrap();
    assert_eq!(intact(t.verify_audit_chain().await.unwrap()).0, 1);
}

#[tokio::test]
async fn a_copy_that_fails_halfway_writes_nothing() {
    let (src_db, src) = store_with_records(2).await;
    conformance::pki::root_with_profile(&src).await;
    // Text PostgreSQL cannot hold (a NUL character), in a table copied after the keys.
    let mut c = cert("01", "d1");
    c.subject = "CN=d1\u{0}".into();
    src.record_certificate(c, "k-root", 1, ev("issue"))
        .await
        .unwrap();
    let target = pg().await;
    let r = Store::migrate_to(&src_db.url, &target, &key(), None, None).await;
    assert!(matches!(r, Err(StoreError::Db(_))), "{r:?}");
    // Not even the keys copied before the failure are there; the log is empty, sealed.
    let t = Store::open(&target, key()).await.unwrap();
    assert!(t.list_keys().await.unwrap().is_empty());
    assert!(t.list_cas().await.unwrap().is_empty());
    assert_eq!(intact(t.verify_audit_chain().await.unwrap()).0, 0);
    t.audit(ev("first")).await.unwrap();
    assert_eq!(intact(t.verify_audit_chain().await.unwrap()).0, 1);
}
