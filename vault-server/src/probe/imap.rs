//! The IMAP probe: implicit TLS, greeting, LOGIN, LOGOUT. Certificates are verified against
//! the registry's host name even when `--probe-resolve` redirects the connection.

use std::time::{Duration, Instant};

use async_imap::error::Error as ImapError;
use async_imap::imap_proto::{Response, Status};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{ProbeOutcome, ProbeReport, ProbeRequest, ProbeTls, Prober, sanitize};

/// Probes IMAP logins over implicit TLS.
#[derive(Debug, Clone)]
pub struct ImapProber {
    tls: ProbeTls,
    connect_timeout: Duration,
    overall_timeout: Duration,
}

impl ImapProber {
    pub fn new(tls: ProbeTls, connect_timeout: Duration, overall_timeout: Duration) -> Self {
        Self {
            tls,
            connect_timeout,
            overall_timeout,
        }
    }

    async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, (ProbeOutcome, String)> {
        let addrs: Vec<std::net::SocketAddr> = match self.tls.override_for(host, port) {
            Some(addr) => vec![addr],
            None => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| {
                    (
                        ProbeOutcome::Unreachable,
                        format!("DNS lookup of {host} failed: {e}"),
                    )
                })?
                .collect(),
        };
        let mut last = format!("{host} resolved to no address");
        for addr in addrs {
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(e)) => last = format!("connect to {addr} failed: {e}"),
                Err(_) => {
                    return Err((
                        ProbeOutcome::TimedOut,
                        format!("connect to {addr} timed out"),
                    ));
                }
            }
        }
        Err((ProbeOutcome::Unreachable, last))
    }

    async fn run(&self, req: &ProbeRequest<'_>) -> (ProbeOutcome, String) {
        let (host, port) = (req.endpoint.host.as_str(), req.endpoint.port);
        let tcp = match self.connect(host, port).await {
            Ok(s) => s,
            Err(e) => return e,
        };
        let Ok(name) = ServerName::try_from(host.to_owned()) else {
            return (
                ProbeOutcome::TlsFailed,
                format!("{host} is not a valid TLS server name"),
            );
        };
        let tls = match TlsConnector::from(self.tls.config.clone())
            .connect(name, tcp)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                return (
                    ProbeOutcome::TlsFailed,
                    format!("TLS handshake failed: {e}"),
                );
            }
        };
        let mut client = async_imap::Client::new(tls);
        match client.read_response().await {
            Ok(Some(greeting)) => match greeting.parsed() {
                Response::Data {
                    status: Status::Ok, ..
                } => {}
                other => {
                    return (
                        ProbeOutcome::ProtocolError,
                        format!("unexpected greeting: {other:?}"),
                    );
                }
            },
            Ok(None) => {
                return (
                    ProbeOutcome::ProtocolError,
                    "connection closed before the greeting".into(),
                );
            }
            Err(e) => {
                return (
                    ProbeOutcome::ProtocolError,
                    format!("reading the greeting failed: {e}"),
                );
            }
        }
        match client.login(req.login, req.code.expose()).await {
            Ok(mut session) => {
                // The login already answered the question; a failed LOGOUT changes nothing.
                let _ = session.logout().await;
                (ProbeOutcome::Accepted, "OK LOGIN completed".into())
            }
            Err((ImapError::No(text), _)) => {
                (ProbeOutcome::Rejected, format!("NO {}", tidy_status(&text)))
            }
            Err((ImapError::Bad(text), _)) => (
                ProbeOutcome::ProtocolError,
                format!("BAD {}", tidy_status(&text)),
            ),
            Err((ImapError::Io(e), _)) => (
                ProbeOutcome::Unreachable,
                format!("connection failed during LOGIN: {e}"),
            ),
            Err((e, _)) => (ProbeOutcome::ProtocolError, format!("LOGIN failed: {e}")),
        }
    }
}

/// async-imap reports `code: Some(AuthenticationFailed), info: Some("...")`; turn that back into
/// the wire form `[AUTHENTICATIONFAILED] ...` that admins recognise.
fn tidy_status(text: &str) -> String {
    let code = text
        .strip_prefix("code: Some(")
        .and_then(|rest| rest.split_once(')'))
        .map(|(c, _)| format!("[{}] ", c.to_ascii_uppercase()));
    let info = text
        .split_once("info: Some(\"")
        .and_then(|(_, rest)| rest.rsplit_once("\")"))
        .map(|(i, _)| i.to_owned());
    match (code, info) {
        (None, None) => text.to_owned(),
        (c, i) => format!("{}{}", c.unwrap_or_default(), i.unwrap_or_default()),
    }
}

#[tonic::async_trait]
impl Prober for ImapProber {
    async fn probe(&self, req: ProbeRequest<'_>) -> ProbeReport {
        let started = Instant::now();
        let (outcome, text) = match tokio::time::timeout(self.overall_timeout, self.run(&req)).await
        {
            Ok(r) => r,
            Err(_) => (
                ProbeOutcome::TimedOut,
                format!("no answer within {:?}", self.overall_timeout),
            ),
        };
        ProbeReport {
            outcome,
            server: req.endpoint.to_string(),
            server_response: sanitize(&text, req.code.expose()),
            hint: req.provider.hint(outcome),
            latency: started.elapsed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tidy_status;

    #[test]
    fn tidies_async_imap_status_text() {
        assert_eq!(
            tidy_status("code: Some(AuthenticationFailed), info: Some(\"Authentication failed.\")"),
            "[AUTHENTICATIONFAILED] Authentication failed."
        );
        assert_eq!(
            tidy_status("code: None, info: Some(\"Unsafe Login\")"),
            "Unsafe Login"
        );
        assert_eq!(tidy_status("plain"), "plain");
    }
}
