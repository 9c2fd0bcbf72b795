//! The data dir: creating it (`init`) and unlocking it (`serve`). It holds `vault.db` and its WAL.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::crypto::{CryptoError, KdfParams, Keyring, Salt, derive_kek};
use crate::secret::Passphrase;
use crate::store::{SqliteStore, StoreError, UnlockMaterial};

pub const DB_FILE: &str = "vault.db";
/// Shortest passphrase `init` accepts.
pub const MIN_PASSPHRASE_CHARS: usize = 12;

/// Start-up failures; each displays as one line an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("data dir {0} is not initialised; run `vault-server init --data-dir {0}` first")]
    NotInitialised(PathBuf),
    #[error(
        "data dir {0} has no vault.db, but a server used it (serve.lock is there): the database was deleted or moved; restore it (vault-server restore) rather than starting an empty vault"
    )]
    DatabaseMissing(PathBuf),
    #[error("data dir {0} is already initialised; refusing to overwrite it")]
    AlreadyInitialised(PathBuf),
    #[error("wrong passphrase for data dir {0}: the keyring did not unlock")]
    WrongPassphrase(PathBuf),
    #[error("the passphrase must be at least {MIN_PASSPHRASE_CHARS} characters")]
    WeakPassphrase,
    #[error("the new passphrase is the current one; nothing was changed")]
    SamePassphrase,
    #[error("data dir {0} is in use by another `vault-server serve` (pid {1}); one server owns a data dir")]
    InUse(PathBuf, String),
    #[error("data dir {0}: cannot take its lock file: {1}")]
    Lock(PathBuf, std::io::Error),
    #[error("data dir {0}: the passphrase was changed by someone else meanwhile; nothing was changed, run it again")]
    ChangedMeanwhile(PathBuf),
    #[error("cannot create data dir {0}: {1}")]
    Create(PathBuf, std::io::Error),
    #[error("data dir {0}: {1}")]
    Store(PathBuf, StoreError),
    #[error("data dir {0}: {1}")]
    Crypto(PathBuf, CryptoError),
}

pub fn db_path(dir: &Path) -> PathBuf {
    dir.join(DB_FILE)
}

pub fn is_initialised(dir: &Path) -> bool {
    db_path(dir).exists()
}

/// `Ok` if the data dir holds a vault; else says whether it never did or its database went
/// missing (a server's lock file is there), so that no one starts an empty vault by mistake.
pub fn check_present(dir: &Path) -> Result<(), DataDirError> {
    if is_initialised(dir) {
        Ok(())
    } else if dir.join(LOCK_FILE).exists() {
        Err(DataDirError::DatabaseMissing(dir.to_owned()))
    } else {
        Err(DataDirError::NotInitialised(dir.to_owned()))
    }
}

