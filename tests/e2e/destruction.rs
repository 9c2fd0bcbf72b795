//! What Revoke and Rotate destroy, checked as an attacker with a copy of the data dir would:
//! the old ciphertext and nonce are in no live file once the call returns, also after a kill -9
//! right after the reply; and an old ciphertext written back into its row never opens.

use secrecy::SecretString;
use vault_client::proto;

use crate::harness::vault::{VaultServer, path_str};
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
async fn what_a_kill_left_undestroyed_in_the_wal_is_destroyed_before_the_next_start_serves() {
    let mut stack = Stack::start();
    let mut admin = stack.admin().await;
    admin.bind(BOB, "sender", SecretString::from(BOB_CODE)).await.unwrap();
    assert!(stack.server.stop().success());
    let old = sealed(&stack, BOB);
    // What a kill -9 between a destroying commit and its truncation leaves: the commit in the
    // WAL, the old bytes still in vault.db. Made by hand (the kill's window is too short to hit).
    let db = rusqlite::Connection::open(stack.data.db()).unwrap();
    db.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true).unwrap();
    db.execute_batch("PRAGMA secure_delete = ON; PRAGMA wal_autocheckpoint = 0;").unwrap();
    let (nonce, ciphertext) = (vec![0x5a_u8; old.nonce.len()], vec![0x5a_u8; old.ciphertext.len()]);
    let replace = "UPDATE credentials SET nonce = ?1, ciphertext = ?2 WHERE mailbox = ?3";
    db.execute(replace, rusqlite::params![nonce, ciphertext, BOB]).unwrap();
    drop(db);
    assert!(!files_holding(&stack.data, &old.ciphertext).is_empty(), "the setup left nothing to destroy");
    stack.restart_after_stop();
    // A call answered means serving began, and the truncation came first (the listener is
    // bound, and logged, a moment before).
    let mut admin = stack.admin().await;
    assert_eq!(admin.get(BOB, "sender").await.unwrap().version, 1);
    assert_gone(&stack, &old, "once the next start serves");
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

/// A trigger planted in the database file to keep every code a Rotate or Revoke destroys. While
/// the server runs, every write it would join fails and it copies nothing; at the next start the
/// server refuses the file, names the trigger, says how to remove it, and leaves the file as it was.
#[tokio::test]
async fn a_trigger_planted_to_keep_destroyed_codes_is_refused() {
    let mut stack = Stack::start();
    let mut admin = stack.admin().await;
    admin.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.unwrap();
    let plant = "PRAGMA writable_schema = ON; CREATE TABLE sqlite_loot (nonce BLOB, ciphertext BLOB); \
                 CREATE TRIGGER sqlite_keep BEFORE UPDATE ON credentials \
                 BEGIN INSERT INTO sqlite_loot VALUES (old.nonce, old.ciphertext); END;";
    let attacker = rusqlite::Connection::open(stack.data.db()).unwrap();
    attacker.execute_batch(plant).unwrap();
    let err = admin.rotate(ALICE, "sender", SecretString::from(ALICE_CODE), 1).await.unwrap_err();
    assert!(matches!(err, vault_client::Error::Other { code: tonic::Code::Internal, .. }), "{err:?}");
    let err = admin.revoke(ALICE, "sender", "").await.unwrap_err();
    assert!(matches!(err, vault_client::Error::Other { code: tonic::Code::Internal, .. }), "{err:?}");
    let loot: i64 = attacker.query_row("SELECT count(*) FROM sqlite_loot", [], |r| r.get(0)).unwrap();
    assert_eq!(loot, 0, "the planted trigger copied a code");
    drop(attacker);
    assert!(stack.server.log().contains("a trigger or view added to the database by hand"), "no log line says why");
    assert!(stack.server.stop().success());
    let before = std::fs::read(stack.data.db()).unwrap();

    let mut args: Vec<String> =
        ["serve", "--data-dir", path_str(&stack.data.dir), "--passphrase-file"].map(String::from).into();
    args.extend([path_str(&stack.data.passphrase_file).into(), "--listen".into(), "127.0.0.1:0".into()]);
    args.extend(Stack::default_args(&stack.pki, &stack.dovecot));
    let log = match VaultServer::spawn(&args, None) {
        Ok(_) => panic!("started on a database with a planted trigger"),
        Err(log) => log,
    };
    assert!(
        log.contains("trigger \"sqlite_keep\" is not part of it (remove it: DROP TRIGGER \"sqlite_keep\")"),
        "{log}"
    );
    assert!(log.contains("table \"sqlite_loot\""), "{log}");
    assert_eq!(std::fs::read(stack.data.db()).unwrap(), before, "the refused start changed the database");

    // Removed as the message says, the vault starts, and a Rotate keeps no copy.
    let undo = "DROP TRIGGER \"sqlite_keep\"; PRAGMA writable_schema = ON; \
                DELETE FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_loot'; VACUUM;";
    rusqlite::Connection::open(stack.data.db()).unwrap().execute_batch(undo).unwrap();
    stack.restart_after_stop();
    let old = sealed(&stack, ALICE);
    stack.admin().await.rotate(ALICE, "sender", SecretString::from(ALICE_CODE), 1).await.unwrap();
    assert_gone(&stack, &old, "after a Rotate once the trigger was removed");
}
