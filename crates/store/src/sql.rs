//! What every database's SQL shares: the tables of pending items, LIKE escaping,
//! bound values of built queries, unique violations read as facts, and the statements
//! over plain rows that copy a database (`migrate.rs`).

use crate::db::{Inserted, Kind, PendingKind, Result, Table};

/// The tables of a kind of pending item. Constants, never input, so building SQL from
/// them is safe.
pub(crate) struct PendingTables {
    pub items: &'static str,
    pub votes: &'static str,
    /// The column of `votes` naming the item voted on.
    pub votes_item: &'static str,
}

pub(crate) fn tables(kind: PendingKind) -> PendingTables {
    match kind {
        PendingKind::SigningRequest => PendingTables {
            items: "signing_requests",
            votes: "approvals",
            votes_item: "request_id",
        },
        PendingKind::PolicyChange => PendingTables {
            items: "policy_changes",
            votes: "policy_change_approvals",
            votes_item: "change_id",
        },
    }
}

pub(crate) enum Bind {
    Text(String),
    Int(i64),
}

/// `%`, `_` and the escape character itself taken literally in a LIKE pattern.
pub(crate) fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Map a unique violation to [`Inserted::Duplicate`](crate::db::Inserted).
pub(crate) fn inserted<T>(r: std::result::Result<T, sqlx::Error>) -> Result<Inserted> {
    match r {
        Ok(_) => Ok(Inserted::Yes),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(Inserted::Duplicate),
        Err(e) => Err(e.into()),
    }
}

/// How a database spells what the plain-row statements need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The `n`th bound parameter (from 1).
    fn param(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => "?".to_owned(),
            Dialect::Postgres => format!("${n}"),
        }
    }

    /// A key column as rows are ordered and compared by it: text bytewise (SQLite's
    /// BINARY collation, PostgreSQL's "C"), so both databases page in the same order.
    fn key(self, t: &Table, column: &str) -> String {
        match (self, t.kind(column)) {
            (Dialect::Postgres, Kind::Text) => format!("{column} COLLATE \"C\""),
            _ => column.to_owned(),
        }
    }
}

fn column_list(t: &Table) -> String {
    t.columns
        .iter()
        .map(|(c, _)| *c)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rows of `t` in key order, after a key (bound first, when `after`), then the limit.
pub(crate) fn select_rows(d: Dialect, t: &Table, after: bool) -> String {
    let keys = t
        .key
        .iter()
        .map(|k| d.key(t, k))
        .collect::<Vec<_>>()
        .join(", ");
    let mut sql = format!("SELECT {} FROM {}", column_list(t), t.name);
    let mut n = 0;
    if after {
        let params = t
            .key
            .iter()
            .map(|_| {
                n += 1;
                d.param(n)
            })
            .collect::<Vec<_>>()
            .join(", ");
        sql.push_str(&format!(" WHERE ({keys}) > ({params})"));
    }
    sql.push_str(&format!(" ORDER BY {keys} LIMIT {}", d.param(n + 1)));
    sql
}

/// One INSERT of `rows` rows of `t`, every column bound.
pub(crate) fn insert_rows(d: Dialect, t: &Table, rows: usize) -> String {
    let mut n = 0;
    let values = (0..rows)
        .map(|_| {
            let row = t
                .columns
                .iter()
                .map(|_| {
                    n += 1;
                    d.param(n)
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!("({row})")
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO {} ({}) VALUES {values}",
        t.name,
        column_list(t)
    )
}

pub(crate) fn count_rows(t: &Table) -> String {
    format!("SELECT COUNT(*) FROM {}", t.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Table = Table {
        name: "votes",
        columns: &[("item", Kind::Text), ("who", Kind::Text), ("n", Kind::Int)],
        key: &["item", "who"],
    };

    #[test]
    fn plain_row_statements() {
        assert_eq!(
            select_rows(Dialect::Sqlite, &T, true),
            "SELECT item, who, n FROM votes WHERE (item, who) > (?, ?) ORDER BY item, who LIMIT ?"
        );
        assert_eq!(
            select_rows(Dialect::Postgres, &T, false),
            "SELECT item, who, n FROM votes ORDER BY item COLLATE \"C\", who COLLATE \"C\" LIMIT $1"
        );
        assert_eq!(
            insert_rows(Dialect::Postgres, &T, 2),
            "INSERT INTO votes (item, who, n) VALUES ($1, $2, $3), ($4, $5, $6)"
        );
    }
}

/// The multi-row INSERT of `run`, consecutive audit records, in `DB`'s placeholders
/// (PostgreSQL; SQLite binds a batch's records into INSERTs of up to 64 rows, see `sqlite/conn.rs`).
pub(crate) fn audit_insert<'a, DB>(
    run: &'a [crate::audit::AuditRecord],
) -> sqlx::QueryBuilder<'a, DB>
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a Option<String>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut q = sqlx::QueryBuilder::new(
        "INSERT INTO audit_log (seq, at, actor, actor_label, action, target, outcome, detail, prev_hash, hash, mac) ",
    );
    q.push_values(run, |mut b, r| {
        b.push_bind(r.seq)
            .push_bind(&r.at)
            .push_bind(&r.actor)
            .push_bind(&r.actor_label)
            .push_bind(&r.action)
            .push_bind(&r.target)
            .push_bind(&r.outcome)
            .push_bind(&r.detail)
            .push_bind(&r.prev_hash)
            .push_bind(&r.hash)
            .push_bind(&r.mac);
    });
    q
}

/// `rows` in runs of 64, 16, 4 and 1 (largest first), so that a multi-row INSERT has one
/// of four shapes: each connection's statement cache keeps four prepared statements,
/// not one per batch size.
pub(crate) fn insert_runs<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let n = [64, 16, 4, 1].into_iter().find(|n| *n <= rows.len())?;
        let (run, rest) = rows.split_at(n);
        rows = rest;
        Some(run)
    })
}

#[cfg(test)]
mod insert_run_tests {
    use super::insert_runs;

    #[test]
    fn runs_cover_every_row_once_in_order_with_four_shapes() {
        for n in 0..300usize {
            let rows: Vec<usize> = (0..n).collect();
            let runs: Vec<&[usize]> = insert_runs(&rows).collect();
            assert_eq!(runs.concat(), rows);
            assert!(runs.iter().all(|r| [64, 16, 4, 1].contains(&r.len())));
            // Never more than three runs of each smaller size.
            for size in [16, 4, 1] {
                assert!(runs.iter().filter(|r| r.len() == size).count() <= 3, "{n}");
            }
        }
    }
}
