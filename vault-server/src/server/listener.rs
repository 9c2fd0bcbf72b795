//! The accept loop in front of tonic: a cap on open connections, TCP keepalive and no Nagle, and
//! an opening deadline, so that idle sockets cannot pile up. A connection over the cap is closed
//! at once. In plaintext a connection must send the whole HTTP/2 preface within the handshake
//! timeout (HTTP/2 pings only start after it); with TLS it must start the handshake within it,
//! and tonic gives the handshake the same time again.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::metrics::Metrics;

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections at most; more are closed on accept.
    pub max_connections: usize,
    /// Time for a new connection's first byte (and, with TLS, again for the handshake).
    pub handshake_timeout: Duration,
    /// Idle time before TCP keepalive probes start.
    pub tcp_keepalive: Duration,
}

/// What every HTTP/2 client sends first.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An accepted connection holding one of the cap's permits until it closes. `opening` holds
/// bytes already read while vetting it, handed to the server first.
#[derive(Debug)]
pub struct Admitted {
    stream: TcpStream,
    opening: &'static [u8],
    _permit: OwnedSemaphorePermit,
}

impl Connected for Admitted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Admitted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.opening.is_empty() {
            let n = self.opening.len().min(buf.remaining());
            buf.put_slice(&self.opening[..n]);
            self.opening = &self.opening[n..];
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

fn tune(stream: &TcpStream, keepalive: Duration) -> io::Result<()> {
    // No Nagle: small responses must not wait for a delayed ACK (a 40 ms stall).
    stream.set_nodelay(true)?;
    let ka = socket2::TcpKeepalive::new().with_time(keepalive).with_interval(keepalive / 4).with_retries(4);
    socket2::SockRef::from(stream).set_tcp_keepalive(&ka)
}

/// Plaintext: reads the whole HTTP/2 preface (it is replayed to the server). TLS: waits for the
/// first byte of the handshake. `None` if that did not come in time.
async fn opening(stream: &mut TcpStream, tls: bool, within: Duration) -> Option<&'static [u8]> {
    use tokio::io::AsyncReadExt as _;
    if tls {
        let mut byte = [0u8; 1];
        return matches!(tokio::time::timeout(within, stream.peek(&mut byte)).await, Ok(Ok(n)) if n > 0).then_some(&[]);
    }
    let mut got = [0u8; PREFACE.len()];
    match tokio::time::timeout(within, stream.read_exact(&mut got)).await {
        Ok(Ok(_)) if &got == PREFACE => Some(PREFACE),
        _ => None,
    }
}

/// Accepts on `listener` until the returned stream is dropped, which closes the listen socket.
pub fn admit(
    listener: TcpListener,
    tls: bool,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Admitted>> {
    let (tx, rx) = mpsc::channel(64);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or a transient error: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                metrics.observe_connection_refused();
                tracing::debug!("connection cap reached; closing a new connection");
                continue;
            };
            if let Err(e) = tune(&stream, limits.tcp_keepalive) {
                tracing::debug!(error = %e, "cannot set socket options; closing the connection");
                continue;
            }
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut stream = stream;
                if let Some(opening) = opening(&mut stream, tls, limits.handshake_timeout).await {
                    let _ = tx.send(Ok(Admitted { stream, opening, _permit: permit })).await;
                } else {
                    tracing::debug!("a connection did not open HTTP/2 within the handshake timeout; closed");
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
