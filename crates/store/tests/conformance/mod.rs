//! The store conformance suite: every test is written once against the public `Store`
//! API (and `Tamper` for damaging rows) and run by each database's test file through
//! [`conformance_suite!`], with that database's [`Backend`].

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub(crate) mod approvals;
pub(crate) mod audit;
pub(crate) mod pki;

use std::future::Future;

use influxion_store::{AuditEvent, AuditKey, ChainReport, Outcome, Store};

/// A database the suite runs against.
pub(crate) trait Backend {
    /// A new, empty database, removed when the returned value drops.
    fn fresh() -> impl Future<Output = TestDb>;
}

pub(crate) struct TestDb {
    pub url: String,
    _guard: Box<dyn std::any::Any>,
}

impl TestDb {
    pub(crate) fn new(url: String, guard: impl std::any::Any) -> Self {
        Self {
            url,
            _guard: Box::new(guard),
        }
    }

    pub(crate) async fn open(&self) -> Store {
        Store::open(&self.url, key()).await.unwrap()
    }
}

pub(crate) fn key() -> AuditKey {
    AuditKey::new(zeroize::Zeroizing::new([7u8; 32]))
}

pub(crate) fn ev(action: &str) -> AuditEvent {
    AuditEvent::new(
        influxion_store::Actor::id_only("tester"),
        action,
        Outcome::Ok,
    )
}

pub(crate) fn broken(r: ChainReport) -> (i64, String) {
    match r {
        ChainReport::Broken { seq, reason } => (seq, reason),
        other => panic!("expected broken, got {other:?}"),
    }
}

/// A fresh store holding `n` audit records.
pub(crate) async fn store_with<B: Backend>(n: usize) -> (TestDb, Store) {
    let db = B::fresh().await;
    let store = db.open().await;
    for i in 0..n {
        store
            .audit(
                AuditEvent::new(
                    influxion_store::Actor::id_only("tester"),
                    "test",
                    Outcome::Ok,
                )
                .target(format!("t{i}")),
            )
            .await
            .unwrap();
    }
    (db, store)
}

/// One `#[tokio::test]` per conformance test, for the backend `$backend`. A test added
/// to the suite is listed here; an unlisted one fails the build as dead code.
#[macro_export]
macro_rules! conformance_suite {
    ($backend:ty) => {
        $crate::conformance_suite!(@each $backend;
            audit::intact_chain_verifies,
            audit::concurrent_appends_form_one_chain,
            audit::altered_record_is_pinpointed,
            audit::deleted_record_is_pinpointed,
            audit::key_use_of_a_disabled_key_writes_nothing,
            audit::key_use_of_a_changed_key_writes_nothing,
            audit::the_key_cache_sees_every_change,
            audit::key_uses_queued_behind_a_disable_are_refused,
            audit::writes_stop_after_the_tail_was_deleted,
            audit::deleted_tail_is_detected,
            audit::fresh_empty_log_is_intact_and_keyed,
            audit::truncation_with_a_rewritten_head_is_broken,
            audit::rewritten_record_with_recomputed_hash_fails_its_mac,
            audit::missing_head_after_records_existed_is_broken,
            audit::verifying_without_the_key_checks_links_only,
            audit::stripped_macs_verify_as_unkeyed_and_reseal_restores_them,
            audit::incremental_verification_checks_only_new_records,
            approvals::two_of_n_and_three_of_n,
            approvals::self_approval_is_refused,
            approvals::one_approver_counts_once,
            approvals::nothing_after_reject_cancel_or_expiry,
            approvals::racing_last_votes_sign_exactly_once,
            approvals::disabled_key_never_signs_through_approval,
            approvals::a_policy_change_decided_against_a_stale_policy_writes_nothing,
            approvals::a_policy_change_applies_at_quorum_and_only_over_its_base_policy,
            pki::issuance_is_checked_at_commit,
            pki::a_request_key_issues_once,
            pki::ca_lifecycle_and_crl_numbers,
        );
    };
    (@each $backend:ty; $($module:ident :: $name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                conformance::$module::$name::<$backend>().await
            }
        )*
    };
}
