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
