//! Generates the gRPC code with the protoc shipped inside `protoc-bin-vendored`: no system
//! protoc, no network.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // Model chunks and SecAgg payloads are `bytes::Bytes`: shared, not copied, when fanned out.
    config.bytes(["."]);
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(
            config,
            &[
                "proto/aegis/fl/v1/federation.proto",
                "proto/aegis/admin/v1/admin.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
