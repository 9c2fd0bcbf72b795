//! Copies of the vault: online backups, their verification, and restoring one into a new data dir.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{DB_FILE, DataDirError, create_private_dir, db_path, is_initialised, lock::lock_for_init, unlock};
use crate::secret::Passphrase;
use crate::store::SqliteStore;

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
    // Errors name the backup, not the scratch copy (gone when this returns).
    restore(&dir, file).map_err(|e| about_backup(file, e))?;
    let (store, keyring) = unlock(&dir, passphrase).map_err(|e| about_backup(file, e.into()))?;
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

/// What a backup that is no vault is told.
const NO_VAULT: &str = "holds no vault (it is empty, or has no keyring)";

/// `e`, from the scratch copy of the backup `file`, told of the backup itself.
fn about_backup(file: &Path, e: BackupError) -> BackupError {
    let shown = file.display();
    match e {
        BackupError::DataDir(DataDirError::WrongPassphrase(_)) => {
            BackupError::Io(format!("wrong passphrase for backup {shown}: its keyring did not unlock"))
        }
        BackupError::DataDir(DataDirError::NotInitialised(_)) => BackupError::Io(format!("backup {shown} {NO_VAULT}")),
        BackupError::DataDir(DataDirError::Store(_, e)) => BackupError::Io(format!("backup {shown}: {e}")),
        BackupError::DataDir(DataDirError::Crypto(_, e)) => BackupError::Io(format!("backup {shown}: {e}")),
        other => other,
    }
}

/// The first bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";
/// The header bytes read before anything is made: the magic, then the file format versions.
const HEADER_READ: usize = 20;
/// The header's write version: 2 in WAL mode.
const WAL_MODE_AT: usize = 18;

/// Makes `dir` (which must be missing or empty) a data dir holding the backup `file`.
pub fn restore(dir: &Path, file: &Path) -> Result<(), BackupError> {
    use std::io::Read as _;
    let io = |what: &str, e: std::io::Error| BackupError::Io(format!("{what}: {e}"));
    let cannot_read = |e| io(&format!("cannot read backup {}", file.display()), e);
    // The backup is opened, and its header read, before anything is made: a missing one, or
    // one that is no database (an endless pipe), leaves nothing behind.
    let (mut source, _) = crate::input_file::open(file).map_err(|e| match e {
        crate::input_file::InputError::Io(e) => cannot_read(e),
        e @ crate::input_file::InputError::NotFileOrPipe => {
            BackupError::Io(format!("backup {} is {e}; give the file `backup` wrote", file.display()))
        }
    })?;
    let mut head = Vec::with_capacity(HEADER_READ);
    (&mut source).take(HEADER_READ as u64).read_to_end(&mut head).map_err(cannot_read)?;
    if head.is_empty() {
        return Err(BackupError::Io(format!("backup {} {NO_VAULT}", file.display())));
    }
    if !head.starts_with(SQLITE_HEADER) {
        return Err(BackupError::Io(format!(
            "backup {} is not an SQLite database, so no file `backup` wrote; nothing was restored",
            file.display()
        )));
    }
    // A data dir's own vault.db (WAL mode; `backup` writes rollback mode): copied on its own, it
    // lacks the latest changes, which sit in the -wal beside the original.
    if head.get(WAL_MODE_AT).is_some_and(|v| *v == 2) {
        return Err(BackupError::Io(format!(
            "{} is a copy of a data dir's vault.db, not a file `backup` wrote: its latest changes may sit in the \
             -wal beside the original. Run `vault-server backup --data-dir DIR FILE` on that data dir (a server may \
             be running) and restore FILE; nothing was restored",
            file.display()
        )));
    }
    let refuse_not_empty = || BackupError::Io(format!("refusing to restore into {}: it is not empty", dir.display()));
    let made = Made::before(dir).map_err(|e| match e {
        Some(e) => io(&format!("cannot read {}", dir.display()), e),
        None => refuse_not_empty(),
    })?;
    if let Err(e) = create_private_dir(dir) {
        made.undo();
        return Err(e.into());
    }
    // Held while the copy is made and opened: an init beside it must not take the copy, half
    // written, for an empty vault. If another process holds it, or wrote into the dir first,
    // the dir is that process's now: left as it is.
    let lock = lock_for_init(dir)?;
    if fs::read_dir(dir).map_or(true, |mut entries| entries.next().is_some()) {
        return Err(refuse_not_empty());
    }
    let restored = copy_and_open(dir, &head, &mut source);
    if restored.is_err() {
        // A failed restore leaves the target as it found it, so that a retry is not refused.
        for name in [DB_FILE.to_owned(), format!("{DB_FILE}-wal"), format!("{DB_FILE}-shm")] {
            let _ = fs::remove_file(dir.join(name));
        }
        drop(lock);
        made.undo();
    }
    restored
}

/// What a restore is about to make of its target, so that a failure can take it back: the
/// directories it creates (the target and missing parents, deepest first), or the mode of the
/// empty directory it was given.
struct Made {
    dir: PathBuf,
    created: Vec<PathBuf>,
    mode_before: Option<fs::Permissions>,
}

impl Made {
    /// Refuses (`Err(None)`) a target that is not an empty directory.
    fn before(dir: &Path) -> Result<Self, Option<std::io::Error>> {
        match fs::read_dir(dir).map(|mut entries| entries.next().is_some()) {
            Ok(true) => Err(None),
            Ok(false) => {
                let mode_before = fs::metadata(dir).ok().map(|m| m.permissions());
                Ok(Self { dir: dir.to_owned(), created: Vec::new(), mode_before })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let created =
                    dir.ancestors().take_while(|d| !d.as_os_str().is_empty() && !d.exists()).map(Path::to_owned);
                Ok(Self { dir: dir.to_owned(), created: created.collect(), mode_before: None })
            }
            Err(e) => Err(Some(e)),
        }
    }

    /// Removes the directories made (if still empty), or gives the given one its mode back.
    fn undo(self) {
        for d in &self.created {
            let _ = fs::remove_dir(d);
        }
        if let Some(mode) = self.mode_before {
            let _ = fs::set_permissions(&self.dir, mode);
        }
    }
}

/// Copies the backup in as the data dir's database, synced, and opens it as a vault (brought to
/// this binary's schema).
fn copy_and_open(dir: &Path, head: &[u8], source: &mut fs::File) -> Result<(), BackupError> {
    use std::io::Write as _;
    let io = |what: &str, e: std::io::Error| BackupError::Io(format!("{what}: {e}"));
    let target = db_path(dir);
    let mut copy = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&target)
        .map_err(|e| io(&format!("cannot create {}", target.display()), e))?;
    copy.write_all(head)
        .and_then(|()| std::io::copy(source, &mut copy))
        .map_err(|e| io("cannot copy the backup", e))?;
    copy.sync_all().map_err(|e| io("cannot sync the restored database", e))?;
    drop(copy);
    // A backup that holds nothing (0 bytes, no keyring) is no vault.
    SqliteStore::open(&target).map_err(|e| match e {
        crate::store::StoreError::NotInitialised => BackupError::Io(format!("the backup {NO_VAULT}")),
        e => DataDirError::Store(dir.to_owned(), e).into(),
    })?;
    Ok(())
}
