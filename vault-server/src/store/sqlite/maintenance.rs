//! Work on the whole file rather than on one binding: WAL truncation after a destroying change,
//! online backups, and finding legacy rows.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{Db, rows};
use crate::store::{CredentialRow, StoreError};

impl Db {
    /// A consistent online copy into `target`, which must not exist: `VACUUM INTO` from one read
    /// snapshot, so the copy holds live rows only (no free pages, no WAL), created 0600. It is
    /// written beside `target` under a hidden name, synced, and only then given `target`'s name
    /// (a hard link, or a rename that never replaces), so a backup that fails or is killed never
    /// leaves a partial file under the name asked for.
    pub fn backup_into(&self, target: &Path) -> Result<(), StoreError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Unavailable(format!("{what} {}: {e}", target.display()))
        };
        let name = target.file_name().and_then(|n| n.to_str()).filter(|n| !n.is_empty());
        let (Some(name), Some(_)) = (name, target.to_str()) else {
            return Err(StoreError::Unavailable("the backup path is not a UTF-8 file name".into()));
        };
        if target.symlink_metadata().is_ok() {
            return Err(fail("cannot create", &"it exists"));
        }
        let partial = target.with_file_name(format!(".{name}.partial-{:016x}", rand::random::<u64>()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .map_err(|e| fail("cannot create a file beside", &e))?;
        let published = self.copy_into(&partial, &file).and_then(|()| publish(&partial, target));
        // After a hard link the hidden name is a second name of the backup: removed, or said.
        if let Err(e) = std::fs::remove_file(&partial)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, file = %partial.display(), "cannot remove the backup's hidden copy; delete it");
        }
        published?;
        // The copy is complete under its name; only its directory entry may not be on disk yet.
        let dir = target.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
            tracing::warn!(error = %e, "the backup is written, but its directory could not be synced");
        }
        Ok(())
    }

    /// `VACUUM INTO` the empty, private `path` (open as `file`), then synced to disk.
    fn copy_into(&self, path: &Path, file: &std::fs::File) -> Result<(), StoreError> {
        use std::os::unix::fs::MetadataExt as _;
        let text = path.to_str().ok_or_else(|| StoreError::Unavailable("the backup path is not UTF-8".into()))?;
        self.with_reader(|conn| Ok(conn.execute("VACUUM INTO ?1", [text])?))?;
        // SQLite opened the file again by name: check that it is still the one made above, and
        // private.
        let replaced = || {
            StoreError::Unavailable(format!(
                "the backup {} was replaced or opened up while it was written; do not trust it",
                path.display()
            ))
        };
        let (named, opened) =
            (std::fs::symlink_metadata(path).map_err(|_| replaced())?, file.metadata().map_err(|_| replaced())?);
        if !named.is_file()
            || (named.dev(), named.ino()) != (opened.dev(), opened.ino())
            || named.len() == 0
            || named.mode() & 0o077 != 0
        {
            return Err(replaced());
        }
        file.sync_all().map_err(|e| StoreError::Unavailable(format!("cannot sync the backup: {e}")))
    }
}

/// Gives `partial` the name `target`, never replacing a file there: a hard link, or on a file
/// system without hard links (vfat, some network mounts) a rename that refuses to replace.
fn publish(partial: &Path, target: &Path) -> Result<(), StoreError> {
    let fail = |e: &dyn std::fmt::Display| StoreError::Unavailable(format!("cannot create {}: {e}", target.display()));
    match std::fs::hard_link(partial, target) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(fail(&"it exists")),
        Err(_) => {}
    }
    let cwd = nix::fcntl::AT_FDCWD;
    match nix::fcntl::renameat2(cwd, partial, cwd, target, nix::fcntl::RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EEXIST) => Err(fail(&"it exists")),
        Err(e) => Err(fail(&format!(
            "{e}; this file system takes neither a hard link nor a rename that cannot replace a file, so the \
             backup cannot be put there safely: write it to another file system and copy it"
        ))),
    }
}

/// The rows `upgrade_seals` looks for at every start, through their partial index (almost
/// always empty). Left to itself, the planner walked another index over every active row and
/// looked each one up: 5 s of start-up at a million bindings.
pub(super) const LEGACY_SEALED: &str =
    "INDEXED BY credentials_legacy_sealed WHERE state = 1 AND generation IS NULL LIMIT ?1";

