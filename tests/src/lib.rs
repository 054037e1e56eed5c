//! Support for the real-kernel integration tests: a network namespace per
//! test, peers as child processes with known pids, unique ports, and a
//! bounded wait for the transitions the test expects.
//!
//! The tracepoint is global, so every test filters on its own ports.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::atomic::{AtomicU16, Ordering},
    thread::sleep,
    time::{Duration, Instant},
};

use tcpstate::{
    model::transition::{TcpState, Transition},
    source::tracer::{Filters, Tracer, TracerOptions},
};

/// Set by `cargo xtask test` as root: a test that cannot run then fails
/// instead of skipping.
const REQUIRE_ENV: &str = "TCPSTATE_REQUIRE_KERNEL_TESTS";

/// Whether this machine can run real-kernel tests; prints why not.
pub fn kernel_tests_possible(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let reason = if unsafe { libc::geteuid() } != 0 {
        Some("not root")
    } else if !Path::new("/sys/kernel/tracing").exists() && !Path::new("/sys/kernel/debug/tracing").exists() {
        Some("no tracefs mount point")
    } else {
        None
    };
    match reason {
        None => true,
        Some(why) if std::env::var_os(REQUIRE_ENV).is_some() => {
            panic!("{test}: cannot run ({why}) but {REQUIRE_ENV} is set")
        }
        Some(why) => {
            eprintln!("SKIP {test}: {why}");
            false
        }
    }
}

/// The timewait mode the tracer must report: `sock_diag` by default, or
/// what the VM runner says its kernel allows (`fentry`).
pub fn expected_timewait_mode() -> String {
    std::env::var("TCPSTATE_EXPECT_TW_MODE").unwrap_or_else(|_| "sock_diag".into())
}

