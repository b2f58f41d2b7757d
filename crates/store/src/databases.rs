//! The databases the store runs on, chosen by the URL's scheme: the one place a new
//! database is registered (one arm in each function below).

use std::sync::Arc;

use crate::db::{Database, Opened, Result};
use crate::sqlite;

/// Open (creating if needed, migrating) the database at `url`.
// One database today; the match is where the next one registers.
#[allow(clippy::match_single_binding)]
pub(crate) async fn open(url: &str) -> Result<Opened> {
    match scheme(url) {
        // e.g. "postgres" | "postgresql" => postgres::open(url).await,
        // Anything else is SQLite's to accept or refuse, as it always was.
        _ => sqlite::open(url).await,
    }
}

/// Open an existing database read-only: not created, not migrated.
#[allow(clippy::match_single_binding)]
pub(crate) async fn open_read_only(url: &str) -> Result<Arc<dyn Database>> {
    match scheme(url) {
        // e.g. "postgres" | "postgresql" => postgres::open_read_only(url).await,
        _ => sqlite::open_read_only(url).await,
    }
}

fn scheme(url: &str) -> &str {
    url.split_once(':').map_or("", |(s, _)| s)
}
