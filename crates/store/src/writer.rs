//! The single writer: group commit of operations with their audit records.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::access::RequestOutcome;
use crate::apply::{self, apply};
use crate::audit::{AuditEvent, AuditKey, AuditRecord, ChainTip, Outcome};
use crate::chain;
use crate::db::{Change, Conn, Signals, WalSync};
use crate::ops::Op;
use crate::StoreError;

/// Most operations gathered into one transaction.
const MAX_BATCH: usize = 512;

/// What a committed job did.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    /// Sequence number of the job's (last) audit record.
    pub seq: u64,
    pub outcome: Option<RequestOutcome>,
}

pub(crate) struct Job {
    pub op: Op,
    pub audit: AuditEvent,
    pub done: oneshot::Sender<Result<Applied, StoreError>>,
}

pub(crate) async fn run(
    mut conn: Box<dyn Conn>,
    mut rx: mpsc::Receiver<Job>,
    signals: Signals,
    key: Arc<AuditKey>,
    observer: Arc<std::sync::OnceLock<Arc<dyn crate::CommitObserver>>>,
    syncer: Option<Syncer>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut in_doubt: Vec<InDoubt> = Vec::new();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let jobs = std::mem::take(&mut batch);
        if let Some(e) = syncer.as_ref().and_then(|s| s.failed.get()) {
            // Nothing written can be made durable: refuse rather than answer for
            // records a power cut could take back.
            for job in jobs {
                let _ = job.done.send(Err(StoreError::Commit(e.clone())));
            }
            continue;
        }
        if let Some(s) = &syncer {
            // From its COMMIT on, other connections may see the batch.
            s.progress
                .started
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        let started = std::time::Instant::now();
        match commit_batch(conn.as_mut(), &jobs, &key, &mut in_doubt).await {
            Ok((results, change)) => {
                if let Some(o) = observer.get() {
                    o.batch_committed(jobs.len(), started.elapsed());
                }
                let committed = Committed {
                    jobs,
                    results,
                    change,
                };
                match &syncer {
                    Some(s) => s.answer_when_durable(committed),
                    None => committed.answer(&signals),
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "audit batch failed to commit");
                let _ = conn.rollback().await;
                if let Some(s) = &syncer {
                    // Nothing of it is visible, but its count must be synced past.
                    s.answer_when_durable(Committed {
                        jobs: Vec::new(),
                        results: Vec::new(),
                        change: Change::default(),
                    });
                }
                let e = Arc::new(e);
                for job in jobs {
                    let err = match &*e {
                        StoreError::ChainHeadMismatch(m) => {
                            StoreError::ChainHeadMismatch(m.clone())
                        }
                        _ => StoreError::Commit(e.clone()),
                    };
                    let _ = job.done.send(Err(err));
                }
            }
        }
    }
}

/// A committed batch, not yet answered.
struct Committed {
    jobs: Vec<Job>,
    results: Vec<Result<Applied, StoreError>>,
    change: Change,
}

impl Committed {
    /// The caches learn of the change before any caller hears of its result.
    fn answer(self, signals: &Signals) {
        signals.changed(&self.change);
        for (job, result) in self.jobs.into_iter().zip(self.results) {
            let _ = job.done.send(result);
        }
    }
}

/// Answers committed batches once they are durable, on a thread of its own, while the
/// writer goes on with the next batch (SQLite; see `Opened::wal_sync`). One sync covers
/// every batch committed before it, so batches that wait together are synced once.
pub(crate) struct Syncer {
    tx: std::sync::mpsc::Sender<Committed>,
    /// Set when a sync failed. After a failed fsync the kernel may have dropped the
    /// unwritten pages, and a later fsync would not report it: the writer refuses every
    /// batch from then on, until the process is restarted (and SQLite recovers the WAL).
    failed: Arc<std::sync::OnceLock<Arc<StoreError>>>,
    pub(crate) progress: Arc<Progress>,
}

