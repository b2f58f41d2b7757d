//! The single writer: group commit of operations with their audit records.

use influxion_core::{KeyName, KeyStatus};
use sqlx::SqliteConnection;
use tokio::sync::{mpsc, oneshot};

use crate::audit::{self, AuditEvent, ChainTip};
use crate::{KeyRecord, StoreError};

/// Most operations gathered into one transaction.
const MAX_BATCH: usize = 512;

pub(crate) enum Op {
    None,
    /// A key was used: commit only if the key is still active at commit time, so a
    /// signature made while a `key.disable` committed is never handed out.
    KeyUse(String),
    InsertKey(Box<KeyRecord>),
    SetKeyStatus(KeyName, KeyStatus),
}

pub(crate) struct Job {
    pub op: Op,
    pub audit: AuditEvent,
    pub done: oneshot::Sender<Result<u64, StoreError>>,
}

pub(crate) async fn run(mut conn: SqliteConnection, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let jobs = std::mem::take(&mut batch);
        match commit_batch(&mut conn, &jobs).await {
            Ok(results) => {
                for (job, result) in jobs.into_iter().zip(results) {
                    let _ = job.done.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "audit batch failed to commit");
                let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
                let chain = matches!(e, StoreError::ChainHeadMismatch(_));
                for job in jobs {
                    let err = if chain {
                        StoreError::ChainHeadMismatch(e.to_string())
                    } else {
                        StoreError::Commit(e.to_string())
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
    conn: &mut SqliteConnection,
    jobs: &[Job],
) -> Result<Vec<Result<u64, StoreError>>, StoreError> {
    // IMMEDIATE takes the write lock up front, so the chain tip read below cannot be
    // stale (another process writing the same file waits on busy_timeout).
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let mut tip = audit::tip(&mut *conn).await?;
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        sqlx::query("SAVEPOINT job").execute(&mut *conn).await?;
        match apply(&mut *conn, &job.op, &job.audit, &tip).await {
            Ok(next) => {
                sqlx::query("RELEASE job").execute(&mut *conn).await?;
                results.push(Ok(next.seq));
                tip = next;
            }
            Err(e) => {
                sqlx::query("ROLLBACK TO job").execute(&mut *conn).await?;
                sqlx::query("RELEASE job").execute(&mut *conn).await?;
                results.push(Err(e));
            }
        }
    }
    audit::set_head(&mut *conn, &tip).await?;
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    Ok(results)
}

async fn apply(
    conn: &mut SqliteConnection,
    op: &Op,
    event: &AuditEvent,
    tip: &ChainTip,
) -> Result<ChainTip, StoreError> {
    match op {
        Op::None => {}
        Op::KeyUse(key_id) => {
            let status: Option<String> = sqlx::query_scalar("SELECT status FROM keys WHERE id = ?")
                .bind(key_id)
                .fetch_optional(&mut *conn)
                .await?;
            if status.as_deref() != Some("active") {
                return Err(StoreError::KeyNotActive(key_id.clone()));
            }
        }
        Op::InsertKey(k) => {
            let r = sqlx::query(
                "INSERT INTO keys (id, name, key_type, backend, status, public_key, handle, created_at, created_by)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&k.id)
            .bind(k.name.as_str())
            .bind(k.key_type.as_str())
            .bind(&k.backend)
            .bind(k.status.as_str())
            .bind(&k.public_key)
            .bind(&k.handle)
            .bind(&k.created_at)
            .bind(&k.created_by)
            .execute(&mut *conn)
            .await;
            match r {
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    return Err(StoreError::DuplicateKey(k.name.to_string()))
                }
                r => {
                    r?;
                }
            }
        }
        Op::SetKeyStatus(name, status) => {
            let r = sqlx::query("UPDATE keys SET status = ? WHERE name = ?")
                .bind(status.as_str())
                .bind(name.as_str())
                .execute(&mut *conn)
                .await?;
            if r.rows_affected() == 0 {
                return Err(StoreError::NoSuchKey(name.to_string()));
            }
        }
    }
    audit::append(conn, event, tip).await
}
