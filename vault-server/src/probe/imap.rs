//! The IMAP login probe: greeting, LOGIN, then (NetEase) ID and EXAMINE INBOX, then LOGOUT.

use imap_proto::parser::parse_response;
use imap_proto::{Response, ResponseCode, Status};
use tokio::io::{AsyncRead, AsyncWrite};
use zeroize::Zeroizing;

use super::imap_wire::{MAX_RESPONSE, Wire, WireError};

use super::{ProbeOutcome, Step};
use crate::provider::{ImapSteps, Provider};
use crate::secret::AuthCode;

/// Runs the provider's IMAP steps on an open TLS stream. Each command is sent and read to its
/// tagged completion here, with bounds ([`Wire`]), and parsed by imap-proto; an accepted probe
/// reports the server's own words, as a refused one does.
pub async fn probe<S>(stream: S, provider: &Provider, login: &str, code: &AuthCode) -> Step
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut wire = Wire::new(stream);
    let greeting = match wire.response().await {
        Ok(greeting) => greeting,
        Err(e) => return wire_failure("reading the greeting", e),
    };
    match parse_response(&greeting) {
        Ok((_, Response::Data { status: Status::Ok, .. })) => {}
        Ok((_, other)) => return Step::new(ProbeOutcome::ProtocolError, format!("unexpected greeting: {other:?}")),
        Err(_) => return Step::new(ProbeOutcome::ProtocolError, "the greeting is not IMAP"),
    }
    tracing::debug!(steps = ?provider.imap_steps, "IMAP greeting received; sending LOGIN");
    let mut command = Zeroizing::new(Vec::with_capacity(16 + 2 * (login.len() + code.expose().len())));
    command.extend_from_slice(b"V1 LOGIN ");
    let quotable = push_quoted(&mut command, login) && {
        command.push(b' ');
        push_quoted(&mut command, code.expose())
    };
    if !quotable {
        return Step::new(ProbeOutcome::ProtocolError, "LOGIN: the login or the code is not printable ASCII");
    }
    command.extend_from_slice(b"\r\n");
    let mut step = match tagged(&mut wire, "V1", "LOGIN", &command).await {
        Ok(reply) => Step::new(ProbeOutcome::Accepted, reply),
        Err(step) => return step,
    };
    drop(command);
    if provider.imap_steps == ImapSteps::NetEase {
        // NetEase accepts LOGIN from any client, then refuses mailbox access with
        // "NO ... Unsafe Login" unless the client identified itself with ID first.
        tracing::debug!("LOGIN accepted; sending ID and EXAMINE INBOX");
        let id = format!("V2 ID (\"name\" \"authcode-vault\" \"version\" \"{}\")\r\n", env!("CARGO_PKG_VERSION"));
        step = match tagged(&mut wire, "V2", "ID", id.as_bytes()).await {
            Err(failed) => failed,
            Ok(_) => match tagged(&mut wire, "V3", "EXAMINE INBOX", b"V3 EXAMINE INBOX\r\n").await {
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
    // The answer is already known: LOGOUT is sent on the side, so one that fails or stalls (past
    // the probe's own deadline too) changes nothing, and cannot turn an accepted code into a
    // timeout.
    tokio::spawn(async move {
        let _ = tokio::time::timeout(LOGOUT_WAIT, tagged(&mut wire, "V4", "LOGOUT", b"V4 LOGOUT\r\n")).await;
    });
    step
}

/// How long a finished probe waits for the server's answer to LOGOUT.
const LOGOUT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// Most responses read while waiting for one command's completion.
const MAX_RESPONSES: usize = 64;

/// Sends `line` (tagged `tag`) and reads responses up to its tagged completion: the server's
/// reply (`OK ...`) when it succeeded, else the failed step (NO is a refusal).
async fn tagged<S>(wire: &mut Wire<S>, tag: &str, name: &str, line: &[u8]) -> Result<String, Step>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Err(e) = wire.send(line).await {
        return Err(Step::new(ProbeOutcome::Unreachable, format!("{name}: connection failed: {e}")));
    }
    for _ in 0..MAX_RESPONSES {
        let raw = wire.response().await.map_err(|e| wire_failure(name, e))?;
        let Ok((_, response)) = parse_response(&raw) else {
            return Err(Step::new(ProbeOutcome::ProtocolError, format!("{name}: the server's answer is not IMAP")));
        };
        let Response::Done { tag: done, status, code, information } = response else { continue };
        if done.0 != tag {
            continue;
        }
        let text = wire_text(code.as_ref(), information.as_deref());
        return match status {
            Status::Ok => Ok(format!("OK {text}")),
            Status::No => Err(refusal(name, &text)),
            _ => Err(Step::new(ProbeOutcome::ProtocolError, format!("{name}: BAD {text}"))),
        };
    }
    Err(Step::new(ProbeOutcome::ProtocolError, format!("{name}: no completion after {MAX_RESPONSES} responses")))
}

/// Response codes (RFC 5530) with which a server says it could not do the command now, for
/// reasons of its own: no verdict on the code.
const NOT_NOW: [&str; 4] = ["[UNAVAILABLE]", "[INUSE]", "[SERVERBUG]", "[LIMIT]"];

/// A NO: a refusal of the code (REJECTED), unless the server says it could not check it now.
fn refusal(name: &str, text: &str) -> Step {
    let upper = text.to_ascii_uppercase();
    match NOT_NOW.iter().find(|code| upper.starts_with(*code)) {
        Some(code) => {
            let mut step = Step::new(ProbeOutcome::ProtocolError, format!("{name}: NO {text}"));
            step.hint = Some(format!(
                "the server could not check the code now ({code}); nothing is concluded about the code: try again later"
            ));
            step
        }
        None => Step::new(ProbeOutcome::Rejected, format!("{name}: NO {text}")),
    }
}

fn wire_failure(name: &str, e: WireError) -> Step {
    match e {
        WireError::Io(e) => Step::new(ProbeOutcome::Unreachable, format!("{name}: connection failed: {e}")),
        WireError::Closed => Step::new(ProbeOutcome::Unreachable, format!("{name}: the server closed the connection")),
        WireError::TooLong => Step::new(
            ProbeOutcome::ProtocolError,
            format!("{name}: the server sent more than a probe reads ({} KiB per answer)", MAX_RESPONSE / 1024),
        ),
    }
}

/// Appends `value` as an IMAP quoted string; false (nothing sensible appended) unless it is
/// printable ASCII, which is all a login or a code may be here.
fn push_quoted(out: &mut Vec<u8>, value: &str) -> bool {
    if !value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return false;
    }
    out.push(b'"');
    for b in value.bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
    true
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

    use super::{probe, push_quoted, wire_text};
    use crate::outcome::ProbeOutcome;
    use crate::provider::Registry;
    use crate::secret::AuthCode;

    #[test]
    fn completion_text_keeps_the_wire_form_and_drops_the_capability_list() {
        use imap_proto::ResponseCode;
        assert_eq!(wire_text(Some(&ResponseCode::Alert), Some("Try later.")), "[ALERT] Try later.");
        assert_eq!(wire_text(None, Some("Unsafe Login")), "Unsafe Login");
        assert_eq!(wire_text(Some(&ResponseCode::Capabilities(vec![])), Some("Logged in")), "Logged in");
        assert_eq!(wire_text(Some(&ResponseCode::ReadOnly), None), "[READ-ONLY]");
        assert_eq!(wire_text(Some(&ResponseCode::TryCreate), Some("x")), "[TRYCREATE] x");
    }

    #[test]
    fn quotes_like_imap_and_refuses_what_is_not_printable_ascii() {
        let mut out = Vec::new();
        assert!(push_quoted(&mut out, r#"a"b\c"#));
        assert_eq!(out, br#""a\"b\\c""#);
        for bad in ["a\r\nb", "a\0b", "pässword"] {
            assert!(!push_quoted(&mut Vec::new(), bad), "{bad:?}");
        }
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
        // LOGOUT goes out on the side, after the answer: waited for here, a second at most.
        for _ in 0..100 {
            if seen.lock().unwrap().last().is_some_and(|c| c == "LOGOUT") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
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

    /// A server that answers LOGIN with `reply` (after its tag), and then every other command
    /// too, or (`then_silent`) nothing more, holding the connection open.
    async fn answering_login(reply: &'static str, then_silent: bool) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            write.write_all(b"* OK ready\r\n").await.unwrap();
            let mut answered = 0;
            while let Ok(Some(line)) = lines.next_line().await {
                if then_silent && answered == 1 {
                    continue;
                }
                let tag = line.split(' ').next().unwrap_or("*").to_owned();
                let _ = write.write_all(format!("{tag} {reply}\r\n").as_bytes()).await;
                answered += 1;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_logout_that_never_completes_does_not_undo_an_accepted_login() {
        let registry = Registry::builtin();
        let stream = TcpStream::connect(answering_login("OK Logged in", true).await).await.unwrap();
        let started = std::time::Instant::now();
        let code = AuthCode::new("ABCDEFGH12345678");
        let probing = probe(stream, registry.lookup("sina.com").unwrap(), "a@sina.com", &code);
        let step = tokio::time::timeout(std::time::Duration::from_secs(5), probing).await.expect("the probe hung");
        assert_eq!((step.outcome, step.text.as_str()), (ProbeOutcome::Accepted, "OK Logged in"));
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
    }

    #[tokio::test]
    async fn a_server_that_cannot_check_now_gives_no_verdict_and_a_plain_no_is_a_refusal() {
        let registry = Registry::builtin();
        let sina = registry.lookup("sina.com").unwrap();
        let code = AuthCode::new("ABCDEFGH12345678");
        for (reply, outcome) in [
            ("NO [UNAVAILABLE] Temporary authentication failure", ProbeOutcome::ProtocolError),
            ("NO [inuse] mailbox in use", ProbeOutcome::ProtocolError),
            ("NO [SERVERBUG] internal error", ProbeOutcome::ProtocolError),
            ("NO [AUTHENTICATIONFAILED] Authentication failed.", ProbeOutcome::Rejected),
            ("NO LOGIN failed", ProbeOutcome::Rejected),
        ] {
            let stream = TcpStream::connect(answering_login(reply, false).await).await.unwrap();
            let step = probe(stream, sina, "a@sina.com", &code).await;
            assert_eq!(step.outcome, outcome, "{reply}: {}", step.text);
            assert_eq!(step.hint.is_some(), outcome == ProbeOutcome::ProtocolError, "{reply}");
        }
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
