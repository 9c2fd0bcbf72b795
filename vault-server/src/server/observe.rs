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

/// The canonical name of a `grpc-status` value (absent means OK).
fn code_name(status: Option<&http::HeaderValue>) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    let code = status.and_then(|v| v.to_str().ok()).map_or(Some(0), |v| v.parse::<usize>().ok());
    code.and_then(|c| NAMES.get(c)).copied().unwrap_or("UNKNOWN")
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
        let method = req.uri().path().rsplit('/').next().unwrap_or_default().to_owned();
        let (metrics, started) = (self.metrics.clone(), Instant::now());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let out = fut.await;
            let code = match &out {
                Ok(resp) => code_name(resp.headers().get("grpc-status")),
                Err(_) => "UNKNOWN",
            };
            metrics.observe_rpc(&method, code, started.elapsed());
            out
        })
    }
}
