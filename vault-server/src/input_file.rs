//! Opening a file a user names as input (a passphrase file, a backup to restore): a regular file
//! or a pipe (`<(pass show vault)`, `/dev/stdin` in a pipeline), never a directory or a device
//! (`/dev/zero` never ends), and never blocking on a named pipe nobody writes to.

use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::Path;

/// Why an input file was not opened.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a regular file or a pipe (a directory or a device)")]
    NotFileOrPipe,
}

/// Opens `path` for blocking reads, with its metadata. Judged by what was opened, not by a name
/// that could change in between. A named pipe without a writer reads as empty (start the
/// writer first).
pub fn open(path: &Path) -> Result<(File, Metadata), InputError> {
    // Judged before opening too: opening some devices does something (a watchdog arms).
    if !is_file_or_pipe(&std::fs::metadata(path)?) {
        return Err(InputError::NotFileOrPipe);
    }
    // Opened without waiting: opening a FIFO for reading blocks until someone opens it to write.
    let file = OpenOptions::new().read(true).custom_flags(nix::libc::O_NONBLOCK).open(path)?;
    let meta = file.metadata()?;
    if !is_file_or_pipe(&meta) {
        return Err(InputError::NotFileOrPipe);
    }
    // Blocking reads from here: a pipe's writer may not have written yet.
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()))
        .map_err(std::io::Error::from)?;
    Ok((file, meta))
}

fn is_file_or_pipe(meta: &Metadata) -> bool {
    meta.file_type().is_file() || meta.file_type().is_fifo()
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn devices_and_directories_are_refused() {
        for path in ["/dev/zero", "/dev/null", "/tmp"] {
            assert!(matches!(open(Path::new(path)), Err(InputError::NotFileOrPipe)), "{path}");
        }
    }

    #[test]
    fn a_named_pipe_nobody_writes_reads_as_empty_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let started = Instant::now();
        let (mut file, _) = open(&fifo).unwrap();
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).unwrap();
        assert!(bytes.is_empty());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_regular_file_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello").unwrap();
        let (mut file, meta) = open(&path).unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        assert_eq!((text.as_str(), meta.len()), ("hello", 5));
    }
}