/// Ports unique within this test binary, away from the ephemeral range.
pub fn unique_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20000 + (std::process::id() % 200) as u16 * 50;
    base + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A network namespace with loopback up, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(test: &str) -> Self {
        let name = format!("tcpst-{test}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        run(Command::new("ip").args(["netns", "add", &name]));
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        Self { name }
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip").args(["netns", "exec", &self.name]).args(args).output().expect("ip netns exec")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// The `tcpstate-peer` binary, which cargo builds next to the test's
/// `deps/` directory (CARGO_BIN_EXE_* exists only inside tests/*.rs).
fn peer_exe() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let peer = dir.join("tcpstate-peer");
    assert!(peer.is_file(), "{} missing: run through cargo test", peer.display());
    peer
}

/// A `tcpstate-peer` child process. Killed on drop if still running.
pub struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Peer {
    /// Starts a peer in `netns` named `name`; with `wait_go` it waits for [`Peer::go`].
    pub fn spawn(netns: &Netns, name: &str, wait_go: bool, args: &[&str]) -> Self {
        let mut cmd = Command::new(peer_exe());
        cmd.args(["--netns", &netns.name, "--name", name]);
        if wait_go {
            cmd.arg("--wait-go");
        }
        let mut child =
            cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawn tcpstate-peer");
        let stdin = child.stdin.take();
        Self { child, stdin }
    }

    /// A server, started and listening when this returns.
    pub fn server(netns: &Netns, name: &str, args: &[&str]) -> Self {
        let mut peer = Self::spawn(netns, name, false, args);
        peer.wait_ready();
        peer
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn go(&mut self) {
        let mut stdin = self.stdin.take().expect("go once");
        writeln!(stdin, "go").expect("write go");
    }

    fn wait_ready(&mut self) {
        let stdout = self.child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read ready");
        assert_eq!(line.trim(), "ready", "peer did not start");
    }

    /// Whether the process has ended (without reaping it for `finish`).
    pub fn exited(&self) -> bool {
        // SAFETY: waitid with WNOWAIT only peeks at our own child.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                self.child.id(),
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: si_pid is valid to read after waitid.
        rc == 0 && unsafe { info.si_pid() } != 0
    }

    /// Waits for the process to end, however it ends.
    pub fn exit_status(mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait peer")
    }

    /// Waits for a clean exit.
    pub fn finish(mut self) {
        let status = self.child.wait().expect("wait peer");
        assert!(status.success(), "peer {} failed: {status}", self.child.id());
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn start_tracer(filters: Filters) -> Tracer {
    Tracer::start(&TracerOptions { filters, ..Default::default() }).expect("tracer starts")
}

/// Drains the tracer until `done` says the test has seen enough, or the
/// timeout passes; returns everything received.
pub fn collect(
    tracer: &mut Tracer,
    timeout: Duration,
    done: impl Fn(&[Transition]) -> bool,
) -> Vec<Transition> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        tracer
            .drain_transitions(|t| -> Result<(), ()> {
                seen.push(t);
                Ok(())
            })
            .expect("drain");
        if done(&seen) || Instant::now() >= deadline {
            return seen;
        }
        sleep(Duration::from_millis(20));
    }
}

/// Whether `n` sockets other than listeners have reached CLOSE.
pub fn closed_connections(events: &[Transition], n: usize) -> bool {
    events.iter().filter(|t| t.new == TcpState::CLOSE && t.old != TcpState::LISTEN).count() >= n
}

/// The state sequence of one socket's life, as names.
pub fn states(events: &[&Transition]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = events.first().map(|t| vec![t.old.name()]).unwrap_or_default();
    out.extend(events.iter().map(|t| t.new.name()));
    out
}

/// Splits the events into socket lives: per socket address, each ending at
/// CLOSE (addresses are reused as soon as a socket is freed).
pub fn lives(events: &[Transition]) -> Vec<Vec<&Transition>> {
    let mut open: std::collections::HashMap<u64, Vec<&Transition>> = Default::default();
    let mut done = Vec::new();
    for t in events {
        open.entry(t.skaddr).or_default().push(t);
        if t.new == TcpState::CLOSE {
            done.extend(open.remove(&t.skaddr));
        }
    }
    done.extend(open.into_values());
    done
}

/// The one life that starts with `old → new`.
pub fn life_starting<'a>(
    lives: &'a [Vec<&'a Transition>],
    old: TcpState,
    new: TcpState,
) -> &'a [&'a Transition] {
    let found: Vec<_> =
        lives.iter().filter(|l| l.first().is_some_and(|t| t.old == old && t.new == new)).collect();
    assert_eq!(found.len(), 1, "want one life starting {old} -> {new}, have {lives:#?}");
    found[0]
}

/// A `tcpstate` subcommand running in-process on its own thread, with its
/// stdout captured.
pub struct CommandRun {
    handle: std::thread::JoinHandle<String>,
}

impl CommandRun {
    /// Starts `tcpstate ARGS…` and returns once it is attached.
    pub fn start(args: &[&str]) -> Self {
        let args: Vec<String> =
            std::iter::once("tcpstate").chain(args.iter().copied()).map(String::from).collect();
        let (attached, wait) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            use clap::Parser as _;
            let cli = tcpstate::cli::Cli::try_parse_from(&args).expect("valid arguments");
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let mut stdout = Vec::new();
            let mut notify = |_: &str| {
                let _ = attached.send(());
            };
            let out =
                tcpstate::commands::Output { writer: &mut stdout, is_terminal: false, on_ready: &mut notify };
            runtime.block_on(tcpstate::commands::run(cli, out)).expect("command succeeds");
            String::from_utf8(stdout).expect("UTF-8 output")
        });
        if wait.recv_timeout(Duration::from_secs(10)).is_err() {
            let err = handle.join().err();
            panic!("command did not attach: {err:?}");
        }
        Self { handle }
    }

    /// Waits for the command to end and returns its stdout.
    pub fn output(self) -> String {
        self.handle.join().expect("command thread")
    }
}