impl Db {
    /// Active rows still sealed without a generation (AAD format 1), a page at a time.
    pub fn legacy_sealed(&self, limit: usize) -> Result<Vec<CredentialRow>, StoreError> {
        let sql = format!("SELECT {} FROM credentials {LEGACY_SEALED}", rows::COLUMNS);
        self.with_reader(|conn| {
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], rows::read_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}

/// How long a retried truncation waits for readers to step aside.
const RETRY_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// Checkpoint attempts after a Revoke or Rotate; each waits up to the busy timeout for readers.
const SHRED_ATTEMPTS: usize = 3;

impl Db {
    /// After a change that destroys a ciphertext or key wrapping (Revoke, Rotate, a passphrase
    /// change, a re-seal): copies the WAL into the database (where `secure_delete` has
    /// zeroed the old cell) and truncates the WAL, so no live file keeps the old ciphertext or
    /// nonce. The change is already committed; if readers keep the checkpoint from finishing, or
    /// it fails (a full disk, an I/O error), that is logged and the truncation is owed
    /// ([`Db::shred_owed`]): the server retries it, and so does the next Revoke, Rotate or stop.
    /// Returns whether the WAL was truncated.
    pub fn shred_wal(&self) -> bool {
        for _ in 0..SHRED_ATTEMPTS {
            match self.shred_attempt(true) {
                Ok(true) => return true,
                Ok(false) => std::thread::sleep(std::time::Duration::from_millis(10)),
                Err(e) => {
                    tracing::error!(error = %e, "WAL truncation failed; destroyed bytes stay in vault.db-wal until a truncation succeeds (retried)");
                    return false;
                }
            }
        }
        tracing::error!(
            "readers kept the WAL from being truncated after a destroying change; the old bytes stay in vault.db-wal until a truncation succeeds (retried)"
        );
        false
    }

    /// One truncation that waits for readers only briefly (a retry must never hold the writer
    /// while a backup runs), and logs nothing: its caller says what failed.
    pub fn shred_wal_now(&self) -> Result<bool, StoreError> {
        self.shred_attempt(false)
    }

    /// One checkpoint and truncation, with the owed flag set under the same writer lock (a
    /// destroying commit cannot slip in between and have its own failure overwritten).
    fn shred_attempt(&self, wait_for_readers: bool) -> Result<bool, StoreError> {
        let conn = super::lock(&self.writer);
        if !wait_for_readers {
            // Not zero: under steady reads some reader is always at work at any one instant.
            conn.busy_timeout(RETRY_WAIT)?;
        }
        // A record another process made before this checkpoint is paid by it; one made while it
        // ran may be for a commit after it, and stays.
        let recorded_before = marker_identity(&self.path);
        let busy = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0));
        if !wait_for_readers {
            conn.busy_timeout(super::BUSY_TIMEOUT)?;
        }
        let done = matches!(busy, Ok(0));
        self.shred_owed.store(!done, std::sync::atomic::Ordering::Relaxed);
        self.mark_owed(!done, recorded_before);
        Ok(busy? == 0)
    }

    /// Whether a WAL truncation is owed: the last one did not finish, the WAL was not empty
    /// when the file was opened (a crash between a destroying commit and its truncation), or
    /// another process (a `token` or `passphrase` command) left one owed (`vault.db-owed`).
    pub fn shred_owed(&self) -> bool {
        self.shred_owed.load(std::sync::atomic::Ordering::Relaxed) || owed_marker(&self.path).exists()
    }

    /// Records an owed truncation beside the database, for whichever process opens it next or
    /// has it open (a command's own flag ends with it); a finished one removes the record if it
    /// is the one `recorded_before` the checkpoint.
    pub(super) fn mark_owed(&self, owed: bool, recorded_before: Option<(u64, u64)>) {
        let marker = owed_marker(&self.path);
        let result = if owed {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&marker)
                .map(drop)
        } else if recorded_before.is_some() && marker_identity(&self.path) == recorded_before {
            std::fs::remove_file(&marker)
                .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
        } else {
            Ok(())
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, marker = %marker.display(), "cannot record whether a WAL truncation is owed");
        }
    }
}

/// (device, inode) of the owed-truncation record, if there is one.
fn marker_identity(db: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::symlink_metadata(owed_marker(db)).ok().map(|m| (m.dev(), m.ino()))
}

/// The file whose presence says a WAL truncation is owed: `vault.db-owed` beside `vault.db`.
pub(super) fn owed_marker(db: &Path) -> std::path::PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-owed");
    std::path::PathBuf::from(name)
}