/// How far the syncer has got, for readers: a batch is counted as started before its
/// COMMIT (from then on other connections may see it) and as synced once a sync after
/// that COMMIT is done, or failed. Reads wait until every started batch is synced
/// ([`crate::Store::durable`]), so nothing they hand out can be taken back by a power
/// cut.
pub(crate) struct Progress {
    pub(crate) started: std::sync::atomic::AtomicU64,
    pub(crate) synced: tokio::sync::watch::Sender<u64>,
    pub(crate) failed: Arc<std::sync::OnceLock<Arc<StoreError>>>,
}

impl Progress {
    /// Until every batch started so far is synced; an error if a sync failed.
    pub(crate) async fn wait(&self) -> Result<(), StoreError> {
        let target = self.started.load(std::sync::atomic::Ordering::SeqCst);
        let mut synced = self.synced.subscribe();
        if synced.wait_for(|n| *n >= target).await.is_err() {
            return Err(StoreError::Closed);
        }
        match self.failed.get() {
            Some(e) => Err(StoreError::Commit(e.clone())),
            None => Ok(()),
        }
    }
}

impl Syncer {
    pub(crate) fn start(sync: WalSync, signals: Signals) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<Committed>();
        let failed = Arc::new(std::sync::OnceLock::new());
        let failure = failed.clone();
        let progress = Arc::new(Progress {
            started: std::sync::atomic::AtomicU64::new(0),
            synced: tokio::sync::watch::Sender::new(0),
            failed: failed.clone(),
        });
        let reached = progress.clone();
        std::thread::Builder::new()
            .name("influxion-walsync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut group = vec![first];
                    group.extend(rx.try_iter());
                    // After a failed sync nothing later is synced: frames the kernel
                    // dropped would break the WAL before them, and a later fsync
                    // would not say so.
                    let synced = match failure.get() {
                        Some(_) => Err(std::io::Error::other("an earlier sync failed")),
                        None => sync(),
                    };
                    if let Err(e) = synced {
                        tracing::error!(error = %e, "the write-ahead log could not be synced; refusing every write until restarted");
                        let e: &Arc<StoreError> = failure
                            .get_or_init(|| Arc::new(StoreError::Db(sqlx::Error::Io(e))));
                        for c in &mut group {
                            for r in &mut c.results {
                                *r = Err(StoreError::Commit(e.clone()));
                            }
                        }
                    }
                    let batches = group.len() as u64;
                    for c in group {
                        // Rows that committed are visible whether or not the sync
                        // held: the caches must follow them either way.
                        c.answer(&signals);
                    }
                    reached.synced.send_modify(|n| *n += batches);
                }
            })?;
        Ok(Self {
            tx,
            failed,
            progress,
        })
    }

    fn answer_when_durable(&self, c: Committed) {
        // The thread ends only when this sender is dropped, with the writer.
        let _ = self.tx.send(c);
    }
}

/// A batch whose COMMIT was sent but whose answer never came (the connection to the
/// database broke at that moment): it may have committed while its callers were told
/// it failed. The next batch finds out and, if it did commit, says so in the log.
struct InDoubt {
    /// The tip the batch would have left.
    tip: ChainTip,
    first: u64,
}

/// Append an `audit.unacknowledged` record for each batch in doubt that did commit:
/// its records stand, but their callers were answered with an error.
async fn resolve_in_doubt(
    conn: &mut dyn Conn,
    in_doubt: &[InDoubt],
    mut tip: ChainTip,
    key: &AuditKey,
) -> Result<ChainTip, StoreError> {
    for d in in_doubt {
        let seq = i64::try_from(d.tip.seq)
            .map_err(|_| StoreError::Corrupt("audit sequence number".into()))?;
        if conn.audit_hash(seq).await?.as_deref() != Some(d.tip.hash.as_str()) {
            // It did not commit: nothing of it exists, and its callers were right.
            continue;
        }
        tracing::warn!(
            first = d.first,
            last = d.tip.seq,
            "records committed while their callers were told the commit failed"
        );
        let marker = AuditEvent::new(
            crate::Actor::id_only("system:store"),
            "audit.unacknowledged",
            Outcome::Ok,
        )
        .detail(serde_json::json!({
            "first_seq": d.first,
            "last_seq": d.tip.seq,
            "why": "the database connection broke while the commit was acknowledged; these records committed, but their callers were answered with an error",
        }));
        tip = apply(conn, &crate::ops::Op::None, &marker, &tip, key)
            .await?
            .0;
    }
    Ok(tip)
}

