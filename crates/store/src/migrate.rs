//! Copying a keyserver's database into an empty one (`influxion db migrate-to`: SQLite
//! to PostgreSQL). Database-independent: rows go through [`Conn::table_rows`] and
//! [`Conn::insert_rows`] of the two databases, table by table in foreign-key order.
//!
//! - The source is opened read-only and read in one read transaction: a consistent
//!   snapshot, even of a SQLite file a keyserver is still writing.
//! - The target is migrated, then everything is written in ONE write transaction
//!   (PostgreSQL's writers' lock held throughout): it must hold no rows at all and the
//!   head of an empty log, or nothing is written. A migration never merges.
//! - Before that transaction commits, the copy is checked: the same number of rows in
//!   every table, the audit chain verified with the key (hashes, links, MACs) ending at
//!   the source's head, and a few rows of every table read back and compared field by
//!   field. Any difference rolls it all back.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::audit::{AuditKey, ChainReport, Head, GENESIS};
use crate::chain;
use crate::databases;
use crate::db::{Change, Conn, Kind, Lock, Result, SqlValue, Table};
use crate::{DatabasePassword, StoreError};

/// Rows read (and written) per statement while copying a table.
const PAGE: u32 = 1000;
/// Bound values per INSERT (SQLite allows 32766, PostgreSQL 65535).
const MAX_PARAMS: usize = 10_000;

use Kind::{Blob, Bool, Int, Text};

/// A table the migration copies, and the column naming a parent row in the same table
/// (those rows are written parents first).
struct Spec {
    table: Table,
    parent: Option<&'static str>,
}

/// Every table of the schema but the audit head, parents before the rows that refer
/// to them. The columns are the final schema's (SQLite's nine migrations, PostgreSQL's
/// one); a database with other columns is refused.
const TABLES: &[Spec] = &[
    Spec {
        table: Table {
            name: "keys",
            columns: &[
                ("id", Text),
                ("name", Text),
                ("key_type", Text),
                ("backend", Text),
                ("status", Text),
                ("public_key", Blob),
                ("handle", Blob),
                ("created_at", Text),
                ("created_by", Text),
                ("created_by_label", Text),
                ("approvals_required", Int),
                ("approval_ttl_secs", Int),
                ("approver_subjects", Text),
                ("purpose", Text),
                ("certificate_pem", Text),
            ],
            key: &["id"],
        },
        parent: None,
    },
    Spec {
        table: Table {
            name: "subjects",
            columns: &[
                ("id", Text),
                ("name", Text),
                ("description", Text),
                ("issuer", Text),
                ("tenant_id", Text),
                ("object_id", Text),
                ("app_id", Text),
                ("app_role", Text),
                ("group_id", Text),
                ("caller", Text),
                ("created_at", Text),
                ("created_by", Text),
                ("created_by_label", Text),
            ],
            key: &["id"],
        },
        parent: None,
    },
    Spec {
        table: Table {
            name: "grants",
            columns: &[
                ("id", Text),
                ("subject_id", Text),
                ("role", Text),
                ("pattern", Text),
                ("created_at", Text),
                ("created_by", Text),
            ],
            key: &["id"],
        },
        parent: None,
    },
    Spec {
        table: Table {
            name: "signing_requests",
            columns: &[
                ("id", Text),
                ("key_id", Text),
                ("key_name", Text),
                ("algorithm", Text),
                ("digest", Text),
                ("requester", Text),
                ("requester_name", Text),
                ("requester_label", Text),
                ("reason", Text),
                ("metadata", Text),
                ("quorum", Int),
                ("approver_subjects", Text),
                ("status", Text),
                ("signature", Blob),
                ("created_at", Text),
                ("expires_at", Int),
                ("finished_at", Text),
            ],
            key: &["id"],
        },
        parent: None,
    },
    Spec {
        table: Table {
            name: "approvals",
            columns: &[
                ("request_id", Text),
                ("approver", Text),
                ("approver_label", Text),
                ("decision", Text),
                ("comment", Text),
                ("at", Text),
            ],
            key: &["request_id", "approver"],
        },
        parent: None,
    },
    Spec {
        table: Table {
            name: "policy_changes",
            columns: &[
                ("id", Text),
                ("key_id", Text),
                ("key_name", Text),
                ("requester", Text),
                ("requester_name", Text),
                ("requester_label", Text),
                ("reason", Text),
                ("base_policy", Text),
                ("policy", Text),
                ("weakens", Text),
                ("quorum", Int),
                ("approver_subjects", Text),
                ("status", Text),
                ("created_at", Text),
                ("expires_at", Int),
                ("finished_at", Text),
            ],
            key: &["id"],
        },
        parent: None,
    },
    Spec {
        table: Table {
            name: "policy_change_approvals",
            columns: &[
                ("change_id", Text),
                ("approver", Text),
                ("approver_label", Text),
                ("decision", Text),
                ("comment", Text),
                ("at", Text),
            ],
            key: &["change_id", "approver"],
        },
        parent: None,
    },
    Spec {
        table: Table {
            name: "cas",
            columns: &[
                ("name", Text),
                ("key_id", Text),
                ("status", Text),
                ("subject", Text),
                ("parent", Text),
                ("csr_pem", Text),
                ("certificate", Blob),
                ("chain_pem", Text),
                ("not_after", Text),
                ("crl_number", Int),
                ("crl", Blob),
                ("crl_next_update", Text),
                ("created_at", Text),
                ("created_by", Text),
                ("created_by_label", Text),
                ("serial", Text),
                ("revoked_at", Text),
                ("revocation_reason", Text),
            ],
            key: &["name"],
        },
        // An intermediate CA refers to the CA above it.
        parent: Some("parent"),
    },
    Spec {
        table: Table {
            name: "profiles",
            columns: &[
                ("name", Text),
                ("ca", Text),
                ("spec", Text),
                ("created_at", Text),
                ("updated_at", Text),
            ],
            key: &["name"],
        },
        parent: None,
    },
    Spec {
        table: Table {
            name: "certificates",
            columns: &[
                ("serial", Text),
                ("ca", Text),
                ("profile", Text),
                ("device_id", Text),
                ("subject", Text),
                ("not_before", Text),
                ("not_after", Text),
                ("der", Blob),
                ("requested_by", Text),
                ("requested_by_label", Text),
                ("issued_at", Text),
                // INTEGER 0/1 in SQLite, BOOLEAN in PostgreSQL.
                ("key_generated", Bool),
                ("request_key", Text),
                ("status", Text),
                ("revoked_at", Text),
                ("revocation_reason", Text),
            ],
            key: &["serial"],
        },
        parent: None,
    },
    Spec {
        table: Table {
            name: "audit_log",
            columns: &[
                ("seq", Int),
                ("at", Text),
                ("actor", Text),
                ("actor_label", Text),
                ("action", Text),
                ("target", Text),
                ("outcome", Text),
                ("detail", Text),
                ("prev_hash", Text),
                ("hash", Text),
                ("mac", Text),
            ],
            key: &["seq"],
        },
        parent: None,
    },
];

