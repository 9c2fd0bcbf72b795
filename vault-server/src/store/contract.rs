//! The contract every store engine passes: each operation of each trait, with its errors, run
//! against a fresh store. `sqlite.rs` and `cached.rs` call [`run`]; a new engine adds one line.

use std::sync::Arc;

use super::{
    AuditEvent, AuditQuery, CredentialRow, CredentialState, ListQuery, NewBinding, ProbeRecord, RecordedAnswer,
    RequestKey, RequestRecord, Reseal, Retirement, RevokeChange, RotateChange, Store, StoreError, StoredCode,
    TokenRekey, TokenRow, UnusedQuery,
};
use crate::crypto::{Key, Keyring, Salt};
use crate::ids::{ClientId, Mailbox};
use crate::outcome::ProbeOutcome;

/// An admin's audit event for a test write.
pub(crate) fn event(rpc: &str, mailbox: &str, client: &str, at: i64) -> AuditEvent {
    AuditEvent {
        at,
        caller: "tk_contract".into(),
        caller_role: "admin".into(),
        rpc: rpc.into(),
        mailbox: mailbox.into(),
        client: client.into(),
        outcome: "OK".into(),
        probe_outcome: None,
        count: 1,
        first_at: at,
        reason: String::new(),
    }
}

fn binding(ring: &Keyring, mailbox: &str, client: &str, now: i64) -> NewBinding {
    let (key_id, generation, sealed) = ring.seal_code(mailbox, client, 1, b"code");
    NewBinding {
        mailbox: Mailbox::parse(mailbox).unwrap_or_else(|e| panic!("{e}")),
        client: ClientId::parse(client).unwrap_or_else(|e| panic!("{e}")),
        provider: "sina".into(),
        code: StoredCode { key_id, generation: Some(generation), sealed },
        now,
        probe_outcome: ProbeOutcome::Accepted,
    }
}

fn ok<T, E: std::fmt::Debug>(r: Result<T, E>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:?}"))
}

/// What an engine can promise about its files: SQLite scrubs freed rows from its own files;
/// PostgreSQL's files are the database server's, and it never says they were scrubbed.
#[derive(Clone, Copy)]
pub enum Files {
    Scrubbed,
    NotOurs,
}

