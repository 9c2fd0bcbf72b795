//! Idempotent writes against the real binary and Dovecot: a Bind or Rotate retried with the same
//! request id is answered once (one IMAP login), across a restart; the same id for another
//! request is refused; and vault-client, whose first answer is lost with the connection after
//! the commit, retries by itself and gets that answer; a write whose caller gave up mid-probe
//! still commits once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;
use tonic_types::StatusExt;
use vault_client::proto::{self, ProbeOutcome};

use crate::harness::{ALICE, ALICE_CODE, BOB, BOB_CODE, Stack};

const ALICE_NEW: &str = "CANARYaliceNEW03";

fn logins(stack: &Stack) -> usize {
    stack.dovecot.log().matches("Login: user=").count()
}

fn replayed<T>(r: &tonic::Response<T>) -> bool {
    r.metadata().get("vault-replayed").is_some_and(|v| v == "true")
}

#[tokio::test]
async fn a_retried_bind_or_rotate_is_answered_once_even_after_a_restart() {
    let mut stack = Stack::start();
    let mut c = stack.admin().await;
    let bind = proto::BindRequest {
        mailbox: ALICE.into(),
        client: "sender".into(),
        auth_code: ALICE_CODE.into(),
        request_id: "e2e-bind-0001".into(),
    };
    let first = c.raw().bind(bind.clone()).await.unwrap();
    assert!(!replayed(&first));
    let before = logins(&stack);
    let again = c.raw().bind(bind.clone()).await.unwrap();
    assert!(replayed(&again), "no vault-replayed header");
    assert_eq!(again.get_ref(), first.get_ref(), "the retry got another answer");
    assert_eq!(logins(&stack), before, "the retry logged in to the provider");

    // Remembered on disk: a restarted server answers the same.
    stack.restart_server();
    let mut c = stack.admin().await;
    let after_restart = c.raw().bind(bind.clone()).await.unwrap();
    assert_eq!((replayed(&after_restart), after_restart.get_ref()), (true, first.get_ref()));

    // The same id for another request changes nothing.
    let other = proto::BindRequest { auth_code: BOB_CODE.into(), ..bind.clone() };
    let status = c.raw().bind(other).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let field = status.get_details_bad_request().unwrap().field_violations[0].field.clone();
    assert_eq!(field, "request_id");

    // Rotate: one rotation, one old-code probe, whatever the retries.
    stack.dovecot.set_codes(&[(ALICE, ALICE_NEW), (BOB, BOB_CODE)]);
    let rotate = proto::RotateRequest {
        mailbox: ALICE.into(),
        client: "sender".into(),
        new_auth_code: ALICE_NEW.into(),
        expected_version: 1,
        request_id: "e2e-rotate-0001".into(),
    };
    let first = c.raw().rotate(rotate.clone()).await.unwrap().into_inner();
    assert_eq!(first.credential.as_ref().unwrap().version, 2);
    let before = logins(&stack);
    let again = c.raw().rotate(rotate).await.unwrap();
    assert!(replayed(&again));
    let again = again.into_inner();
    assert_eq!(again.credential.as_ref().unwrap().version, 2, "rotated twice");
    assert_eq!(again.previous_code_probe.map(|p| p.outcome()), Some(ProbeOutcome::Rejected));
    assert_eq!(logins(&stack), before);
    assert!(!stack.server.log().contains(ALICE_NEW) && !stack.server.log().contains(ALICE_CODE));
}