/// The audit head's columns; its one row is replaced, not copied as rows.
const AUDIT_HEAD: (&str, &[&str]) = ("audit_head", &["id", "seq", "hash", "mac"]);

/// Rows of one table in the copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRows {
    pub table: &'static str,
    pub rows: u64,
}

/// What a migration copied and checked.
#[derive(Debug, Clone)]
pub struct MigrationReport {
    /// Rows per table, in the order they were copied (equal in source and target).
    pub tables: Vec<TableRows>,
    /// Audit records in the copy; its chain verified with the key.
    pub records: u64,
    /// Of those, the leading records written before the log was keyed (no MAC of
    /// their own, covered by the sealed head through the hash links).
    pub unkeyed: u64,
    /// The audit head copied: the source's, sealed by the same key.
    pub head_seq: u64,
    pub head_hash: String,
    /// Rows read back from the target and compared field by field with the source.
    pub rows_compared: u64,
    /// Audit records the source gained after its snapshot was taken (a keyserver was
    /// still writing it): they are not in the copy.
    pub source_newer_records: u64,
    pub elapsed: Duration,
}

/// Copy the database at `source` into the empty database at `target` and verify the
/// copy (see the module's description). `key` is the audit key both are sealed with.
pub(crate) async fn run(
    source: &str,
    source_password: Option<Arc<dyn DatabasePassword>>,
    target: &str,
    target_password: Option<Arc<dyn DatabasePassword>>,
    key: &AuditKey,
) -> Result<MigrationReport> {
    let started = Instant::now();
    let src_db = databases::open_read_only(source, source_password).await?;
    let copied = async {
        let mut src = src_db.conn().await?;
        src.begin(Lock::Read).await?;
        let r = match check_source(src.as_mut(), key).await {
            Ok(chain) => into_target(src.as_mut(), chain, target, target_password, key).await,
            Err(e) => Err(e),
        };
        let _ = src.rollback().await;
        r
    }
    .await;
    let newer = match &copied {
        Ok(r) => src_db
            .audit_last_seq()
            .await
            .map(|last| u64::try_from(last).unwrap_or(0).saturating_sub(r.head_seq)),
        Err(_) => Ok(0),
    };
    src_db.close().await;
    let mut report = copied?;
    report.source_newer_records = newer?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Open (and migrate) the target, copy into it in one transaction, and read the head
/// back once it is committed.
async fn into_target(
    src: &mut dyn Conn,
    source: SourceChain,
    target: &str,
    password: Option<Arc<dyn DatabasePassword>>,
    key: &AuditKey,
) -> Result<MigrationReport> {
    let opened = databases::open(target, password).await?;
    let mut dst = opened.writer;
    let result = async {
        if opened.keying == Some(true) {
            // A new database, sealed as a keyserver's first open seals it, so that a
            // copy that fails leaves an empty log a keyserver can start on. (An old
            // file keyed just now holds records: it is refused below, unchanged.)
            dst.begin(Lock::Write).await?;
            match chain::key_on_upgrade(dst.as_mut(), key, true).await {
                Ok(()) => dst.commit().await?,
                Err(e) => {
                    let _ = dst.rollback().await;
                    return Err(e);
                }
            }
        }
        dst.begin(Lock::Write).await?;
        let report = match copy(src, dst.as_mut(), source, key).await {
            Ok(r) => {
                dst.commit().await?;
                r
            }
            Err(e) => {
                let _ = dst.rollback().await;
                return Err(e);
            }
        };
        confirm(dst.as_mut(), &report).await?;
        Ok(report)
    }
    .await;
    drop(dst);
    opened.db.close().await;
    result
}

fn refused(why: impl Into<String>) -> StoreError {
    StoreError::MigrationRefused(why.into())
}

fn mismatch(what: impl Into<String>) -> StoreError {
    StoreError::MigrationMismatch(what.into())
}

/// The source's chain, verified with the key in its snapshot.
struct SourceChain {
    records: u64,
    unkeyed: u64,
    head: Head,
    head_mac: String,
}

/// Before the target is touched: the source has this version's schema and an intact
/// audit chain under `key` (a copy of a damaged log would look like our doing, and a
/// wrong KEK would seal the target with the wrong key).
async fn check_source(src: &mut dyn Conn, key: &AuditKey) -> Result<SourceChain> {
    same_schema(src, "source").await?;
    let (records, unkeyed) = match chain::verify_in(src, Some(key), None, &AtomicU64::new(0))
        .await?
        .0
    {
        ChainReport::Intact {
            records, unkeyed, ..
        } => (records, unkeyed),
        ChainReport::Broken { seq, reason } => {
            return Err(refused(format!(
                "the source's audit chain does not verify at record {seq} ({reason}): the log is damaged, or the KEK is not this database's"
            )))
        }
    };
    let Some(head) = src.audit_head(true).await? else {
        return Err(refused("the source's audit head is missing"));
    };
    let Some(head_mac) = head.mac.clone() else {
        return Err(refused("the source's audit head is not sealed"));
    };
    Ok(SourceChain {
        records,
        unkeyed,
        head,
        head_mac,
    })
}

/// Everything inside the target's write transaction (and the source's snapshot).
async fn copy(
    src: &mut dyn Conn,
    dst: &mut dyn Conn,
    source: SourceChain,
    key: &AuditKey,
) -> Result<MigrationReport> {
    same_schema(dst, "target").await?;
    empty(dst).await?;
    let SourceChain {
        records,
        unkeyed,
        head,
        head_mac,
    } = source;

    let mut tables = Vec::new();
    let mut samples = Vec::new();
    for spec in TABLES {
        let t = &spec.table;
        let expected = src.count_rows(t).await?;
        let copied = copy_table(src, dst, spec, expected, &mut samples).await?;
        if copied != expected {
            return Err(mismatch(format!(
                "{}: {copied} rows read of {expected} counted",
                t.name
            )));
        }
        tables.push(TableRows {
            table: t.name,
            rows: copied,
        });
    }
    // The source's head replaces the empty log's: the same seq, hash and MAC.
    dst.audit_set_head(head.seq, &head.hash, &head_mac).await?;

    // Check the copy before it commits.
    for (spec, counted) in TABLES.iter().zip(&tables) {
        let n = dst.count_rows(&spec.table).await?;
        if n != counted.rows {
            return Err(mismatch(format!(
                "{}: {n} rows in the target, {} in the source",
                counted.table, counted.rows
            )));
        }
    }
    match chain::verify_in(dst, Some(key), None, &AtomicU64::new(0))
        .await?
        .0
    {
        ChainReport::Intact {
            records: r,
            head: h,
            ..
        } if r == records && h == head.hash => {}
        ChainReport::Intact {
            records: r,
            head: h,
            ..
        } => {
            return Err(mismatch(format!(
                "the target's audit chain ends at record {r} ({h}), the source's at {records} ({})",
                head.hash
            )))
        }
        ChainReport::Broken { seq, reason } => {
            return Err(mismatch(format!(
                "the target's audit chain is broken at record {seq}: {reason}"
            )))
        }
    }
    for s in &samples {
        let back = dst.table_rows(&s.spec.table, s.after.as_deref(), 1).await?;
        if back.first() != Some(&s.row) {
            return Err(mismatch(format!(
                "a row of {} reads back differently from the target",
                s.spec.table.name
            )));
        }
    }
    let head_seq = crate::error::seq_u64(head.seq)?;
    // Keyservers already running on the target reload their caches when this commits.
    dst.announce(&Change {
        subjects: true,
        pki: true,
        keys: true,
        tip: (head_seq > 0).then_some(head_seq),
    })
    .await?;
    Ok(MigrationReport {
        tables,
        records,
        unkeyed,
        head_seq,
        head_hash: head.hash,
        rows_compared: samples.len() as u64,
        source_newer_records: 0,
        elapsed: Duration::ZERO,
    })
}

/// The database has exactly the columns of the tables copied, so nothing is lost or
/// left unset.
async fn same_schema(c: &mut dyn Conn, which: &str) -> Result<()> {
    let expected = TABLES
        .iter()
        .map(|s| {
            (
                s.table.name,
                s.table.columns.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            )
        })
        .chain([(AUDIT_HEAD.0, AUDIT_HEAD.1.to_vec())]);
    for (table, columns) in expected {
        let have = c.table_columns(table).await?;
        if have.is_empty() {
            return Err(refused(format!(
                "the {which} database has no table {table}"
            )));
        }
        if let Some(missing) = columns.iter().find(|c| !have.iter().any(|h| h == *c)) {
            return Err(refused(format!(
                "the {which} database's {table} has no column {missing}: it was written by an older version; start this version's keyserver on it once (it migrates the schema), then retry"
            )));
        }
        if let Some(extra) = have.iter().find(|h| !columns.contains(&h.as_str())) {
            return Err(refused(format!(
                "the {which} database's {table} has a column {extra} this version does not know: migrate with the version that wrote it"
            )));
        }
    }
    Ok(())
}

/// No row in any table, and the head of an empty log (sealed, or not yet).
async fn empty(dst: &mut dyn Conn) -> Result<()> {
    for spec in TABLES {
        if dst.count_rows(&spec.table).await? > 0 {
            return Err(StoreError::TargetNotEmpty {
                table: spec.table.name.to_owned(),
            });
        }
    }
    match dst.audit_head(true).await? {
        Some(h) if h.seq != 0 || h.hash != GENESIS => Err(StoreError::TargetNotEmpty {
            table: AUDIT_HEAD.0.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// A row to read back from the target: the key of the row before it (`None`: it is
/// the first) and its values.
struct Sample {
    spec: &'static Spec,
    after: Option<Vec<SqlValue>>,
    row: Vec<SqlValue>,
}

/// Which rows of `n` to compare: the first, the last and three between.
fn sample_positions(n: u64) -> Vec<u64> {
    if n == 0 {
        return Vec::new();
    }
    let mut p = vec![0, n / 4, n / 2, n / 4 * 3, n - 1];
    p.sort_unstable();
    p.dedup();
    p
}

/// Copy every row of `spec`'s table in pages, keeping samples; returns the rows read.
async fn copy_table(
    src: &mut dyn Conn,
    dst: &mut dyn Conn,
    spec: &'static Spec,
    expected: u64,
    samples: &mut Vec<Sample>,
) -> Result<u64> {
    let t = &spec.table;
    let key_at: Vec<usize> = t
        .key
        .iter()
        .filter_map(|k| t.columns.iter().position(|(c, _)| c == k))
        .collect();
    let key_of = |row: &[SqlValue]| key_at.iter().map(|i| row[*i].clone()).collect::<Vec<_>>();
    let picks = sample_positions(expected);
    let mut held = Vec::new();
    let mut prev: Option<Vec<SqlValue>> = None;
    let mut n = 0u64;
    loop {
        let page = src.table_rows(t, prev.as_deref(), PAGE).await?;
        for row in &page {
            if picks.contains(&n) {
                samples.push(Sample {
                    spec,
                    after: prev.clone(),
                    row: row.clone(),
                });
            }
            prev = Some(key_of(row));
            n += 1;
        }
        let full = page.len() == PAGE as usize;
        match spec.parent {
            // Held until every row is read: written parents first.
            Some(_) => held.extend(page),
            None => insert(dst, t, &page).await?,
        }
        if !full {
            break;
        }
    }
    if let Some(parent) = spec.parent {
        insert(dst, t, &parents_first(t, parent, held)?).await?;
    }
    Ok(n)
}

/// INSERTs of at most [`MAX_PARAMS`] values each.
async fn insert(dst: &mut dyn Conn, t: &Table, rows: &[Vec<SqlValue>]) -> Result<()> {
    let per = (MAX_PARAMS / t.columns.len().max(1)).max(1);
    for chunk in rows.chunks(per) {
        dst.insert_rows(t, chunk).await?;
    }
    Ok(())
}

/// `rows` ordered so that the row `parent` names (by the table's one-column key)
/// comes before the rows naming it.
fn parents_first(t: &Table, parent: &str, rows: Vec<Vec<SqlValue>>) -> Result<Vec<Vec<SqlValue>>> {
    let col = |name: &str| t.columns.iter().position(|(c, _)| *c == name);
    let (Some(p), Some(k)) = (col(parent), t.key.first().and_then(|k| col(k))) else {
        return Err(StoreError::Corrupt(format!(
            "{}: no column {parent}",
            t.name
        )));
    };
    let mut out: Vec<Vec<SqlValue>> = Vec::with_capacity(rows.len());
    let mut left = rows;
    while !left.is_empty() {
        let (ready, waiting): (Vec<_>, Vec<_>) = left
            .into_iter()
            .partition(|r| r[p] == SqlValue::Null || out.iter().any(|o| o[k] == r[p]));
        if ready.is_empty() {
            return Err(StoreError::Corrupt(format!(
                "{}: a row names a {parent} that is not there",
                t.name
            )));
        }
        out.extend(ready);
        left = waiting;
    }
    Ok(out)
}

/// After the commit, through the same connection outside the transaction: the head
/// and the audit log's length are the copy's.
async fn confirm(dst: &mut dyn Conn, r: &MigrationReport) -> Result<()> {
    let head = dst.audit_head(true).await?;
    let last = dst.audit_last().await?;
    let seq = i64::try_from(r.head_seq).unwrap_or(i64::MAX);
    let head_ok = head.is_some_and(|h| h.seq == seq && h.hash == r.head_hash);
    let last_ok = match last {
        Some((s, h)) => s == seq && h == r.head_hash,
        None => seq == 0,
    };
    if head_ok && last_ok {
        Ok(())
    } else {
        Err(mismatch(
            "after the commit the target's audit head is not the one copied",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_cover_both_ends() {
        assert_eq!(sample_positions(0), Vec::<u64>::new());
        assert_eq!(sample_positions(1), vec![0]);
        assert_eq!(sample_positions(2), vec![0, 1]);
        assert_eq!(sample_positions(1001), vec![0, 250, 500, 750, 1000]);
    }

    #[test]
    fn every_table_pages_by_a_key_it_has() {
        for s in TABLES {
            for k in s.table.key {
                assert!(
                    s.table.columns.iter().any(|(c, _)| c == k),
                    "{}",
                    s.table.name
                );
            }
        }
    }

    #[test]
    fn parents_are_written_first() {
        let t = &TABLES.iter().find(|s| s.parent.is_some()).unwrap().table;
        assert_eq!(t.name, "cas");
        let row = |name: &str, parent: Option<&str>| {
            let mut r = vec![SqlValue::Null; t.columns.len()];
            r[0] = SqlValue::Text(name.into());
            r[4] = parent.map_or(SqlValue::Null, |p| SqlValue::Text(p.into()));
            r
        };
        let ordered = parents_first(
            t,
            "parent",
            vec![
                row("a-sub", Some("b-int")),
                row("b-int", Some("c-root")),
                row("c-root", None),
            ],
        )
        .unwrap();
        let names: Vec<_> = ordered.iter().map(|r| r[0].clone()).collect();
        assert_eq!(
            names,
            ["c-root", "b-int", "a-sub"].map(|n| SqlValue::Text(n.into()))
        );
        assert!(parents_first(t, "parent", vec![row("x", Some("gone"))]).is_err());
    }
}
