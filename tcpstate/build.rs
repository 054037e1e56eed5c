//! Builds the eBPF object with the stable toolchain and embeds it.
//!
//! `cargo xtask setup` installs what this needs (rust-src, bpf-linker);
//! without them the build stops with one line saying so.

use std::{env, path::Path, process::Command};

use anyhow::{Context as _, bail};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let ebpf_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tcpstate-ebpf");
    let ebpf_dir = ebpf_dir.canonicalize().context("tcpstate-ebpf not found")?;
    if Command::new("bpf-linker").arg("--version").output().is_err() {
        bail!("bpf-linker is not installed; run `cargo xtask setup` first");
    }
    // Stable rustc with unstable flags: -Z build-std=core for the bpf target.
    // SAFETY: build scripts are single-threaded.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    let root_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [Package { name: "tcpstate-ebpf", root_dir, ..Default::default() }],
        Toolchain::Custom("stable"),
    )
}
