//! The store on PostgreSQL: the conformance suite SQLite runs, on a new database of the
//! test server each (`INFLUXION_TEST_POSTGRES_URL`, started by scripts/test.sh), and
//! what only several processes on one database can show.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance;

struct Postgres;

impl conformance::Backend for Postgres {
    async fn fresh() -> conformance::TestDb {
        let url = influxion_pgtest::fresh_database().await;
        conformance::TestDb::new(url, ())
    }
}

conformance_suite!(Postgres);

// Several keyserver replicas on one database: each `Store` below is opened separately
// (its own writer, pool and change listener), as another process would be. What they
// must not break is enforced by the database, not by any one of them.

use std::time::Duration;

use conformance::approvals::{request, signed_records, store, vote, FUTURE};
use influxion_core::SubjectRules;
use influxion_store::{ChainReport, RequestOutcome, Store, StoreError, SubjectRecord};

async fn replicas(db: &conformance::TestDb, n: usize) -> Vec<Store> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(db.open().await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_extend_one_chain() {
    let db = <Postgres as conformance::Backend>::fresh().await;
    let stores = replicas(&db, 3).await;
    let mut tasks = Vec::new();
    for (r, s) in stores.iter().enumerate() {
        for i in 0..60 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.audit(conformance::ev("test").target(format!("r{r}-{i}")))
                    .await
            }));
        }
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().unwrap());
    }
    seqs.sort_unstable();
    // The first open sealed an empty log; every append got its own place, in order.
    assert_eq!(seqs, (1..=180).collect::<Vec<u64>>());
    for s in &stores {
        match s.verify_audit_chain().await.unwrap() {
            ChainReport::Intact { records, .. } => assert_eq!(records, 180),
            other => panic!("chain not intact: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_last_votes_on_several_replicas_sign_once() {
    let (db, a) = store::<Postgres>().await;
    let others = replicas(&db, 2).await;
    request(&a, "r", 3, FUTURE).await;
    a.decide(
        vote("r", "app:t/a1", true, false),
        conformance::ev("approve"),
    )
    .await
    .unwrap();
    others[0]
        .decide(
            vote("r", "app:t/a2", true, false),
            conformance::ev("approve"),
        )
        .await
        .unwrap();
    let all = [a.clone(), others[0].clone(), others[1].clone()];
    let mut tasks = Vec::new();
    for i in 0..30 {
        let s = all[i % 3].clone();
        tasks.push(tokio::spawn(async move {
            s.decide(
                vote("r", &format!("app:t/racer{i}"), true, true),
                conformance::ev("approve"),
            )
            .await
        }));
    }
    let (mut signed, mut closed) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(x) if x.outcome == Some(RequestOutcome::Signed) => signed += 1,
            Err(StoreError::RequestClosed { .. }) => closed += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((signed, closed), (1, 29));
    assert_eq!(signed_records(&others[1]).await, 1);
    let r = others[1].get_request("r").await.unwrap().unwrap();
    assert_eq!((r.status.as_str(), r.approvals_count()), ("signed", 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_approver_counts_once_across_replicas() {
    let (db, a) = store::<Postgres>().await;
    let b = db.open().await;
    request(&a, "r", 3, FUTURE).await;
    let (x, y) = tokio::join!(
        a.decide(
            vote("r", "app:t/same", true, false),
            conformance::ev("approve")
        ),
        b.decide(
            vote("r", "app:t/same", true, false),
            conformance::ev("approve")
        ),
    );
    let outcomes = [x.is_ok(), y.is_ok()];
    assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 1, "{x:?} {y:?}");
    let refused = if x.is_err() { x } else { y };
    assert!(matches!(refused, Err(StoreError::AlreadyDecided)));
    assert_eq!(
        b.get_request("r").await.unwrap().unwrap().approvals_count(),
        1
    );
}

fn subject(name: &str) -> SubjectRecord {
    SubjectRecord {
        id: format!("id-{name}"),
        name: name.into(),
        description: String::new(),
        rules: SubjectRules {
            object_id: Some(format!("oid-{name}")),
            ..SubjectRules::default()
        },
        grants: vec![],
        created_at: influxion_store::now_rfc3339(),
        created_by: influxion_store::Actor::id_only("t"),
    }
}

/// Waits (bounded) until `s` lists `name`: the change feed's delivery time.
async fn sees(s: &Store, name: &str) -> bool {
    for _ in 0..100 {
        if s.subjects().await.unwrap().iter().any(|x| x.name == name) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_follow_changes_made_by_another_replica() {
    let (db, a) = store::<Postgres>().await;
    let b = db.open().await;
    // b caches the empty list of subjects.
    assert!(b.subjects().await.unwrap().is_empty());
    a.create_subject(subject("ci"), conformance::ev("subject.create"))
        .await
        .unwrap();
    assert!(sees(&b, "ci").await, "replica b never saw the new subject");

    // Disabling a key moves the PKI generation (what issuance caches) everywhere, and
    // replaces the key record b cached.
    let prod = "prod".parse().unwrap();
    let cached = b.key(&prod).await.unwrap().unwrap();
    assert_eq!(cached.status, influxion_core::KeyStatus::Active);
    let before = b.pki_generation();
    a.set_key_status(
        &"prod".parse().unwrap(),
        influxion_core::KeyStatus::Disabled,
        conformance::ev("key.disable"),
    )
    .await
    .unwrap();
    let mut moved = false;
    for _ in 0..100 {
        if b.pki_generation() != before {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        moved,
        "replica b kept its PKI cache after a key was disabled"
    );
    let mut disabled = false;
    for _ in 0..100 {
        if b.key(&prod).await.unwrap().unwrap().status == influxion_core::KeyStatus::Disabled {
            disabled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        disabled,
        "replica b kept its cached record of a disabled key"
    );

    a.delete_subject("id-ci", conformance::ev("subject.delete"))
        .await
        .unwrap();
    let mut gone = false;
    for _ in 0..100 {
        if b.subjects().await.unwrap().is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "replica b kept a deleted subject");
}
