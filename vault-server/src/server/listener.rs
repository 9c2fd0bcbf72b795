//! The accept loop in front of tonic: a cap on open connections, and on those of one peer, TCP
//! keepalive and no Nagle, and an opening deadline, so that idle sockets cannot pile up and one
//! host cannot hold every slot. A connection over the peer's cap is closed at once; at the
//! global cap, a connection that has not authenticated gives way (the `evict` module). Within the
//! handshake timeout a connection must finish its TLS handshake (if TLS is
//! on) and send the whole HTTP/2 preface; HTTP/2 pings take over from there. The preface read
//! here is replayed to the server.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::evict::{Evictable, Held, Standing};
use crate::metrics::Metrics;

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections at most; at the cap one that has not authenticated gives way, or the
    /// new one is closed on accept.
    pub max_connections: usize,
    /// Open connections from one peer ([`crate::auth::peer_key`]) at most.
    pub max_per_peer: usize,
    /// Time for a new connection to finish its TLS handshake (with TLS on) and send the HTTP/2
    /// preface, both within it.
    pub handshake_timeout: Duration,
    /// Idle time before TCP keepalive probes start.
    pub tcp_keepalive: Duration,
}

/// What every HTTP/2 client sends first.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The transport under HTTP/2.
#[derive(Debug)]
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An accepted connection holding one of the cap's permits until it closes. `opening` holds
/// the preface already read while vetting it, handed to the server first.
#[derive(Debug)]
pub struct Admitted {
    io: Io,
    opening: &'static [u8],
    held: Arc<Held>,
    _permit: OwnedSemaphorePermit,
    _peer: PeerSlot,
}

/// What each call learns of its connection: the peer's address, and the connection's
/// standing (a call that authenticates marks it).
#[derive(Debug, Clone)]
pub struct Peer {
    pub tcp: TcpConnectInfo,
    pub standing: Arc<Standing>,
}

/// Open connections per peer; a peer leaves the map with its last connection, so it holds at
/// most as many entries as there are connections.
#[derive(Debug, Default)]
struct PeerCounts(Mutex<HashMap<IpAddr, usize>>);

/// One of a peer's connections, given back when it closes.
#[derive(Debug)]
struct PeerSlot {
    peers: Arc<PeerCounts>,
    key: IpAddr,
}

impl PeerCounts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for `key`, unless it already holds `max`.
    fn take(self: &Arc<Self>, key: IpAddr, max: usize) -> Option<PeerSlot> {
        let mut counts = self.lock();
        let held = counts.entry(key).or_insert(0);
        if *held >= max {
            return None;
        }
        *held += 1;
        Some(PeerSlot { peers: self.clone(), key })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.peers.lock();
        if let Some(held) = counts.get_mut(&self.key) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

impl Connected for Admitted {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        let tcp = match &self.io {
            Io::Plain(s) => s.connect_info(),
            Io::Tls(s) => s.get_ref().0.connect_info(),
        };
        Peer { tcp, standing: self.held.standing.clone() }
    }
}

/// The error a connection chosen to give way fails its I/O with, so the server drops it.
fn given_way() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "closed to admit another connection at the cap")
}

impl Admitted {
    fn given_way(&self, cx: &mut Context<'_>) -> bool {
        self.held.standing.poll_closing(cx).is_ready()
    }
}

/// Forwards an I/O call to whichever transport the connection has.
macro_rules! on_io {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.io {
            Io::Plain($s) => $e,
            Io::Tls($s) => $e,
        }
    };
}

impl AsyncRead for Admitted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.given_way(cx) {
            return Poll::Ready(Err(given_way()));
        }
        if !self.opening.is_empty() {
            let n = self.opening.len().min(buf.remaining());
            buf.put_slice(&self.opening[..n]);
            self.opening = &self.opening[n..];
            return Poll::Ready(Ok(()));
        }
        on_io!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.given_way(cx) {
            return Poll::Ready(Err(given_way()));
        }
        on_io!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.given_way(cx) {
            return Poll::Ready(Err(given_way()));
        }
        on_io!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_io!(self, s => Pin::new(s).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.given_way(cx) {
            return Poll::Ready(Err(given_way()));
        }
        on_io!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

fn tune(stream: &TcpStream, keepalive: Duration) -> io::Result<()> {
    // No Nagle: small responses must not wait for a delayed ACK (a 40 ms stall).
    stream.set_nodelay(true)?;
    let ka = socket2::TcpKeepalive::new().with_time(keepalive).with_interval(keepalive / 4).with_retries(4);
    socket2::SockRef::from(stream).set_tcp_keepalive(&ka)
}

/// Reads the whole HTTP/2 preface; `false` if it is something else or the reader failed.
async fn preface(io: &mut (impl AsyncRead + Unpin)) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut got = [0u8; PREFACE.len()];
    io.read_exact(&mut got).await.is_ok() && &got == PREFACE
}