/// Records of checked writes (key uses, certificates, plain records) made in order but
/// not yet written, and the certificates among them not yet inserted. They go to the
/// database together, in a few multi-row statements, before any other operation and
/// before the head.
struct Unwritten {
    /// The chain tip before `records[0]`.
    base: ChainTip,
    records: Vec<AuditRecord>,
    /// The job of each record.
    jobs: Vec<usize>,
    /// Jobs whose certificate waits to be inserted.
    certs: Vec<usize>,
}

impl Unwritten {
    fn new(base: ChainTip) -> Self {
        Self {
            base,
            records: Vec::new(),
            jobs: Vec::new(),
            certs: Vec::new(),
        }
    }

    /// Insert the waiting certificates in one call. One refused meanwhile (its serial
    /// or request key taken, as by another of the batch) fails its job, and the
    /// records after it are chained afresh without its record.
    async fn insert_certificates(
        &mut self,
        conn: &mut dyn Conn,
        jobs: &[Job],
        results: &mut [Result<Applied, StoreError>],
        tip: &mut ChainTip,
        key: &AuditKey,
    ) -> Result<(), StoreError> {
        if self.certs.is_empty() {
            return Ok(());
        }
        let certs = self
            .certs
            .iter()
            .map(|&j| jobs[j].op.certificate().map(|(c, _)| c))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| StoreError::Corrupt("a waiting certificate".into()))?;
        let inserted = conn.insert_certificates(&certs).await?;
        let refused: Vec<usize> = std::mem::take(&mut self.certs)
            .into_iter()
            .zip(inserted)
            .filter(|(_, ok)| !ok)
            .map(|(j, _)| j)
            .collect();
        if refused.is_empty() {
            return Ok(());
        }
        let mut t = self.base.clone();
        self.records.clear();
        for j in std::mem::take(&mut self.jobs) {
            if refused.contains(&j) {
                let serial = jobs[j]
                    .op
                    .certificate()
                    .map(|(c, _)| c.serial.clone())
                    .unwrap_or_default();
                results[j] = Err(StoreError::DuplicateCertificate(serial));
                continue;
            }
            let (record, next) = chain::extend(&jobs[j].audit, &t, key)?;
            self.records.push(record);
            self.jobs.push(j);
            results[j] = Ok(Applied {
                seq: next.seq,
                outcome: None,
            });
            t = next;
        }
        *tip = t;
        Ok(())
    }

    /// Write the records (certificates first); the chain then starts at `tip`.
    async fn write(
        &mut self,
        conn: &mut dyn Conn,
        jobs: &[Job],
        results: &mut [Result<Applied, StoreError>],
        tip: &mut ChainTip,
        key: &AuditKey,
    ) -> Result<(), StoreError> {
        self.insert_certificates(conn, jobs, results, tip, key)
            .await?;
        conn.audit_insert_many(&std::mem::take(&mut self.records))
            .await?;
        self.jobs.clear();
        self.base = tip.clone();
        Ok(())
    }
}

