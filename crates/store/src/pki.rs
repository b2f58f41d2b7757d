//! Records of the device certificate authority: CAs, profiles, issued certificates and
//! CRLs. Writes go through the single writer with their audit record; invariants
//! (unique serials, per-device quotas, CA active at commit, monotonic CRL numbers) are
//! checked inside that transaction.

use sqlx::{Row, SqliteConnection};

use crate::{KeyRecord, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CaStatus {
    Pending,
    Active,
    Disabled,
}

impl CaStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            CaStatus::Pending => "pending",
            CaStatus::Active => "active",
            CaStatus::Disabled => "disabled",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CaRecord {
    pub name: String,
    pub key_id: String,
    pub status: CaStatus,
    /// JSON of the CA subject as requested.
    pub subject: String,
    pub parent: Option<String>,
    pub csr_pem: Option<String>,
    pub certificate: Option<Vec<u8>>,
    pub chain_pem: String,
    pub not_after: Option<String>,
    pub crl_number: i64,
    pub crl: Option<Vec<u8>>,
    pub crl_next_update: Option<String>,
    pub created_at: String,
    pub created_by: String,
    /// Hex serial of this CA's own certificate, recorded under its parent.
    pub serial: Option<String>,
    /// Set when the parent revoked this CA's certificate (the CA is then disabled).
    pub revoked_at: Option<String>,
    pub revocation_reason: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ProfileRecord {
    pub name: String,
    pub ca: String,
    /// JSON of the profile.
    pub spec: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CertRecord {
    pub serial: String,
    pub ca: String,
    pub profile: String,
    pub device_id: String,
    pub subject: String,
    pub not_before: String,
    pub not_after: String,
    #[serde(skip)]
    pub der: Vec<u8>,
    pub requested_by: String,
    pub issued_at: String,
    pub key_generated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_key: Option<String>,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation_reason: Option<String>,
}

/// Search filter for issued certificates; unset fields match everything.
#[derive(Debug, Clone, Default)]
pub struct CertQuery {
    pub device_id: Option<String>,
    pub serial: Option<String>,
    /// Substring of the subject line.
    pub subject: Option<String>,
    pub profile: Option<String>,
    pub ca: Option<String>,
    pub status: Option<String>,
    pub limit: u32,
    /// Profile-name patterns (`*` globs over `[a-z0-9._-]`) the caller may see; `None`
    /// means every profile. Applied in SQL, before the limit.
    pub visible: Option<Vec<String>>,
}

/// Revoked entries of one CA, for its CRL.
#[derive(Debug, Clone)]
pub struct RevokedRow {
    pub serial: String,
    pub revoked_at: String,
    pub reason: String,
}

pub(crate) enum PkiOp {
    CreateCa(Box<KeyRecord>, Box<CaRecord>),
    ActivateCa {
        name: String,
        certificate: Vec<u8>,
        chain_pem: String,
        not_after: String,
    },
    SetCaStatus(String, CaStatus),
    PutProfile {
        record: ProfileRecord,
        create: bool,
    },
    DeleteProfile(String),
    Issue {
        cert: Box<CertRecord>,
        ca_key_id: String,
        max_per_device: u32,
    },
    Revoke {
        serial: String,
        at: String,
        reason: String,
    },
    /// Revoke an intermediate's certificate under its parent and disable the CA.
    RevokeCa {
        name: String,
        serial: String,
        at: String,
        reason: String,
    },
    StoreCrl {
        ca: String,
        number: i64,
        der: Vec<u8>,
        next_update: String,
    },
}

pub(crate) async fn apply(conn: &mut SqliteConnection, op: &PkiOp) -> Result<(), StoreError> {
    match op {
        PkiOp::CreateCa(key, ca) => {
            crate::writer::insert_key(conn, key).await?;
            if let Some(serial) = &ca.serial {
                serial_unused(conn, serial).await?;
            }
            let r = sqlx::query(
                "INSERT INTO cas (name, key_id, status, subject, parent, csr_pem, certificate, chain_pem, not_after, created_at, created_by, serial)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&ca.name)
            .bind(&ca.key_id)
            .bind(ca.status.as_str())
            .bind(&ca.subject)
            .bind(&ca.parent)
            .bind(&ca.csr_pem)
            .bind(&ca.certificate)
            .bind(&ca.chain_pem)
            .bind(&ca.not_after)
            .bind(&ca.created_at)
            .bind(&ca.created_by)
            .bind(&ca.serial)
            .execute(&mut *conn)
            .await;
            crate::writer::unique(r, || StoreError::DuplicateCa(ca.name.clone()))?;
        }
        PkiOp::ActivateCa {
            name,
            certificate,
            chain_pem,
            not_after,
        } => {
            let r = sqlx::query(
                "UPDATE cas SET status = 'active', certificate = ?, chain_pem = ?, not_after = ?
                 WHERE name = ? AND status = 'pending'",
            )
            .bind(certificate)
            .bind(chain_pem)
            .bind(not_after)
            .bind(name)
            .execute(&mut *conn)
            .await?;
            if r.rows_affected() == 0 {
                return Err(StoreError::CaState(format!(
                    "CA {name} is not waiting for a certificate"
                )));
            }
        }
        PkiOp::SetCaStatus(name, status) => {
            let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM cas WHERE name = ?")
                .bind(name)
                .fetch_optional(&mut *conn)
                .await?;
            if exists.is_none() {
                return Err(StoreError::NoSuchCa(name.clone()));
            }
            let r = sqlx::query("UPDATE cas SET status = ? WHERE name = ? AND status != 'pending'")
                .bind(status.as_str())
                .bind(name)
                .execute(&mut *conn)
                .await?;
            if r.rows_affected() == 0 {
                return Err(StoreError::CaState(format!(
                    "CA {name} has no certificate yet"
                )));
            }
        }
        PkiOp::PutProfile { record, create } => {
            let r = if *create {
                let r = sqlx::query(
                    "INSERT INTO profiles (name, ca, spec, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                )
                .bind(&record.name)
                .bind(&record.ca)
                .bind(&record.spec)
                .bind(&record.created_at)
                .bind(&record.updated_at)
                .execute(&mut *conn)
                .await;
                crate::writer::unique(r, || StoreError::DuplicateProfile(record.name.clone()))?
            } else {
                sqlx::query("UPDATE profiles SET ca = ?, spec = ?, updated_at = ? WHERE name = ?")
                    .bind(&record.ca)
                    .bind(&record.spec)
                    .bind(&record.updated_at)
                    .bind(&record.name)
                    .execute(&mut *conn)
                    .await?
            };
            if r.rows_affected() == 0 {
                return Err(StoreError::NoSuchProfile(record.name.clone()));
            }
        }
        PkiOp::DeleteProfile(name) => {
            // Records keep the profile's name (quota, request keys): a profile that has
            // issued stays, and can only be replaced.
            let used: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM certificates WHERE profile = ? LIMIT 1")
                    .bind(name)
                    .fetch_optional(&mut *conn)
                    .await?;
            if used.is_some() {
                return Err(StoreError::ProfileInUse(name.clone()));
            }
            let r = sqlx::query("DELETE FROM profiles WHERE name = ?")
                .bind(name)
                .execute(&mut *conn)
                .await?;
            if r.rows_affected() == 0 {
                return Err(StoreError::NoSuchProfile(name.clone()));
            }
        }
        PkiOp::Issue {
            cert,
            ca_key_id,
            max_per_device,
        } => {
            // The CA and its key must still be active now, at commit.
            let ok: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM cas JOIN keys ON keys.id = cas.key_id
                 WHERE cas.name = ? AND cas.status = 'active' AND keys.id = ? AND keys.status = 'active'",
            )
            .bind(&cert.ca)
            .bind(ca_key_id)
            .fetch_optional(&mut *conn)
            .await?;
            if ok.is_none() {
                return Err(StoreError::CaState(format!("CA {} is not active", cert.ca)));
            }
            serial_unused(conn, &cert.serial).await?;
            if *max_per_device > 0 {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM certificates
                     WHERE profile = ? AND device_id = ? AND status = 'valid' AND not_after > ?",
                )
                .bind(&cert.profile)
                .bind(&cert.device_id)
                .bind(&cert.issued_at)
                .fetch_one(&mut *conn)
                .await?;
                if n >= i64::from(*max_per_device) {
                    return Err(StoreError::DeviceQuota {
                        device_id: cert.device_id.clone(),
                        max: *max_per_device,
                    });
                }
            }
            let r = sqlx::query(
                "INSERT INTO certificates (serial, ca, profile, device_id, subject, not_before, not_after, der,
                    requested_by, issued_at, key_generated, request_key, status)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'valid')",
            )
            .bind(&cert.serial)
            .bind(&cert.ca)
            .bind(&cert.profile)
            .bind(&cert.device_id)
            .bind(&cert.subject)
            .bind(&cert.not_before)
            .bind(&cert.not_after)
            .bind(&cert.der)
            .bind(&cert.requested_by)
            .bind(&cert.issued_at)
            .bind(cert.key_generated)
            .bind(&cert.request_key)
            .execute(&mut *conn)
            .await;
            crate::writer::unique(r, || StoreError::DuplicateCertificate(cert.serial.clone()))?;
        }
        PkiOp::Revoke { serial, at, reason } => {
            let r = sqlx::query(
                "UPDATE certificates SET status = 'revoked', revoked_at = ?, revocation_reason = ?
                 WHERE serial = ? AND status = 'valid'",
            )
            .bind(at)
            .bind(reason)
            .bind(serial)
            .execute(&mut *conn)
            .await?;
            if r.rows_affected() == 0 {
                let exists: Option<i64> =
                    sqlx::query_scalar("SELECT 1 FROM certificates WHERE serial = ?")
                        .bind(serial)
                        .fetch_optional(&mut *conn)
                        .await?;
                return Err(match exists {
                    Some(_) => StoreError::AlreadyRevoked(serial.clone()),
                    None => StoreError::NoSuchCertificate(serial.clone()),
                });
            }
        }
        PkiOp::RevokeCa {
            name,
            serial,
            at,
            reason,
        } => {
            let row = sqlx::query("SELECT parent, revoked_at FROM cas WHERE name = ?")
                .bind(name)
                .fetch_optional(&mut *conn)
                .await?
                .ok_or_else(|| StoreError::NoSuchCa(name.clone()))?;
            if row.try_get::<Option<String>, _>("parent")?.is_none() {
                return Err(StoreError::CaWithoutParent(name.clone()));
            }
            if row.try_get::<Option<String>, _>("revoked_at")?.is_some() {
                return Err(StoreError::CaAlreadyRevoked(name.clone()));
            }
            // Rows made before serials were recorded get theirs now.
            let r = sqlx::query(
                "UPDATE cas SET status = 'disabled', serial = COALESCE(serial, ?), revoked_at = ?, revocation_reason = ?
                 WHERE name = ? AND revoked_at IS NULL AND (serial IS NULL OR serial = ?)",
            )
            .bind(serial)
            .bind(at)
            .bind(reason)
            .bind(name)
            .bind(serial)
            .execute(&mut *conn)
            .await;
            let r = crate::writer::unique(r, || StoreError::DuplicateCertificate(serial.clone()))?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Corrupt(format!(
                    "the recorded serial of CA {name} is not its certificate's"
                )));
            }
        }
        PkiOp::StoreCrl {
            ca,
            number,
            der,
            next_update,
        } => {
            // Numbers only grow (RFC 5280 5.2.3): a CRL built from an older view loses.
            let r = sqlx::query(
                "UPDATE cas SET crl = ?, crl_number = ?, crl_next_update = ? WHERE name = ? AND crl_number < ?",
            )
            .bind(der)
            .bind(number)
            .bind(next_update)
            .bind(ca)
            .bind(number)
            .execute(&mut *conn)
            .await?;
            if r.rows_affected() == 0 {
                return Err(StoreError::CaState(format!("a newer CRL of {ca} exists")));
            }
        }
    }
    Ok(())
}

