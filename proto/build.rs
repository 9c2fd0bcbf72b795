//! Generates the `vault.v1` messages, client and server from `vault/v1/vault.proto` with protox
//! (no system `protoc`), and writes the encoded descriptor set that reflection serves.
use std::{env, fs, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    println!("cargo:rerun-if-changed={}", root.join("vault").display());
    let fds = protox::compile(["vault/v1/vault.proto"], [&root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("vault_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // prost's codec, but a request that does not decode is INVALID_ARGUMENT (src/codec.rs).
        .codec_path("crate::codec::VaultCodec")
        // Secret-bearing messages get hand-written, redacted Debug impls (src/lib.rs).
        .skip_debug([".vault.v1.BindRequest", ".vault.v1.RotateRequest", ".vault.v1.RevealResponse"])
        .compile_fds(fds)?;
    Ok(())
}
