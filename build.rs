//! Build script: makes the final binaries find libtorch without LD_LIBRARY_PATH.
//!
//! tch's own rpath reaches only its own crate, and an rpath in RUSTFLAGS is lost when
//! CI sets RUSTFLAGS, so the link argument is emitted here for every target of the crate.

fn main() {
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
}
