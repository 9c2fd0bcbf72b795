//! The crate as a user gets it: `cargo package` works for the contract and the client, and a
//! crate outside the workspace that depends on nothing but vault-client and tokio compiles
//! against it: secrets exposed, errors matched, codes compared, with no `secrecy` or `tonic` of
//! its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn cargo(dir: &Path) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(dir);
    c
}

const MAIN: &str = r#"
use std::time::Duration;
use vault_client::{Code, ConnectOptions, Error, ExposeSecret, SecretString, VaultClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = ConnectOptions::from_env()?;
    let mut vault = VaultClient::connect("http://127.0.0.1:50051", options).await?;
    match vault.bind("alice@sina.com", "sender", SecretString::from("abcd1234efgh5678")).await {
        Ok(_) | Err(Error::AlreadyBound) => {}
        Err(Error::ProbeRejected { hint, server_response, .. }) => eprintln!("{server_response}: {hint}"),
        Err(Error::ProviderUnavailable { retry_after, .. }) => eprintln!("retry in {retry_after:?}"),
        Err(Error::VaultUnreachable { message }) => eprintln!("{message}"),
        Err(Error::Other { code: Code::Internal, message }) => eprintln!("{message}"),
        Err(e) => return Err(e.into()),
    }
    let mut fast = vault.with_timeout(Duration::from_millis(300));
    let code = fast.reveal("alice@sina.com", "sender").await?.code;
    println!("{}", code.expose_secret().len());
    Ok(())
}
"#;

#[test]
fn the_contract_and_the_client_package_and_a_bare_consumer_compiles() {
    // Packaged without cargo's own verify: it unpacks and builds the packages as registry crates,
    // which it never rebuilds for the same version, so a proto field added since went missing.
    let status = cargo(&workspace())
        .args([
            "package",
            "--quiet",
            "--offline",
            "--allow-dirty",
            "--no-verify",
            "-p",
            "vault-proto",
            "-p",
            "vault-client",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "cargo package failed");

    let dir = std::env::temp_dir().join(format!("vault-client-consumer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    // The packages as published, unpacked: built from what they hold, and nothing else.
    let version = env!("CARGO_PKG_VERSION");
    for name in ["vault-proto", "vault-client"] {
        let crate_file = workspace().join(format!("target/package/{name}-{version}.crate"));
        let out = Command::new("tar").arg("xzf").arg(&crate_file).arg("-C").arg(&dir).output().unwrap();
        assert!(
            out.status.success(),
            "cannot unpack {}: {}",
            crate_file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let manifest = format!(
        "[package]\nname = \"consumer\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\n[dependencies]\n\
         vault-client = {{ path = {:?} }}\ntokio = {{ version = \"1\", features = [\"macros\", \"rt-multi-thread\"] }}\n\n\
         [patch.crates-io]\nvault-proto = {{ path = {:?} }}\n\n[workspace]\n",
        dir.join(format!("vault-client-{version}")),
        dir.join(format!("vault-proto-{version}")),
    );
    std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(dir.join("src/main.rs"), MAIN).unwrap();
    // The workspace's lock, so the same versions (already built) are used, offline.
    std::fs::copy(workspace().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let out = cargo(&dir)
        .args(["check", "--quiet", "--offline"])
        .env("CARGO_TARGET_DIR", workspace().join("target"))
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success(), "the consumer does not compile:\n{}", String::from_utf8_lossy(&out.stderr));
}
