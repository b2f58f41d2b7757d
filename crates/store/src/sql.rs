//! What every database's SQL shares: the tables of pending items, LIKE escaping,
//! bound values of built queries, and unique violations read as facts.

use crate::db::{Inserted, PendingKind, Result};

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
