//! Link options for the relayer's binaries.
//!
//! On Linux with glibc the binaries are linked with packed relative
//! relocations (`-z pack-relative-relocs`, DT_RELR): a position-independent
//! executable keeps its ASLR, but its relocation table shrinks from about
//! half a megabyte of `R_X86_64_RELATIVE` entries, which the dynamic loader
//! reads (so keeps resident) at every start, to a few kilobytes. That is
//! part of how the idle footprint stays within 12 MiB (issue 16 item 5,
//! figures in `benches/README.md`). It needs GNU ld 2.38 or lld 15 and
//! glibc 2.36 at run time (Debian 12, the image's distroless base); the
//! linker records a `GLIBC_ABI_DT_RELR` version need, so an older glibc
//! refuses the binary at start with a clear error instead of misloading it.
//! `CONSONANT_NO_RELR=1` links without it, for older toolchains.

fn main() {
    println!("cargo:rerun-if-env-changed=CONSONANT_NO_RELR");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if linux_gnu && std::env::var_os("CONSONANT_NO_RELR").is_none() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
