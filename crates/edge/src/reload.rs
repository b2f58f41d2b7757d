//! A server certificate read from PEM files and read again on request (SIGHUP), so a
//! renewed certificate takes effect without a restart. New TLS handshakes use the new
//! certificate; connections already open keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The certificate and key files, and what was last read from them.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

fn invalid(what: &Path, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{}: {e}", what.display()),
    )
}

/// Read the chain and key, and check that they belong together.
fn load(cert: &Path, key: &Path) -> std::io::Result<Arc<CertifiedKey>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| invalid(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert, e))?;
    if chain.is_empty() {
        return Err(invalid(cert, "no certificate"));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| invalid(key, e))?;
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| invalid(key, e))?;
    let certified = CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .map_err(|e| invalid(cert, format!("does not match {}: {e}", key.display())))?;
    Ok(Arc::new(certified))
}

impl ReloadingCert {
    /// Read the files once; an error here stops the start.
    pub fn new(cert: &Path, key: &Path) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            current: RwLock::new(load(cert, key)?),
            cert: cert.to_owned(),
            key: key.to_owned(),
        }))
    }

    /// Read the files again. On an error the certificate in use stays.
    pub fn reload(&self) -> std::io::Result<()> {
        let fresh = load(&self.cert, &self.key)?;
        if let Ok(mut current) = self.current.write() {
            *current = fresh;
        }
        Ok(())
    }

    /// A rustls server configuration that always presents the current certificate,
    /// with ALPN for HTTP/2 and HTTP/1.1.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        // One process-wide provider; ring is what reqwest's rustls already uses.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}
