//! The store on SQLite: the conformance suite, and what only SQLite has (its
//! migrations, and databases written by versions before the keyed audit log).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance;

use influxion_store::{AuditEvent, AuditKey, ChainReport, Outcome, Store, StoreError};

struct Sqlite;

impl conformance::Backend for Sqlite {
    async fn fresh() -> conformance::TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db", dir.path().display());
        conformance::TestDb::new(url, dir)
    }
}

conformance_suite!(Sqlite);

fn key() -> AuditKey {
    conformance::key()
}

fn url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}/t.db", dir.path().display())
}

async fn exec(url: &str, sqls: &[&str]) {
    let pool = sqlx::SqlitePool::connect(url).await.unwrap();
    for sql in sqls {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    pool.close().await;
}

fn broken(r: ChainReport) -> (i64, String) {
    conformance::broken(r)
}

/// Rewrite a keyed store into the schema before migration 0007, as a database
/// written by an older version looks.
async fn downgrade(s: Store, url: &str) {
    drop(s);
    exec(
        url,
        &[
            "ALTER TABLE audit_log DROP COLUMN mac",
            "ALTER TABLE audit_head DROP COLUMN mac",
            "DELETE FROM _sqlx_migrations WHERE version = 7",
        ],
    )
    .await;
}

#[tokio::test]
async fn unkeyed_records_verify_and_reseal_keys_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&url(&dir), key()).await.unwrap();
    for i in 0..3 {
        s.audit(
            AuditEvent::new(influxion_store::Actor::id_only("t"), "x", Outcome::Ok)
                .target(i.to_string()),
        )
        .await
        .unwrap();
    }
    downgrade(s, &url(&dir)).await;
    // An old file verifies as before, and says it is not keyed.
    assert!(matches!(
        Store::verify_database(&url(&dir), Some(&key()), None)
            .await
            .unwrap(),
        ChainReport::Intact {
            records: 3,
            unkeyed: 3,
            keyed: false,
            ..
        }
    ));

    // Opening it keys it: the head is sealed and the moment recorded.
    let s = Store::open(&url(&dir), key()).await.unwrap();
    let rec = s.recent_audit(1).await.unwrap().remove(0);
    assert_eq!((rec.seq, rec.action.as_str()), (4, "audit.keyed"));
    assert_eq!(rec.detail, r#"{"unkeyed_records":3}"#);
    assert!(matches!(
        s.verify_audit_chain().await.unwrap(),
        ChainReport::Intact {
            records: 4,
            unkeyed: 3,
            keyed: true,
            ..
        }
    ));
    // The old records are covered through the links: truncating them still fails.
    exec(&url(&dir), &["DELETE FROM audit_log WHERE seq = 3"]).await;
    assert_eq!(broken(s.verify_audit_chain().await.unwrap()).0, 3);
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

#[tokio::test]
async fn reseal_from_a_sequence_number_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&url(&dir), key()).await.unwrap();
    for _ in 0..3 {
        s.audit(AuditEvent::new(
            influxion_store::Actor::id_only("t"),
            "x",
            Outcome::Ok,
        ))
        .await
        .unwrap();
    }
    downgrade(s, &url(&dir)).await;
    let s = Store::open(&url(&dir), key()).await.unwrap();
    let r = s
        .reseal_audit(
            2,
            AuditEvent::new(
                influxion_store::Actor::id_only("operator"),
                "audit.reseal",
                Outcome::Ok,
            )
            .target("audit"),
        )
        .await
        .unwrap();
    assert_eq!((r.sealed, r.seq, r.head_was_unsealed), (2, 5, false));
    let rec = s.recent_audit(1).await.unwrap().remove(0);
    assert_eq!(
        (rec.actor.as_str(), rec.action.as_str()),
        ("operator", "audit.reseal")
    );
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
    // Now a rewritten record 2 is pinpointed by its own MAC.
    exec(
        &url(&dir),
        &["UPDATE audit_log SET mac = (SELECT mac FROM audit_log WHERE seq = 3) WHERE seq = 2"],
    )
    .await;
    let (seq, reason) = broken(s.verify_audit_chain().await.unwrap());
    assert_eq!(seq, 2);
    assert!(reason.contains("MAC"), "{reason}");
}