/// Serials are unique across device and CA certificates: both kinds appear on a
/// parent's CRL, so a shared serial would revoke the wrong one.
async fn serial_unused(conn: &mut SqliteConnection, serial: &str) -> Result<(), StoreError> {
    let taken: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM certificates WHERE serial = ?1 UNION ALL SELECT 1 FROM cas WHERE serial = ?1",
    )
    .bind(serial)
    .fetch_optional(&mut *conn)
    .await?;
    match taken {
        Some(_) => Err(StoreError::DuplicateCertificate(serial.to_owned())),
        None => Ok(()),
    }
}

fn ca_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<CaRecord, StoreError> {
    Ok(CaRecord {
        name: r.try_get("name")?,
        key_id: r.try_get("key_id")?,
        status: match r.try_get::<String, _>("status")?.as_str() {
            "pending" => CaStatus::Pending,
            "active" => CaStatus::Active,
            "disabled" => CaStatus::Disabled,
            _ => return Err(StoreError::Corrupt("CA status".into())),
        },
        subject: r.try_get("subject")?,
        parent: r.try_get("parent")?,
        csr_pem: r.try_get("csr_pem")?,
        certificate: r.try_get("certificate")?,
        chain_pem: r.try_get("chain_pem")?,
        not_after: r.try_get("not_after")?,
        crl_number: r.try_get("crl_number")?,
        crl: r.try_get("crl")?,
        crl_next_update: r.try_get("crl_next_update")?,
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
        serial: r.try_get("serial")?,
        revoked_at: r.try_get("revoked_at")?,
        revocation_reason: r.try_get("revocation_reason")?,
    })
}

