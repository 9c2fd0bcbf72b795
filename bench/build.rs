//! The bare baseline's server side of `vault.v1`, generated here with default stubs (every RPC
//! but the one it overrides answers UNIMPLEMENTED) over vault-proto's own messages. vault-proto
//! itself has no stubs, so the vault cannot leave an RPC out, and has one feature set, so the
//! suite and `cargo run -p vault-server` share one build of it.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    println!("cargo:rerun-if-changed={}", proto.join("vault").display());
    let fds = protox::compile(["vault/v1/vault.proto"], [&proto])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .generate_default_stubs(true)
        .extern_path(".vault.v1", "::vault_proto")
        .compile_fds(fds)?;
    Ok(())
}
