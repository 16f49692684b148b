use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protoc ships inside protoc-bin-vendored: no system protoc needed.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("shard_descriptor.bin"))
        .compile_protos(&["shard.proto"], &["."])?;
    println!("cargo:rerun-if-changed=shard.proto");
    Ok(())
}
