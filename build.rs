//! Compiles proto/ into Rust with protox (no system protoc needed) and writes the
//! encoded file descriptor set that server reflection serves.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_file = "proto/points/v1/points.proto";
    println!("cargo:rerun-if-changed=proto");

    let file_descriptor_set = protox::compile([proto_file], ["proto"])?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("points_descriptor.bin"), file_descriptor_set.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(file_descriptor_set)?;
    Ok(())
}
