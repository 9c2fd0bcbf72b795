//! Generates the server stubs from `proto/` with protox (no system `protoc`) and writes the
//! encoded descriptor set that the reflection service serves.
use std::{env, fs, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());
    let fds = protox::compile(["vault/v1/vault.proto"], [&proto_root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("vault_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        // Secret-bearing messages get hand-written, redacted Debug impls (src/proto.rs).
        .skip_debug([".vault.v1.BindRequest", ".vault.v1.RotateRequest", ".vault.v1.RevealResponse"])
        .compile_fds(fds)?;
    let migrations = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../migrations");
    println!("cargo:rerun-if-changed={}", migrations.display());
    Ok(())
}
