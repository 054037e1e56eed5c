//! Project tasks: `cargo xtask <setup|build|run|test|vm-test|lint|bench>`.
//!
//! Every task that builds runs `setup` first, so one command works on a
//! fresh machine.

mod bench;
mod setup;
mod vm;

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and the tests need: rust-src, LLVM dev files,
    /// bpf-linker; QEMU, busybox and the VM's kernel
    Setup,
    /// Set up, then build tcpstate (release)
    Build,
    /// Set up, build, and run tcpstate with the given arguments
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run every test: unit tests and real-kernel integration tests
    Test {
        /// Extra arguments for `cargo test`
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Only the VM part of `test`: the real-kernel tests on Debian's 6.1
    /// kernel under QEMU, where fentry works
    VmTest,
    /// rustfmt and clippy, host and eBPF sides
    Lint,
    /// Measure tracer overhead under connection churn (root; not a test)
    Bench(bench::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::setup().and_then(|()| vm::setup()),
        Task::Build => setup::setup().and_then(|()| build()).map(drop),
        Task::Run { args } => setup::setup().and_then(|()| build()).and_then(|bin| exec(&bin, &args)),
        Task::Test { args } => setup::setup().and_then(|()| test(&args)),
        Task::VmTest => setup::setup().and_then(|()| vm::setup()).and_then(|()| vm::vm_test()),
        Task::Lint => setup::setup().and_then(|()| lint()),
        Task::Bench(opts) => setup::setup().and_then(|()| bench::bench(&opts)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs a command, failing with its name if it fails.
pub fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout.
pub fn capture(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed with {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn build() -> anyhow::Result<PathBuf> {
    run_cmd(cargo().args(["build", "--release", "--package", "tcpstate"]))?;
    Ok(workspace_root().join("target/release/tcpstate"))
}

fn exec(bin: &Path, args: &[String]) -> anyhow::Result<()> {
    let err = Command::new(bin).args(args).exec();
    Err(err).with_context(|| format!("running {}", bin.display()))
}

fn test(args: &[String]) -> anyhow::Result<()> {
    // As root, the real-kernel tests must run: a skip would hide a failure.
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace"]).args(args);
    if root {
        cmd.env("TCPSTATE_REQUIRE_KERNEL_TESTS", "1");
    } else {
        println!("xtask: not root, so the real-kernel tests will skip");
    }
    run_cmd(&mut cmd)?;
    // With extra arguments this is a selective run; the VM runs everything.
    if !root || !args.is_empty() {
        println!("xtask: the VM matrix runs as root, with `cargo xtask test` or `cargo xtask vm-test`");
        return Ok(());
    }
    vm::setup()?;
    vm::vm_test()
}

fn lint() -> anyhow::Result<()> {
    run_cmd(cargo().args(["fmt", "--all", "--check"]))?;
    run_cmd(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // The program itself, as it is built for the kernel.
    run_cmd(
        cargo()
            .args(["clippy", "--package", "tcpstate-ebpf", "--release", "--target", "bpfel-unknown-none"])
            .args(["-Z", "build-std=core", "--", "-D", "warnings"])
            .env("RUSTC_BOOTSTRAP", "1"),
    )
}