fn profile_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<ProfileRecord, StoreError> {
    Ok(ProfileRecord {
        name: r.try_get("name")?,
        ca: r.try_get("ca")?,
        spec: r.try_get("spec")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn cert_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<CertRecord, StoreError> {
    Ok(CertRecord {
        serial: r.try_get("serial")?,
        ca: r.try_get("ca")?,
        profile: r.try_get("profile")?,
        device_id: r.try_get("device_id")?,
        subject: r.try_get("subject")?,
        not_before: r.try_get("not_before")?,
        not_after: r.try_get("not_after")?,
        der: r.try_get("der")?,
        requested_by: r.try_get("requested_by")?,
        issued_at: r.try_get("issued_at")?,
        key_generated: r.try_get("key_generated")?,
        request_key: r.try_get("request_key")?,
        status: r.try_get("status")?,
        revoked_at: r.try_get("revoked_at")?,
        revocation_reason: r.try_get("revocation_reason")?,
    })
}

/// Usage counters of a CA.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CaCounters {
    pub issued: i64,
    pub revoked: i64,
}

impl Store {
    pub async fn create_ca(
        &self,
        key: KeyRecord,
        ca: CaRecord,
        event: crate::AuditEvent,
    ) -> Result<u64, StoreError> {
        self.submit(
            crate::writer::Op::Pki(Box::new(PkiOp::CreateCa(Box::new(key), Box::new(ca)))),
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
        event: crate::AuditEvent,
    ) -> Result<u64, StoreError> {
        let op = PkiOp::ActivateCa {
            name: name.to_owned(),
            certificate,
            chain_pem,
            not_after,
        };
        self.submit(crate::writer::Op::Pki(Box::new(op)), event)
            .await
    }

    pub async fn set_ca_status(
        &self,
        name: &str,
        status: CaStatus,
        event: crate::AuditEvent,
    ) -> Result<u64, StoreError> {
        let op = PkiOp::SetCaStatus(name.to_owned(), status);
        self.submit(crate::writer::Op::Pki(Box::new(op)), event)
            .await
    }

    pub async fn put_profile(
        &self,
        record: ProfileRecord,
        create: bool,
        event: crate::AuditEvent,
    ) -> Result<u64, StoreError> {
        let op = PkiOp::PutProfile { record, create };
        self.submit(crate::writer::Op::Pki(Box::new(op)), event)
            .await
    }

    pub async fn delete_profile(
        &self,
        name: &str,
        event: crate::AuditEvent,
    ) -> Result<u64, StoreError> {
        let op = PkiOp::DeleteProfile(name.to_owned());
        self.submit(crate::writer::Op::Pki(Box::new(op)), event)
            .await
    }

    /// Record an issued certificate with its audit record (the CA key's use), if the
    /// CA is still active and the device is under its quota at commit time.
    pub async fn record_certificate(
        &self,
        cert: CertRecord,
        ca_key_id: &str,
        max_per_device: u32,
        event: crate::AuditEvent,
    ) -> Result<u64, StoreError> {
        let op = PkiOp::Issue {
            cert: Box::new(cert),
            ca_key_id: ca_key_id.to_owned(),
            max_per_device,
        };
        self.submit(crate::writer::Op::Pki(Box::new(op)), event)
            .await
    }

    pub async fn revoke_certificate(
        &self,
        serial: &str,
        at: &str,
        reason: &str,
        event: crate::AuditEvent,
    ) -> Result<u64, StoreError> {
        let op = PkiOp::Revoke {
            serial: serial.to_owned(),
            at: at.to_owned(),
            reason: reason.to_owned(),
        };
        self.submit(crate::writer::Op::Pki(Box::new(op)), event)
            .await
    }

    /// Revoke the certificate of intermediate `name` (serial `serial`) under its
    /// parent, with its audit record; the CA is disabled in the same transaction.
    pub async fn revoke_ca(
        &self,
        name: &str,
        serial: &str,
        at: &str,
        reason: &str,
        event: crate::AuditEvent,
    ) -> Result<u64, StoreError> {
        let op = PkiOp::RevokeCa {
            name: name.to_owned(),
            serial: serial.to_owned(),
            at: at.to_owned(),
            reason: reason.to_owned(),
        };
        self.submit(crate::writer::Op::Pki(Box::new(op)), event)
            .await
    }

    pub async fn store_crl(
        &self,
        ca: &str,
        number: i64,
        der: Vec<u8>,
        next_update: String,
        event: crate::AuditEvent,
    ) -> Result<u64, StoreError> {
        let op = PkiOp::StoreCrl {
            ca: ca.to_owned(),
            number,
            der,
            next_update,
        };
        self.submit(crate::writer::Op::Pki(Box::new(op)), event)
            .await
    }

    pub async fn get_ca(&self, name: &str) -> Result<Option<CaRecord>, StoreError> {
        sqlx::query("SELECT * FROM cas WHERE name = ?")
            .bind(name)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(ca_from_row)
            .transpose()
    }

    pub async fn list_cas(&self) -> Result<Vec<CaRecord>, StoreError> {
        sqlx::query("SELECT * FROM cas ORDER BY name")
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(ca_from_row)
            .collect()
    }

    pub async fn ca_counters(&self, name: &str) -> Result<CaCounters, StoreError> {
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS n FROM certificates WHERE ca = ? GROUP BY status",
        )
        .bind(name)
        .fetch_all(self.pool())
        .await?;
        let mut c = CaCounters::default();
        for r in rows {
            let n: i64 = r.try_get("n")?;
            c.issued += n;
            if r.try_get::<String, _>("status")? == "revoked" {
                c.revoked += n;
            }
        }
        Ok(c)
    }

    pub async fn get_profile(&self, name: &str) -> Result<Option<ProfileRecord>, StoreError> {
        sqlx::query("SELECT * FROM profiles WHERE name = ?")
            .bind(name)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(profile_from_row)
            .transpose()
    }

    pub async fn list_profiles(&self) -> Result<Vec<ProfileRecord>, StoreError> {
        sqlx::query("SELECT * FROM profiles ORDER BY name")
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(profile_from_row)
            .collect()
    }

    pub async fn get_certificate(&self, serial: &str) -> Result<Option<CertRecord>, StoreError> {
        sqlx::query("SELECT * FROM certificates WHERE serial = ?")
            .bind(serial)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(cert_from_row)
            .transpose()
    }

    pub async fn certificate_by_request_key(
        &self,
        profile: &str,
        request_key: &str,
    ) -> Result<Option<CertRecord>, StoreError> {
        sqlx::query("SELECT * FROM certificates WHERE profile = ? AND request_key = ?")
            .bind(profile)
            .bind(request_key)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(cert_from_row)
            .transpose()
    }

    pub async fn search_certificates(&self, q: &CertQuery) -> Result<Vec<CertRecord>, StoreError> {
        let like = q.subject.as_ref().map(|s| {
            format!(
                "%{}%",
                s.replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            )
        });
        // Grant patterns use only `[a-z0-9._-]` and `*`, where SQLite's GLOB means the
        // same as `pattern_matches`.
        let visible = match &q.visible {
            None => String::new(),
            Some(v) if v.is_empty() => " AND 0".to_owned(),
            Some(v) => format!(
                " AND ({})",
                (0..v.len().min(64))
                    .map(|i| format!("profile GLOB ?{}", i + 8))
                    .collect::<Vec<_>>()
                    .join(" OR ")
            ),
        };
        let sql = format!(
            "SELECT * FROM certificates
             WHERE (?1 IS NULL OR device_id = ?1)
               AND (?2 IS NULL OR serial = ?2)
               AND (?3 IS NULL OR subject LIKE ?3 ESCAPE '\\')
               AND (?4 IS NULL OR profile = ?4)
               AND (?5 IS NULL OR ca = ?5)
               AND (?6 IS NULL OR status = ?6){visible}
             ORDER BY issued_at DESC, serial
             LIMIT ?7"
        );
        let mut query = sqlx::query(&sql)
            .bind(&q.device_id)
            .bind(&q.serial)
            .bind(like)
            .bind(&q.profile)
            .bind(&q.ca)
            .bind(&q.status)
            .bind(i64::from(q.limit.clamp(1, 1000)));
        for p in q.visible.iter().flatten().take(64) {
            query = query.bind(p);
        }
        query
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(cert_from_row)
            .collect()
    }

    /// When the newest revocation under `ca` (of a device or intermediate CA
    /// certificate) happened, if any.
    pub async fn latest_revocation(&self, ca: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT MAX(t) FROM (
                SELECT revoked_at AS t FROM certificates WHERE ca = ?1 AND status = 'revoked'
                UNION ALL
                SELECT revoked_at AS t FROM cas WHERE parent = ?1 AND revoked_at IS NOT NULL)",
        )
        .bind(ca)
        .fetch_one(self.pool())
        .await?)
    }

    /// Revoked certificates `ca` issued, devices' and intermediate CAs', for its CRL.
    pub async fn revoked_for_ca(&self, ca: &str) -> Result<Vec<RevokedRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT serial, revoked_at, revocation_reason FROM certificates
             WHERE ca = ?1 AND status = 'revoked'
             UNION ALL
             SELECT serial, revoked_at, revocation_reason FROM cas
             WHERE parent = ?1 AND revoked_at IS NOT NULL AND serial IS NOT NULL
             ORDER BY revoked_at, serial",
        )
        .bind(ca)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RevokedRow {
                    serial: r.try_get("serial")?,
                    revoked_at: r
                        .try_get::<Option<String>, _>("revoked_at")?
                        .unwrap_or_default(),
                    reason: r
                        .try_get::<Option<String>, _>("revocation_reason")?
                        .unwrap_or_else(|| "unspecified".into()),
                })
            })
            .collect()
    }
}
