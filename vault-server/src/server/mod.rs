//! Serving: the vault service, health and reflection on one listener, until a shutdown signal.

mod accounting;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::auth::{Authenticate, RELOAD_EVERY, Tokens};
use crate::grpc::VaultService;
use crate::metrics::Metrics;
use crate::proto::{FILE_DESCRIPTOR_SET, auth_code_vault_server::AuthCodeVaultServer};
use crate::vault::Vault;
use accounting::Accounting;

/// Largest request accepted; the biggest legitimate one is a few hundred bytes.
const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Longest an RPC may run, probes included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a shutdown waits for RPCs in flight.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// How the listener is secured, and how often usage is written.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// TLS (and, with a client CA, mTLS); plaintext when `None`.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// How often coalesced Reveal usage is written.
    pub usage_flush: Duration,
    /// Where RPCs are counted.
    pub metrics: Arc<Metrics>,
}

/// Largest number of RPCs handled at once; more wait (HTTP/2 flow control pushes back).
const MAX_CONCURRENT_RPCS: usize = 1024;
/// Largest HTTP/2 header list accepted.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// Re-reads tokens (so revocations apply within a second); writes coalesced usage every
/// `usage_flush`.
async fn upkeep(vault: Arc<Vault>, tokens: Arc<Tokens>, usage_flush: Duration) {
    let mut reload = tokio::time::interval(RELOAD_EVERY);
    reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flush = tokio::time::interval_at(tokio::time::Instant::now() + usage_flush, usage_flush);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = reload.tick() => {
                let t = tokens.clone();
                match tokio::task::spawn_blocking(move || t.reload()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "token table refresh failed"),
                    Err(e) => tracing::warn!(error = %e, "token table refresh task failed"),
                }
            }
            _ = flush.tick() => flush_usage(&vault, &tokens).await,
        }
    }
}

/// Writes Reveal usage and token last-used times; failures keep them for the next try.
async fn flush_usage(vault: &Vault, tokens: &Arc<Tokens>) {
    if let Err(e) = vault.flush_usage().await {
        tracing::warn!(error = %e, "could not write usage; keeping it for the next flush");
    }
    let t = tokens.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || t.flush_uses()).await {
        tracing::warn!(error = %e, "could not record token use");
    }
}

/// Serves on `listener` until `shutdown` resolves; then stops accepting, reports NOT_SERVING
/// and waits (at most [`DRAIN_TIMEOUT`]) for the RPCs in flight.
pub async fn serve(
    listener: TcpListener,
    vault: Arc<Vault>,
    tokens: Arc<Tokens>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AuthCodeVaultServer<VaultService>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc error details, so grpcurl can show ErrorInfo, RetryInfo and BadRequest.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let service = tonic::service::interceptor::InterceptedService::new(
        AuthCodeVaultServer::new(VaultService::new(vault.clone())).max_decoding_message_size(MAX_REQUEST_BYTES),
        Authenticate(tokens.clone()),
    );
    let accounting = Accounting::new(options.metrics.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();

    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = options.tls {
        builder = builder.tls_config(tls)?;
    }
    let upkeep = tokio::spawn(upkeep(vault.clone(), tokens.clone(), options.usage_flush));
    let server = builder
        .timeout(REQUEST_TIMEOUT)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(MAX_CONCURRENT_RPCS))
        .layer(accounting.clone())
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service)
        // No Nagle: small responses must not wait for a delayed ACK (a 40 ms stall).
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let _ = stop_rx.await;
            },
        );
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => {
            upkeep.abort();
            flush_usage(&vault, &tokens).await;
            return Ok(result?);
        }
        () = shutdown => {}
    }
    health.set_not_serving::<AuthCodeVaultServer<VaultService>>().await;
    let _ = stop_tx.send(());
    tokio::select! {
        result = &mut server => result?,
        () = accounting.idle() => tracing::debug!("no RPC in flight"),
        () = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("RPCs still in flight after {DRAIN_TIMEOUT:?}; stopping anyway"),
    }
    upkeep.abort();
    flush_usage(&vault, &tokens).await;
    Ok(())
}
