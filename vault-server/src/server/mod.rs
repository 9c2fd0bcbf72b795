//! Serving: the vault service, health and reflection on one listener, until a shutdown signal.
//! Limits come in layers: connections (cap, first-byte and TLS handshake deadlines, keepalive),
//! HTTP/2 (streams per connection, header list, pings), and per service (authentication before
//! the vault's slots; a small separate budget for the open services).

mod accounting;
mod evict;
mod guard;
mod listener;
mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::auth::{RELOAD_EVERY, Tokens};
use crate::clock::{Clock, SystemClock};
use crate::grpc::VaultService;
use crate::metrics::Metrics;
use crate::proto::{FILE_DESCRIPTOR_SET, auth_code_vault_server::AuthCodeVaultServer};
use crate::vault::Vault;
use accounting::Accounting;
use guard::Guarded;
pub use guard::PUBLIC_TIMEOUT;
pub use listener::ConnectionLimits;
pub use tls::{LiveTls, server_config as tls_config};

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

/// What the listener and its services allow.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connections: ConnectionLimits,
    /// HTTP/2 streams one connection may have open (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_streams_per_connection: u32,
    /// Idle time before an HTTP/2 ping; a ping unanswered within `http2_keepalive_timeout`
    /// closes the connection.
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    /// Authenticated vault RPCs at once; more wait.
    pub max_rpcs: usize,
    /// Health and reflection calls at once; more are refused.
    pub max_public_rpcs: usize,
}

/// How the listener is secured and limited, and how often usage is written.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// TLS (and, with a client CA, mTLS); plaintext when `None`.
    pub tls: Option<LiveTls>,
    pub limits: Limits,
    /// How often coalesced Reveal usage is written.
    pub usage_flush: Duration,
    /// Where RPCs are counted.
    pub metrics: Arc<Metrics>,
}

/// How often an owed destruction (a WAL truncation that did not finish) is retried.
const DESTRUCTION_RETRY: Duration = Duration::from_secs(5);

/// Least time between a flush and an early one (asked for by a full usage map).
const EARLY_FLUSH_GAP: Duration = Duration::from_secs(2);

/// Largest HTTP/2 header list accepted.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// Re-reads tokens (so revocations apply within a second); writes coalesced usage every
/// `usage_flush`.
async fn upkeep(vault: Arc<Vault>, tokens: Arc<Tokens>, usage_flush: Duration) {
    let reload = || {
        let tokens = tokens.clone();
        async move {
            if let Err(e) = tokens.reload(SystemClock.now_millis()).await {
                tracing::warn!(error = %e, "token table refresh failed");
            }
        }
    };
    let flush = || {
        let (vault, tokens) = (vault.clone(), tokens.clone());
        async move { flush_usage(&vault, &tokens).await }
    };
    let filled = || {
        let vault = vault.clone();
        async move { vault.usage_filled().await }
    };
    side_by_side(reload, usage_flush, filled, flush).await;
}

/// Retries an owed destruction every [`DESTRUCTION_RETRY`], and shows in the metrics whether
/// one is owed.
async fn destruction_retries(vault: Arc<Vault>, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(DESTRUCTION_RETRY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A lasting failure (a full disk) is logged once a minute, not at every retry.
    let mut logged: Option<tokio::time::Instant> = None;
    loop {
        tick.tick().await;
        let owed = match vault.finish_destruction().await {
            Ok(owed) => owed,
            Err(e) => {
                if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    tracing::error!(error = %e, "the owed WAL truncation failed; destroyed bytes stay in vault.db-wal (retried every 5 s)");
                    logged = Some(tokio::time::Instant::now());
                }
                true
            }
        };
        metrics.observe_destruction_owed(owed);
    }
}