/// Runs the whole contract against `store`, whose key material holds `ring`'s first key.
pub async fn run(store: Arc<dyn Store>, ring: &Keyring, files: Files) {
    assert_eq!(store.scrubs_files(), matches!(files, Files::Scrubbed));
    // Key material.
    let material = ok(store.unlock_material().await, "unlock_material");
    assert_eq!(material.keys.len(), 1);

    // Bind, get, re-bind refused, revoke, re-bind allowed.
    let a = ("a@sina.com", "sender");
    assert!(matches!(store.get(a.0, a.1).await, Err(StoreError::NotFound)));
    let row = ok(store.bind(binding(ring, a.0, a.1, 10), event("Bind", a.0, a.1, 10), None).await, "bind");
    assert_eq!((row.version, row.state, row.created_at), (1, CredentialState::Active, 10));
    assert_eq!(ok(store.get(a.0, a.1).await, "get").version, 1);
    let again = store.bind(binding(ring, a.0, a.1, 11), event("Bind", a.0, a.1, 11), None).await;
    assert!(matches!(again, Err(StoreError::AlreadyExists)), "{again:?}");

    // Rotate: version moves; a stale version conflicts.
    let (key_id, generation, sealed) = ring.seal_code(a.0, a.1, 2, b"code2");
    let change = |from| RotateChange {
        mailbox: a.0.into(),
        client: a.1.into(),
        from_version: from,
        code: StoredCode { key_id, generation: Some(generation), sealed: sealed.clone() },
        now: 20,
    };
    let rotated = ok(store.rotate(change(1), event("Rotate", a.0, a.1, 20), None).await, "rotate");
    assert_eq!((rotated.version, rotated.rotated_at), (2, Some(20)));
    let kept = rotated.code.as_ref().and_then(|c| c.generation);
    assert_eq!(kept, Some(generation), "the seal's generation is stored with it");
    assert!(matches!(store.rotate(change(1), event("Rotate", a.0, a.1, 21), None).await, Err(StoreError::Conflict)));

    // Probe records: only at the current version.
    let probe = |version| ProbeRecord {
        mailbox: a.0.into(),
        client: a.1.into(),
        version,
        outcome: ProbeOutcome::Rejected,
        now: 30,
    };
    let probed = ok(store.record_probe(probe(2), event("Verify", a.0, a.1, 30)).await, "record_probe");
    assert_eq!((probed.last_probe_outcome, probed.last_verified_at), (Some(ProbeOutcome::Rejected), Some(30)));
    assert!(matches!(store.record_probe(probe(1), event("Verify", a.0, a.1, 31)).await, Err(StoreError::Conflict)));

    // Reveals: last use and an aggregated audit event.
    let mut reveal = event("Reveal", a.0, a.1, 40);
    reveal.count = 3;
    ok(store.record_reveals(vec![reveal]).await, "record_reveals");
    assert_eq!(ok(store.get(a.0, a.1).await, "get").last_used_at, Some(40));

    // Revoke: tombstone without a code; twice is Revoked; then every change is Revoked.
    let revoke = || RevokeChange { mailbox: a.0.into(), client: a.1.into(), reason: "gone".into(), now: 50 };
    let revoked = AuditEvent { reason: "gone".into(), ..event("Revoke", a.0, a.1, 50) };
    let tomb = ok(store.revoke(revoke(), revoked, None).await, "revoke");
    assert_eq!(
        (tomb.state, tomb.revoked_at, tomb.revoke_reason.as_deref()),
        (CredentialState::Revoked, Some(50), Some("gone"))
    );
    assert!(tomb.code.is_none());
    let raw = ok(store.get(a.0, a.1).await, "get");
    assert!(raw.code.is_none(), "nothing of the seal is left on a tombstone");
    assert!(matches!(store.revoke(revoke(), event("Revoke", a.0, a.1, 51), None).await, Err(StoreError::Revoked)));
    assert!(matches!(store.rotate(change(2), event("Rotate", a.0, a.1, 52), None).await, Err(StoreError::Revoked)));
    let rebound = ok(store.bind(binding(ring, a.0, a.1, 60), event("Bind", a.0, a.1, 60), None).await, "re-bind");
    assert_eq!((rebound.version, rebound.state), (1, CredentialState::Active));

    // Import: all or nothing.
    let batch = vec![binding(ring, "b@sina.com", "x", 70), binding(ring, "c@sina.com", "x", 70)];
    ok(store.import(batch, event("Import", "", "", 70)).await, "import");
    let clash = vec![binding(ring, "d@sina.com", "x", 71), binding(ring, "b@sina.com", "x", 71)];
    assert!(store.import(clash, event("Import", "", "", 71)).await.is_err());
    assert!(matches!(store.get("d@sina.com", "x").await, Err(StoreError::NotFound)), "a failed import left a row");

    // Listing, counting, the review.
    let all = ok(store.list(ListQuery { limit: 10, ..Default::default() }).await, "list");
    let names: Vec<_> = all.iter().map(|r| format!("{}/{}", r.mailbox, r.client)).collect();
    assert_eq!(names, ["a@sina.com/sender", "b@sina.com/x", "c@sina.com/x"]);
    let after = ListQuery { after: Some(("a@sina.com".into(), "sender".into())), limit: 1, ..Default::default() };
    assert_eq!(ok(store.list(after).await, "list after")[0].mailbox, "b@sina.com");
    filtered_lists(&*store).await;
    assert_eq!(ok(store.count_by_state().await, "count"), (3, 0));
    let unused =
        ok(store.list_unused(UnusedQuery { cutoff: 65, mailbox: None, after: None, limit: 10 }).await, "unused");
    assert_eq!(unused.len(), 1, "only a@ (bound at 60) is older than 65");

    audit_trail(&*store, a.0).await;

    // Token rows.
    let token = TokenRow {
        id: "tk_0123456789ab".into(),
        role: "admin".into(),
        digest: vec![7; 32],
        key_id: 1,
        mac: vec![9; 32],
        created_at: 90,
        last_used_at: None,
        revoked_at: None,
    };
    ok(store.insert_token(token).await, "insert_token");
    ok(store.record_token_use(vec![("tk_0123456789ab".into(), 95)]).await, "record_token_use");
    ok(store.revoke_token("tk_0123456789ab".into(), 99).await, "revoke_token");
    assert!(matches!(store.revoke_token("tk_0123456789ab".into(), 100).await, Err(StoreError::Revoked)));
    assert!(matches!(store.revoke_token("tk_ffffffffffff".into(), 100).await, Err(StoreError::NotFound)));
    let rows = ok(store.tokens().await, "tokens");
    let row = rows[0].as_ref().unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!((row.last_used_at, row.revoked_at), (Some(95), Some(99)));
    assert!(row.mac.is_empty(), "revoking must destroy the MAC");

    remembered_requests(&*store, ring).await;
    data_key_rotation(&*store, ring, material.salt, matches!(files, Files::Scrubbed)).await;
}