/// Subjects made before `caller` existed: those with only app_id/app_role become
/// `app`, those naming a person or group keep matching any caller.
#[tokio::test]
async fn migration_gives_app_only_subjects_the_app_caller_rule() {
    use influxion_core::CallerRule;
    use sqlx::sqlite::SqliteConnectOptions;
    use std::str::FromStr;

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let opts = SqliteConnectOptions::from_str(&url)
        .unwrap()
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    // The schema as it was before the caller rule.
    let mut old = sqlx::migrate!("./migrations/sqlite");
    old.migrations = old
        .migrations
        .iter()
        .filter(|m| m.version <= 4)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    old.run(&pool).await.unwrap();
    let rows = [
        ("ci", Some("ci-app"), None, None, None),
        ("pipelines", None, Some("Influxion.Sign"), None, None),
        ("person", Some("portal"), None, Some("oid-1"), None),
        ("team", None, Some("Influxion.Sign"), None, Some("g-1")),
    ];
    for (name, app_id, app_role, object_id, group_id) in rows {
        sqlx::query(
            "INSERT INTO subjects (id, name, tenant_id, app_id, app_role, object_id, group_id, created_at, created_by)
             VALUES (?, ?, 't', ?, ?, ?, ?, '2026-01-01T00:00:00Z', 'test')",
        )
        .bind(format!("id-{name}"))
        .bind(name)
        .bind(app_id)
        .bind(app_role)
        .bind(object_id)
        .bind(group_id)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;

    let key = influxion_store::AuditKey::new(zeroize::Zeroizing::new([1u8; 32]));
    let s = Store::open(&url, key).await.unwrap();
    let got: Vec<(String, Option<CallerRule>)> = s
        .subjects()
        .await
        .unwrap()
        .iter()
        .map(|x| (x.name.clone(), x.rules.caller))
        .collect();
    assert_eq!(
        got,
        vec![
            ("ci".to_owned(), Some(CallerRule::App)),
            ("person".to_owned(), Some(CallerRule::Any)),
            ("pipelines".to_owned(), Some(CallerRule::App)),
            ("team".to_owned(), Some(CallerRule::Any)),
        ]
    );
}

/// A database from before labels (migration 0008): its records keep their hashes and
/// show the identity; requesters' old display names become their labels; the file
/// verifies read-only as it is, before and after the upgrade.
#[tokio::test]
async fn databases_from_before_labels_upgrade_and_still_verify() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&url(&dir), key()).await.unwrap();
    for i in 0..3 {
        s.audit(
            AuditEvent::new(
                influxion_store::Actor::id_only("user:t/o1"),
                "x",
                Outcome::Ok,
            )
            .target(i.to_string()),
        )
        .await
        .unwrap();
    }
    drop(s);
    exec(
        &url(&dir),
        &[
            "INSERT INTO keys (id, name, key_type, backend, status, public_key, handle, created_at, created_by)
             SELECT 'k1', 'prod', 'ec-p256', 'software', 'active', x'00', x'00', '2026-01-01T00:00:00Z', 't'
             WHERE NOT EXISTS (SELECT 1 FROM keys WHERE id = 'k1')",
            "INSERT INTO signing_requests (id, key_id, key_name, algorithm, digest, requester, requester_name,
                 reason, metadata, quorum, approver_subjects, status, created_at, expires_at)
             VALUES ('r1', 'k1', 'prod', 'ES256', 'aa', 't/o1', 'Old Name', 'why', '{}', 1, '[]',
                 'pending', '2026-01-01T00:00:00Z', 9999999999)",
            "DROP INDEX audit_log_action",
            "DROP INDEX audit_log_at",
            "ALTER TABLE audit_log DROP COLUMN actor_label",
            "ALTER TABLE signing_requests DROP COLUMN requester_label",
            "ALTER TABLE policy_changes DROP COLUMN requester_label",
            "ALTER TABLE approvals DROP COLUMN approver_label",
            "ALTER TABLE policy_change_approvals DROP COLUMN approver_label",
            "ALTER TABLE certificates DROP COLUMN requested_by_label",
            "ALTER TABLE keys DROP COLUMN created_by_label",
            "ALTER TABLE subjects DROP COLUMN created_by_label",
            "ALTER TABLE cas DROP COLUMN created_by_label",
            "DELETE FROM _sqlx_migrations WHERE version = 8",
        ],
    )
    .await;
    // Read-only, unmigrated: the old file verifies.
    assert!(matches!(
        Store::verify_database(&url(&dir), Some(&key()), None)
            .await
            .unwrap(),
        ChainReport::Intact { records: 3, .. }
    ));
    let s = Store::open(&url(&dir), key()).await.unwrap();
    assert!(matches!(
        s.verify_audit_chain().await.unwrap(),
        ChainReport::Intact { records: 3, .. }
    ));
    let old = s.recent_audit(3).await.unwrap();
    assert!(old.iter().all(|r| r.actor_label.is_none()));
    assert_eq!(old[0].actor().label(), "user:t/o1");
    let r = s.get_request("r1").await.unwrap().unwrap();
    assert_eq!(r.requester.id, "t/o1");
    assert_eq!(r.requester.label(), "Old Name");
    // New records carry labels and extend the same chain.
    let bob = influxion_store::Actor {
        id: "user:t/o2".into(),
        name: Some("Bob".into()),
        ..Default::default()
    };
    s.audit(AuditEvent::new(bob, "y", Outcome::Ok))
        .await
        .unwrap();
    assert!(matches!(
        s.verify_audit_chain().await.unwrap(),
        ChainReport::Intact { records: 4, .. }
    ));
    assert_eq!(s.recent_audit(1).await.unwrap()[0].actor().label(), "Bob");
}

