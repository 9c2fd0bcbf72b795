//! A real Dovecot on loopback: IMAP and submission (SMTP), both implicit TLS, with passwd-file
//! "auth codes". Each service reads its own passdb files (`codes-imap`, `codes-submission`), so
//! a test can make SMTP refuse a code that IMAP accepts. Started per test with its own config,
//! state and log; stopped on drop.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::pki::TestPki;

pub struct Dovecot {
    dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    pub imaps: SocketAddr,
    pub submissions: SocketAddr,
    passdb_writes: std::sync::atomic::AtomicU64,
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

fn make_readable(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

impl Dovecot {
    /// Starts Dovecot under `root` (made world-traversable) with the certificate from `pki`. `codes` are the current
    /// (user, code) pairs; `extra` holds further codes still accepted besides them.
    pub fn start(root: &Path, pki: &TestPki, codes: &[(&str, &str)]) -> Self {
        let dir = root.join("dovecot");
        for sub in ["run", "state", "passdb", "mail"] {
            fs::create_dir_all(dir.join(sub)).expect("dovecot dirs");
        }
        // The auth worker and the mail processes run unprivileged and must reach these.
        make_readable(root, 0o755);
        make_readable(&dir, 0o755);
        make_readable(&dir.join("passdb"), 0o755);
        make_readable(&dir.join("mail"), 0o777);
        let port = free_port();
        let smtp_port = free_port();
        let mut d = Self {
            config: dir.join("dovecot.conf"),
            imaps: SocketAddr::from(([127, 0, 0, 1], port)),
            submissions: SocketAddr::from(([127, 0, 0, 1], smtp_port)),
            dir,
            child: None,
            passdb_writes: std::sync::atomic::AtomicU64::new(0),
        };
        for service in ["imap", "submission"] {
            d.write_passdb(&format!("codes-{service}"), codes);
            d.write_passdb(&format!("extra-{service}"), &[]);
        }
        let config = format!(
            r#"
instance_name = vault-test-{port}
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
# Unix time with microseconds, so tests can measure the rate of logins.
log_timestamp = "%s.%{{usecs}} "
protocols = imap submission
listen = 127.0.0.1
hostname = smtp.sina.com
# Never used: the tests only authenticate.
submission_relay_host = 127.0.0.1
submission_relay_port = 9
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
ssl_dh = </usr/share/dovecot/dh.pem
disable_plaintext_auth = yes
auth_mechanisms = plain login
auth_failure_delay = 0
auth_verbose = yes
auth_cache_size = 0
mail_location = maildir:{dir}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/passdb/codes-%s
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/passdb/extra-%s
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={dir}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {port}
    ssl = yes
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = 0
  }}
  inet_listener submissions {{
    port = {smtp_port}
    ssl = yes
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"#,
            dir = d.dir.display(),
            cert = pki.server_cert.display(),
            key = pki.server_key.display(),
        );
        fs::write(&d.config, config).expect("dovecot.conf");
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        // -F keeps the master in the foreground so it can be stopped; its output is detached,
        // because Dovecot's children keep inherited pipes open.
        let child = Command::new(which("dovecot"))
            .arg("-F")
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dovecot");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(self.imaps).is_err() || TcpStream::connect(self.submissions).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("dovecot exited with {status}; log:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "dovecot did not listen on {}; log:\n{}", self.imaps, self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn write_passdb(&self, name: &str, codes: &[(&str, &str)]) {
        let path = self.dir.join("passdb").join(name);
        let body: String = codes.iter().map(|(user, code)| format!("{user}:{code}\n")).collect();
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, body).expect("passdb");
        make_readable(&tmp, 0o644);
        // Dovecot reloads a passwd-file when its mtime or size changes; a same-size rewrite
        // within the same second would go unnoticed, so give every version its own mtime.
        let version = self.passdb_writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mtime = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000 + version);
        fs::File::options().write(true).open(&tmp).and_then(|f| f.set_modified(mtime)).expect("passdb mtime");
        fs::rename(&tmp, &path).expect("passdb rename");
    }

    /// Dovecot looks at a passwd-file's stat at most once a second; wait that out so the next
    /// login sees the change.
    fn settle() {
        std::thread::sleep(Duration::from_millis(1100));
    }

    /// Replaces the current codes of IMAP and SMTP (as if the user changed them in webmail).
    pub fn set_codes(&self, codes: &[(&str, &str)]) {
        self.write_passdb("codes-imap", codes);
        self.write_passdb("codes-submission", codes);
        Self::settle();
    }

    /// Replaces the codes SMTP alone accepts.
    pub fn set_smtp_codes(&self, codes: &[(&str, &str)]) {
        self.write_passdb("codes-submission", codes);
        Self::settle();
    }

    /// Replaces the further codes that are still accepted besides the current ones.
    pub fn set_extra_codes(&self, codes: &[(&str, &str)]) {
        self.write_passdb("extra-imap", codes);
        self.write_passdb("extra-submission", codes);
        Self::settle();
    }

    /// The Unix times (seconds) of the IMAP logins tried for `user`, successful or not.
    pub fn login_times(&self, user: &str) -> Vec<f64> {
        let needle = format!("user=<{user}>");
        self.log()
            .lines()
            .filter(|l| l.contains("imap-login:") && l.contains(&needle))
            .filter(|l| l.contains("Login: ") || l.contains("auth failed"))
            .filter_map(|l| {
                // `%s.%{usecs}`: microseconds are not zero-padded, so not a decimal fraction.
                let (secs, usecs) = l.split_whitespace().next()?.split_once('.')?;
                Some(secs.parse::<f64>().ok()? + usecs.parse::<f64>().ok()? / 1e6)
            })
            .collect()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
    }

    /// Waits until the log has a line containing `needle`.
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(needle) {
            assert!(Instant::now() < deadline, "dovecot log never showed {needle:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again after [`Dovecot::stop`].
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Stops the server; the port then refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Panics with an install hint when a required peer is missing: never a silent skip.
pub fn which(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|p| p.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not installed; run ./tests/run.sh, which installs it"))
}
