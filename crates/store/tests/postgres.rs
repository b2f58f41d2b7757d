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