/// Every successful change above wrote one event (failed ones none); newest first by time.
/// Lists filtered by client or mailbox, from cursors before, inside and past the mailbox (each
/// engine reads a filter's own key or index from the cursor on).
async fn filtered_lists(store: &dyn Store) {
    // Filtered, from a cursor in the middle of a mailbox: the row after it in that mailbox stays.
    let names = |rows: Vec<super::CredentialRow>| {
        rows.iter().map(|r| format!("{}/{}", r.mailbox, r.client)).collect::<Vec<_>>()
    };
    let by_client = ListQuery {
        client: Some("x".into()),
        after: Some(("b@sina.com".into(), "a".into())),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(names(ok(store.list(by_client).await, "list by client")), ["b@sina.com/x", "c@sina.com/x"]);
    let by_mailbox = ListQuery {
        mailbox: Some("b@sina.com".into()),
        after: Some(("a@sina.com".into(), "zzz".into())),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(names(ok(store.list(by_mailbox).await, "list by mailbox")), ["b@sina.com/x"]);
    let past = ListQuery {
        mailbox: Some("b@sina.com".into()),
        after: Some(("b@sina.com".into(), "x".into())),
        limit: 10,
        ..Default::default()
    };
    assert!(ok(store.list(past).await, "list past the mailbox").is_empty());

    // The sweep's pages: oldest first, then on from a cursor, ties at one time included.
    let first = ok(store.due_for_verification(1000, None, 2).await, "due");
    assert_eq!(names(first.clone()), ["a@sina.com/sender", "b@sina.com/x"]);
    let next = ok(store.due_for_verification(1000, first.last().map(CredentialRow::due_position), 2).await, "due");
    assert_eq!(names(next.clone()), ["c@sina.com/x"], "the tie at the cursor's time was lost");
    let end = ok(store.due_for_verification(1000, next.last().map(CredentialRow::due_position), 2).await, "due");
    assert!(end.is_empty());
    assert_eq!(names(ok(store.due_for_verification(70, None, 10).await, "due")), ["a@sina.com/sender"]);
}

async fn audit_trail(store: &dyn Store, a: &str) {
    ok(store.audit(event("Bind", "z@sina.com", "x", 80)).await, "audit");
    let events = ok(store.audit_events(AuditQuery { limit: 100, ..Default::default() }).await, "audit_events");
    let rpcs: Vec<&str> = events.iter().map(|e| e.event.rpc.as_str()).collect();
    assert_eq!(rpcs, ["Bind", "Import", "Bind", "Revoke", "Reveal", "Verify", "Rotate", "Bind"]);
    assert_eq!(events[0].event.mailbox, "z@sina.com");
    let reasons: Vec<&str> = events.iter().map(|e| e.event.reason.as_str()).collect();
    assert_eq!(reasons, ["", "", "", "gone", "", "", "", ""], "a Revoke's reason is kept with its event");
    let only_a = AuditQuery { mailbox: Some(a.into()), limit: 100, ..Default::default() };
    assert!(ok(store.audit_events(only_a).await, "audit filter").iter().all(|e| e.event.mailbox == a));
    // Newest first by time, not by write order: Reveals aggregated in memory are written late.
    ok(store.audit(event("Reveal", "z@sina.com", "x", 75)).await, "audit");
    let two = ok(store.audit_events(AuditQuery { limit: 2, ..Default::default() }).await, "audit_events");
    assert_eq!(
        two.iter().map(|e| (e.event.rpc.as_str(), e.event.at)).collect::<Vec<_>>(),
        [("Bind", 80), ("Reveal", 75)]
    );
    let after = AuditQuery { before: Some((75, two[1].id)), limit: 1, ..Default::default() };
    assert_eq!(
        ok(store.audit_events(after).await, "audit page")[0].event.rpc,
        "Import",
        "the next page goes on by time"
    );
}

fn request(id: &str, now: i64, forget_before: i64) -> RequestRecord {
    RequestRecord {
        caller: "tk_contract".into(),
        request_id: id.into(),
        rpc: "Rotate",
        fingerprint: vec![4; 32],
        key_id: 1,
        now,
        forget_before,
        answer: Box::new(|row| RecordedAnswer { bytes: format!("v{}", row.version).into_bytes(), mac: vec![6; 32] }),
    }
}

/// A request remembered with a write, its answer made from the row as committed, updated,
/// forgotten past its time; a failed write remembers nothing. Leaves b@sina.com/x at version 2
/// under key 1 and one request remembered under key 1 (it outlives the key's retirement below).
async fn remembered_requests(store: &dyn Store, ring: &Keyring) {
    let b = ("b@sina.com", "x");
    let change = |from_version| {
        let (key_id, generation, sealed) = ring.seal_code(b.0, b.1, from_version + 1, b"code");
        RotateChange {
            mailbox: b.0.into(),
            client: b.1.into(),
            from_version,
            code: StoredCode { key_id, generation: Some(generation), sealed },
            now: 100,
        }
    };
    let find = |id: &str| store.find_request("tk_contract".into(), id.into());
    let conflict = store.rotate(change(7), event("Rotate", b.0, b.1, 100), Some(request("r-0", 100, 0))).await;
    assert!(matches!(conflict, Err(StoreError::Conflict)), "{conflict:?}");
    assert_eq!(ok(find("r-0").await, "find_request"), None, "a failed write remembered its request");
    ok(store.rotate(change(1), event("Rotate", b.0, b.1, 100), Some(request("r-1", 100, 0))).await, "rotate");
    let found = ok(find("r-1").await, "find_request").unwrap_or_else(|| panic!("not remembered"));
    assert_eq!((found.rpc.as_str(), found.key_id, found.created_at), ("Rotate", 1, 100));
    let answer = RecordedAnswer { bytes: b"v2".to_vec(), mac: vec![6; 32] };
    assert_eq!((found.fingerprint, found.answer), (vec![4; 32], answer), "the answer is the committed row's");
    assert_eq!(
        ok(store.find_request("tk_other".into(), "r-1".into()).await, "find_request"),
        None,
        "ids are per caller"
    );
    let key = |rpc, created_at| RequestKey { caller: "tk_contract".into(), request_id: "r-1".into(), rpc, created_at };
    let later = RecordedAnswer { bytes: b"v2+probe".to_vec(), mac: vec![7; 32] };
    ok(store.update_request_answer(key("Bind", 100), later.clone()).await, "update, another rpc");
    ok(store.update_request_answer(key("Rotate", 99), later.clone()).await, "update, another row");
    assert_eq!(ok(find("r-1").await, "find_request").map(|f| f.answer.bytes), Some(b"v2".to_vec()));
    ok(store.update_request_answer(key("Rotate", 100), later.clone()).await, "update");
    assert_eq!(ok(find("r-1").await, "find_request").map(|f| f.answer), Some(later));
    // A later write forgets requests created before its `forget_before`.
    let mut probe = request("r-2", 200, 101);
    probe.rpc = "Revoke";
    let c = ("c@sina.com", "x");
    let revoke = RevokeChange { mailbox: c.0.into(), client: c.1.into(), reason: String::new(), now: 200 };
    let taken = store.rotate(change(2), event("Rotate", b.0, b.1, 150), Some(request("r-1", 150, 0))).await;
    assert!(matches!(taken, Err(StoreError::RequestIdTaken)), "{taken:?}");
    assert_eq!(ok(store.get(b.0, b.1).await, "get").version, 2, "a write with a taken id was kept");
    ok(store.revoke(revoke, event("Revoke", c.0, c.1, 200), Some(probe)).await, "revoke");
    assert_eq!(ok(find("r-1").await, "find_request"), None, "an expired request was kept");
    assert_eq!(ok(find("r-2").await, "find_request").map(|f| f.rpc), Some("Revoke".into()));
    let rebind = binding(ring, c.0, c.1, 210);
    ok(store.bind(rebind, event("Bind", c.0, c.1, 210), None).await, "re-bind");
}

/// A new key, codes re-sealed and tokens re-keyed under it, the old key deleted once no code is
/// left under it. Runs after the rest: three active codes under key 1, one revoked token.
async fn data_key_rotation(store: &dyn Store, ring: &Keyring, salt: Salt, scrubs: bool) {
    let ids = |keys: Vec<super::DataKeyInfo>| keys.iter().map(|k| k.key_id).collect::<Vec<_>>();
    assert_eq!(ids(ok(store.data_keys().await, "data_keys")), [1]);
    let (next, wrapped) = ring.with_new_key(&Key::random());
    let refused = store.add_data_key(Salt([0xee; 16]), wrapped.clone(), 100).await;
    assert!(matches!(refused, Err(StoreError::Conflict)), "another salt means another passphrase: {refused:?}");
    ok(store.add_data_key(salt, wrapped.clone(), 100).await, "add_data_key");
    assert!(
        matches!(store.add_data_key(salt, wrapped, 101).await, Err(StoreError::AlreadyExists)),
        "an id is taken once"
    );
    let keys = ok(store.data_keys().await, "data_keys");
    assert_eq!((ids(keys.clone()), keys[1].created_at), (vec![1, 2], 100));

    let pending = ok(store.retire_data_keys(2, vec![]).await, "retire while codes are pending");
    assert_eq!(pending, Retirement { retired: vec![], pending_codes: 3, pending_tokens: 0, destroyed: true });
    let old = ok(store.sealed_before(2, 10).await, "sealed_before");
    assert_eq!(old.len(), 3);
    let mut batch: Vec<Reseal> = old
        .iter()
        .map(|row| {
            let code = row.code.as_ref().unwrap_or_else(|| panic!("active rows hold a code"));
            let (key_id, generation, sealed) = next.seal_code(&row.mailbox, &row.client, row.version, b"code");
            Reseal {
                mailbox: row.mailbox.clone(),
                client: row.client.clone(),
                version: row.version,
                old_key_id: code.key_id,
                old_ciphertext: code.sealed.ciphertext.clone(),
                code: StoredCode { key_id, generation: Some(generation), sealed },
            }
        })
        .collect();
    let mut stale = batch[0].clone();
    stale.old_ciphertext = vec![0; 20];
    assert_eq!(ok(store.reseal(vec![stale]).await, "stale reseal"), 0, "a row whose seal moved on is left alone");
    let mut stale = batch[0].clone();
    stale.version += 1;
    assert_eq!(ok(store.reseal(vec![stale]).await, "stale reseal"), 0, "a row whose version moved on is left alone");
    let first = (batch[0].mailbox.clone(), batch[0].client.clone());
    // Read twice: a cache admits a row on its second miss.
    for _ in 0..2 {
        let _ = ok(store.get(&first.0, &first.1).await, "get (caches the row)");
    }
    let last = batch.pop().unwrap_or_else(|| panic!("three rows"));
    assert_eq!(ok(store.reseal(batch).await, "reseal"), 2);
    assert_eq!(ok(store.get(&first.0, &first.1).await, "get").code.as_ref().map(|c| c.key_id), Some(2));
    assert_eq!(ok(store.sealed_before(2, 10).await, "sealed_before").len(), 1);
    assert_eq!(ok(store.reseal(vec![last]).await, "reseal"), 1);
    assert!(ok(store.sealed_before(2, 10).await, "sealed_before").is_empty());

    // Tokens: the revoked one (no MAC) moves by itself; a valid one keeps the key until it is
    // re-keyed; one named invalid moves unchanged.
    for (id, mac) in [("tk_aaaaaaaaaaaa", 9), ("tk_bbbbbbbbbbbb", 8)] {
        let row = TokenRow {
            id: id.into(),
            role: "admin".into(),
            digest: vec![7; 32],
            key_id: 1,
            mac: vec![mac; 32],
            created_at: 91,
            last_used_at: None,
            revoked_at: None,
        };
        ok(store.insert_token(row).await, "insert_token");
    }
    let rekey = |old_mac: Vec<u8>| TokenRekey {
        id: "tk_aaaaaaaaaaaa".into(),
        old_key_id: 1,
        old_mac,
        key_id: 2,
        mac: vec![5; 32],
    };
    assert_eq!(ok(store.rekey_tokens(vec![rekey(vec![1; 32])]).await, "rekey, wrong old MAC"), 0);
    let invalid = vec!["tk_bbbbbbbbbbbb".to_owned()];
    let pending = ok(store.retire_data_keys(2, invalid.clone()).await, "retire with a valid token left");
    assert_eq!(pending, Retirement { retired: vec![], pending_codes: 0, pending_tokens: 1, destroyed: true });
    assert_eq!(ok(store.rekey_tokens(vec![rekey(vec![9; 32])]).await, "rekey"), 1);
    let retired = ok(store.retire_data_keys(2, invalid).await, "retire");
    assert_eq!(retired, Retirement { retired: vec![1], pending_codes: 0, pending_tokens: 0, destroyed: scrubs });
    let kept = ok(store.find_request("tk_contract".into(), "r-2".into()).await, "find_request");
    assert_eq!(kept.map(|r| r.key_id), Some(1), "a request went with its retired key");
    assert_eq!(ids(ok(store.data_keys().await, "data_keys")), [2]);
    assert_eq!(ok(store.unlock_material().await, "unlock_material").keys.len(), 1);
    let tokens: Vec<_> = ok(store.tokens().await, "tokens").into_iter().filter_map(Result::ok).collect();
    let by_id = |id: &str| tokens.iter().find(|t| t.id == id).map(|t| (t.key_id, t.mac.clone()));
    assert_eq!(by_id("tk_0123456789ab"), Some((2, vec![])), "the revoked row moved, still without a MAC");
    assert_eq!(by_id("tk_aaaaaaaaaaaa"), Some((2, vec![5; 32])), "the valid row carries its new MAC");
    assert_eq!(by_id("tk_bbbbbbbbbbbb"), Some((2, vec![8; 32])), "the invalid row moved unchanged");
    assert_eq!(ok(store.destroy_freed().await, "destroy_freed"), scrubs);
}

/// A fresh keyring and its wrapped key, for an engine's unlock material.
pub fn keyring() -> (Keyring, super::UnlockMaterial) {
    let (ring, wrapped) = Keyring::generate(&Key::random());
    let material = super::UnlockMaterial {
        salt: crate::crypto::Salt([3; 16]),
        params: crate::crypto::KdfParams::FLOOR,
        keys: vec![wrapped],
    };
    (ring, material)
}

#[tokio::test]
async fn sqlite_passes_the_contract() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (ring, material) = keyring();
    let store = ok(super::SqliteStore::create(&tmp.path().join("v.db"), &material, 0), "create");
    run(Arc::new(store), &ring, Files::Scrubbed).await;
}

#[tokio::test]
async fn the_row_cache_over_sqlite_passes_the_contract() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (ring, material) = keyring();
    let store = ok(super::SqliteStore::create(&tmp.path().join("v.db"), &material, 0), "create");
    run(Arc::new(super::CachedStore::new(store, 2)), &ring, Files::Scrubbed).await;
}

#[tokio::test]
async fn postgres_passes_the_contract() {
    let url = super::postgres::testdb::fresh_database().await;
    let (ring, material) = keyring();
    let store = ok(super::PgStore::connect(&url, None).await, "connect");
    ok(store.create(&material, 0).await, "create");
    run(Arc::new(store), &ring, Files::NotOurs).await;
}

#[tokio::test]
async fn the_row_cache_over_postgres_passes_the_contract() {
    let url = super::postgres::testdb::fresh_database().await;
    let (ring, material) = keyring();
    let store = ok(super::PgStore::connect(&url, None).await, "connect");
    ok(store.create(&material, 0).await, "create");
    run(Arc::new(super::CachedStore::new(store, 2)), &ring, Files::NotOurs).await;
}
