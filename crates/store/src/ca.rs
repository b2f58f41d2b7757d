//! The device CA's operations on the [`Store`] facade: writes become [`PkiOp`]s for the
//! writer (rules in `rules.rs`), reads go to the database.

use crate::audit::AuditEvent;
use crate::ops::{Op, PkiOp};
use crate::pki::{
    CaCounters, CaRecord, CaStatus, CertQuery, CertRecord, ProfileRecord, RevokedRow,
};
use crate::{KeyRecord, Store, StoreError};

impl Store {
    pub async fn create_ca(
        &self,
        key: KeyRecord,
        ca: CaRecord,
        event: AuditEvent,
    ) -> Result<u64, StoreError> {
        self.submit(
            Op::Pki(Box::new(PkiOp::CreateCa(Box::new(key), Box::new(ca)))),
            event,
        )
        .await
    }

    pub async fn activate_ca(
        &self,
        name: &str,
        certificate: Vec<u8>,
        chain_pem: String,
        not_after: String,
        event: AuditEvent,
    ) -> Result<u64, StoreError> {
        let op = PkiOp::ActivateCa {
            name: name.to_owned(),
            certificate,
            chain_pem,
            not_after,
        };
        self.submit(Op::Pki(Box::new(op)), event).await
    }

    pub async fn set_ca_status(
        &self,
        name: &str,
        status: CaStatus,
        event: AuditEvent,
    ) -> Result<u64, StoreError> {
        let op = PkiOp::SetCaStatus(name.to_owned(), status);
        self.submit(Op::Pki(Box::new(op)), event).await
    }

    pub async fn put_profile(
        &self,
        record: ProfileRecord,
        create: bool,
        event: AuditEvent,
    ) -> Result<u64, StoreError> {
        let op = PkiOp::PutProfile { record, create };
        self.submit(Op::Pki(Box::new(op)), event).await
    }

    pub async fn delete_profile(&self, name: &str, event: AuditEvent) -> Result<u64, StoreError> {
        let op = PkiOp::DeleteProfile(name.to_owned());
        self.submit(Op::Pki(Box::new(op)), event).await
    }

    /// Record an issued certificate with its audit record (the CA key's use), if the
    /// CA is still active and the device is under its quota at commit time.
    pub async fn record_certificate(
        &self,
        cert: CertRecord,
        ca_key_id: &str,
        max_per_device: u32,
        event: AuditEvent,
    ) -> Result<u64, StoreError> {
        let op = PkiOp::Issue {
            cert: Box::new(cert),
            ca_key_id: ca_key_id.to_owned(),
            max_per_device,
        };
        self.submit(Op::Pki(Box::new(op)), event).await
    }

    pub async fn revoke_certificate(
        &self,
        serial: &str,
        at: &str,
        reason: &str,
        event: AuditEvent,
    ) -> Result<u64, StoreError> {
        let op = PkiOp::Revoke {
            serial: serial.to_owned(),
            at: at.to_owned(),
            reason: reason.to_owned(),
        };
        self.submit(Op::Pki(Box::new(op)), event).await
    }

    /// Revoke the certificate of intermediate `name` (serial `serial`) under its
    /// parent, with its audit record; the CA is disabled in the same transaction.
    pub async fn revoke_ca(
        &self,
        name: &str,
        serial: &str,
        at: &str,
        reason: &str,
        event: AuditEvent,
    ) -> Result<u64, StoreError> {
        let op = PkiOp::RevokeCa {
            name: name.to_owned(),
            serial: serial.to_owned(),
            at: at.to_owned(),
            reason: reason.to_owned(),
        };
        self.submit(Op::Pki(Box::new(op)), event).await
    }

    pub async fn store_crl(
        &self,
        ca: &str,
        number: i64,
        der: Vec<u8>,
        next_update: String,
        event: AuditEvent,
    ) -> Result<u64, StoreError> {
        let op = PkiOp::StoreCrl {
            ca: ca.to_owned(),
            number,
            der,
            next_update,
        };
        self.submit(Op::Pki(Box::new(op)), event).await
    }

    pub async fn get_ca(&self, name: &str) -> Result<Option<CaRecord>, StoreError> {
        self.db.ca(name).await
    }

    pub async fn list_cas(&self) -> Result<Vec<CaRecord>, StoreError> {
        self.db.cas().await
    }

    pub async fn ca_counters(&self, name: &str) -> Result<CaCounters, StoreError> {
        let mut c = CaCounters::default();
        for (status, n) in self.db.certificate_counts(name).await? {
            c.issued += n;
            if status == "revoked" {
                c.revoked += n;
            }
        }
        Ok(c)
    }

    pub async fn get_profile(&self, name: &str) -> Result<Option<ProfileRecord>, StoreError> {
        self.db.profile(name).await
    }

    pub async fn list_profiles(&self) -> Result<Vec<ProfileRecord>, StoreError> {
        self.db.profiles().await
    }

    pub async fn get_certificate(&self, serial: &str) -> Result<Option<CertRecord>, StoreError> {
        self.db.certificate(serial).await
    }

    pub async fn certificate_by_request_key(
        &self,
        profile: &str,
        request_key: &str,
    ) -> Result<Option<CertRecord>, StoreError> {
        // A replay hands the certificate out again: not before it is durable.
        self.durable().await?;
        self.db
            .certificate_by_request_key(profile, request_key)
            .await
    }

    pub async fn search_certificates(&self, q: &CertQuery) -> Result<Vec<CertRecord>, StoreError> {
        self.db.search_certificates(q).await
    }

    /// When the newest revocation under `ca` (of a device or intermediate CA
    /// certificate) happened, if any.
    pub async fn latest_revocation(&self, ca: &str) -> Result<Option<String>, StoreError> {
        self.db.latest_revocation(ca).await
    }

    /// Revoked certificates `ca` issued, devices' and intermediate CAs', for its CRL.
    pub async fn revoked_for_ca(&self, ca: &str) -> Result<Vec<RevokedRow>, StoreError> {
        self.db.revoked_for_ca(ca).await
    }
}