/// The writer never checkpoints (a checkpoint inside a commit stalled its whole batch):
/// the checkpointer beside it copies committed pages from the WAL into the database
/// file. 2,000 records are far fewer pages than SQLite's own automatic checkpoint
/// (1,000 pages) would wait for, so only the checkpointer can make the file grow.
#[tokio::test]
async fn commits_reach_the_database_file_through_the_checkpointer() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&url(&dir), key()).await.unwrap();
    let file = dir.path().join("t.db");
    let before = std::fs::metadata(&file).unwrap().len();
    let appended = futures::future::join_all((0..2000).map(|i| {
        s.audit(
            AuditEvent::new(influxion_store::Actor::id_only("t"), "x", Outcome::Ok)
                .target(i.to_string()),
        )
    }))
    .await;
    assert!(appended.iter().all(Result::is_ok));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::metadata(&file).unwrap().len() <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing was checkpointed into the database file"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let wal = std::fs::metadata(dir.path().join("t.db-wal"))
        .unwrap()
        .len();
    assert!(wal > 0, "the records are in the WAL, not written around it");
}

/// Migration 0010 rebuilds the audit table without the UNIQUE index on `hash`: a file
/// written before it keeps every record byte for byte, and the chain verifies.
#[tokio::test]
async fn the_audit_table_rebuild_keeps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&url(&dir), key()).await.unwrap();
    for i in 0..5 {
        s.audit(
            AuditEvent::new(influxion_store::Actor::id_only("t"), "x", Outcome::Ok)
                .target(i.to_string()),
        )
        .await
        .unwrap();
    }
    drop(s);
    let dump = "SELECT group_concat(seq || at || actor || coalesce(actor_label, '') || action \
                || coalesce(target, '') || outcome || detail || prev_hash || hash \
                || coalesce(mac, ''), '|') FROM (SELECT * FROM audit_log ORDER BY seq)";
    let read = |sql: &'static str| {
        let u = url(&dir);
        async move {
            let pool = sqlx::SqlitePool::connect(&u).await.unwrap();
            let v: String = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
            pool.close().await;
            v
        }
    };
    let before = read(dump).await;
    // As a file from before the migration: the index back, the migration not applied.
    exec(
        &url(&dir),
        &[
            "CREATE UNIQUE INDEX old_hash ON audit_log (hash)",
            "DELETE FROM _sqlx_migrations WHERE version = 10",
        ],
    )
    .await;
    let s = Store::open(&url(&dir), key()).await.unwrap();
    assert_eq!(read(dump).await, before);
    let indexes = "SELECT group_concat(name, ',') FROM \
                   (SELECT name FROM sqlite_master WHERE type = 'index' \
                   AND tbl_name = 'audit_log' ORDER BY name)";
    assert_eq!(read(indexes).await, "audit_log_action,audit_log_at");
    assert!(matches!(
        s.verify_audit_chain().await.unwrap(),
        ChainReport::Intact { records: 5, .. }
    ));
}

