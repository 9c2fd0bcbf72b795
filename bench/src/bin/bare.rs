//! The baseline: a bare tonic 0.14 server whose one real RPC (`vault.v1.AuthCodeVault/Reveal`)
//! returns a precomputed response from a HashMap. The vault's transport settings at their
//! defaults (HTTP/2 streams per connection, header list size, HTTP/2 and TCP keep-alive,
//! TCP_NODELAY) on a default multi-thread tokio runtime; none of the vault's own per-request
//! layers (its request timeout, connection and RPC limits, accounting, authentication), no
//! crypto, no storage. Prints how many Reveals it answered when it stops.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tonic::{Request, Response, Status};
use vault_bench::proto::{RevealRequest, RevealResponse};

/// `vault.v1`'s server with default stubs (bench/build.rs); generated code.
#[allow(clippy::pedantic)]
mod stubs {
    tonic::include_proto!("vault.v1");
}
use stubs::auth_code_vault_server::{AuthCodeVault, AuthCodeVaultServer};

struct Bare {
    values: HashMap<(String, String), RevealResponse>,
    served: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl AuthCodeVault for Bare {
    async fn reveal(&self, request: Request<RevealRequest>) -> Result<Response<RevealResponse>, Status> {
        let req = request.into_inner();
        let value =
            self.values.get(&(req.mailbox, req.client)).cloned().ok_or_else(|| Status::not_found("no such key"))?;
        self.served.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(value))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:50061".into()).parse()?;
    let mut values = HashMap::new();
    for i in 0..1000 {
        // The same shape and size as the vault's answer for a Sina pair.
        let value = RevealResponse {
            auth_code: format!("CODE{i:012}"),
            version: 1,
            imap_host: "imap.sina.com".into(),
            imap_port: 993,
            smtp_host: "smtp.sina.com".into(),
            smtp_port: 465,
        };
        values.insert((format!("user{i:06}@sina.com"), "sender".to_owned()), value);
    }
    let served = Arc::new(AtomicU64::new(0));
    let service = Bare { values, served: served.clone() };
    let listener = tokio::net::TcpListener::bind::<std::net::SocketAddr>(addr).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // As `vault-server serve` sets them by default (`--max-streams-per-connection 128`,
    // `--http2-keepalive-interval 30`, `--http2-keepalive-timeout 10`, `--tcp-keepalive 60`).
    tonic::transport::Server::builder()
        .max_concurrent_streams(128)
        .http2_max_header_list_size(16 * 1024)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(AuthCodeVaultServer::new(service))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(Duration::from_secs(60)))
                .with_keepalive_interval(Some(Duration::from_secs(15)))
                .with_keepalive_retries(Some(4)),
            async move {
                term.recv().await;
            },
        )
        .await?;
    println!("served {}", served.load(Ordering::Relaxed));
    Ok(())
}
