//! The real `vault-server` binary: init, serve (waiting for its "listening on" line), SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_vault-server");

/// A data dir and the passphrase file that unlocks it.
pub struct DataDir {
    pub dir: PathBuf,
    pub passphrase_file: PathBuf,
}

impl DataDir {
    /// Runs `vault-server init` with a passphrase file (0600) under `root`.
    pub fn init(root: &Path, passphrase: &str) -> Self {
        let dir = root.join("data");
        let passphrase_file = root.join("passphrase");
        std::fs::write(&passphrase_file, passphrase).expect("passphrase file");
        std::fs::set_permissions(&passphrase_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod passphrase");
        let out = run(&["init", "--data-dir", path_str(&dir), "--passphrase-file", path_str(&passphrase_file)], &[]);
        assert!(out.status.success(), "init failed: {}", String::from_utf8_lossy(&out.stderr));
        Self { dir, passphrase_file }
    }

    pub fn db(&self) -> PathBuf {
        self.dir.join("vault.db")
    }

    /// `vault-server token create` with `role` (`["--admin"]` or `["--client", ID]`); the token.
    pub fn mint_token(&self, role: &[&str]) -> String {
        let mut args = vec!["token", "create", "--data-dir", path_str(&self.dir), "--passphrase-file"];
        args.push(path_str(&self.passphrase_file));
        args.extend_from_slice(role);
        let out = run(&args, &[]);
        assert!(out.status.success(), "token create failed: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).expect("utf-8");
        assert_eq!(stdout.lines().count(), 1, "the token alone on stdout: {stdout:?}");
        stdout.trim().to_owned()
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs the binary to completion with `env` added.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("VAULT_PASSPHRASE")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run vault-server")
}

/// A running server.
pub struct VaultServer {
    child: Option<Child>,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl VaultServer {
    /// `serve` for `data` with extra flags; waits until it listens.
    pub fn start(data: &DataDir, extra: &[String]) -> Self {
        Self::start_logging(data, extra, "vault_server=trace,info")
    }

    /// Like [`VaultServer::start`] with the log filter `log` (e.g. `trace` for everything).
    pub fn start_logging(data: &DataDir, extra: &[String], log: &str) -> Self {
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--data-dir".into(),
            path_str(&data.dir).into(),
            "--passphrase-file".into(),
            path_str(&data.passphrase_file).into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend_from_slice(extra);
        Self::spawn_logging(&args, None, log).unwrap_or_else(|log| panic!("server did not start:\n{log}"))
    }

    /// Spawns `vault-server ARGS` in `cwd`; `Err(log)` if it exits before listening.
    pub fn spawn(args: &[String], cwd: Option<&Path>) -> Result<Self, String> {
        Self::spawn_logging(args, cwd, "vault_server=trace,info")
    }

    fn spawn_logging(args: &[String], cwd: Option<&Path>, log_filter: &str) -> Result<Self, String> {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_remove("VAULT_PASSPHRASE")
            .env("VAULT_LOG", log_filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().expect("spawn vault-server");
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for stream in [
            child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock().expect("log lock").push(line);
                }
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = log.lock().expect("log lock").iter().find_map(|l| {
                l.split("listening on ").nth(1).and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            });
            if let Some(addr) = found {
                return Ok(Self { child: Some(child), addr, log, readers });
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return Err(format!("exited with {status}:\n{}", log.lock().expect("log lock").join("\n")));
            }
            assert!(Instant::now() < deadline, "server never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A plaintext client sending `token`.
    pub async fn client_with(&self, token: Option<&str>) -> vault_client::VaultClient {
        let options =
            vault_client::ConnectOptions { token: token.map(vault_client::SecretString::from), ..Default::default() };
        vault_client::VaultClient::connect(self.endpoint(), options).await.expect("connect")
    }

    /// A plaintext client sending `token`, its connection from `source` (any 127/8 address).
    pub async fn client_from(&self, source: &str, token: Option<&str>) -> vault_client::VaultClient {
        let channel = tonic::transport::Endpoint::from_shared(self.endpoint())
            .expect("endpoint")
            .local_address(Some(source.parse().expect("source address")))
            .connect()
            .await
            .expect("connect");
        let token = token.map(vault_client::SecretString::from);
        vault_client::VaultClient::from_channel(channel, token.as_ref()).expect("client")
    }

    /// A stand-in for a server that was moved out (for stopping it on another thread).
    pub fn placeholder() -> Self {
        Self { child: None, addr: SocketAddr::from(([127, 0, 0, 1], 0)), log: Arc::default(), readers: Vec::new() }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits (up to 10 s) until the server has printed a line containing `needle`; its output
    /// is read on another thread, so a line may arrive just after the event that caused it.
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(needle) {
            assert!(Instant::now() < deadline, "the server never logged {needle:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address of the metrics endpoint (`--metrics-listen`), once the server has logged it.
    pub fn metrics_addr(&self) -> String {
        self.wait_for_log("metrics on http://");
        let log = self.log();
        let addr = log.split("metrics on http://").nth(1).and_then(|r| r.split("/metrics").next());
        addr.expect("metrics address").to_owned()
    }

    /// One scrape of the metrics endpoint: the response, headers and text.
    pub fn metrics_text(&self) -> String {
        use std::io::{Read as _, Write as _};
        let mut conn = std::net::TcpStream::connect(self.metrics_addr()).expect("connect to metrics");
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
        let mut text = String::new();
        conn.read_to_string(&mut text).expect("read metrics");
        text
    }

    /// Everything the server printed so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// Kills the process with SIGKILL (no shutdown work at all) and waits for it.
    pub fn kill_hard(&mut self) {
        let mut child = self.child.take().expect("server already stopped");
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// Sends SIGTERM and waits for the exit and for the last line of output.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server already stopped");
        let ok = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("kill");
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return status;
            }
            assert!(Instant::now() < deadline, "server ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for VaultServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
