//! The README's walkthrough, run as written: its playground command (`tests/playground.sh`: a
//! real Dovecot playing imap.sina.com and `serve --dev` wired to it) and then every block marked
//! `<!-- walkthrough -->`, in order, in one bash with `set -euo pipefail`. The codes a reader
//! types at the prompts come on stdin. Any command that fails fails the test, so the README
//! cannot rot. (A test binary of its own: cargo runs those one at a time, and the `cargo run`
//! here may relink the server binary that the e2e tests start.)

use std::io::Write as _;
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const README: &str = include_str!("../README.md");
/// What a reader types at the walkthrough's prompts, in order: Bind, Rotate (grpcurl), bob's
/// two codes for the Rust example, then vaultctl's bind and rotate. The playground's Dovecot
/// accepts both codes of each.
const TYPED: &str =
    "PLAYGROUNDalice1\nPLAYGROUNDalice2\nPLAYGROUNDbob001\nPLAYGROUNDbob002\nPLAYGROUNDalice1\nPLAYGROUNDalice2\n";
const DEV_ADDR: &str = "127.0.0.1:50051";

/// The `sh` blocks that follow a line equal to `marker`, in order.
fn blocks(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut lines = README.lines();
    while let Some(line) = lines.next() {
        if line.trim() != marker {
            continue;
        }
        assert_eq!(lines.next(), Some("```sh"), "{marker} must sit right above a ```sh block");
        let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        found.push(body.join("\n"));
    }
    found
}

/// The playground's process group, stopped (SIGTERM: a graceful stop) on drop.
struct Playground {
    child: Child,
    log: PathBuf,
}

impl Playground {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Playground {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.wait();
    }
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    // Inside the workspace, so `cargo run -p ...` works as written; `tests/` and `proto/` are
    // linked in so paths relative to the repository root do too.
    let scratch = repo.join("target");
    std::fs::create_dir_all(&scratch).unwrap();
    let work = tempfile::Builder::new().prefix("readme-walkthrough").tempdir_in(&scratch).unwrap();
    for dir in ["tests", "proto"] {
        std::os::unix::fs::symlink(repo.join(dir), work.path().join(dir)).unwrap();
    }
    assert!(
        TcpStream::connect(DEV_ADDR).is_err(),
        "something already listens on {DEV_ADDR} (a `serve --dev`?); the walkthrough needs that port"
    );

    let playground = blocks("<!-- walkthrough: playground -->");
    assert_eq!(playground.len(), 1, "the README must have one playground block");
    let steps = blocks("<!-- walkthrough -->");
    assert!(steps.len() >= 6, "the README's walkthrough lost blocks: {} left", steps.len());

    let log = work.path().join("playground.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &playground[0]])
        .current_dir(work.path())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .process_group(0)
        .spawn()
        .unwrap();
    let mut playground = Playground { child, log };
    let deadline = Instant::now() + Duration::from_secs(180);
    while !playground.log().contains("listening on") {
        let exited = playground.child.try_wait().unwrap();
        assert!(exited.is_none(), "the playground exited ({exited:?}):\n{}", playground.log());
        assert!(Instant::now() < deadline, "the playground never listened:\n{}", playground.log());
        std::thread::sleep(Duration::from_millis(100));
    }

    let script = steps.join("\n");
    let mut bash = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(work.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    bash.stdin.take().unwrap().write_all(TYPED.as_bytes()).unwrap();
    let done = bash.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&done.stdout), String::from_utf8_lossy(&done.stderr));
    let report = format!(
        "script:\n{script}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}\n--- playground:\n{}",
        playground.log()
    );
    assert!(done.status.success(), "the walkthrough failed ({}):\n{report}", done.status);

    // What the reader was told they would see.
    assert!(stdout.contains("\"authCode\": \"PLAYGROUNDalice1\""), "grpcurl's Reveal did not show the code:\n{report}");
    assert!(stdout.contains("PROBE_OUTCOME_ACCEPTED"), "no accepted probe was shown:\n{report}");
    assert!(stdout.lines().any(|l| l == "PLAYGROUNDalice2"), "vaultctl reveal did not print the code alone:\n{report}");
    assert!(stdout.contains("CREDENTIAL_STATE_REVOKED"), "the revoke was not shown:\n{report}");
    // The Rust example made every call (the last one rotates the data key).
    assert!(stdout.contains("bind: version 1, OK Logged in"), "{report}");
    assert!(stdout.contains("rotate data key: key "), "the Rust example stopped early:\n{report}");
    // Python: the listing, and a refusal's ErrorInfo read through grpcio-status.
    assert!(stdout.contains("alice@sina.com thunderbird CREDENTIAL_STATE_REVOKED version"), "{report}");
    assert!(stdout.contains("FAILED_PRECONDITION PROBE_REJECTED "), "Python did not read the details:\n{report}");
    // The codes went through stdin and heredocs only: none is in the server's log (the
    // playground's own banner names them).
    let server_log: Vec<String> =
        playground.log().lines().filter(|l| !l.starts_with("playground:")).map(str::to_owned).collect();
    for code in ["PLAYGROUNDalice1", "PLAYGROUNDalice2", "PLAYGROUNDbob001", "PLAYGROUNDbob002"] {
        assert!(!server_log.iter().any(|l| l.contains(code)), "the server logged a code:\n{report}");
    }
}
