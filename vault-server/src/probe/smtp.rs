//! The SMTP AUTH probe (lettre) on implicit TLS: EHLO, AUTH, QUIT. A `535` (or Gmail's `534
//! 5.7.9`, "application-specific password required") is a refused code; another refusal is no
//! verdict on it.

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream};
use lettre::transport::smtp::extension::ClientId;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{ProbeOutcome, Step};
use crate::provider::Provider;
use crate::secret::AuthCode;

/// Lets lettre drive a TLS stream we opened and verified ourselves.
#[derive(Debug)]
struct Stream(TlsStream<TcpStream>);

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for Stream {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

/// Runs EHLO and AUTH on an open TLS stream.
pub async fn probe(stream: TlsStream<TcpStream>, provider: &Provider, login: &str, code: &AuthCode) -> Step {
    let hello = ClientId::Domain("authcode-vault.invalid".into());
    let mut conn = match AsyncSmtpConnection::connect_with_transport(Box::new(Stream(stream)), &hello).await {
        Ok(c) => c,
        Err(e) => return Step::new(ProbeOutcome::ProtocolError, format!("SMTP greeting/EHLO failed: {e}")),
    };
    tracing::debug!("SMTP EHLO done; sending AUTH");
    let credentials = Credentials::new(login.to_owned(), code.expose().to_owned());
    let step = match conn.auth(&[Mechanism::Plain, Mechanism::Login], &credentials).await {
        Ok(resp) => Step::new(ProbeOutcome::Accepted, format!("AUTH: {}", resp.code())),
        Err(e) if e.status().is_none() => {
            // No reply to judge: the connection failed, or the reply did not parse.
            let outcome = if e.is_response() { ProbeOutcome::ProtocolError } else { ProbeOutcome::Unreachable };
            Step::new(outcome, format!("AUTH: {e}"))
        }
        Err(e) => auth_refused(provider, e.status().map(|c| c.to_string()).as_deref(), format!("AUTH: {e}")),
    };
    drop(credentials);
    // The answer is already known: QUIT is sent on the side, so a QUIT that stalls (past the
    // probe's own deadline too) cannot turn it into a timeout.
    tokio::spawn(async move {
        let _ = tokio::time::timeout(QUIT_WAIT, conn.quit()).await;
    });
    step
}

/// How long a finished probe waits for the server's answer to QUIT.
const QUIT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A refused AUTH: 535 (credentials invalid) and Gmail's 534 5.7.9 (an application-specific
/// password is required, so a login password was given) are refusals of the code; any other
/// reply (534 "too weak" or "log in via your web browser", 530, 554 "IP blocked", 4xx "try
/// later") is no verdict.
fn auth_refused(provider: &Provider, status: Option<&str>, text: String) -> Step {
    if status == Some("535") || (status == Some("534") && text.contains("5.7.9")) {
        let mut s = Step::new(ProbeOutcome::Rejected, text);
        s.hint = Some(provider.smtp_rejected_hint());
        return s;
    }
    let mut s = Step::new(ProbeOutcome::ProtocolError, text);
    s.hint = Some(
        "the SMTP server refused AUTH for a reason other than the code (see its reply); nothing is concluded \
         about the code"
            .into(),
    );
    s
}

#[cfg(test)]
mod tests {
    use super::auth_refused;
    use crate::outcome::ProbeOutcome;
    use crate::provider::Registry;

    #[test]
    fn only_535_and_gmail_s_app_password_534_are_refusals_of_the_code() {
        let registry = Registry::builtin();
        let p = registry.lookup("sina.com").unwrap();
        for (status, text, outcome) in [
            ("535", "AUTH: permanent error (535): 5.7.8 Username and Password not accepted", ProbeOutcome::Rejected),
            (
                "534",
                "AUTH: permanent error (534): 5.7.9 Application-specific password required",
                ProbeOutcome::Rejected,
            ),
            (
                "534",
                "AUTH: permanent error (534): 5.7.14 Please log in via your web browser",
                ProbeOutcome::ProtocolError,
            ),
            ("534", "AUTH: permanent error (534): Authentication mechanism is too weak", ProbeOutcome::ProtocolError),
            ("554", "AUTH: permanent error (554): 5.7.1 IP address blocked", ProbeOutcome::ProtocolError),
            ("454", "AUTH: transient error (454): try again later", ProbeOutcome::ProtocolError),
        ] {
            assert_eq!(auth_refused(p, Some(status), text.into()).outcome, outcome, "{text}");
        }
    }
}
