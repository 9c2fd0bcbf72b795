//! Generates the client stubs from `proto/` with protox (no system `protoc`).
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());
    let fds = protox::compile(["vault/v1/vault.proto"], [&proto_root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        // Secret-bearing messages get hand-written, redacted Debug impls (src/proto.rs).
        .skip_debug([".vault.v1.BindRequest", ".vault.v1.RotateRequest", ".vault.v1.RevealResponse"])
        .compile_fds(fds)?;
    Ok(())
}
