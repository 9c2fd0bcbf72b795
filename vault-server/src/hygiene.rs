//! Process hygiene: a core dump would hold the keyring and any code in flight, so none is made.

/// Sets the core-file limit to 0 and marks the process non-dumpable (`PR_SET_DUMPABLE` 0,
/// which also keeps other users' ptrace out). Failures are logged, not fatal.
pub fn disable_core_dumps() {
    use nix::sys::resource::{Resource, setrlimit};
    if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        tracing::warn!(error = %e, "could not set the core-file limit to 0");
    }
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "could not mark the process non-dumpable");
    }
}

/// Files this process creates are private unless made otherwise (SQLite creates its files, and
/// the backup, by name with mode 0644 before the umask).
pub fn private_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Descriptors kept for the store, probes, metrics and logs besides client connections.
const SPARE_FILES: u64 = 256;

/// Raises the soft open-files limit to the hard one, and warns if the connection cap still does
/// not fit (accept would fail with EMFILE before the cap is reached).
pub fn raise_open_files(max_connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
    let soft = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() { hard } else { soft };
    let wanted = u64::try_from(max_connections).unwrap_or(u64::MAX).saturating_add(SPARE_FILES);
    if soft < wanted {
        tracing::warn!(
            open_files = soft,
            "the open-files limit is below --max-connections + {SPARE_FILES}; lower --max-connections or raise the limit"
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn process_becomes_non_dumpable() {
        super::disable_core_dumps();
        assert!(!nix::sys::prctl::get_dumpable().unwrap());
        let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_CORE).unwrap();
        assert_eq!((soft, hard), (0, 0));
    }
}
