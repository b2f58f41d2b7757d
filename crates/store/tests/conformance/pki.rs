//! The device CA's rules at commit: issuance only under an active CA with its own key,
//! the per-device quota, unique serials, revocation once, CA states, growing CRL numbers.

use influxion_core::{KeyStatus, KeyType};
use influxion_store::pki::{CaRecord, CaStatus, CertRecord, ProfileRecord};
use influxion_store::{KeyPurpose, KeyRecord, Store, StoreError};

use super::{ev, store_with, Backend};

pub(crate) const LATER: &str = "2999-01-01T00:00:00Z";

pub(crate) fn ca_key(id: &str) -> KeyRecord {
    KeyRecord {
        id: id.into(),
        name: format!("ca-{id}").parse().unwrap(),
        key_type: KeyType::EcP256,
        backend: "software".into(),
        status: KeyStatus::Active,
        public_key: vec![1],
        handle: vec![2],
        created_at: influxion_store::now_rfc3339(),
        created_by: influxion_store::Actor::id_only("t"),
        policy: Default::default(),
        purpose: KeyPurpose::Ca,
        certificate_pem: None,
    }
}

pub(crate) fn ca(name: &str, key_id: &str, parent: Option<&str>) -> CaRecord {
    let pending = parent.is_some();
    CaRecord {
        name: name.into(),
        key_id: key_id.into(),
        status: if pending {
            CaStatus::Pending
        } else {
            CaStatus::Active
        },
        subject: "{}".into(),
        parent: parent.map(Into::into),
        csr_pem: None,
        certificate: (!pending).then(|| vec![0x30]),
        chain_pem: String::new(),
        not_after: Some(LATER.into()),
        crl_number: 0,
        crl: None,
        crl_next_update: None,
        created_at: influxion_store::now_rfc3339(),
        created_by: influxion_store::Actor::id_only("t"),
        serial: None,
        revoked_at: None,
        revocation_reason: None,
    }
}

pub(crate) fn cert(serial: &str, device: &str) -> CertRecord {
    CertRecord {
        serial: serial.into(),
        ca: "root".into(),
        profile: "dev".into(),
        device_id: device.into(),
        subject: format!("CN={device}"),
        not_before: influxion_store::now_rfc3339(),
        not_after: LATER.into(),
        der: vec![0x30],
        requested_by: influxion_store::Actor::id_only("t"),
        issued_at: influxion_store::now_rfc3339(),
        key_generated: false,
        request_key: None,
        status: "valid".into(),
        revoked_at: None,
        revocation_reason: None,
    }
}

pub(crate) async fn root_with_profile(s: &Store) {
    s.create_ca(
        ca_key("k-root"),
        ca("root", "k-root", None),
        ev("ca.create"),
    )
    .await
    .unwrap();
    let profile = ProfileRecord {
        name: "dev".into(),
        ca: "root".into(),
        spec: "{}".into(),
        created_at: influxion_store::now_rfc3339(),
        updated_at: influxion_store::now_rfc3339(),
    };
    s.put_profile(profile.clone(), true, ev("profile.create"))
        .await
        .unwrap();
    let r = s.put_profile(profile, true, ev("profile.create")).await;
    assert!(matches!(r, Err(StoreError::DuplicateProfile(_))), "{r:?}");
}

/// Two certificates for one request key of a profile (two replicas answering the same
/// retried request): the second is refused as a duplicate, alone; the batch it shares
/// with other certificates commits.
pub(crate) async fn a_request_key_issues_once<B: Backend>() {
    let (_d, s) = store_with::<B>(0).await;
    root_with_profile(&s).await;
    let keyed = |serial: &str, device: &str| CertRecord {
        request_key: Some("retry-1".into()),
        ..cert(serial, device)
    };
    let (a, b, c) = futures::join!(
        s.record_certificate(keyed("11", "d1"), "k-root", 0, ev("issue")),
        s.record_certificate(keyed("12", "d2"), "k-root", 0, ev("issue")),
        s.record_certificate(cert("13", "d3"), "k-root", 0, ev("issue")),
    );
    a.unwrap();
    assert!(
        matches!(b, Err(StoreError::DuplicateCertificate(_))),
        "{b:?}"
    );
    c.unwrap();
}

