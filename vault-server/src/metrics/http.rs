//! A minimal HTTP/1.1 endpoint for Prometheus: `GET /metrics`, nothing else.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Metrics;
use crate::store::Store;

/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;

async fn respond(mut stream: TcpStream, metrics: Arc<Metrics>, store: Arc<dyn Store>) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .map_err(std::io::Error::other)??;
        if n == 0 || head.len() > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_owned();
    let (status, body) = if line.starts_with("GET /metrics ") {
        let counts =
            tokio::task::spawn_blocking(move || store.count_by_state()).await.map_err(std::io::Error::other)?;
        match counts {
            Ok((active, revoked)) => ("200 OK", metrics.render(&[("active", active), ("revoked", revoked)])),
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot count bindings");
                ("500 Internal Server Error", "storage error\n".to_owned())
            }
        }
    } else {
        ("404 Not Found", "only GET /metrics is served here\n".to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Serves `/metrics` on `listener` until the task is dropped.
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>, store: Arc<dyn Store>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (m, s) = (metrics.clone(), store.clone());
                tokio::spawn(async move {
                    if let Err(e) = respond(stream, m, s).await {
                        tracing::debug!(error = %e, "metrics request failed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
