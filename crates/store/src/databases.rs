//! The databases the store runs on, chosen by the URL's scheme: the one place a new
//! database is registered (one arm in each function below).

use std::sync::Arc;

use crate::db::{Database, Opened, Result};
use crate::{postgres, sqlite, DatabasePassword, StoreError};

/// Open (creating if needed, migrating) the database at `url`.
pub(crate) async fn open(url: &str, password: Option<Arc<dyn DatabasePassword>>) -> Result<Opened> {
    match scheme(url) {
        "postgres" | "postgresql" => postgres::open(url, password).await,
        // Anything else is SQLite's to accept or refuse, as it always was.
        _ => {
            no_password(password.as_ref())?;
            sqlite::open(url).await
        }
    }
}

/// Open an existing database read-only: not created, not migrated.
pub(crate) async fn open_read_only(
    url: &str,
    password: Option<Arc<dyn DatabasePassword>>,
) -> Result<Arc<dyn Database>> {
    match scheme(url) {
        "postgres" | "postgresql" => postgres::open_read_only(url, password).await,
        _ => {
            no_password(password.as_ref())?;
            sqlite::open_read_only(url).await
        }
    }
}

fn no_password(p: Option<&Arc<dyn DatabasePassword>>) -> Result<()> {
    match p {
        Some(_) => Err(StoreError::Unsupported(
            "a database password or token applies to PostgreSQL only".into(),
        )),
        None => Ok(()),
    }
}

/// Whether `url` names a database several keyserver replicas can share.
pub(crate) fn is_shared(url: &str) -> bool {
    matches!(scheme(url), "postgres" | "postgresql")
}

fn scheme(url: &str) -> &str {
    url.split_once(':').map_or("", |(s, _)| s)
}