pub(crate) async fn issuance_is_checked_at_commit<B: Backend>() {
    let (_d, s) = store_with::<B>(0).await;
    root_with_profile(&s).await;
    let issue = |c: CertRecord, key: &'static str| s.record_certificate(c, key, 1, ev("issue"));
    issue(cert("01", "d1"), "k-root").await.unwrap();
    let r = issue(cert("02", "d1"), "k-root").await;
    assert!(
        matches!(r, Err(StoreError::DeviceQuota { ref device_id, max: 1 }) if device_id == "d1"),
        "{r:?}"
    );
    let r = issue(cert("01", "d2"), "k-root").await;
    assert!(
        matches!(r, Err(StoreError::DuplicateCertificate(_))),
        "{r:?}"
    );
    let revoke =
        |serial: &'static str| s.revoke_certificate(serial, LATER, "keyCompromise", ev("revoke"));
    revoke("01").await.unwrap();
    assert!(matches!(
        revoke("01").await,
        Err(StoreError::AlreadyRevoked(_))
    ));
    assert!(matches!(
        revoke("99").await,
        Err(StoreError::NoSuchCertificate(_))
    ));
    // The revoked certificate no longer counts towards the quota.
    issue(cert("02", "d1"), "k-root").await.unwrap();
    let r = issue(cert("03", "d3"), "k-other").await;
    assert!(matches!(r, Err(StoreError::CaKeyNotActive { .. })), "{r:?}");
    let r = s.delete_profile("dev", ev("profile.delete")).await;
    assert!(matches!(r, Err(StoreError::ProfileInUse(_))), "{r:?}");
    s.set_ca_status("root", CaStatus::Disabled, ev("ca.disable"))
        .await
        .unwrap();
    let r = issue(cert("03", "d3"), "k-root").await;
    assert!(
        matches!(
            r,
            Err(StoreError::CaNotActive {
                status: Some(CaStatus::Disabled),
                ..
            })
        ),
        "{r:?}"
    );
    let c = s.ca_counters("root").await.unwrap();
    assert_eq!((c.issued, c.revoked), (2, 1));
    assert_eq!(
        s.get_certificate("01").await.unwrap().unwrap().status,
        "revoked"
    );
}

pub(crate) async fn ca_lifecycle_and_crl_numbers<B: Backend>() {
    let (_d, s) = store_with::<B>(0).await;
    root_with_profile(&s).await;
    s.create_ca(
        ca_key("k-int"),
        ca("int", "k-int", Some("root")),
        ev("ca.create"),
    )
    .await
    .unwrap();
    // A second CA of the same name leaves neither it nor its key behind.
    let r = s
        .create_ca(ca_key("k-dup"), ca("int", "k-dup", None), ev("ca.create"))
        .await;
    assert!(matches!(r, Err(StoreError::DuplicateCa(_))), "{r:?}");
    assert!(s.get_key_by_id("k-dup").await.unwrap().is_none());

    let r = s
        .set_ca_status("int", CaStatus::Active, ev("ca.enable"))
        .await;
    assert!(matches!(r, Err(StoreError::CaNotIssued { .. })), "{r:?}");
    let r = s
        .set_ca_status("nope", CaStatus::Active, ev("ca.enable"))
        .await;
    assert!(matches!(r, Err(StoreError::NoSuchCa(_))), "{r:?}");
    let activate = || {
        s.activate_ca(
            "int",
            vec![0x30],
            String::new(),
            LATER.into(),
            ev("ca.activate"),
        )
    };
    activate().await.unwrap();
    assert!(matches!(
        activate().await,
        Err(StoreError::CaNotPending { .. })
    ));
    assert_eq!(
        s.get_ca("int").await.unwrap().unwrap().status,
        CaStatus::Active
    );

    let crl = |number: i64| s.store_crl("root", number, vec![0x30], LATER.into(), ev("crl.issue"));
    crl(1).await.unwrap();
    let r = crl(1).await;
    assert!(
        matches!(r, Err(StoreError::CrlOutdated { number: 1, .. })),
        "{r:?}"
    );
    crl(2).await.unwrap();
    assert_eq!(s.get_ca("root").await.unwrap().unwrap().crl_number, 2);

    let revoke_ca =
        |name: &'static str| s.revoke_ca(name, "0a", LATER, "superseded", ev("ca.revoke"));
    assert!(matches!(
        revoke_ca("root").await,
        Err(StoreError::CaWithoutParent(_))
    ));
    revoke_ca("int").await.unwrap();
    assert!(matches!(
        revoke_ca("int").await,
        Err(StoreError::CaAlreadyRevoked(_))
    ));
    let int = s.get_ca("int").await.unwrap().unwrap();
    assert_eq!(
        (int.status, int.serial.as_deref()),
        (CaStatus::Disabled, Some("0a"))
    );
    let revoked = s.revoked_for_ca("root").await.unwrap();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].serial, "0a");
    assert_eq!(
        s.latest_revocation("root").await.unwrap().as_deref(),
        Some(LATER)
    );
    // The serial is taken for device certificates too.
    let r = s
        .record_certificate(cert("0a", "d9"), "k-root", 0, ev("issue"))
        .await;
    assert!(
        matches!(r, Err(StoreError::DuplicateCertificate(_))),
        "{r:?}"
    );
}
