//! Generates the llamagrid.v1 messages and the InferenceService client from the repository's
//! proto (`../../protos/llamagrid/v1/inference.proto`) with prost and tonic, using the protoc
//! binary vendored by `protoc-bin-vendored`, so no system protoc is needed.

use std::error::Error;

const PROTO_ROOT: &str = "../../protos";
const PROTO: &str = "../../protos/llamagrid/v1/inference.proto";

fn main() -> Result<(), Box<dyn Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_server(false)
        // The crate builds its own Channel (keepalive, message limits), so no generated `connect`.
        .build_transport(false)
        .compile_with_config(config, &[PROTO], &[PROTO_ROOT])?;
    println!("cargo:rerun-if-changed={PROTO}");
    Ok(())
}
