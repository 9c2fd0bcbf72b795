//! One `serve` per data dir.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::DataDirError;

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
    lock(dir, true)
}

/// The same lock for `init`, without the pid file (a failed init must not look like a data dir
/// whose database went missing): two inits, or an init beside a server, cannot interleave.
pub fn lock_for_init(dir: &Path) -> Result<DirLock, DataDirError> {
    lock(dir, false)
}

fn lock(dir: &Path, write_pid: bool) -> Result<DirLock, DataDirError> {
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
    if !write_pid {
        return Ok(DirLock { _dir: handle });
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