/// Creates the dir (0700) and a database with a fresh keyring sealed under the passphrase.
pub fn init(dir: &Path, passphrase: &Passphrase, now: i64) -> Result<(), DataDirError> {
    if passphrase.expose().chars().count() < MIN_PASSPHRASE_CHARS {
        return Err(DataDirError::WeakPassphrase);
    }
    if is_initialised(dir) {
        return Err(DataDirError::AlreadyInitialised(dir.to_owned()));
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
        .map_err(|e| DataDirError::Create(dir.to_owned(), e))?;
    let salt = Salt::random();
    let params = KdfParams::FLOOR;
    let kek = derive_kek(passphrase, &salt, params).map_err(|e| DataDirError::Crypto(dir.to_owned(), e))?;
    let (_, wrapped) = Keyring::generate(&kek);
    let material = UnlockMaterial { salt, params, keys: vec![wrapped] };
    SqliteStore::create(&db_path(dir), &material, now).map_err(|e| DataDirError::Store(dir.to_owned(), e))?;
    Ok(())
}

/// Opens the database and unlocks the keyring. A wrong passphrase stops here, before any
/// ciphertext is touched.
pub fn unlock(dir: &Path, passphrase: &Passphrase) -> Result<(SqliteStore, Keyring), DataDirError> {
    let store_err = |e| match e {
        StoreError::NotInitialised => DataDirError::NotInitialised(dir.to_owned()),
        e => DataDirError::Store(dir.to_owned(), e),
    };
    if !is_initialised(dir) {
        return Err(DataDirError::NotInitialised(dir.to_owned()));
    }
    let store = SqliteStore::open(&db_path(dir)).map_err(store_err)?;
    let material = store.sync().unlock_material().map_err(store_err)?;
    let kek =
        derive_kek(passphrase, &material.salt, material.params).map_err(|e| DataDirError::Crypto(dir.to_owned(), e))?;
    let keyring = Keyring::unlock(&kek, &material.keys).map_err(|e| match e {
        CryptoError::Decrypt => DataDirError::WrongPassphrase(dir.to_owned()),
        e => DataDirError::Crypto(dir.to_owned(), e),
    })?;
    Ok((store, keyring))
}

/// Re-wraps the data keys under `new` with a fresh salt, in one transaction: a crash leaves
/// either the old or the new passphrase working, never neither. Codes are not touched, and a
/// running server (which holds the keys already) is not disturbed.
pub fn change_passphrase(dir: &Path, current: &Passphrase, new: &Passphrase) -> Result<(), DataDirError> {
    if new.expose().chars().count() < MIN_PASSPHRASE_CHARS {
        return Err(DataDirError::WeakPassphrase);
    }
    if new.expose() == current.expose() {
        return Err(DataDirError::SamePassphrase);
    }
    let (store, keyring) = unlock(dir, current)?;
    let store_err = |e| DataDirError::Store(dir.to_owned(), e);
    let before = store.sync().unlock_material().map_err(store_err)?;
    let salt = Salt::random();
    // Parameters an operator raised stay raised.
    let params = before.params;
    let kek = derive_kek(new, &salt, params).map_err(|e| DataDirError::Crypto(dir.to_owned(), e))?;
    let material = UnlockMaterial { salt, params, keys: keyring.wrap_all(&kek) };
    store.sync().replace_unlock_material(&before, &material).map_err(|e| match e {
        StoreError::Conflict => DataDirError::ChangedMeanwhile(dir.to_owned()),
        e => DataDirError::Store(dir.to_owned(), e),
    })
}

/// Re-seals every active code still sealed without a generation (AAD format 1, before
/// migration 0003) with one, so that afterwards a row without a generation is refused as
/// tampered, and an old ciphertext cannot be replayed through the legacy format. Runs at start,
/// before serving. Returns how many rows were re-sealed.
pub fn upgrade_seals(dir: &Path, store: &SqliteStore, keyring: &Keyring) -> Result<usize, DataDirError> {
    let db = store.sync();
    let store_err = |e| DataDirError::Store(dir.to_owned(), e);
    let mut done = 0;
    let mut refused = std::collections::HashSet::new();
    loop {
        let rows = db.legacy_sealed(refused.len() + 200).map_err(store_err)?;
        let todo: Vec<_> = rows.iter().filter(|r| !refused.contains(&(r.mailbox.clone(), r.client.clone()))).collect();
        if todo.is_empty() {
            break;
        }
        for row in todo {
            let Some(code) = &row.code else { continue };
            let opened = keyring.open_code(
                code.key_id,
                &row.mailbox,
                &row.client,
                row.version,
                None,
                &code.sealed.nonce,
                &code.sealed.ciphertext,
            );
            let Ok(plain) = opened else {
                tracing::error!(mailbox = %row.mailbox, client = %row.client, "a legacy seal does not open (tampered?); left as it is, Reveal answers DATA_LOSS");
                refused.insert((row.mailbox.clone(), row.client.clone()));
                continue;
            };
            let (key_id, generation, sealed) = keyring.seal_code(&row.mailbox, &row.client, row.version, &plain);
            let new = crate::store::StoredCode { key_id, generation: Some(generation), sealed };
            if db.reseal(row, &code.sealed.nonce, &new).map_err(store_err)? {
                done += 1;
            }
        }
    }
    if done > 0 {
        db.shred();
        tracing::info!(rows = done, "re-sealed codes from AAD format 1 to format 2 (with a generation)");
    }
    Ok(done)
}

/// The file that names the pid of the `serve` that owns a data dir.
pub const LOCK_FILE: &str = "serve.lock";

/// Held by `serve` for its whole life: an exclusive lock on the data dir itself (so deleting or
/// replacing `serve.lock` cannot let a second server in), with the owner's pid in
/// `DIR/serve.lock` for the message. The kernel drops the lock when the process ends, however
/// it ends.
#[derive(Debug)]
pub struct DirLock {
    _dir: fs::File,
}

/// Takes the data dir's lock, or says which process holds it.
pub fn lock_for_serve(dir: &Path) -> Result<DirLock, DataDirError> {
    use std::io::{Read as _, Write as _};
    let lock_err = |e| DataDirError::Lock(dir.to_owned(), e);
    let handle = fs::File::open(dir).map_err(lock_err)?;
    // Never follow a link planted as serve.lock: it could point at any file we can write.
    let no_follow = nix::fcntl::OFlag::O_NOFOLLOW.bits();
    let pid_file = dir.join(LOCK_FILE);
    match handle.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            if let Ok(mut f) = fs::OpenOptions::new().read(true).custom_flags(no_follow).open(&pid_file) {
                let _ = f.read_to_string(&mut pid);
            }
            let pid: String = pid.trim().chars().filter(char::is_ascii_digit).take(10).collect();
            return Err(DataDirError::InUse(dir.to_owned(), if pid.is_empty() { "unknown".into() } else { pid }));
        }
        Err(fs::TryLockError::Error(e)) => return Err(lock_err(e)),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(no_follow)
        .open(&pid_file)
        .map_err(lock_err)?;
    writeln!(file, "{}", std::process::id()).map_err(lock_err)?;
    Ok(DirLock { _dir: handle })
}