/// Under a steady stream of commits the WAL is started over (a PASSIVE checkpoint alone
/// never finds it fully copied while commits keep coming): 16 writers one record at a
/// time write far more than the 2,000-frame mark, and the WAL file stays near it.
#[tokio::test]
async fn the_wal_is_started_over_under_steady_writes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&url(&dir), key()).await.unwrap();
    let writers = (0..16).map(|w| {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 0..600 {
                s.audit(
                    AuditEvent::new(influxion_store::Actor::id_only("t"), "x", Outcome::Ok)
                        .target(format!("{w}-{i}")),
                )
                .await
                .unwrap();
            }
        })
    });
    for w in futures::future::join_all(writers).await {
        w.unwrap();
    }
    let wal = std::fs::metadata(dir.path().join("t.db-wal"))
        .unwrap()
        .len();
    assert!(wal < 16 << 20, "the WAL grew to {wal} bytes");
}

/// SQLite takes a batch's records apart from one JSON array: every character survives
/// byte for byte and the chain verifies, a NUL included (SQLite before 3.45 cut a
/// string there).
#[tokio::test]
async fn any_text_is_stored_exactly_as_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&url(&dir), key()).await.unwrap();
    let odd = [
        "plain",
        "quote \" backslash \\ slash / newline \n tab \t",
        "é ü 漢字 😀 \u{2028} \u{7f}",
        "nul \u{0} inside",
        "",
    ];
    for batch in [&odd[..3], &odd[..]] {
        let appended = futures::future::join_all(batch.iter().map(|t| {
            s.audit(
                AuditEvent::new(influxion_store::Actor::id_only(*t), "x", Outcome::Ok)
                    .target(*t)
                    .detail(serde_json::json!({ "t": t })),
            )
        }))
        .await;
        assert!(appended.iter().all(Result::is_ok));
    }
    let stored = s.recent_audit(8).await.unwrap();
    for t in odd {
        let r = stored
            .iter()
            .find(|r| r.target.as_deref() == Some(t))
            .unwrap_or_else(|| panic!("{t:?} was not stored as it was"));
        assert_eq!(r.actor, t);
    }
    assert!(matches!(
        s.verify_audit_chain().await.unwrap(),
        ChainReport::Intact { records: 8, .. }
    ));
}

/// Another process disables the key between two signatures (here another connection to
/// the file, which the store's caches know nothing of): the writer trusts no row it
/// read in an earlier batch once anyone else has written, and refuses the second.
#[tokio::test]
async fn a_key_disabled_by_another_process_is_refused_at_the_next_commit() {
    let (d, s, key) = conformance::audit::store_with_a_key::<Sqlite>().await;
    for _ in 0..3 {
        s.audit_key_use(&key, conformance::audit::sign_event())
            .await
            .unwrap();
    }
    exec(
        &d.url,
        &["UPDATE keys SET status = 'disabled' WHERE id = 'k1'"],
    )
    .await;
    let r = s
        .audit_key_use(&key, conformance::audit::sign_event())
        .await;
    assert!(matches!(r, Err(StoreError::KeyNotActive(_))), "{r:?}");
}