/// Forwards one plaintext HTTP/2 connection after another to `upstream`; while `cut` is set, it
/// closes the connection instead of passing on the server's first response HEADERS frame (so
/// the call committed and its answer is lost), then clears `cut`.
async fn lossy_proxy(upstream: std::net::SocketAddr, cut: Arc<AtomicBool>, cuts: Arc<AtomicU32>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else { return };
            let (cut, cuts) = (cut.clone(), cuts.clone());
            tokio::spawn(async move {
                let server = TcpStream::connect(upstream).await.unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                // Server to client, frame by frame: a 9-byte header (length, type, flags, stream).
                loop {
                    let mut header = [0u8; 9];
                    if sr.read_exact(&mut header).await.is_err() {
                        return;
                    }
                    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
                    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
                    let mut payload = vec![0u8; len];
                    if sr.read_exact(&mut payload).await.is_err() {
                        return;
                    }
                    if header[3] == 0x1 && stream != 0 && cut.swap(false, Ordering::SeqCst) {
                        cuts.fetch_add(1, Ordering::SeqCst);
                        return; // drops both halves toward the client: the answer is lost
                    }
                    if cw.write_all(&header).await.is_err() || cw.write_all(&payload).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn vault_client_retries_a_write_whose_answer_was_lost_and_binds_once() {
    let stack = Stack::start();
    let (cut, cuts) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicU32::new(0)));
    let endpoint = lossy_proxy(stack.server.addr, cut.clone(), cuts.clone()).await;
    let options = vault_client::ConnectOptions {
        token: Some(SecretString::from(stack.admin_token.clone())),
        ..Default::default()
    };
    let mut c = vault_client::VaultClient::connect(endpoint, options).await.unwrap();
    let before = logins(&stack);
    let r = c.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.expect("bind through a lost answer");
    assert_eq!(cuts.load(Ordering::SeqCst), 1, "the proxy never dropped an answer");
    assert_eq!(r.credential.version, 1);
    assert_eq!(logins(&stack) - before, 1, "the retry probed again");
    assert!(stack.server.log().contains("replayed the answer of an earlier call"), "{}", stack.server.log());

    // Rotate and Revoke ride over a lost answer the same way.
    cut.store(true, Ordering::SeqCst);
    let r = c.rotate(ALICE, "sender", SecretString::from(ALICE_CODE), 1).await.expect("rotate");
    assert_eq!(r.credential.version, 2, "rotated once");
    cut.store(true, Ordering::SeqCst);
    let r = c.revoke(ALICE, "sender", "retired").await.expect("revoke");
    assert_eq!(r.credential.state, proto::CredentialState::Revoked);
    assert_eq!(cuts.load(Ordering::SeqCst), 3);
}

/// Forwards TCP connections to `upstream`, each only once `gate` has a permit; `entered` gets a
/// message as each connection arrives (so a test knows a probe has started and is held).
async fn gated_proxy(
    upstream: std::net::SocketAddr,
    gate: Arc<tokio::sync::Semaphore>,
    entered: tokio::sync::mpsc::UnboundedSender<()>,
) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else { return };
            let (gate, entered) = (gate.clone(), entered.clone());
            tokio::spawn(async move {
                let _ = entered.send(());
                let Ok(_permit) = gate.acquire().await else { return };
                let mut server = TcpStream::connect(upstream).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_caller_gave_up_runs_to_its_end_and_its_retry_gets_the_answer() {
    let mut stack = Stack::start();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
    let held = gated_proxy(stack.dovecot.imaps, gate.clone(), entered_tx).await;
    stack.restart_with(&[
        "--probe-resolve".into(),
        format!("imap.sina.com:993={held}"),
        "--probe-burst".into(),
        "100".into(),
    ]);
    let mut c = stack.admin().await;
    let bind = proto::BindRequest {
        mailbox: BOB.into(),
        client: "sender".into(),
        auth_code: BOB_CODE.into(),
        request_id: "e2e-gave-up-0001".into(),
    };
    // The caller gives up while the probe is held: dropping the call resets its stream.
    let (mut hasty, first) = (c.raw().clone(), bind.clone());
    let call = tokio::spawn(async move { hasty.bind(first).await });
    entered.recv().await.unwrap();
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    // Give the reset time to reach the server before the probe may go on.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    gate.add_permits(100);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while c.get(BOB, "sender").await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the write stopped with its caller");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let before = logins(&stack);
    let retry = c.raw().bind(bind).await.unwrap();
    assert!(replayed(&retry), "the retry ran again");
    assert_eq!(retry.get_ref().credential.as_ref().unwrap().version, 1);
    assert_eq!(logins(&stack), before);
}
