//! The HTTP edge shared by the keyserver and the keyclient.
//!
//! One accept loop for both servers, so that neither holds a connection for a client
//! that stops talking: headers must arrive within [`Limits::header_read_timeout`]
//! (hyper closes the connection otherwise), a request body within
//! [`Limits::body_read_timeout`] (408 and close), a connection with nothing in flight
//! is closed after [`Limits::idle_timeout`], and at most [`Limits::max_connections`]
//! are open at once (more are closed as soon as they are accepted). TLS (rustls) is
//! optional; its handshake has the header timeout too.

mod body;
mod reload;
mod request_id;

pub use reload::ReloadingCert;
pub use request_id::{request_id, valid_request_id, REQUEST_ID};

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

/// How long clients may take, and how many may be connected. Both servers read them
/// from `[http]` / `INFLUXION_HTTP_*` (docs/configuration.md).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// From the first byte of a request to the end of its headers (and the TLS handshake).
    pub header_read_timeout: Duration,
    /// From the end of the headers to the end of the body, however it trickles in.
    pub body_read_timeout: Duration,
    /// A connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// Open connections at most; more are closed on accept.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

/// How long connections may take to finish after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A rustls server configuration from PEM files (certificate chain, private key), with
/// ALPN for HTTP/2 and HTTP/1.1.
pub fn tls_config(cert: &Path, key: &Path) -> std::io::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |what: &Path, e: rustls::pki_types::pem::Error| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {e}", what.display()),
        )
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| invalid(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert, e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| invalid(key, e))?;
    // One process-wide provider; ring is what reqwest's rustls already uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serve `app` on `listener` until `shutdown` resolves, then let open connections
/// finish (for a few seconds at most).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = body::with_deadline(app, limits.body_read_timeout);
    let max = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    let slots = Arc::new(Semaphore::new(max as usize));
    let (closing_tx, closing_rx) = watch::channel(false);
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment, carry on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // At the cap: closing at once tells the client, and costs nothing more.
            tracing::debug!(%peer, "connection limit reached; closing a new connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, tls, closing) = (app.clone(), tls.clone(), closing_rx.clone());
        tokio::spawn(async move {
            match tls {
                None => connection(stream, app, limits, closing).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => connection(s, app, limits, closing).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake too slow"),
                    }
                }
            }
            drop(slot);
        });
    }
    let _ = closing_tx.send(true);
    // Every connection holds a slot: all slots back means all connections are done.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(max)).await;
    Ok(())
}

/// What a connection is doing, for the idle timeout.
struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    fn touch(&self) {
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .elapsed()
    }
}

/// A request in flight, from its headers until its response body is done or dropped.
pub(crate) struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(a: &Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::AcqRel);
        a.touch();
        Self(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn connection<I>(io: I, app: Router, limits: Limits, mut closing: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        last: Mutex::new(Instant::now()),
    });
    let a = activity.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let guard = InFlight::begin(&a);
        let app = app.clone();
        async move {
            let resp = match app.oneshot(req.map(axum::body::Body::new)).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(resp.map(|b| body::Guarded::new(b, guard)))
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(io), service));
    let tick = (limits.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut ticks = tokio::time::interval(tick);
    let mut closing_since: Option<Instant> = None;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = closing.changed(), if closing_since.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing_since = Some(Instant::now());
            }
            _ = ticks.tick() => match closing_since {
                // A connection that does not finish after a graceful shutdown (a client
                // mid-way through headers, say) is dropped, which closes it.
                Some(since) if since.elapsed() >= limits.header_read_timeout => return,
                Some(_) => {}
                None if activity.idle_for() >= limits.idle_timeout => {
                    conn.as_mut().graceful_shutdown();
                    closing_since = Some(Instant::now());
                }
                None => {}
            },
        }
    }
}
