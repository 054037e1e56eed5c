//! Makes a fresh machine ready to build the eBPF object, idempotently:
//! the rust-src component, the LLVM development files matching rustc's
//! LLVM, and bpf-linker built against them. A second run changes nothing.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::{capture, run_cmd};

/// The toolchain aya-build compiles the eBPF crate with (see tcpstate/build.rs).
pub const EBPF_TOOLCHAIN: &str = "stable";
const BPF_LINKER_VERSION: &str = "0.13";

pub fn setup() -> anyhow::Result<()> {
    ensure_rust_src()?;
    let llvm = llvm_major()?;
    let prefix = ensure_llvm_dev(llvm)?;
    ensure_bpf_linker(llvm, &prefix)?;
    Ok(())
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let installed = capture(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: rust-src is installed");
        return Ok(());
    }
    run_cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", EBPF_TOOLCHAIN]))
}

/// The LLVM major version rustc was built with: bpf-linker must match it.
fn llvm_major() -> anyhow::Result<u32> {
    let out = capture(Command::new("rustup").args(["run", EBPF_TOOLCHAIN, "rustc", "-vV"]))?;
    parse_llvm_major(&out).context("`rustc -vV` printed no LLVM version")
}

fn parse_llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
}

fn llvm_dev_present(prefix: &std::path::Path) -> bool {
    prefix.join("bin/llvm-config").is_file() && prefix.join("include/llvm-c/Core.h").is_file()
}

fn ensure_llvm_dev(major: u32) -> anyhow::Result<PathBuf> {
    let prefix = PathBuf::from(format!("/usr/lib/llvm-{major}"));
    let package = format!("llvm-{major}-dev");
    if llvm_dev_present(&prefix) {
        println!("setup: {package} is installed");
        return Ok(prefix);
    }
    apt_install(&[&package]).with_context(|| {
        format!("LLVM {major} development files are missing: install {package} (Debian/Ubuntu)")
    })?;
    if !llvm_dev_present(&prefix) {
        bail!("installed {package} but {} has no llvm-config or llvm-c headers", prefix.display());
    }
    Ok(prefix)
}

/// Installs Debian packages through apt-get, as root.
pub fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || Command::new("apt-get").arg("--version").output().is_err() {
        bail!(
            "{} must be installed: run `cargo xtask setup` as root where apt-get exists",
            packages.join(", ")
        );
    }
    println!("setup: installing {}", packages.join(", "));
    // A fresh machine's package lists are empty.
    run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Whether the installed bpf-linker is the right version and links the
/// right LLVM (an older build against another LLVM fails at link time).
fn bpf_linker_ok(llvm: u32) -> bool {
    let Ok(version) = capture(Command::new("bpf-linker").arg("--version")) else { return false };
    if !version.trim().starts_with(&format!("bpf-linker {BPF_LINKER_VERSION}.")) {
        println!("setup: found {}, want {BPF_LINKER_VERSION}", version.trim());
        return false;
    }
    let Ok(path) = capture(Command::new("sh").args(["-c", "command -v bpf-linker"])) else { return false };
    match capture(Command::new("ldd").arg(path.trim())) {
        // A statically linked LLVM shows no libLLVM; trust the version then.
        Ok(libs) => !libs.contains("libLLVM") || libs.contains(&format!("libLLVM.so.{llvm}")),
        Err(_) => true,
    }
}

fn ensure_bpf_linker(llvm: u32, prefix: &std::path::Path) -> anyhow::Result<()> {
    if bpf_linker_ok(llvm) {
        println!("setup: bpf-linker {BPF_LINKER_VERSION} (LLVM {llvm}) is installed");
        return Ok(());
    }
    println!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm} (a few minutes)");
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "--locked",
                "--force",
                "bpf-linker",
                "--version",
                &format!("~{BPF_LINKER_VERSION}"),
            ])
            .args(["--no-default-features", "--features", &format!("llvm-{llvm}")])
            .env("LLVM_PREFIX", prefix),
    )?;
    if !bpf_linker_ok(llvm) {
        bail!("bpf-linker was installed but is not on PATH; add ~/.cargo/bin to PATH");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_llvm_major() {
        let out = "rustc 1.95.0 (59807616e 2026-04-14)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.95.0\nLLVM version: 22.1.2\n";
        assert_eq!(parse_llvm_major(out), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.95.0\n"), None);
    }
}
