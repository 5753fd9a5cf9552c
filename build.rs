//! Compiles the wire-compatible NetBird protos with protox (pure Rust), so no system `protoc`
//! is needed on build machines.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/management.proto",
        "proto/daemon.proto",
        "proto/signalexchange.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
