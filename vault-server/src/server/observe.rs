//! Records every RPC's method, gRPC code and latency in [`Metrics`]. A unary gRPC error comes
//! back "trailers-only", with `grpc-status` in the response headers; a response without it in
//! the headers is a success whose status follows in the trailers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;
use tower_layer::Layer;
use tower_service::Service;

use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct Observe(pub Arc<Metrics>);

impl<S> Layer<S> for Observe {
    type Service = ObserveService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ObserveService { inner, metrics: self.0.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct ObserveService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// The gRPC code of a `grpc-status` header value (absent means OK; unparsable, UNKNOWN).
fn code(status: Option<&http::HeaderValue>) -> usize {
    status.map_or(0, |v| v.to_str().ok().and_then(|v| v.parse().ok()).unwrap_or(2))
}

impl<S, B, RB> Service<http::Request<B>> for ObserveService<S>
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
        // Cloning the Uri shares its bytes; no allocation.
        let uri = req.uri().clone();
        let (metrics, started) = (self.metrics.clone(), Instant::now());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let out = fut.await;
            let code = match &out {
                Ok(resp) => code(resp.headers().get("grpc-status")),
                Err(_) => 2,
            };
            metrics.observe_rpc(uri.path().rsplit('/').next().unwrap_or_default(), code, started.elapsed());
            out
        })
    }
}