/// Runs `reload` every [`RELOAD_EVERY`], and `flush` every `every` or as soon as `filled`
/// resolves, side by side: a long flush (a busy hour's usage at a million bindings) must never
/// hold up the token re-read, or the table would outlive its vouch and every token be refused.
async fn side_by_side<R: Future<Output = ()>, E: Future<Output = ()>, F: Future<Output = ()>>(
    mut reload: impl FnMut() -> R,
    every: Duration,
    mut filled: impl FnMut() -> E,
    mut flush: impl FnMut() -> F,
) {
    let reloads = async {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            reload().await;
        }
    };
    let flushes = async {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut early_from = tokio::time::Instant::now();
        loop {
            let early = async {
                filled().await;
                tokio::time::sleep_until(early_from).await;
            };
            tokio::select! {
                _ = tick.tick() => {}
                () = early => tick.reset(),
            }
            flush().await;
            // A database that keeps failing is retried early at most this often.
            early_from = tokio::time::Instant::now() + EARLY_FLUSH_GAP;
        }
    };
    tokio::join!(reloads, flushes);
}

/// Writes Reveal usage and token last-used times; failures keep them for the next try.
async fn flush_usage(vault: &Vault, tokens: &Arc<Tokens>) {
    if let Err(e) = vault.flush_usage().await {
        tracing::warn!(error = %e, "could not write usage; keeping it for the next flush");
    }
    if let Err(e) = tokens.flush_uses().await {
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
    let limits = options.limits;
    let public_slots = Arc::new(tokio::sync::Semaphore::new(limits.max_public_rpcs));
    let health_service =
        Guarded::public(health_service.max_decoding_message_size(MAX_REQUEST_BYTES), public_slots.clone());
    let reflection_v1 =
        Guarded::public(reflection().build_v1()?.max_decoding_message_size(MAX_REQUEST_BYTES), public_slots.clone());
    let reflection_v1alpha =
        Guarded::public(reflection().build_v1alpha()?.max_decoding_message_size(MAX_REQUEST_BYTES), public_slots);
    let service = Guarded::authenticated(
        AuthCodeVaultServer::new(VaultService::new(vault.clone(), options.metrics.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        tokens.clone(),
        options.metrics.clone(),
        limits.max_rpcs,
    );
    let accounting = Accounting::new(options.metrics.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();

    let builder = tonic::transport::Server::builder();
    // Bytes a crash left undestroyed (a kill between a Revoke's commit and its WAL truncation)
    // are destroyed before the first call is served.
    let owed = vault.finish_destruction().await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "the WAL truncation a crash left owed failed; serving, and retrying every 5 s");
        true
    });
    options.metrics.observe_destruction_owed(owed);
    let upkeep = tokio::spawn(upkeep(vault.clone(), tokens.clone(), options.usage_flush));
    let retries = tokio::spawn(destruction_retries(vault.clone(), options.metrics.clone()));
    let incoming = listener::admit(listener, options.tls, limits.connections, options.metrics.clone());
    let server = builder
        .timeout(REQUEST_TIMEOUT)
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        .layer(accounting.clone())
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => {
            upkeep.abort();
            retries.abort();
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
    retries.abort();
    flush_usage(&vault, &tokens).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_long_usage_flush_does_not_hold_up_the_token_reloads() {
        let reloads = AtomicU32::new(0);
        let reload = || {
            reloads.fetch_add(1, Ordering::Relaxed);
            std::future::ready(())
        };
        // The first flush starts after 50 ms and takes 10 s.
        let flush = || tokio::time::sleep(Duration::from_secs(10));
        let run = side_by_side(reload, Duration::from_millis(50), std::future::pending, flush);
        let _ = tokio::time::timeout(Duration::from_secs(1), run).await;
        // About one every RELOAD_EVERY (250 ms), the flush notwithstanding; one, if it waited.
        assert!(reloads.load(Ordering::Relaxed) >= 3, "{} reloads", reloads.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn filled_usage_is_flushed_before_its_interval() {
        let full = tokio::sync::Notify::new();
        let flushes = AtomicU32::new(0);
        let flush = || {
            flushes.fetch_add(1, Ordering::Relaxed);
            std::future::ready(())
        };
        let run = side_by_side(|| std::future::ready(()), Duration::from_secs(3600), || full.notified(), flush);
        let check = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(flushes.load(Ordering::Relaxed), 0, "flushed before the interval or the signal");
            full.notify_one();
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(flushes.load(Ordering::Relaxed), 1, "the signal did not flush");
        };
        tokio::select! {
            () = run => unreachable!("runs for ever"),
            () = check => {}
        }
    }
}
