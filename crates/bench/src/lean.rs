//! A lean load driver for the sign and certificate figures, in the manner of `wrk`:
//! one HTTP/1.1 keep-alive connection per concurrent client, each request's bytes made
//! before the run and written whole, each answer's head parsed by `httparse` and its
//! body read by its length. All clients run on one thread of their own.
//!
//! The load generator shares the two cores with the keyserver, so what it spends per
//! request is taken from the figure being measured: `reqwest` cost about twice what
//! hyper's client connection did, and that about three times what this costs (see
//! BENCHMARKS.md, issue 19). The keyserver is the same real server either way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Phase;

/// Largest answer head read; the keyserver's are a few hundred bytes.
const MAX_HEAD: usize = 16 * 1024;

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
    /// Each body's whole request as written on the wire.
    fn wire(&self) -> Vec<Bytes> {
        self.bodies
            .iter()
            .map(|body| {
                let mut r = format!(
                    "POST {} HTTP/1.1\r\nhost: {}\r\nauthorization: {}\r\n\
                     content-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    self.path,
                    self.host,
                    self.authorization,
                    body.len()
                )
                .into_bytes();
                r.extend_from_slice(body);
                Bytes::from(r)
            })
            .collect()
    }
}

/// A client's connection and what it has read but not yet used.
struct Conn {
    tcp: TcpStream,
    buf: BytesMut,
}

/// As `drive` in main.rs: `concurrency` clients for `seconds` after 2 s of warm-up; the
/// sorted latencies in µs of the successful requests, the elapsed seconds, the errors.
/// A client whose connection fails counts an error and connects again. The clients run
/// on a single-threaded runtime on a thread of their own, so they never wake each
/// other across cores.
pub(crate) async fn drive(
    concurrency: usize,
    seconds: u64,
    requests: Arc<Requests>,
) -> Result<(Vec<u32>, f64, u64)> {
    let wire = Arc::new(requests.wire());
    let addr = requests.addr;
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bench-clients".into())
        .spawn(move || {
            let run = || -> Result<(Vec<u32>, f64, u64)> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(clients(concurrency, seconds, addr, wire))
            };
            let _ = done.send(run());
        })?;
    result
        .await
        .context("the clients' thread ended without an answer")?
}

async fn clients(
    concurrency: usize,
    seconds: u64,
    addr: SocketAddr,
    wire: Arc<Vec<Bytes>>,
) -> Result<(Vec<u32>, f64, u64)> {
    let phase = Phase::default();
    let mut tasks = Vec::new();
    for client in 0..concurrency {
        let (wire, phase) = (wire.clone(), phase.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(200_000);
            let mut conn = None;
            // Each client starts at its own place in the bodies.
            let mut i = client * 7919;
            while phase.running() {
                i += 1;
                let t = Instant::now();
                let ok = one(&mut conn, addr, &wire[i % wire.len()])
                    .await
                    .unwrap_or_else(|_| {
                        conn = None;
                        false
                    });
                phase.record(ok, t, &mut lat);
            }
            lat
        }));
    }
    phase.run(seconds, tasks).await
}

/// Send `request` on the client's connection (made first if there is none): whether
/// the answer was a success with its whole body read.
async fn one(conn: &mut Option<Conn>, addr: SocketAddr, request: &[u8]) -> Result<bool> {
    if conn.is_none() {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        *conn = Some(Conn {
            tcp,
            buf: BytesMut::with_capacity(4096),
        });
    }
    let Some(c) = conn.as_mut() else {
        bail!("no connection");
    };
    c.tcp.write_all(request).await?;
    loop {
        if let Some((status, length)) = head(&c.buf)? {
            while c.buf.len() < length {
                if c.tcp.read_buf(&mut c.buf).await? == 0 {
                    bail!("connection closed inside an answer");
                }
            }
            c.buf.advance(length);
            return Ok((200..300).contains(&status));
        }
        if c.buf.len() > MAX_HEAD {
            bail!("answer head larger than {MAX_HEAD} bytes");
        }
        if c.tcp.read_buf(&mut c.buf).await? == 0 {
            bail!("connection closed before an answer");
        }
    }
}

/// The status and the whole answer's length (head and body) once its head is in `buf`.
/// Only bodies with a Content-Length are read: the keyserver's JSON answers have one,
/// and anything else counts as an error.
fn head(buf: &[u8]) -> Result<Option<(u16, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head_len) = resp.parse(buf)? else {
        return Ok(None);
    };
    let status = resp.code.context("answer without a status")?;
    let length = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .context("answer without a Content-Length")?;
    let length: usize = std::str::from_utf8(length.value)?.trim().parse()?;
    Ok(Some((status, head_len + length)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_answer_is_complete_only_with_its_head() {
        let a = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(head(a).unwrap(), Some((200, a.len())));
        assert_eq!(head(&a[..20]).unwrap(), None);
        let refused = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(head(refused).unwrap(), Some((403, refused.len())));
        assert!(head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
    }
}