/// What `backup verify` found: every active code opened.
#[derive(Debug)]
pub struct BackupReport {
    pub active: u64,
    pub revoked: u64,
    pub key_ids: Vec<u32>,
}

/// Backup and restore failures.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("{0}")]
    Io(String),
    #[error("backup {file}: the code of {mailbox}/{client} does not open ({why}); this backup is not sound")]
    Unreadable { file: PathBuf, mailbox: String, client: String, why: String },
}

/// Writes a consistent copy of the vault to `file` (which must not exist), while it serves.
pub fn backup(dir: &Path, file: &Path) -> Result<(), BackupError> {
    if !is_initialised(dir) {
        return Err(DataDirError::NotInitialised(dir.to_owned()).into());
    }
    let store = SqliteStore::open(&db_path(dir)).map_err(|e| DataDirError::Store(dir.to_owned(), e))?;
    store.sync().backup_into(file).map_err(|e| BackupError::Io(format!("cannot write backup {}: {e}", file.display())))
}

/// Unlocks a backup with `passphrase` and opens every active code in it (on a scratch copy, so
/// the backup file itself is never written).
pub fn verify_backup(file: &Path, passphrase: &Passphrase) -> Result<BackupReport, BackupError> {
    let scratch = tempfile::Builder::new()
        .prefix("vault-verify")
        .tempdir()
        .map_err(|e| BackupError::Io(format!("cannot make a scratch dir: {e}")))?;
    let dir = scratch.path().join("data");
    restore(&dir, file)?;
    let (store, keyring) = unlock(&dir, passphrase)?;
    let db = store.sync();
    let mut report = BackupReport { active: 0, revoked: 0, key_ids: keyring.key_ids().collect() };
    let mut after = None;
    loop {
        let query =
            crate::store::ListQuery { include_revoked: true, after: after.take(), limit: 500, ..Default::default() };
        let rows = db.list(&query).map_err(|e| DataDirError::Store(file.to_owned(), e))?;
        let Some(last) = rows.last() else { break };
        after = Some((last.mailbox.clone(), last.client.clone()));
        for row in &rows {
            let Some(code) = &row.code else {
                report.revoked += 1;
                continue;
            };
            let opened = keyring.open_code(
                code.key_id,
                &row.mailbox,
                &row.client,
                row.version,
                code.generation.as_ref(),
                &code.sealed.nonce,
                &code.sealed.ciphertext,
            );
            if let Err(e) = opened {
                return Err(BackupError::Unreadable {
                    file: file.to_owned(),
                    mailbox: row.mailbox.clone(),
                    client: row.client.clone(),
                    why: e.to_string(),
                });
            }
            report.active += 1;
        }
    }
    Ok(report)
}