/// Apply every job in one transaction; each job sits in a savepoint so that one failed
/// operation (say, a duplicate key name) neither aborts the others nor leaves a record.
async fn commit_batch(
    conn: &mut dyn Conn,
    jobs: &[Job],
    key: &AuditKey,
    in_doubt: &mut Vec<InDoubt>,
) -> Result<(Vec<Result<Applied, StoreError>>, Change), StoreError> {
    // The write lock up front, so the chain tip read below cannot be stale (another
    // process writing the same database waits); with it, in the same call, the rows of
    // the keys the batch signs with.
    let mut signing_keys: Vec<&str> = Vec::new();
    for job in jobs {
        if let Op::KeyUse { key_id, .. } = &job.op {
            if !signing_keys.contains(&key_id.as_str()) {
                signing_keys.push(key_id);
            }
        }
    }
    let (mut tip, keys) = chain::begin(conn, key, &signing_keys).await?;
    let mut rows = apply::BatchRows::default();
    rows.preload_keys(&signing_keys, keys);
    if !in_doubt.is_empty() {
        tip = resolve_in_doubt(conn, in_doubt, tip, key).await?;
    }
    let mut results = Vec::with_capacity(jobs.len());
    let mut unwritten = Unwritten::new(tip.clone());
    for (i, job) in jobs.iter().enumerate() {
        // A quota counts the certificates in the database: the batch's own go in first.
        if matches!(job.op.certificate(), Some((_, quota)) if quota > 0) {
            unwritten
                .insert_certificates(conn, jobs, &mut results, &mut tip, key)
                .await?;
        }
        // A key use (every signature), a certificate or a plain record: its check, its
        // one row, and its record, without a savepoint (two round trips fewer per job
        // on PostgreSQL). Any other failure of such a job fails the whole batch: on
        // PostgreSQL a failed statement aborts the transaction, and a COMMIT then rolls
        // back without an error.
        if let Some(check) = apply::checked_write(conn, &job.op, &mut rows).await? {
            results.push(match check {
                Ok(()) => {
                    let (record, next) = chain::extend(&job.audit, &tip, key)?;
                    unwritten.records.push(record);
                    unwritten.jobs.push(i);
                    if job.op.certificate().is_some() {
                        unwritten.certs.push(i);
                    }
                    tip = next;
                    Ok(Applied {
                        seq: tip.seq,
                        outcome: None,
                    })
                }
                Err(e) => Err(e),
            });
            continue;
        }
        unwritten
            .write(conn, jobs, &mut results, &mut tip, key)
            .await?;
        rows.forget(&job.op);
        conn.savepoint().await?;
        match apply(conn, &job.op, &job.audit, &tip, key).await {
            Ok((next, outcome)) => {
                conn.release_savepoint().await?;
                results.push(Ok(Applied {
                    seq: next.seq,
                    outcome,
                }));
                tip = next;
            }
            Err(e) => {
                conn.rollback_to_savepoint().await?;
                conn.release_savepoint().await?;
                results.push(Err(e));
            }
        }
        unwritten.base = tip.clone();
    }
    unwritten
        .insert_certificates(conn, jobs, &mut results, &mut tip, key)
        .await?;
    // Only what committed counts: a job rolled back to its savepoint changed nothing.
    let done = || jobs.iter().zip(&results).filter(|(_, r)| r.is_ok());
    let change = Change {
        subjects: done().any(|(j, _)| j.op.changes_subjects()),
        pki: done().any(|(j, _)| j.op.changes_pki()),
        keys: done().any(|(j, _)| j.op.changes_keys()),
        tip: results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|a| a.seq)
            .max(),
    };
    let first = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|a| a.seq)
        .min();
    // The records left, the head and the commit, in one round trip where the database
    // allows it.
    match chain::finish(conn, &unwritten.records, &tip, key, &change).await {
        Ok(()) => in_doubt.clear(),
        Err(e) => {
            // Whether the server committed is unknown until it can be asked.
            if let Some(first) = first {
                in_doubt.push(InDoubt {
                    tip: tip.clone(),
                    first,
                });
            }
            return Err(e);
        }
    }
    Ok((results, change))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::db::Lock;

    fn job(action: &str) -> (Job, oneshot::Receiver<Result<Applied, StoreError>>) {
        let (done, rx) = oneshot::channel();
        let audit = AuditEvent::new(crate::Actor::id_only("t"), action, Outcome::Ok);
        (
            Job {
                op: Op::None,
                audit,
                done,
            },
            rx,
        )
    }

    async fn actions(conn: &mut dyn Conn) -> Vec<String> {
        conn.audit_records_after(0, 100, true)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.action)
            .collect()
    }

    /// The whole chain verified with `key`.
    async fn verified(db: &Arc<dyn crate::db::Database>, key: &AuditKey) -> crate::ChainReport {
        let progress = std::sync::atomic::AtomicU64::new(0);
        chain::verify(db.as_ref(), Some(key), None, &progress)
            .await
            .unwrap()
            .0
    }

    /// A fresh SQLite file whose log is keyed (sealed, empty), and its key.
    async fn keyed(dir: &tempfile::TempDir) -> (crate::db::Opened, AuditKey) {
        let url = format!("sqlite://{}/w.db", dir.path().display());
        let mut opened = crate::sqlite::open(&url).await.unwrap();
        let key = AuditKey::new(zeroize::Zeroizing::new([3u8; 32]));
        let conn = opened.writer.as_mut();
        conn.begin(Lock::Write).await.unwrap();
        chain::key_on_upgrade(conn, &key, true).await.unwrap();
        conn.commit().await.unwrap();
        (opened, key)
    }

    /// A batch's records go in INSERTs of at most 64 rows (SQLite): every size around
    /// that bound stores each record once, in order, under an intact chain.
    #[tokio::test]
    async fn batches_of_any_size_store_every_record_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (opened, key) = keyed(&dir).await;
        let mut conn = opened.writer;
        let mut expected = Vec::new();
        for size in [1usize, 63, 64, 65, 128, 129, 200] {
            let batch: Vec<_> = (0..size)
                .map(|i| {
                    let action = format!("b{size}.{i}");
                    expected.push(action.clone());
                    job(&action).0
                })
                .collect();
            let (results, _) = commit_batch(conn.as_mut(), &batch, &key, &mut Vec::new())
                .await
                .unwrap();
            assert!(results.iter().all(Result::is_ok));
        }
        let stored: Vec<String> = conn
            .audit_records_after(0, 1000, true)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.action)
            .collect();
        assert_eq!(stored, expected);
        assert!(matches!(
            verified(&opened.db, &key).await,
            crate::ChainReport::Intact { records: 650, .. }
        ));
    }

    #[tokio::test]
    async fn a_batch_in_doubt_that_committed_is_marked_and_one_that_did_not_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (opened, key) = keyed(&dir).await;
        let mut conn = opened.writer;

        // Batch a commits, but (say) its answer was lost: the writer holds it in doubt.
        let (a, _rx) = job("a");
        let mut in_doubt = Vec::new();
        let (results, _) = commit_batch(conn.as_mut(), &[a], &key, &mut in_doubt)
            .await
            .unwrap();
        let seq = results[0].as_ref().unwrap().seq;
        let committed_tip = ChainTip {
            seq,
            hash: conn.audit_hash(1).await.unwrap().unwrap(),
        };
        in_doubt.push(InDoubt {
            tip: committed_tip,
            first: seq,
        });
        // And a batch that never committed (another writer's record holds its place).
        in_doubt.push(InDoubt {
            tip: ChainTip {
                seq: 1,
                hash: "not-what-was-committed".into(),
            },
            first: 1,
        });
        let (b, _rx) = job("b");
        commit_batch(conn.as_mut(), &[b], &key, &mut in_doubt)
            .await
            .unwrap();
        assert!(in_doubt.is_empty());
        assert_eq!(
            actions(conn.as_mut()).await,
            ["a", "audit.unacknowledged", "b"]
        );
        let marker = &conn.audit_records_after(1, 1, true).await.unwrap()[0];
        let detail: serde_json::Value = serde_json::from_str(&marker.detail).unwrap();
        assert_eq!(
            (detail["first_seq"].as_u64(), detail["last_seq"].as_u64()),
            (Some(1), Some(1))
        );
        // The chain stays intact with the marker in it.
        let report = verified(&opened.db, &key).await;
        assert!(
            matches!(report, crate::ChainReport::Intact { records: 3, .. }),
            "{report:?}"
        );
    }

    fn issuance(
        serial: &str,
        device: &str,
        request_key: Option<&str>,
        quota: u32,
    ) -> (Job, oneshot::Receiver<Result<Applied, StoreError>>) {
        let (mut j, rx) = job("cert.issue");
        let cert = crate::pki::CertRecord {
            serial: serial.into(),
            ca: "root".into(),
            profile: "dev".into(),
            device_id: device.into(),
            subject: format!("CN={device}"),
            not_before: crate::now_rfc3339(),
            not_after: "2999-01-01T00:00:00Z".into(),
            // Unique per certificate, as a signed one's is.
            der: format!("{serial}/{device}").into_bytes(),
            requested_by: crate::Actor::id_only("t"),
            issued_at: crate::now_rfc3339(),
            key_generated: false,
            request_key: request_key.map(Into::into),
            status: "valid".into(),
            revoked_at: None,
            revocation_reason: None,
        };
        j.op = Op::Pki(Box::new(crate::ops::PkiOp::Issue {
            cert: Box::new(cert),
            ca_key_id: "k-root".into(),
            max_per_device: quota,
        }));
        (j, rx)
    }

    /// A batch inserts its certificates together. One the insert refuses (its serial or
    /// request key taken by another of the batch) fails alone; the records after it are
    /// chained without it; a quota counts the batch's certificates before it.
    #[tokio::test]
    async fn a_certificate_refused_by_the_batch_insert_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (opened, key) = keyed(&dir).await;
        let mut conn = opened.writer;
        let (mut create, _rx) = job("ca.create");
        let now = crate::now_rfc3339();
        create.op = Op::Pki(Box::new(crate::ops::PkiOp::CreateCa(
            Box::new(crate::KeyRecord {
                id: "k-root".into(),
                name: "ca.root".parse().unwrap(),
                key_type: influxion_core::KeyType::EcP256,
                backend: "software".into(),
                status: influxion_core::KeyStatus::Active,
                public_key: vec![1],
                handle: vec![2],
                created_at: now.clone(),
                created_by: crate::Actor::id_only("t"),
                policy: Default::default(),
                purpose: crate::KeyPurpose::Ca,
                certificate_pem: None,
            }),
            Box::new(crate::pki::CaRecord {
                name: "root".into(),
                key_id: "k-root".into(),
                status: crate::pki::CaStatus::Active,
                subject: "{}".into(),
                parent: None,
                csr_pem: None,
                certificate: Some(vec![0x30]),
                chain_pem: String::new(),
                not_after: Some("2999-01-01T00:00:00Z".into()),
                crl_number: 0,
                crl: None,
                crl_next_update: None,
                created_at: now,
                created_by: crate::Actor::id_only("t"),
                serial: None,
                revoked_at: None,
                revocation_reason: None,
            }),
        )));
        let mut in_doubt = Vec::new();
        let (r, _) = commit_batch(conn.as_mut(), &[create], &key, &mut in_doubt)
            .await
            .unwrap();
        r[0].as_ref().unwrap();

        let jobs: Vec<Job> = [
            issuance("11", "d1", Some("retry"), 0),
            issuance("12", "d2", Some("retry"), 0),
            job("plain"),
            issuance("11", "d3", None, 0),
            issuance("13", "d4", None, 0),
            issuance("14", "d5", None, 1),
            issuance("15", "d5", None, 1),
        ]
        .into_iter()
        .map(|(j, _)| j)
        .collect();
        let (results, change) = commit_batch(conn.as_mut(), &jobs, &key, &mut in_doubt)
            .await
            .unwrap();
        let seqs: Vec<_> = results.iter().map(|r| r.as_ref().map(|a| a.seq)).collect();
        assert!(matches!(seqs[0], Ok(2)), "{seqs:?}");
        assert!(
            matches!(&results[1], Err(StoreError::DuplicateCertificate(s)) if s == "12"),
            "{results:?}"
        );
        assert!(matches!(seqs[2], Ok(3)), "{seqs:?}");
        assert!(
            matches!(&results[3], Err(StoreError::DuplicateCertificate(s)) if s == "11"),
            "{results:?}"
        );
        assert!(matches!(seqs[4], Ok(4)), "{seqs:?}");
        assert!(matches!(seqs[5], Ok(5)), "{seqs:?}");
        assert!(
            matches!(&results[6], Err(StoreError::DeviceQuota { max: 1, .. })),
            "{results:?}"
        );
        assert_eq!(change.tip, Some(5));
        for (serial, device) in [
            ("11", Some("d1")),
            ("12", None),
            ("13", Some("d4")),
            ("14", Some("d5")),
            ("15", None),
        ] {
            let held = opened.db.certificate(serial).await.unwrap();
            assert_eq!(
                held.map(|c| c.device_id).as_deref(),
                device,
                "serial {serial}"
            );
        }
        assert_eq!(
            actions(conn.as_mut()).await,
            [
                "ca.create",
                "cert.issue",
                "plain",
                "cert.issue",
                "cert.issue"
            ]
        );
        let report = verified(&opened.db, &key).await;
        assert!(
            matches!(report, crate::ChainReport::Intact { records: 5, .. }),
            "{report:?}"
        );
    }

    /// A writer on a fresh SQLite file whose WAL sync is `sync`; its job queue.
    async fn writer_with(
        dir: &tempfile::TempDir,
        sync: WalSync,
    ) -> (
        mpsc::Sender<Job>,
        Arc<dyn crate::db::Database>,
        Arc<Progress>,
    ) {
        let (opened, key) = keyed(dir).await;
        let (signals, _) = Signals::new(0);
        let syncer = Syncer::start(sync, signals.clone()).unwrap();
        let progress = syncer.progress.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run(
            opened.writer,
            rx,
            signals,
            Arc::new(key),
            Arc::new(std::sync::OnceLock::new()),
            Some(syncer),
        ));
        (tx, opened.db, progress)
    }

    #[tokio::test]
    async fn a_batch_is_answered_only_after_a_sync_that_followed_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let syncs = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = syncs.clone();
        let (tx, db, progress) = writer_with(
            &dir,
            Box::new(move || {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }),
        )
        .await;
        for n in 1..=3u64 {
            let (j, rx) = job("a");
            tx.send(j).await.unwrap();
            assert_eq!(rx.await.unwrap().unwrap().seq, n);
            // The answer came after this batch's own sync.
            assert!(syncs.load(std::sync::atomic::Ordering::SeqCst) >= n);
        }
        assert_eq!(db.audit_last_seq().await.unwrap(), 3);
        // Everything started is synced: a read need not wait.
        assert!(futures::poll!(Box::pin(progress.wait())).is_ready());
    }

    #[tokio::test]
    async fn after_a_failed_sync_every_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, db, _) = writer_with(
            &dir,
            Box::new(|| Err(std::io::Error::other("EIO from the disk"))),
        )
        .await;
        // The batch committed, but its sync failed: its caller hears of the failure.
        let (a, rx) = job("a");
        tx.send(a).await.unwrap();
        assert!(matches!(rx.await.unwrap(), Err(StoreError::Commit(_))));
        assert_eq!(db.audit_last_seq().await.unwrap(), 1);
        // From then on nothing is written.
        let (b, rx) = job("b");
        tx.send(b).await.unwrap();
        let e = rx.await.unwrap().unwrap_err();
        assert!(e.to_string().contains("EIO from the disk"), "{e}");
        assert_eq!(db.audit_last_seq().await.unwrap(), 1);
    }

    /// A batch committed while an earlier batch's sync was failing is not answered Ok
    /// by a later sync that succeeds: the frames lost before it break the WAL.
    #[tokio::test]
    async fn nothing_committed_behind_a_failed_sync_is_answered_ok() {
        let dir = tempfile::tempdir().unwrap();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = std::sync::Mutex::new(held);
        let calls = std::sync::atomic::AtomicU64::new(0);
        let (tx, db, progress) = writer_with(
            &dir,
            Box::new(move || {
                if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    // The first sync waits until the test lets it fail.
                    let _ = held.lock().unwrap().recv();
                    return Err(std::io::Error::other("EIO from the disk"));
                }
                Ok(())
            }),
        )
        .await;
        let (a, a_rx) = job("a");
        tx.send(a).await.unwrap();
        while db.audit_last_seq().await.unwrap() < 1 {
            tokio::task::yield_now().await;
        }
        // Other connections see a, but a read must wait for its sync.
        let mut read = Box::pin(progress.wait());
        assert!(futures::poll!(&mut read).is_pending());
        // b commits while a's sync is still under way.
        let (b, b_rx) = job("b");
        tx.send(b).await.unwrap();
        while db.audit_last_seq().await.unwrap() < 2 {
            tokio::task::yield_now().await;
        }
        release.send(()).unwrap();
        assert!(matches!(a_rx.await.unwrap(), Err(StoreError::Commit(_))));
        assert!(matches!(b_rx.await.unwrap(), Err(StoreError::Commit(_))));
        // The read ends with the failure: what it would read is not durable.
        assert!(matches!(read.await, Err(StoreError::Commit(_))));
    }
}
