//! The single writer: group commit of operations with their audit records.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::access::RequestOutcome;
use crate::apply::apply;
use crate::audit::{AuditEvent, AuditKey};
use crate::chain;
use crate::db::{Change, Conn, Lock, Signals};
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
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let jobs = std::mem::take(&mut batch);
        match commit_batch(conn.as_mut(), &jobs, &key).await {
            Ok((results, change)) => {
                signals.changed(&change);
                for (job, result) in jobs.into_iter().zip(results) {
                    let _ = job.done.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "audit batch failed to commit");
                let _ = conn.rollback().await;
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

/// Apply every job in one transaction; each job sits in a savepoint so that one failed
/// operation (say, a duplicate key name) neither aborts the others nor leaves a record.
async fn commit_batch(
    conn: &mut dyn Conn,
    jobs: &[Job],
    key: &AuditKey,
) -> Result<(Vec<Result<Applied, StoreError>>, Change), StoreError> {
    // The write lock up front, so the chain tip read below cannot be stale (another
    // process writing the same database waits).
    conn.begin(Lock::Write).await?;
    let mut tip = chain::tip(conn, key).await?;
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
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
    }
    if tip.seq > 0 {
        chain::set_head(conn, &tip, key).await?;
    }
    // Only what committed counts: a job rolled back to its savepoint changed nothing.
    let done = || jobs.iter().zip(&results).filter(|(_, r)| r.is_ok());
    let change = Change {
        subjects: done().any(|(j, _)| j.op.changes_subjects()),
        pki: done().any(|(j, _)| j.op.changes_pki()),
        tip: results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|a| a.seq)
            .max(),
    };
    if change != Change::default() {
        conn.announce(&change).await?;
    }
    conn.commit().await?;
    Ok((results, change))
}
