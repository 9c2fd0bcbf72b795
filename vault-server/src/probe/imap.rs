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
    tracing::debug!(steps = ?provider.imap_steps, "IMAP greeting received; sending LOGIN");
    let mut session = match client.login(login, code.expose()).await {
        Ok(session) => session,
        Err((e, _)) => return failure("LOGIN", &e),
    };
    let mut step = Step::new(ProbeOutcome::Accepted, "OK LOGIN completed");
    if provider.imap_steps == ImapSteps::NetEase {
        // NetEase accepts LOGIN from any client, then refuses mailbox access with
        // "NO ... Unsafe Login" unless the client identified itself with ID first.
        tracing::debug!("LOGIN accepted; sending ID and EXAMINE INBOX");
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
    tracing::debug!(outcome = step.outcome.as_str(), "IMAP probe done; LOGOUT");
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
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};

    use super::{probe, tidy_status};
    use crate::outcome::ProbeOutcome;
    use crate::provider::Registry;
    use crate::secret::AuthCode;

    #[test]
    fn tidies_async_imap_status_text() {
        assert_eq!(
            tidy_status("code: Some(AuthenticationFailed), info: Some(\"Authentication failed.\")"),
            "[AUTHENTICATIONFAILED] Authentication failed."
        );
        assert_eq!(tidy_status("code: None, info: Some(\"Unsafe Login\")"), "Unsafe Login");
        assert_eq!(tidy_status("plain"), "plain");
    }

    /// A scripted fake of NetEase's IMAP server (stock Dovecot cannot reproduce it): LOGIN
    /// always succeeds; EXAMINE is refused as "Unsafe Login" unless the client sent ID first
    /// (or always, with `refuse_always`). Returns its address and the commands it saw.
    async fn fake_netease(refuse_always: bool) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            write.write_all(b"* OK Coremail System IMap Server Ready\r\n").await.unwrap();
            let mut id_seen = false;
            while let Ok(Some(line)) = lines.next_line().await {
                let mut parts = line.splitn(3, ' ');
                let (tag, cmd) =
                    (parts.next().unwrap_or("*").to_owned(), parts.next().unwrap_or("").to_ascii_uppercase());
                log.lock().unwrap().push(cmd.clone());
                let reply = match cmd.as_str() {
                    "LOGIN" => format!("{tag} OK LOGIN completed\r\n"),
                    "ID" => {
                        id_seen = true;
                        format!("* ID (\"name\" \"Coremail Imap\")\r\n{tag} OK ID completed\r\n")
                    }
                    "EXAMINE" if id_seen && !refuse_always => format!(
                        "* 3 EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 1] UIDs valid\r\n* FLAGS (\\Seen)\r\n\
                         {tag} OK [READ-ONLY] EXAMINE completed\r\n"
                    ),
                    "EXAMINE" => format!("{tag} NO EXAMINE Unsafe Login. Please contact kefu@188.com for help\r\n"),
                    "LOGOUT" => format!("* BYE LOGOUT received\r\n{tag} OK LOGOUT Completed\r\n"),
                    _ => format!("{tag} BAD unknown command\r\n"),
                };
                write.write_all(reply.as_bytes()).await.unwrap();
                if cmd == "LOGOUT" {
                    break;
                }
            }
        });
        (addr, seen)
    }

    async fn run(domain: &str, refuse_always: bool) -> (super::Step, Vec<String>) {
        let (addr, seen) = fake_netease(refuse_always).await;
        let registry = Registry::builtin();
        let provider = registry.lookup(domain).unwrap();
        let stream = TcpStream::connect(addr).await.unwrap();
        let step = probe(stream, provider, "dave@163.com", &AuthCode::new("ABCDEFGH12345678")).await;
        let seen = seen.lock().unwrap().clone();
        (step, seen)
    }

    #[tokio::test]
    async fn netease_probe_sends_id_before_examine_scripted_fake_imap_server() {
        let (step, seen) = run("163.com", false).await;
        assert_eq!(step.outcome, ProbeOutcome::Accepted, "{}", step.text);
        assert_eq!(seen, ["LOGIN", "ID", "EXAMINE", "LOGOUT"]);
    }

    #[tokio::test]
    async fn netease_unsafe_login_is_rejected_with_a_netease_hint_scripted_fake_imap_server() {
        let (step, seen) = run("126.com", true).await;
        assert_eq!(step.outcome, ProbeOutcome::Rejected);
        assert!(step.text.contains("Unsafe Login"), "{}", step.text);
        let hint = step.hint.expect("NetEase hint");
        assert!(hint.contains("NetEase 126 Mail") && hint.contains("Unsafe Login"), "{hint}");
        assert_eq!(seen, ["LOGIN", "ID", "EXAMINE", "LOGOUT"]);
    }

    #[tokio::test]
    async fn plain_providers_only_log_in_scripted_fake_imap_server() {
        // A LOGIN-only probe would call this NetEase account fine: exactly the false positive
        // that the NetEase steps exist to avoid.
        let (step, seen) = run("sina.com", true).await;
        assert_eq!(step.outcome, ProbeOutcome::Accepted);
        assert_eq!(seen, ["LOGIN", "LOGOUT"]);
    }
}
