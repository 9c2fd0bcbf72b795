//! Admission for each service: the vault's calls authenticate first and only then wait for one
//! of the vault's slots, so unauthenticated traffic can never take them; health and reflection
//! (open without a token) get a small budget of their own, refuse calls over it at once, and
//! must finish within [`PUBLIC_TIMEOUT`]. A public call keeps its slot until its response body
//! ends, so a streaming call (health `Watch`, reflection) is counted, and cut, like a unary one.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tower_service::Service;

use super::listener::Peer;
use crate::auth::Tokens;
use crate::clock::{Clock, SystemClock};
use crate::grpc::public_budget_exhausted;
use crate::metrics::Metrics;

/// Longest a health or reflection call may run.
pub const PUBLIC_TIMEOUT: Duration = Duration::from_secs(10);

/// Who may call, and how many calls run at once.
#[derive(Clone)]
enum Gate {
    /// Bearer token first; then wait for a slot. One `Arc`, so a call clones one refcount.
    Authenticated(Arc<Admission>),
    /// No token; a slot of these (shared by the open services) now, or RESOURCE_EXHAUSTED.
    Public(Arc<Semaphore>),
}

/// What an authenticated call passes through.
struct Admission {
    tokens: Arc<Tokens>,
    metrics: Arc<Metrics>,
    slots: Semaphore,
}

/// A service behind its gate and its slots.
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    gate: Gate,
}

impl<S> Guarded<S> {
    /// The vault service: authenticated, `slots` calls at once (more wait).
    pub fn authenticated(inner: S, tokens: Arc<Tokens>, metrics: Arc<Metrics>, slots: usize) -> Self {
        Self { inner, gate: Gate::Authenticated(Arc::new(Admission { tokens, metrics, slots: Semaphore::new(slots) })) }
    }

    /// Health and reflection: sharing `slots`, refused over them.
    pub fn public(inner: S, slots: Arc<Semaphore>) -> Self {
        Self { inner, gate: Gate::Public(slots) }
    }
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

type Respond = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<S> Service<http::Request<Body>> for Guarded<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Respond;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Generated tonic services are always ready; the slot is taken per call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let mut inner = self.inner.clone();
        match &self.gate {
            Gate::Authenticated(admission) => {
                let admission = admission.clone();
                Box::pin(async move {
                    let peer = req.extensions().get::<Peer>();
                    let ip = peer.and_then(|p| p.tcp.remote_addr()).map(|a| a.ip());
                    let mut values = req.headers().get_all(http::header::AUTHORIZATION).iter();
                    let header = match (values.next(), values.next()) {
                        (Some(v), None) => v.to_str().ok(),
                        (None, _) => None,
                        // Two tokens: neither is chosen (a proxy's and a caller's could differ).
                        (Some(_), Some(_)) => Some(""),
                    };
                    match admission.tokens.authenticate(header, ip, SystemClock.now_millis()).await {
                        Ok(caller) => {
                            // Its connection keeps its slot at the cap from now on.
                            if let Some(peer) = peer {
                                peer.standing.authenticated();
                            }
                            req.extensions_mut().insert(caller);
                        }
                        Err(e) => {
                            admission.metrics.observe_auth_failure(e.reason());
                            return Ok(tonic::Status::from(e).into_http());
                        }
                    }
                    // The semaphore is never closed; a failed acquire would only mean no limit.
                    let _slot = admission.slots.acquire().await.ok();
                    inner.call(req).await
                })
            }
            Gate::Public(slots) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    let response = public_budget_exhausted().into_http();
                    return Box::pin(async move { Ok(response) });
                };
                Box::pin(async move {
                    let deadline = tokio::time::Instant::now() + PUBLIC_TIMEOUT;
                    match tokio::time::timeout_at(deadline, inner.call(req)).await {
                        Ok(Ok(response)) => Ok(response.map(|body| {
                            Body::new(Bounded {
                                body,
                                _slot: slot,
                                deadline: Box::pin(tokio::time::sleep_until(deadline)),
                            })
                        })),
                        Ok(Err(never)) => match never {},
                        Err(_) => {
                            Ok(tonic::Status::deadline_exceeded("health and reflection calls end after 10 s")
                                .into_http())
                        }
                    }
                })
            }
        }
    }
}

/// A public call's response body: holds the call's slot until it ends, and ends it at the
/// deadline (the stream is reset) if it is still going.
struct Bounded {
    body: Body,
    _slot: OwnedSemaphorePermit,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for Bounded {
    type Data = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(tonic::Status::deadline_exceeded(
                "health and reflection calls end after 10 s",
            ))));
        }
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
