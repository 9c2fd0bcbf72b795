//! Per-RPC accounting in one layer: the number of RPCs in flight (so a graceful shutdown can wait
//! for exactly those; waiting for clients to close idle HTTP/2 connections could take forever),
//! and each RPC's method, gRPC code and latency in [`Metrics`].
//!
//! A unary gRPC error comes back "trailers-only", with `grpc-status` in the response headers; a
//! response without it there is a success whose status follows in the trailers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::Notify;
use tonic::codegen::http;
use tower_layer::Layer;
use tower_service::Service;

use crate::metrics::Metrics;

#[derive(Debug, Default)]
struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// The layer, and a handle on the RPCs it is serving.
#[derive(Debug, Clone)]
pub struct Accounting {
    in_flight: Arc<InFlight>,
    metrics: Arc<Metrics>,
}

/// Decrements the count when the RPC's future completes or is dropped.
struct Guard(Arc<InFlight>);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Accounting {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { in_flight: Arc::default(), metrics }
    }

    /// Resolves once no RPC is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.in_flight.idle.notified();
            if self.in_flight.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl<S> Layer<S> for Accounting {
    type Service = AccountingService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccountingService { inner, accounting: self.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct AccountingService<S> {
    inner: S,
    accounting: Accounting,
}

/// Built once: a header name given as a string is parsed on every lookup.
static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// The gRPC code of a `grpc-status` header value (absent means OK; unparsable, UNKNOWN).
fn code(status: Option<&http::HeaderValue>) -> usize {
    status.map_or(0, |v| v.to_str().ok().and_then(|v| v.parse().ok()).unwrap_or(2))
}

impl<S, B, RB> Service<http::Request<B>> for AccountingService<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.accounting.in_flight.count.fetch_add(1, Ordering::AcqRel);
        let guard = Guard(self.accounting.in_flight.clone());
        // Cloning the Uri shares its bytes; no allocation.
        let (uri, metrics, started) = (req.uri().clone(), self.accounting.metrics.clone(), Instant::now());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let out = fut.await;
            let code = match &out {
                Ok(resp) => code(resp.headers().get(&GRPC_STATUS)),
                Err(_) => 2,
            };
            metrics.observe_rpc(uri.path().rsplit('/').next().unwrap_or_default(), code, started.elapsed());
            drop(guard);
            out
        })
    }
}