/// Makes `dir` (which must be missing or empty) a data dir holding the backup `file`.
pub fn restore(dir: &Path, file: &Path) -> Result<(), BackupError> {
    let io = |what: &str, e: std::io::Error| BackupError::Io(format!("{what}: {e}"));
    match fs::read_dir(dir).map(|mut entries| entries.next().is_some()) {
        Ok(true) => {
            return Err(BackupError::Io(format!("refusing to restore into {}: it is not empty", dir.display())));
        }
        Ok(false) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&format!("cannot read {}", dir.display()), e)),
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
        .map_err(|e| DataDirError::Create(dir.to_owned(), e))?;
    let mut source = fs::File::open(file).map_err(|e| io(&format!("cannot read backup {}", file.display()), e))?;
    let target = db_path(dir);
    let mut copy = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&target)
        .map_err(|e| io(&format!("cannot create {}", target.display()), e))?;
    std::io::copy(&mut source, &mut copy).map_err(|e| io("cannot copy the backup", e))?;
    copy.sync_all().map_err(|e| io("cannot sync the restored database", e))?;
    // It must open as a vault (and is brought to this binary's schema).
    SqliteStore::open(&target).map_err(|e| DataDirError::Store(dir.to_owned(), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_unlock_and_wrong_passphrase() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let good = Passphrase::new("correct horse battery");
        init(&dir, &good, 0).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(db_path(&dir)).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(matches!(init(&dir, &good, 0), Err(DataDirError::AlreadyInitialised(_))));
        assert!(unlock(&dir, &good).is_ok());
        let bad = unlock(&dir, &Passphrase::new("wrong horse battery"));
        assert!(matches!(bad, Err(DataDirError::WrongPassphrase(_))));
        assert!(matches!(unlock(&tmp.path().join("none"), &good), Err(DataDirError::NotInitialised(_))));
        assert!(matches!(init(&tmp.path().join("x"), &Passphrase::new("short"), 0), Err(DataDirError::WeakPassphrase)));
    }

    #[test]
    fn legacy_seals_are_upgraded_at_start_and_a_broken_one_is_left_alone() {
        use crate::ids::{ClientId, Mailbox};
        use crate::store::{AuditEvent, NewBinding, StoredCode};
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let pass = Passphrase::new("correct horse battery");
        init(&dir, &pass, 0).unwrap();
        let (store, ring) = unlock(&dir, &pass).unwrap();
        let db = store.sync();
        let audit = AuditEvent {
            at: 1,
            caller: "t".into(),
            caller_role: "admin".into(),
            rpc: "Bind".into(),
            mailbox: String::new(),
            client: String::new(),
            outcome: "OK".into(),
            probe_outcome: None,
            count: 1,
            first_at: 1,
        };
        let legacy = |mailbox: &str, sealed: crate::crypto::Sealed, key_id| NewBinding {
            mailbox: Mailbox::parse(mailbox).unwrap(),
            client: ClientId::parse("sender").unwrap(),
            provider: "sina".into(),
            code: StoredCode { key_id, generation: None, sealed },
            now: 1,
            probe_outcome: crate::outcome::ProbeOutcome::Accepted,
        };
        let (kid, old) = ring.seal_code_legacy("a@sina.com", "sender", 1, b"legacycode000001");
        db.bind(&legacy("a@sina.com", old.clone(), kid), &audit).unwrap();
        let (kid, mut broken) = ring.seal_code_legacy("b@sina.com", "sender", 1, b"legacycode000002");
        broken.ciphertext[0] ^= 1;
        db.bind(&legacy("b@sina.com", broken, kid), &audit).unwrap();

        assert_eq!(upgrade_seals(&dir, &store, &ring).unwrap(), 1);
        let row = db.get("a@sina.com", "sender").unwrap();
        let code = row.code.as_ref().unwrap();
        let generation = code.generation.expect("re-sealed with a generation");
        let plain = ring.open_code(
            code.key_id,
            "a@sina.com",
            "sender",
            1,
            Some(&generation),
            &code.sealed.nonce,
            &code.sealed.ciphertext,
        );
        assert_eq!(plain.unwrap().as_slice(), b"legacycode000001");
        assert_ne!(code.sealed.nonce, old.nonce, "a new seal, not the old one relabelled");
        // The broken row is left (Reveal answers DATA_LOSS for it); a second pass changes nothing.
        assert!(db.get("b@sina.com", "sender").unwrap().code.as_ref().unwrap().generation.is_none());
        assert_eq!(upgrade_seals(&dir, &store, &ring).unwrap(), 0);
    }

    #[test]
    fn two_passphrase_changes_at_once_cannot_both_win() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let first = Passphrase::new("correct horse battery");
        init(&dir, &first, 0).unwrap();
        let (store, ring) = unlock(&dir, &first).unwrap();
        let before = store.sync().unlock_material().unwrap();
        // Another admin changes it first.
        change_passphrase(&dir, &first, &Passphrase::new("the other admin's one")).unwrap();
        // This change was prepared against the old wrapping: it must fail, not overwrite.
        let salt = Salt::random();
        let kek = derive_kek(&Passphrase::new("mine, lost silently?"), &salt, before.params).unwrap();
        let material = UnlockMaterial { salt, params: before.params, keys: ring.wrap_all(&kek) };
        assert!(matches!(store.sync().replace_unlock_material(&before, &material), Err(StoreError::Conflict)));
        assert!(unlock(&dir, &Passphrase::new("the other admin's one")).is_ok());
    }
}
