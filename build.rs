//! Build script:
//! - makes the final binaries find libtorch without LD_LIBRARY_PATH: tch's own rpath
//!   reaches only its own crate, and an rpath in RUSTFLAGS is lost when CI sets
//!   RUSTFLAGS, so the link argument is emitted here for every target of the crate;
//! - generates the gRPC code of `proto/vstream/v1/` (tonic, prost, with the codec of
//!   `src/serve/codec.rs`) and its file descriptor set, which the server's reflection
//!   service publishes.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Naming any rerun trigger replaces cargo's default (any file of the package), so
    // the API's sources are named too, or an edited .proto would not regenerate.
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB");
    let lib_dir = std::env::var("LIBTORCH_LIB").ok().or_else(|| {
        std::env::var("LIBTORCH")
            .ok()
            .map(|root| format!("{root}/lib"))
    });
    if let Some(dir) = lib_dir {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }

    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("vstream_v1_descriptor.bin"))
        // Malformed bodies are INVALID_ARGUMENT, not INTERNAL (src/serve/codec.rs).
        .codec_path("crate::serve::codec::ApiCodec")
        .compile_protos(&["proto/vstream/v1/vstream.proto"], &["proto"])?;
    Ok(())
}
