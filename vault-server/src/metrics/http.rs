//! The `/metrics` endpoint on hyper (HTTP/1.1): `GET /metrics`, nothing else. A few connections
//! at once (more are closed on accept), and each connection gets one deadline for everything,
//! so a slow or silent scraper cannot hold it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::Metrics;
use super::Scraped;
use crate::store::Store;

/// The endpoint's limits.
#[derive(Debug, Clone, Copy)]
pub struct MetricsLimits {
    /// Connections at once; more are closed on accept.
    pub max_connections: usize,
    /// Longest a connection may live, request read and response written included.
    pub deadline: Duration,
}

impl Default for MetricsLimits {
    fn default() -> Self {
        Self { max_connections: 8, deadline: Duration::from_secs(10) }
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

/// Serves `/metrics` on `listener` until the task is dropped.
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>, store: Arc<dyn Store>, limits: MetricsLimits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("metrics: connection cap reached; closing a new connection");
            continue;
        };
        let (m, s) = (metrics.clone(), store.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| answer(req, m.clone(), s.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(limits.deadline, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection failed"),
                Err(_) => tracing::debug!("metrics connection hit its deadline; closed"),
            }
        });
    }
}
