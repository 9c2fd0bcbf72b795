//! The `/metrics` endpoint on hyper (HTTP/1.1): `GET /metrics`, nothing else. A few connections
//! at once, and each connection gets one deadline for everything. At the cap, the oldest
//! connection that has not sent its request yet is closed to admit the new one, so idle
//! sockets (from any address, the scraper's own included) cannot keep a scrape out.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};

use super::Metrics;
use super::Scraped;
use crate::store::Store;

/// The endpoint's limits.
#[derive(Debug, Clone, Copy)]
pub struct MetricsLimits {
    /// Connections at once. At the cap a new connection closes the oldest one that has not sent
    /// its request yet; with none such, the new one is closed.
    pub max_connections: usize,
    /// Longest a connection may live, request read and response written included.
    pub deadline: Duration,
}

impl Default for MetricsLimits {
    fn default() -> Self {
        Self { max_connections: 8, deadline: Duration::from_secs(10) }
    }
}

/// Connections that have not sent their request yet, oldest first, each with the sender that
/// closes it.
#[derive(Debug, Default)]
struct Idle {
    next: u64,
    waiting: BTreeMap<u64, oneshot::Sender<()>>,
}

#[derive(Debug, Default)]
struct IdleConnections(Mutex<Idle>);

impl IdleConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new connection as idle; the receiver fires if it is chosen to give way.
    fn join(&self) -> (u64, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let mut idle = self.lock();
        let id = idle.next;
        idle.next += 1;
        idle.waiting.insert(id, tx);
        (id, rx)
    }

    /// The connection has sent its request (or ended): it no longer gives way.
    fn leave(&self, id: u64) {
        self.lock().waiting.remove(&id);
    }

    /// Closes the oldest idle connection; false when there is none.
    fn evict_oldest(&self) -> bool {
        let mut idle = self.lock();
        while let Some((_, close)) = idle.waiting.pop_first() {
            if close.send(()).is_ok() {
                return true;
            }
        }
        false
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = "text/plain; version=0.0.4; charset=utf-8".parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

async fn answer(
    req: Request<Incoming>,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET || req.uri().path() != "/metrics" {
        return Ok(text(StatusCode::NOT_FOUND, "only GET /metrics is served here\n".into()));
    }
    let read = async {
        let (active, revoked) = store.count_by_state().await?;
        let now = crate::clock::Clock::now_millis(&crate::clock::SystemClock);
        // Ages in whole seconds; a key "from the future" (clock stepped back) shows 0.
        let data_keys = store
            .data_keys()
            .await?
            .iter()
            .map(|k| (k.key_id, u64::try_from(now.saturating_sub(k.created_at) / 1000).unwrap_or(0)))
            .collect();
        let by_outcome =
            store.count_by_outcome().await?.into_iter().map(|(o, n)| (o.map_or("NONE", |o| o.as_str()), n)).collect();
        Ok::<_, crate::store::StoreError>(Scraped {
            by_outcome,
            bindings: vec![("active", active), ("revoked", revoked)],
            data_keys,
        })
    };
    let rendered = match read.await {
        Ok(scraped) => metrics.render(&scraped).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    Ok(match rendered {
        Ok(body) => text(StatusCode::OK, body),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot render");
            text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the store; see the server log\n".into())
        }
    })
}

/// A slot for a new connection: a free one, else the one an idle connection gives up.
async fn take_slot(slots: &Arc<Semaphore>, idle: &IdleConnections) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if let Ok(slot) = slots.clone().try_acquire_owned() {
        return Some(slot);
    }
    while idle.evict_oldest() {
        // The closed connection's task gives its slot back as soon as it runs.
        if let Ok(Ok(slot)) = tokio::time::timeout(Duration::from_secs(1), slots.clone().acquire_owned()).await {
            return Some(slot);
        }
    }
    None
}

/// Serves `/metrics` on `listener` until the task is dropped.
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>, store: Arc<dyn Store>, limits: MetricsLimits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let idle = Arc::new(IdleConnections::default());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = take_slot(&slots, &idle).await else {
            tracing::debug!("metrics: every connection is answering a request; closing a new one");
            continue;
        };
        let (m, s, idle) = (metrics.clone(), store.clone(), idle.clone());
        let (id, given_way) = idle.join();
        tokio::spawn(async move {
            let _slot = slot;
            let requested = idle.clone();
            let service = hyper::service::service_fn(move |req| {
                requested.leave(id);
                answer(req, m.clone(), s.clone())
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                // Only a send closes it; a sender dropped by `leave` must not.
                Ok(()) = given_way => tracing::debug!("metrics: an idle connection gave way to a new one"),
                done = tokio::time::timeout(limits.deadline, conn) => match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection failed"),
                    Err(_) => tracing::debug!("metrics connection hit its deadline; closed"),
                },
            }
            idle.leave(id);
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::crypto::{KdfParams, Key, Keyring, Salt};
    use crate::store::{SqliteStore, UnlockMaterial};

    async fn scrape(addr: std::net::SocketAddr) -> String {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut got = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut got)).await;
        got
    }

    /// Whether the peer closed `conn` within a moment.
    async fn closed(conn: &mut TcpStream) -> bool {
        let mut buf = [0u8; 1];
        matches!(tokio::time::timeout(Duration::from_millis(300), conn.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    }

    #[tokio::test]
    async fn with_every_connection_answering_a_new_one_gets_no_slot() {
        let (slots, idle) = (Arc::new(Semaphore::new(1)), IdleConnections::default());
        let (id, _given_way) = idle.join();
        let answering = take_slot(&slots, &idle).await.expect("a free slot");
        idle.leave(id);
        assert!(take_slot(&slots, &idle).await.is_none());
        drop(answering);
        assert!(take_slot(&slots, &idle).await.is_some());
    }

    #[tokio::test]
    async fn idle_connections_give_way_to_a_scrape_oldest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, wrapped) = Keyring::generate(&Key::random());
        let material = UnlockMaterial { salt: Salt([0; 16]), params: KdfParams::FLOOR, keys: vec![wrapped] };
        let store: Arc<dyn Store> = Arc::new(SqliteStore::create(&tmp.path().join("v.db"), &material, 0).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = MetricsLimits { max_connections: 2, deadline: Duration::from_secs(30) };
        let server = tokio::spawn(serve_metrics(listener, Arc::new(Metrics::default()), store, limits));
        let mut oldest = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Half a request is still idle.
        let mut partial = TcpStream::connect(addr).await.unwrap();
        partial.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let first = scrape(addr).await;
        assert!(first.starts_with("HTTP/1.1 200") && first.contains("vault_bindings"), "{first}");
        assert!(closed(&mut oldest).await, "the oldest idle connection was kept");
        assert!(!closed(&mut partial).await, "a younger idle connection was closed first");
        // The scrape's slot came back; a new idle connection takes it, and the next scrape
        // closes the half request, now the oldest.
        let mut newer = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = scrape(addr).await;
        assert!(second.starts_with("HTTP/1.1 200"), "{second}");
        assert!(closed(&mut partial).await);
        assert!(!closed(&mut newer).await);
        server.abort();
    }
}
