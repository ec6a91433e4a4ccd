//! Compiles `proto/` without a system `protoc`: protox parses the IDL in pure
//! Rust, tonic-prost-build generates messages and client/server stubs, and
//! pbjson-build adds the proto3 JSON mapping the reference backend's admin API
//! speaks.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/consonant/relayer/v1/relay.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    // The rpc `Connect` generates a client method `connect` that clashes with
    // the generated transport constructor of the same name, so the client is
    // generated without transport helpers and the Channel is built by hand.
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_well_known_types(false)
        // Bytes fields as `bytes::Bytes`: a replayed frame is a cheap clone.
        .bytes(".")
        // A rotated token must never reach a log line through `{:?}`.
        .skip_debug([".consonant.relayer.v1.RotateCredentials"])
        .compile_fds(descriptors.clone())?;

    let mut bytes = Vec::new();
    prost::Message::encode(&descriptors, &mut bytes)?;
    let descriptor_path = out_dir.join("relay_descriptor.bin");
    std::fs::write(&descriptor_path, &bytes)?;
    pbjson_build::Builder::new()
        .register_descriptors(&bytes)?
        .preserve_proto_field_names()
        .build(&[".consonant.relayer.v1"])?;
    Ok(())
}
