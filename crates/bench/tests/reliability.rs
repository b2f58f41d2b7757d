//! The reliability harness, short: two replicas on one PostgreSQL through a `kill -9`,
//! a provider outage and key rotation, and a database restart, with every response
//! checked against the database afterwards (`--mode reliability`; the figures of a
//! full run are in BENCHMARKS.md). What it asserts are facts (nothing lost, no repeated
//! serial, the chain intact, readiness and recovery), never durations.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The keyserver binary beside this package's: `cargo test --workspace` builds both.
fn influxion() -> PathBuf {
    let bench = Path::new(env!("CARGO_BIN_EXE_influxion-bench"));
    let bin = bench.with_file_name("influxion");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p influxion; scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// Five ports in a row that were free a moment ago.
fn ports() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = l.local_addr().unwrap().port();
        drop(l);
        if base < 60_000
            && (1..5).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        {
            return base;
        }
    }
}

#[test]
fn two_replicas_lose_nothing_through_a_crash_and_outages() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(env!("CARGO_BIN_EXE_influxion-bench"))
        .current_dir(&repo)
        .args([
            "--mode",
            "reliability",
            "--seconds",
            "3",
            "--concurrency",
            "8",
        ])
        .arg("--port")
        .arg(ports().to_string())
        .arg("--influxion")
        .arg(influxion())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}\n{log}");
    for line in [
        "lost records (acknowledged, no committed record): 0",
        "records of requests answered with an error, unmarked: 0",
        "records of requests never sent: 0",
        "duplicate serials received: 0, duplicate records: 0",
        "database down: /readyz answered 503 to every poll on both replicas",
        "database phases: every error a 503 database-unavailable, every request answered: true",
        "database back: both replicas ready again without a restart: true",
        "audit chain: Intact",
        "reliability: PASSED",
    ] {
        assert!(report.contains(line), "missing {line:?} in:\n{report}");
    }
}
