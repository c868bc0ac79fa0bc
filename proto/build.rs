//! Generates the spare.v1 gRPC code with protox (pure Rust, no protoc on the machine) and writes
//! the encoded descriptor set that server reflection serves.

use prost::Message;

const FILES: &[&str] = &[
    "spare/v1/common.proto",
    "spare/v1/job.proto",
    "spare/v1/blob.proto",
    "spare/v1/peer.proto",
    "spare/v1/mesh.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = "proto";
    for f in FILES {
        println!("cargo:rerun-if-changed={dir}/{f}");
    }
    let mut compiler = protox::Compiler::new([dir])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(FILES)?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = compiler.file_descriptor_set();
    std::fs::write(out.join("spare_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
