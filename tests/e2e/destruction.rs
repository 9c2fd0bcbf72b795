//! What Revoke and Rotate destroy, checked as an attacker with a copy of the data dir would:
//! the old ciphertext and nonce are in no live file once the call returns, also after a kill -9
//! right after the reply; and an old ciphertext written back into its row never opens.

use secrecy::SecretString;
use vault_client::proto;

use crate::harness::{ALICE, ALICE_CODE, BOB, BOB_CODE, Stack};

/// The sealed bytes of a pair's row, as an attacker reading the file would get them.
pub struct Sealed {
    pub key_id: i64,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

pub fn sealed(stack: &Stack, mailbox: &str) -> Sealed {
    let db =
        rusqlite::Connection::open_with_flags(stack.data.db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    db.query_row(
        "SELECT key_id, nonce, ciphertext FROM credentials WHERE mailbox = ?1 AND client = 'sender'",
        [mailbox],
        |r| Ok(Sealed { key_id: r.get(0)?, nonce: r.get(1)?, ciphertext: r.get(2)? }),
    )
    .unwrap()
}

/// Every file of the data dir that holds `needle`.
pub fn files_holding(data: &crate::harness::vault::DataDir, needle: &[u8]) -> Vec<String> {
    std::fs::read_dir(&data.dir)
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).ok()?;
            bytes.windows(needle.len()).any(|w| w == needle).then(|| path.display().to_string())
        })
        .collect()
}

fn assert_gone(stack: &Stack, old: &Sealed, when: &str) {
    for (what, bytes) in [("ciphertext", &old.ciphertext), ("nonce", &old.nonce)] {
        let hits = files_holding(&stack.data, bytes);
        assert!(hits.is_empty(), "{when}: the old {what} is still in {hits:?}");
    }
}

#[tokio::test]
async fn revoke_and_rotate_leave_no_ciphertext_on_disk() {
    let mut stack = Stack::start();
    let mut admin = stack.admin().await;
    admin.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.unwrap();
    let first = sealed(&stack, ALICE);
    // Proof the scan sees what it looks for.
    assert!(!files_holding(&stack.data, &first.ciphertext).is_empty(), "the live ciphertext must be found");

    // Rotate (to the same code: a new seal all the same).
    let rotate = proto::RotateRequest {
        mailbox: ALICE.into(),
        client: "sender".into(),
        new_auth_code: ALICE_CODE.into(),
        expected_version: 1,
        ..Default::default()
    };
    admin.raw().rotate(rotate).await.unwrap();
    assert_gone(&stack, &first, "after Rotate");
    let second = sealed(&stack, ALICE);

    admin.revoke(ALICE, "sender", "laptop retired").await.unwrap();
    assert_gone(&stack, &second, "after Revoke");

    // Kill -9 right after the reply: nothing to clean up at shutdown, and nothing left.
    admin.bind(BOB, "sender", SecretString::from(BOB_CODE)).await.unwrap();
    let bob = sealed(&stack, BOB);
    admin.revoke(BOB, "sender", "gone").await.unwrap();
    stack.server.kill_hard();
    assert_gone(&stack, &bob, "after kill -9");
    assert_gone(&stack, &second, "after kill -9");
    stack.restart_after_stop();
    assert_gone(&stack, &bob, "after restart");
    assert_gone(&stack, &first, "after restart");
}

#[tokio::test]
async fn a_replayed_ciphertext_after_revoke_and_rebind_is_data_loss() {
    let mut stack = Stack::start();
    let mut admin = stack.admin().await;
    admin.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.unwrap();
    // The attacker copies the sealed bytes (from a backup, say), then the pair is revoked and
    // bound again: same pair, version 1 again.
    let old = sealed(&stack, ALICE);
    admin.revoke(ALICE, "sender", "rotated out").await.unwrap();
    admin.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.unwrap();
    assert!(stack.server.stop().success());
    let db = rusqlite::Connection::open(stack.data.db()).unwrap();
    let changed = db
        .execute(
            "UPDATE credentials SET key_id = ?1, nonce = ?2, ciphertext = ?3 WHERE mailbox = ?4 AND client = 'sender'",
            rusqlite::params![old.key_id, old.nonce, old.ciphertext, ALICE],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(db);
    stack.restart_after_stop();
    let err = stack.as_client("sender").await.reveal(ALICE, "sender").await.unwrap_err();
    assert!(matches!(err, vault_client::Error::Tampered), "a replayed ciphertext must not open: {err:?}");
}

#[tokio::test]
async fn a_seal_stripped_of_its_generation_is_data_loss() {
    let mut stack = Stack::start();
    stack.admin().await.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.unwrap();
    assert!(stack.server.stop().success());
    // The attacker downgrades the row to the legacy AAD format (no generation) to replay through it.
    let db = rusqlite::Connection::open(stack.data.db()).unwrap();
    db.execute("UPDATE credentials SET generation = NULL WHERE mailbox = ?1", [ALICE]).unwrap();
    drop(db);
    stack.restart_after_stop();
    let err = stack.as_client("sender").await.reveal(ALICE, "sender").await.unwrap_err();
    assert!(matches!(err, vault_client::Error::Tampered), "{err:?}");
    stack.server.wait_for_log("legacy seal does not open");
}
