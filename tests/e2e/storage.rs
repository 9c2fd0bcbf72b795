//! What lands on disk: ciphertext only, bound to its row.

use secrecy::SecretString;
use tonic::Code;
use vault_client::proto;

use crate::harness::{ALICE, ALICE_CODE, BOB, BOB_CODE, PASSPHRASE, Stack};

fn files_of(stack: &Stack) -> Vec<(String, Vec<u8>)> {
    ["vault.db", "vault.db-wal", "vault.db-shm"]
        .iter()
        .filter_map(|name| std::fs::read(stack.data.dir.join(name)).ok().map(|b| ((*name).to_owned(), b)))
        .collect()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn database_wal_and_shm_hold_neither_code_nor_passphrase() {
    let mut stack = Stack::start();
    let mut c = stack.admin().await;
    c.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.unwrap();
    c.bind(BOB, "sender", SecretString::from(BOB_CODE)).await.unwrap();
    stack.as_client("sender").await.reveal(ALICE, "sender").await.unwrap();
    // Check while running (data in the WAL) and after a graceful stop (checkpointed).
    let running = files_of(&stack);
    assert!(running.iter().any(|(n, _)| n == "vault.db-wal"), "expected a WAL while running");
    assert_eq!(stack.server.stop().code(), Some(0));
    let stopped = files_of(&stack);
    for (name, bytes) in running.iter().chain(&stopped) {
        assert!(!bytes.is_empty() || name != "vault.db");
        for secret in [ALICE_CODE, BOB_CODE, PASSPHRASE, "CANARY"] {
            assert!(!contains(bytes, secret), "{name} contains {secret}");
        }
    }
    // The mailbox itself is metadata and is stored in the clear; that proves we read real data.
    assert!(stopped.iter().any(|(_, b)| contains(b, ALICE)));
}

#[tokio::test]
async fn a_ciphertext_copied_onto_another_row_is_data_loss_never_the_other_code() {
    let mut stack = Stack::start();
    let mut c = stack.admin().await;
    c.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.unwrap();
    c.bind(BOB, "sender", SecretString::from(BOB_CODE)).await.unwrap();
    assert_eq!(stack.server.stop().code(), Some(0));

    let db = rusqlite::Connection::open(stack.data.db()).unwrap();
    let changed = db
        .execute(
            "UPDATE credentials SET (key_id, nonce, ciphertext) = \
             (SELECT key_id, nonce, ciphertext FROM credentials WHERE mailbox = ?1) WHERE mailbox = ?2",
            [ALICE, BOB],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(db);

    stack.restart_after_stop();
    let req = proto::RevealRequest { mailbox: BOB.into(), client: "sender".into() };
    let status = stack.as_client("sender").await.raw().reveal(req).await.expect_err("tampered row must not reveal");
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(!status.message().contains("CANARY"));
    // The untouched row still opens.
    let alice = stack.as_client("sender").await.reveal(ALICE, "sender").await.unwrap();
    assert_eq!(secrecy::ExposeSecret::expose_secret(&alice.code), ALICE_CODE);
    assert!(stack.server.stop().success());
    assert!(!stack.server.log().contains("CANARY"));
}
