//! The data dir: creating it (`init`) and unlocking it (`serve`). It holds `vault.db` and its
//! WAL. Submodules: who owns it (`lock`), copies of it (`backup`), its passphrase
//! (`passphrase`) and the format of its seals (`seals`).

mod backup;
mod lock;
mod passphrase;
mod seals;

pub use backup::{BackupError, BackupReport, backup, restore, verify_backup};
pub use lock::{DirLock, LOCK_FILE, lock_for_serve};
pub use passphrase::change_passphrase;
pub use seals::upgrade_seals;

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::crypto::{CryptoError, Keyring};
use crate::secret::Passphrase;
use crate::store::{SqliteDb, SqliteStore, StoreError, UnlockMaterial};

pub const DB_FILE: &str = "vault.db";
/// Shortest passphrase `init` accepts.
pub const MIN_PASSPHRASE_CHARS: usize = 12;

/// Start-up failures; each displays as one line an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("data dir {0} is not initialised; run `vault-server init --data-dir {0}` first")]
    NotInitialised(PathBuf),
    #[error(
        "data dir {0} has no vault.db (or one that holds nothing), but a server used it (serve.lock is there): the database was deleted or moved (or emptied); restore it (vault-server restore) rather than starting an empty vault (to start one here anyway, remove serve.lock)"
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
    #[error(
        "data dir {0} is in use by another vault-server (pid {1}: a `serve`, or an `init` under way); one process owns a data dir"
    )]
    InUse(PathBuf, String),
    #[error("data dir {0}: cannot take its lock file: {1}")]
    Lock(PathBuf, std::io::Error),
    #[error("data dir {0}: the passphrase was changed by someone else meanwhile; nothing was changed, run it again")]
    ChangedMeanwhile(PathBuf),
    #[error("cannot create data dir {0}: {1}")]
    Create(PathBuf, std::io::Error),
    #[error(
        "{0} is not empty (it holds {1}, which is no vault's): give a new or empty directory for the data dir (init makes it private, mode 0700)"
    )]
    NotEmpty(PathBuf, String),
    #[error("data dir {0}: {1}")]
    Store(PathBuf, StoreError),
    #[error("data dir {0}: {1}")]
    Crypto(PathBuf, CryptoError),
}

pub fn db_path(dir: &Path) -> PathBuf {
    dir.join(DB_FILE)
}

pub fn is_initialised(dir: &Path) -> bool {
    // Anything at the path (a dangling link too) counts as a vault unless it holds nothing: what
    // cannot be read may never be replaced unread.
    let db = db_path(dir);
    fs::symlink_metadata(&db).is_ok() && !matches!(SqliteDb::holds_nothing(&db), Ok(true))
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

/// Whether a new passphrase is too short: fewer than [`MIN_PASSPHRASE_CHARS`] characters once
/// leading and trailing spaces are set aside (fourteen spaces are no passphrase).
pub fn too_short(passphrase: &Passphrase) -> bool {
    passphrase.expose().trim().chars().count() < MIN_PASSPHRASE_CHARS
}

/// Creates `dir` (and its parents) with mode 0700, also if it existed with another mode.
fn create_private_dir(dir: &Path) -> Result<(), DataDirError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
        .map_err(|e| DataDirError::Create(dir.to_owned(), e))
}

/// The first entry of an existing `dir` that no vault or cut-off init leaves there (`vault.db`
/// and its `-wal`, `-shm`, `-owed`, a set-aside `vault.db.replaced-*`, `serve.lock`, a volume's
/// `lost+found`), nor is
/// named in `also`: init must not take over, and make private, a directory that holds other
/// things (`/var/lib`).
pub fn foreign_entry(dir: &Path, also: &[&str]) -> Result<Option<String>, DataDirError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DataDirError::Create(dir.to_owned(), e)),
    };
    for entry in entries {
        let name = entry.map_err(|e| DataDirError::Create(dir.to_owned(), e))?.file_name();
        let name = name.to_string_lossy();
        // A volume mounted as the data dir holds `lost+found`.
        let ours = name == LOCK_FILE
            || name == "lost+found"
            || also.contains(&name.as_ref())
            || name
                .strip_prefix(DB_FILE)
                .is_some_and(|rest| ["", "-wal", "-shm", "-owed"].contains(&rest) || rest.starts_with(".replaced-"));
        if !ours {
            return Ok(Some(format!("{name:?}")));
        }
    }
    Ok(None)
}

