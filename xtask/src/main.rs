//! Project tasks: `cargo xtask <setup|build|run|test|vm-test|lint|bench|package>`.
//!
//! Every task that builds runs `setup` first, so one command works on a
//! fresh machine.

mod bench;
mod layers;
mod package;
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
        /// Run the host's tests N times (not the VM's), each run's output in
        /// target/test-runs/, and print how many passed and the slowest attach
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        repeat: Option<u32>,
        /// Extra arguments for `cargo test`
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Only the VM part of `test`: the real-kernel tests on Debian's 6.1
    /// kernel under QEMU, where fentry works
    VmTest {
        /// Boot and run the VM's tests N times, and print how many passed
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
        repeat: u32,
    },
    /// rustfmt and clippy, host and eBPF sides, and the layer check
    Lint,
    /// Check that tcpstate's modules import only from the layers below
    /// theirs, with no import cycles; print files and lines per layer
    Layers,
    /// Measure tracer overhead under connection churn (root; not a test)
    Bench(bench::Options),
    /// Set up, build the release binary, and make a .deb of it with its man
    /// pages, shell completions and systemd unit (target/package/)
    Package {
        /// Then install it into an empty root with dpkg and run it there
        /// under chroot (root; `cargo xtask test` does this too)
        #[arg(long)]
        check: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::setup().and_then(|()| vm::setup()),
        Task::Build => setup::setup().and_then(|()| build()).map(drop),
        Task::Run { args } => setup::setup().and_then(|()| build()).and_then(|bin| exec(&bin, &args)),
        Task::Test { repeat: None, args } => setup::setup().and_then(|()| test(&args)),
        Task::Test { repeat: Some(n), args } => setup::setup().and_then(|()| repeat_tests(n, &args)),
        Task::VmTest { repeat } => {
            setup::setup().and_then(|()| vm::setup()).and_then(|()| vm::vm_test_repeated(repeat))
        }
        Task::Lint => setup::setup().and_then(|()| lint()),
        Task::Layers => layers::check(),
        Task::Bench(opts) => setup::setup().and_then(|()| bench::bench(&opts)),
        Task::Package { check } => setup::setup()
            .and_then(|()| package::package())
            .and_then(|deb| if check { package::check(&deb) } else { Ok(()) }),
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

pub fn build() -> anyhow::Result<PathBuf> {
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
    if root {
        // The host's tests use the test packages too (Prometheus, promtool).
        vm::setup()?;
        run_cmd(&mut host_tests(args))?;
        if args.is_empty() {
            package::check(&package::package()?)?;
        }
    } else {
        println!("xtask: not root, so the real-kernel tests will skip");
        run_cmd(cargo().args(["test", "--workspace"]).args(args))?;
    }
    // With extra arguments this is a selective run; the VM runs everything.
    if !root || !args.is_empty() {
        println!("xtask: the VM matrix runs as root, with `cargo xtask test` or `cargo xtask vm-test`");
        return Ok(());
    }
    vm::vm_test()
}

/// `cargo test --workspace` as root, with every real-kernel test required.
fn host_tests(args: &[String]) -> Command {
    let mut cmd = cargo();
    cmd.args(["test", "--workspace"]).args(args).env("TCPSTATE_REQUIRE_KERNEL_TESTS", "1");
    cmd
}

/// Runs the host's tests `n` times, each run's output to a file, and
/// reports the passes and the slowest attach any command took.
fn repeat_tests(n: u32, args: &[String]) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("--repeat runs the real-kernel tests: run it as root");
    }
    vm::setup()?;
    // Built once, so that the runs time the tests alone.
    run_cmd(cargo().args(["test", "--workspace", "--no-run"]).args(args))?;
    let dir = workspace_root().join("target/test-runs");
    std::fs::create_dir_all(&dir)?;
    let attach_log = dir.join("attach.log");
    let _ = std::fs::remove_file(&attach_log);
    let mut passed = 0;
    for run in 1..=n {
        let log = dir.join(format!("run-{run}.log"));
        let out = std::fs::File::create(&log)?;
        let started = std::time::Instant::now();
        let status = host_tests(args)
            .env("TCPSTATE_TEST_ATTACH_LOG", &attach_log)
            .stdout(out.try_clone()?)
            .stderr(out)
            .status()?;
        let verdict = if status.success() { "passed" } else { "FAILED" };
        passed += u32::from(status.success());
        let reruns = std::fs::read_to_string(&log)?.matches("so the scenario runs again").count();
        println!(
            "xtask: run {run}/{n} {verdict} in {:.0?} ({reruns} scenario runs repeated after lost transitions), log {}",
            started.elapsed(),
            log.display()
        );
    }
    println!(
        "xtask: {passed} of {n} runs passed; {}",
        slowest_attach(&std::fs::read_to_string(&attach_log).unwrap_or_default())
    );
    if passed < n {
        bail!("{} of {n} runs failed", n - passed);
    }
    Ok(())
}

/// "slowest attach: 0.31 s (stats), of 240" from lines of "COMMAND SECONDS".
pub fn slowest_attach(log: &str) -> String {
    let times: Vec<(f64, &str)> = log
        .lines()
        .filter_map(|l| {
            let (command, secs) = l.trim().rsplit_once(' ')?;
            Some((secs.parse().ok()?, command))
        })
        .collect();
    match times.iter().max_by(|a, b| a.0.total_cmp(&b.0)) {
        Some((secs, command)) => format!("slowest attach: {secs:.2} s ({command}), of {}", times.len()),
        None => "no attach times recorded".into(),
    }
}

fn lint() -> anyhow::Result<()> {
    layers::check()?;
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
