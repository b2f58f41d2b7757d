//! A lean load driver for the sign and certificate figures: one HTTP/1.1 keep-alive
//! connection per concurrent client, requests written straight onto it with hyper's
//! client connection, bodies made before the run. The load generator shares the two
//! cores with the keyserver, so what it spends per request is taken from the figure
//! being measured; `reqwest`'s pool, redirect and header handling cost about twice as
//! much per request as this (see BENCHMARKS.md, issue 19).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use crate::Phase;

/// One request's parts: the bodies are cycled through, the rest is the same for all.
pub(crate) struct Requests {
    pub(crate) addr: SocketAddr,
    /// The Host header: `addr` as text.
    pub(crate) host: String,
    pub(crate) path: String,
    pub(crate) authorization: String,
    pub(crate) bodies: Vec<Bytes>,
}

impl Requests {
    fn build(&self, i: usize) -> Result<hyper::Request<Full<Bytes>>> {
        let body = self.bodies[i % self.bodies.len()].clone();
        Ok(hyper::Request::post(self.path.as_str())
            .header(hyper::header::HOST, self.host.as_str())
            .header(hyper::header::AUTHORIZATION, self.authorization.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?)
    }
}

async fn connect(addr: SocketAddr) -> Result<http1::SendRequest<Full<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (send, conn) = http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(send)
}

/// As `drive` in main.rs: `concurrency` clients for `seconds` after 2 s of warm-up; the
/// sorted latencies in µs of the successful requests, the elapsed seconds, the errors.
/// A client whose connection fails counts an error and connects again.
pub(crate) async fn drive(
    concurrency: usize,
    seconds: u64,
    requests: Arc<Requests>,
) -> Result<(Vec<u32>, f64, u64)> {
    let phase = Phase::default();
    let mut tasks = Vec::new();
    for client in 0..concurrency {
        let (requests, phase) = (requests.clone(), phase.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(200_000);
            let mut send = None;
            // Each client starts at its own place in the bodies.
            let mut i = client * 7919;
            while phase.running() {
                i += 1;
                let t = Instant::now();
                let ok = one(&mut send, &requests, i).await.unwrap_or_else(|_| {
                    send = None;
                    false
                });
                phase.record(ok, t, &mut lat);
            }
            lat
        }));
    }
    phase.run(seconds, tasks).await
}

/// Send request `i` on the client's connection (made first if there is none): whether
/// the answer was a success with its whole body read.
async fn one(
    send: &mut Option<http1::SendRequest<Full<Bytes>>>,
    requests: &Requests,
    i: usize,
) -> Result<bool> {
    if send.is_none() {
        *send = Some(connect(requests.addr).await?);
    }
    let Some(s) = send.as_mut() else {
        return Ok(false);
    };
    s.ready().await?;
    let resp = s.send_request(requests.build(i)?).await?;
    let ok = resp.status().is_success();
    resp.into_body().collect().await?;
    Ok(ok)
}