/// Creates the dir (0700) and a database with a fresh keyring sealed under the passphrase.
pub fn init(dir: &Path, passphrase: &Passphrase, now: i64) -> Result<(), DataDirError> {
    init_keeping(dir, passphrase, now, &[])
}

/// [`init`] into a dir that may also hold the files named in `keep` (dev mode's passphrase).
pub fn init_keeping(dir: &Path, passphrase: &Passphrase, now: i64, keep: &[&str]) -> Result<(), DataDirError> {
    if too_short(passphrase) {
        return Err(DataDirError::WeakPassphrase);
    }
    if is_initialised(dir) {
        return Err(DataDirError::AlreadyInitialised(dir.to_owned()));
    }
    if let Some(other) = foreign_entry(dir, keep)? {
        return Err(DataDirError::NotEmpty(dir.to_owned(), other));
    }
    create_private_dir(dir)?;
    let _lock = lock::lock_for_init(dir)?;
    if is_initialised(dir) {
        return Err(DataDirError::AlreadyInitialised(dir.to_owned()));
    }
    // A server ran here: its vault went missing or was emptied, it did not never exist.
    if dir.join(LOCK_FILE).exists() {
        return Err(DataDirError::DatabaseMissing(dir.to_owned()));
    }
    if fs::symlink_metadata(db_path(dir)).is_ok() {
        // It holds nothing (an init cut off left it); kept aside, not deleted.
        // The pair keeps SQLite's naming: vault.db.replaced-T and vault.db.replaced-T-wal.
        let aside = format!("{DB_FILE}.replaced-{now}");
        for (name, to) in [(DB_FILE.to_owned(), aside.clone()), (format!("{DB_FILE}-wal"), format!("{aside}-wal"))] {
            let path = dir.join(&name);
            if fs::symlink_metadata(&path).is_ok() {
                fs::rename(&path, dir.join(to)).map_err(|e| DataDirError::Create(path, e))?;
            }
        }
        let shm = dir.join(format!("{DB_FILE}-shm"));
        if let Err(e) = fs::remove_file(&shm)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(DataDirError::Create(shm, e));
        }
    }
    let material = UnlockMaterial::generate(passphrase).map_err(|e| DataDirError::Crypto(dir.to_owned(), e))?;
    SqliteStore::create(&db_path(dir), &material, now).map_err(|e| DataDirError::Store(dir.to_owned(), e))?;
    Ok(())
}

/// Opens the database and unlocks the keyring. A wrong passphrase stops here, before any
/// ciphertext is touched.
pub fn unlock(dir: &Path, passphrase: &Passphrase) -> Result<(SqliteStore, Keyring), DataDirError> {
    unlock_keeping_kek(dir, passphrase).map(|(store, keyring, _)| (store, keyring))
}

/// [`unlock`], also returning the KEK and the salt it was derived with: what a server that
/// rotates data keys needs to wrap a new one.
pub fn unlock_keeping_kek(
    dir: &Path,
    passphrase: &Passphrase,
) -> Result<(SqliteStore, Keyring, crate::crypto::Kek), DataDirError> {
    let store_err = |e| match e {
        StoreError::NotInitialised => DataDirError::NotInitialised(dir.to_owned()),
        e => DataDirError::Store(dir.to_owned(), e),
    };
    if !is_initialised(dir) {
        return Err(DataDirError::NotInitialised(dir.to_owned()));
    }
    let store = SqliteStore::open(&db_path(dir)).map_err(store_err)?;
    let material = store.sync().unlock_material().map_err(store_err)?;
    let (keyring, kek) = material.open(passphrase).map_err(|e| match e {
        CryptoError::Decrypt => DataDirError::WrongPassphrase(dir.to_owned()),
        e => DataDirError::Crypto(dir.to_owned(), e),
    })?;
    Ok((store, keyring, kek))
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
}
