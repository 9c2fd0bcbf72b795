//! Opening a verified implicit-TLS connection to a provider endpoint. Certificates are checked
//! for the registry's host name even when `--probe-resolve` redirects the connection.

use std::net::SocketAddr;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::{ProbeOutcome, ProbeTls, Step};
use crate::provider::Endpoint;

#[derive(Debug, Clone)]
pub struct Connector {
    tls: ProbeTls,
    connect_timeout: Duration,
}

impl Connector {
    pub fn new(tls: ProbeTls, connect_timeout: Duration) -> Self {
        Self { tls, connect_timeout }
    }

    async fn tcp(&self, host: &str, port: u16) -> Result<TcpStream, Step> {
        let addrs: Vec<SocketAddr> = match self.tls.override_for(host, port) {
            Some(addr) => vec![addr],
            None => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| Step::new(ProbeOutcome::Unreachable, format!("DNS lookup of {host} failed: {e}")))?
                .collect(),
        };
        let mut last = format!("{host} resolved to no address");
        for addr in addrs {
            tracing::debug!(host, port, %addr, "probe connecting");
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(e)) => last = format!("connect to {addr} failed: {e}"),
                Err(_) => return Err(Step::new(ProbeOutcome::TimedOut, format!("connect to {addr} timed out"))),
            }
        }
        Err(Step::new(ProbeOutcome::Unreachable, last))
    }

    /// TCP connect (with the connect timeout), then the TLS handshake for `endpoint.host`.
    pub async fn connect(&self, endpoint: &Endpoint) -> Result<TlsStream<TcpStream>, Step> {
        let tcp = self.tcp(&endpoint.host, endpoint.port).await?;
        tracing::trace!(host = %endpoint.host, "TCP connected; TLS handshake");
        let name = ServerName::try_from(endpoint.host.clone())
            .map_err(|_| Step::new(ProbeOutcome::TlsFailed, format!("{} is not a valid TLS name", endpoint.host)))?;
        TlsConnector::from(self.tls.config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| Step::new(ProbeOutcome::TlsFailed, format!("TLS handshake failed: {e}")))
    }
}
