//! Rebuilds when a migration changes (they are embedded with `include_str!`).
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let migrations = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../migrations");
    println!("cargo:rerun-if-changed={}", migrations.display());
    Ok(())
}