/// The TLS handshake (if any) and the preface, by `deadline`; `None` (logged) if they did not
/// finish, or the connection was chosen to give way meanwhile.
async fn open(
    stream: TcpStream,
    tls: Option<&tokio_rustls::TlsAcceptor>,
    deadline: tokio::time::Instant,
    standing: &Standing,
) -> Option<Io> {
    let opened = async {
        match tls {
            None => {
                let mut stream = stream;
                preface(&mut stream).await.then_some(Io::Plain(stream))
            }
            Some(acceptor) => {
                let mut stream = match acceptor.accept(stream).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return None;
                    }
                };
                preface(&mut stream).await.then(|| Io::Tls(Box::new(stream)))
            }
        }
    };
    tokio::select! {
        opened = tokio::time::timeout_at(deadline, opened) => {
            let io = opened.ok().flatten();
            if io.is_none() {
                tracing::debug!("a connection did not open HTTP/2 within the handshake timeout; closed");
            }
            io
        }
        () = std::future::poll_fn(|cx| standing.poll_closing(cx)) => {
            tracing::debug!("a connection still opening gave way at the connection cap; closed");
            None
        }
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// A new connection's slot (its permit): held, or queued for the one a connection giving way
/// frees.
enum Permit {
    Held(OwnedSemaphorePermit),
    Waiting(Acquire),
}

/// A slot for a new connection: free, or (at the cap) queued first, then freed by the oldest
/// connection that has not authenticated; `None` (counted, logged) if none can give way.
async fn take_slot(permits: &Arc<Semaphore>, evictable: &Evictable, metrics: &Metrics) -> Option<Permit> {
    if let Ok(permit) = permits.clone().try_acquire_owned() {
        return Some(Permit::Held(permit));
    }
    let mut acquire: Acquire = Box::pin(permits.clone().acquire_owned());
    // Polled once, so the new connection is queued (FIFO) before anyone is chosen and the slot
    // freed for it cannot go to a later one. Outside tokio's task budget: the accept loop does
    // not yield during a burst, and a spent budget makes an acquire answer Pending.
    let once = std::future::poll_fn(|cx| Poll::Ready(acquire.as_mut().poll(cx)));
    match tokio::task::unconstrained(once).await {
        Poll::Ready(Ok(permit)) => Some(Permit::Held(permit)),
        // The semaphore is never closed.
        Poll::Ready(Err(_)) => None,
        Poll::Pending if evictable.close_oldest() => {
            metrics.observe_connection_given_way();
            tracing::debug!("connection cap reached; the oldest connection without a token gives way");
            Some(Permit::Waiting(acquire))
        }
        Poll::Pending => {
            metrics.observe_connection_refused();
            tracing::debug!("connection cap reached and no connection can give way; closing a new connection");
            None
        }
    }
}

/// Accepts on `listener` until the returned stream is dropped, which closes the listen socket.
pub fn admit(
    listener: TcpListener,
    tls: Option<super::LiveTls>,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Admitted>> {
    let (tx, rx) = mpsc::channel(64);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let peers = Arc::new(PeerCounts::default());
    let evictable = Arc::new(Evictable::default());
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, from) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or a transient error: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = peers.take(crate::auth::peer_key(from.ip()), limits.max_per_peer) else {
                metrics.observe_connection_refused();
                tracing::debug!("a peer's connection cap reached; closing its new connection");
                continue;
            };
            if let Err(e) = tune(&stream, limits.tcp_keepalive) {
                tracing::debug!(error = %e, "cannot set socket options; closing the connection");
                continue;
            }
            // One deadline from accept for the slot and the opening together.
            let deadline = tokio::time::Instant::now() + limits.handshake_timeout;
            let Some(taken) = take_slot(&permits, &evictable, &metrics).await else { continue };
            // A connection holding its slot joins the queue now, in accept order; one waiting,
            // once its slot arrives (choosing a waiter would free nothing).
            let held = matches!(taken, Permit::Held(_)).then(|| evictable.admit(limits.max_connections));
            let tls = tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.current()));
            let (tx, evictable) = (tx.clone(), evictable.clone());
            tokio::spawn(async move {
                let permit = match taken {
                    Permit::Held(permit) => permit,
                    Permit::Waiting(acquire) => {
                        let Ok(Ok(permit)) = tokio::time::timeout_at(deadline, acquire).await else {
                            tracing::debug!("the slot given way for a connection did not come back in time");
                            return;
                        };
                        permit
                    }
                };
                let held = held.unwrap_or_else(|| evictable.admit(limits.max_connections));
                if let Some(io) = open(stream, tls.as_ref(), deadline, &held.standing).await {
                    let admitted = Admitted { io, opening: PREFACE, held, _permit: permit, _peer: slot };
                    let _ = tx.send(Ok(admitted)).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    #[tokio::test]
    async fn a_spent_task_budget_never_makes_a_free_slot_look_taken() {
        let (permits, evictable, metrics) = (Arc::new(Semaphore::new(8)), Evictable::default(), Metrics::default());
        let other = evictable.admit(8);
        // An accept loop in a burst never yields: its budget runs out.
        for _ in 0..127 {
            tokio::task::coop::consume_budget().await;
        }
        for _ in 0..4 {
            let taken = take_slot(&permits, &evictable, &metrics).await;
            assert!(matches!(taken, Some(Permit::Held(_))), "a free slot was not taken");
        }
        let mut cx = Context::from_waker(Waker::noop());
        assert!(other.standing.poll_closing(&mut cx).is_pending(), "a connection was chosen to give way below the cap");
    }
}
