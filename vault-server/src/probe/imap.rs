//! The IMAP login probe: greeting, LOGIN, then (NetEase) ID and EXAMINE INBOX, then LOGOUT.

use async_imap::error::Error as ImapError;
use async_imap::imap_proto::{Response, Status};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{ProbeOutcome, Step};
use crate::provider::{ImapSteps, Provider};
use crate::secret::AuthCode;

/// What the probe says about itself in the IMAP ID command (RFC 2971).
const ID_FIELDS: [(&str, Option<&str>); 2] =
    [("name", Some("authcode-vault")), ("version", Some(env!("CARGO_PKG_VERSION")))];

/// Runs the provider's IMAP steps on an open TLS stream.
pub async fn probe<S>(stream: S, provider: &Provider, login: &str, code: &AuthCode) -> Step
where
    S: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug,
{
    let mut client = async_imap::Client::new(stream);
    match client.read_response().await {
        Ok(Some(greeting)) => match greeting.parsed() {
            Response::Data { status: Status::Ok, .. } => {}
            other => return Step::new(ProbeOutcome::ProtocolError, format!("unexpected greeting: {other:?}")),
        },
        Ok(None) => return Step::new(ProbeOutcome::ProtocolError, "connection closed before the greeting"),
        Err(e) => return Step::new(ProbeOutcome::ProtocolError, format!("reading the greeting failed: {e}")),
    }
    let mut session = match client.login(login, code.expose()).await {
        Ok(session) => session,
        Err((e, _)) => return failure("LOGIN", &e),
    };
    let mut step = Step::new(ProbeOutcome::Accepted, "OK LOGIN completed");
    if provider.imap_steps == ImapSteps::NetEase {
        // NetEase accepts LOGIN from any client, then refuses mailbox access with
        // "NO ... Unsafe Login" unless the client identified itself with ID first.
        if let Err(e) = session.id(ID_FIELDS).await {
            step = failure("ID", &e);
        } else if let Err(e) = session.examine("INBOX").await {
            step = failure("EXAMINE INBOX", &e);
            if step.outcome == ProbeOutcome::Rejected && step.text.to_ascii_lowercase().contains("unsafe login") {
                step.hint = Some(provider.unsafe_login_hint());
            }
        } else {
            step = Step::new(ProbeOutcome::Accepted, "OK LOGIN, ID and EXAMINE INBOX completed");
        }
    }
    // The answer is already known; a failed LOGOUT changes nothing.
    let _ = session.logout().await;
    step
}

fn failure(command: &str, e: &ImapError) -> Step {
    match e {
        ImapError::No(text) => Step::new(ProbeOutcome::Rejected, format!("{command}: NO {}", tidy_status(text))),
        ImapError::Bad(text) => Step::new(ProbeOutcome::ProtocolError, format!("{command}: BAD {}", tidy_status(text))),
        ImapError::Io(e) => Step::new(ProbeOutcome::Unreachable, format!("{command}: connection failed: {e}")),
        other => Step::new(ProbeOutcome::ProtocolError, format!("{command} failed: {other}")),
    }
}

/// async-imap reports `code: Some(AuthenticationFailed), info: Some("...")`; turn that back into
/// the wire form `[AUTHENTICATIONFAILED] ...` that admins recognise.
fn tidy_status(text: &str) -> String {
    let code = text
        .strip_prefix("code: Some(")
        .and_then(|rest| rest.split_once(')'))
        .map(|(c, _)| format!("[{}] ", c.to_ascii_uppercase()));
    let info =
        text.split_once("info: Some(\"").and_then(|(_, rest)| rest.rsplit_once("\")")).map(|(i, _)| i.to_owned());
    match (code, info) {
        (None, None) => text.to_owned(),
        (c, i) => format!("{}{}", c.unwrap_or_default(), i.unwrap_or_default()),
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
        assert_eq!(tidy_status("code: None, info: Some(\"Unsafe Login\")"), "Unsafe Login");
        assert_eq!(tidy_status("plain"), "plain");
    }
}
