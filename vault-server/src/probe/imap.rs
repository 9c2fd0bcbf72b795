//! The IMAP login probe: greeting, LOGIN, then (NetEase) ID and EXAMINE INBOX, then LOGOUT.

use async_imap::imap_proto::{Response, ResponseCode, Status};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};

use super::{ProbeOutcome, Step};
use crate::provider::{ImapSteps, Provider};
use crate::secret::AuthCode;

/// Runs the provider's IMAP steps on an open TLS stream. Each command is sent and read to its
/// tagged completion here (async-imap parses), so an accepted probe reports the server's own
/// words, as a refused one does.
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
    let (Some(user), Some(secret)) = (quoted(login), quoted(code.expose())) else {
        return Step::new(ProbeOutcome::ProtocolError, "LOGIN: the login or the code has a line break");
    };
    let secret = zeroize::Zeroizing::new(secret);
    let command = zeroize::Zeroizing::new(format!("LOGIN {user} {}", secret.as_str()));
    let mut step = match tagged(&mut client, 1, "LOGIN", &command).await {
        Ok(reply) => Step::new(ProbeOutcome::Accepted, reply),
        Err(step) => return step,
    };
    drop(command);
    if provider.imap_steps == ImapSteps::NetEase {
        // NetEase accepts LOGIN from any client, then refuses mailbox access with
        // "NO ... Unsafe Login" unless the client identified itself with ID first.
        tracing::debug!("LOGIN accepted; sending ID and EXAMINE INBOX");
        let id = format!("ID (\"name\" \"authcode-vault\" \"version\" \"{}\")", env!("CARGO_PKG_VERSION"));
        step = match tagged(&mut client, 2, "ID", &id).await {
            Err(failed) => failed,
            Ok(_) => match tagged(&mut client, 3, "EXAMINE INBOX", "EXAMINE INBOX").await {
                Ok(reply) => Step::new(ProbeOutcome::Accepted, format!("{}; EXAMINE INBOX: {reply}", step.text)),
                Err(mut failed) => {
                    if failed.outcome == ProbeOutcome::Rejected
                        && failed.text.to_ascii_lowercase().contains("unsafe login")
                    {
                        failed.hint = Some(provider.unsafe_login_hint());
                    }
                    failed
                }
            },
        };
    }
    tracing::debug!(outcome = step.outcome.as_str(), "IMAP probe done; LOGOUT");
    // The answer is already known; a failed LOGOUT changes nothing.
    let _ = tagged(&mut client, 4, "LOGOUT", "LOGOUT").await;
    step
}

/// Sends `command` under the tag `name`'s position `n` and reads responses up to its tagged
/// completion: the server's reply (`OK ...`) when it succeeded, else the failed step (NO is a
/// refusal). Written to the stream itself: async-imap keeps tagged commands of an
/// unauthenticated client private, and its LOGIN drops the server's reply.
async fn tagged<S>(client: &mut async_imap::Client<S>, n: u32, name: &str, command: &str) -> Result<String, Step>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug,
{
    let tag = format!("V{n}");
    let line = zeroize::Zeroizing::new(format!("{tag} {command}\r\n"));
    let stream = client.get_mut();
    if let Err(e) = async {
        stream.write_all(line.as_bytes()).await?;
        stream.flush().await
    }
    .await
    {
        return Err(Step::new(ProbeOutcome::Unreachable, format!("{name}: connection failed: {e}")));
    }
    drop(line);
    loop {
        let response = match client.read_response().await {
            Ok(Some(response)) => response,
            Ok(None) => {
                return Err(Step::new(ProbeOutcome::Unreachable, format!("{name}: the server closed the connection")));
            }
            Err(e) => return Err(Step::new(ProbeOutcome::ProtocolError, format!("{name}: {e}"))),
        };
        let Response::Done { tag: done, status, code, information } = response.parsed() else { continue };
        if done.0 != tag {
            continue;
        }
        let text = wire_text(code.as_ref(), information.as_deref());
        return match status {
            Status::Ok => Ok(format!("OK {text}")),
            Status::No => Err(Step::new(ProbeOutcome::Rejected, format!("{name}: NO {text}"))),
            _ => Err(Step::new(ProbeOutcome::ProtocolError, format!("{name}: BAD {text}"))),
        };
    }
}

/// An IMAP quoted string, as async-imap writes one; `None` if it cannot be one (a line break).
fn quoted(value: &str) -> Option<String> {
    if value.contains(['\r', '\n']) {
        return None;
    }
    Some(format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\"")))
}

/// A completion's text in the wire form admins recognise: `[AUTHENTICATIONFAILED] ...`. A
/// CAPABILITY code (Dovecot sends its whole list with LOGIN) says nothing about the code.
fn wire_text(code: Option<&ResponseCode<'_>>, information: Option<&str>) -> String {
    let code = code.and_then(|c| match c {
        ResponseCode::Capabilities(_) => None,
        ResponseCode::ReadOnly => Some("[READ-ONLY] ".to_owned()),
        ResponseCode::ReadWrite => Some("[READ-WRITE] ".to_owned()),
        other => {
            let name = format!("{other:?}");
            Some(format!("[{}] ", name.split(['(', ' ', '{']).next().unwrap_or_default().to_ascii_uppercase()))
        }
    });
    format!("{}{}", code.unwrap_or_default(), information.unwrap_or_default()).trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};

    use super::{probe, quoted, wire_text};
    use crate::outcome::ProbeOutcome;
    use crate::provider::Registry;
    use crate::secret::AuthCode;

    #[test]
    fn completion_text_keeps_the_wire_form_and_drops_the_capability_list() {
        use async_imap::imap_proto::ResponseCode;
        assert_eq!(wire_text(Some(&ResponseCode::Alert), Some("Try later.")), "[ALERT] Try later.");
        assert_eq!(wire_text(None, Some("Unsafe Login")), "Unsafe Login");
        assert_eq!(wire_text(Some(&ResponseCode::Capabilities(vec![])), Some("Logged in")), "Logged in");
        assert_eq!(wire_text(Some(&ResponseCode::ReadOnly), None), "[READ-ONLY]");
        assert_eq!(wire_text(Some(&ResponseCode::TryCreate), Some("x")), "[TRYCREATE] x");
    }

    #[test]
    fn quotes_like_imap_and_refuses_line_breaks() {
        assert_eq!(quoted(r#"a"b\c"#).as_deref(), Some(r#""a\"b\\c""#));
        assert_eq!(quoted("a\r\nb"), None);
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
        assert_eq!(step.text, "OK LOGIN completed; EXAMINE INBOX: OK [READ-ONLY] EXAMINE completed");
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
        assert_eq!((step.outcome, step.text.as_str()), (ProbeOutcome::Accepted, "OK LOGIN completed"));
        assert_eq!(seen, ["LOGIN", "LOGOUT"]);
    }
}
