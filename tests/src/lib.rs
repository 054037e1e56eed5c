//! Support for the real-kernel integration tests: a network namespace per
//! test, peers as child processes with known pids, unique ports, and a
//! bounded wait for the transitions the test expects.
//!
//! The tracepoint is global, so every test filters on its own ports.
//!
//! Timing: tests wait on events, and every deadline is a base multiplied by
//! one factor, [`time_scale`] (`TCPSTATE_TEST_TIME_SCALE`, default 1; the
//! VM runner raises it). The bases already leave room for a machine several
//! times slower than the one they were written on; a deadline only bounds a
//! wait, so a generous one costs nothing when things work.
//!
//! Exact counts need every transition, and the kernel skips some tracepoint
//! hits under load. Scenarios that assert exact counts run through
//! [`rerun_if_transitions_lost`], which reruns them when transitions were
//! lost during their window (the kernel reported skipped hits, or tcpstate
//! saw sockets with missed transitions), and only then.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::atomic::{AtomicU16, Ordering},
    thread::sleep,
    time::{Duration, Instant},
};

use tcpstate::{
    model::{
        filter::{Filters, PortRange},
        state::TcpState,
        transition::Transition,
    },
    source::tracer::{Tracer, TracerOptions},
};

/// Set by `cargo xtask test` as root: a test that cannot run then fails
/// instead of skipping.
const REQUIRE_ENV: &str = "TCPSTATE_REQUIRE_KERNEL_TESTS";
/// Multiplies every deadline; see the crate's documentation.
pub const TIME_SCALE_ENV: &str = "TCPSTATE_TEST_TIME_SCALE";
/// Where to append how long each command took to attach, if set (for
/// `cargo xtask test --repeat`'s report).
pub const ATTACH_LOG_ENV: &str = "TCPSTATE_TEST_ATTACH_LOG";

/// The factor every deadline is multiplied by: at least 1.
pub fn time_scale() -> f64 {
    std::env::var(TIME_SCALE_ENV)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|f| *f >= 1.0)
        .unwrap_or(1.0)
}

/// A deadline's base, scaled for this machine.
pub fn scaled(base: Duration) -> Duration {
    base.mul_f64(time_scale())
}

/// Waits for `done`, checking every 20 ms, until `timeout` (scaled) passes;
/// says whether it came true.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + scaled(timeout);
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(20));
    }
}

/// How many times a scenario runs at most while transitions keep being
/// lost during it.
pub const RUNS_WHEN_TRANSITIONS_LOST: u32 = 3;

/// Transitions lost in a scenario's window, as tcpstate reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lost {
    /// Tracepoint hits the kernel skipped (on any socket).
    pub hits_skipped: u64,
    /// Sockets on the test's ports seen to have missed transitions.
    pub sockets_with_gaps: u64,
}

impl Lost {
    pub fn any(&self) -> bool {
        self.hits_skipped > 0 || self.sockets_with_gaps > 0
    }

    /// The larger of each, over several tracers or commands.
    pub fn max(self, other: Self) -> Self {
        Self {
            hits_skipped: self.hits_skipped.max(other.hits_skipped),
            sockets_with_gaps: self.sockets_with_gaps.max(other.sockets_with_gaps),
        }
    }
}

/// Runs `scenario` until no transitions were lost during it, at most
/// [`RUNS_WHEN_TRANSITIONS_LOST`] times, and returns its result for the test
/// to assert on. The scenario returns what it saw and what was lost in its
/// window; any other failure inside it panics at once, without a rerun.
pub fn rerun_if_transitions_lost<T>(test: &str, mut scenario: impl FnMut() -> (T, Lost)) -> T {
    for run in 1..=RUNS_WHEN_TRANSITIONS_LOST {
        let (seen, lost) = scenario();
        if !lost.any() {
            return seen;
        }
        // Straight to the process's stderr, past the test harness's capture:
        // a rerun is said even when the test then passes.
        let _ = writeln!(
            std::io::stderr(),
            "{test}: transitions were lost during run {run} of {RUNS_WHEN_TRANSITIONS_LOST} ({} tracepoint hits \
             skipped by the kernel, {} sockets with missed transitions); exact counts would be short, so the \
             scenario runs again",
            lost.hits_skipped,
            lost.sockets_with_gaps
        );
    }
    panic!("{test}: transitions were lost in all {RUNS_WHEN_TRANSITIONS_LOST} runs");
}

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
/// The path of `program` for a test; `None` if it is not installed, unless
/// the real-kernel tests are required (`cargo xtask test`, which installs
/// it): then its absence fails the test instead of skipping a part.
pub fn required_program(test: &str, program: &str) -> Option<String> {
    let out = Command::new("sh").args(["-c", &format!("command -v {program}")]).output().ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if Path::new(&path).is_file() {
        return Some(path);
    }
    if std::env::var_os(REQUIRE_ENV).is_some() {
        panic!("{test}: {program} is not installed but {REQUIRE_ENV} is set (cargo xtask setup installs it)");
    }
    eprintln!("{test}: {program} is not installed: that part is skipped");
    None
}

/// Ports as a filter takes them: each a range of one.
pub fn port_set(ports: &[u16]) -> Vec<PortRange> {
    ports.iter().map(|&p| PortRange::one(p)).collect()
}

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

    /// Its inode, as the kernel program reports a socket's namespace.
    pub fn inode(&self) -> u32 {
        use std::os::unix::fs::MetadataExt as _;
        let path = format!("/run/netns/{}", self.name);
        std::fs::metadata(&path).unwrap_or_else(|e| panic!("{path}: {e}")).ino() as u32
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip").args(["netns", "exec", &self.name]).args(args).output().expect("ip netns exec")
    }
}

impl Netns {
    /// Waits until every TCP socket in the namespace has closed or sits
    /// in TIME_WAIT (its transitions have then all happened), within
    /// [`EVENT_WAIT`] (scaled).
    pub fn wait_until_quiet(&self) {
        let mut left = String::new();
        let quiet = wait_until(EVENT_WAIT, || {
            let out = self.exec(&["ss", "-tanH"]);
            left = String::from_utf8_lossy(&out.stdout).into_owned();
            out.status.success() && left.lines().all(|l| l.starts_with("TIME-WAIT"))
        });
        assert!(quiet, "sockets still open in {}: {left}", self.name);
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
    /// Starts a peer in `netns` named `name`; with `wait_go` it waits for
    /// [`Peer::go`] (as a client with `--close-on-go`, before closing).
    pub fn spawn(netns: &Netns, name: &str, wait_go: bool, args: &[&str]) -> Self {
        let mut cmd = Command::new(peer_exe());
        cmd.args(["--netns", &netns.name, "--name", name]);
        if wait_go {
            cmd.arg("--wait-go");
        }
        cmd.args(args);
        // The peer's own hard limit, unless the test sets one.
        if !args.contains(&"--timeout") {
            cmd.args(["--timeout", &scaled(Duration::from_secs(30)).as_secs().to_string()]);
        }
        let mut child =
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawn tcpstate-peer");
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

/// A cgroup v2 directory the test makes, under a parent of its own named
/// after the test and this process; removed on drop (once its processes
/// have exited).
pub struct TestCgroup {
    pub path: PathBuf,
    /// The path below the cgroup2 mount, as tcpstate reports it.
    pub relative: String,
}

pub use tcpstate::source::cgroup::cgroup2_root;

impl TestCgroup {
    /// `leaf` under `/tcpstate-<test>-<pid>/`.
    pub fn new(test: &str, leaf: &str) -> Self {
        let root = cgroup2_root().expect("a cgroup2 mount");
        let relative = format!("/tcpstate-{test}-{}/{leaf}", std::process::id());
        let path = root.join(relative.trim_start_matches('/'));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self { path, relative }
    }

    pub fn add(&self, pid: u32) {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.path.display()));
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
        if let Some(parent) = self.path.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

impl Peer {
    /// A peer that starts in `cgroup`: moved there before it does anything.
    /// A server is listening when this returns.
    pub fn spawn_in(netns: &Netns, cgroup: &TestCgroup, name: &str, server: bool, args: &[&str]) -> Self {
        let mut peer = Self::spawn(netns, name, true, args);
        cgroup.add(peer.pid());
        peer.go();
        if server {
            peer.wait_ready();
        }
        peer
    }
}

/// A workload pair: `prefix-cli`, in `client_cgroup`, makes `n` connections
/// to `prefix-srv`, in `server_cgroup`, on 127.0.0.1:`port`, and closes each
/// first; returns once both have exited and the namespace is quiet.
pub fn close_first_across_cgroups(
    ns: &Netns,
    (client_cgroup, server_cgroup): (&TestCgroup, &TestCgroup),
    prefix: &str,
    port: &str,
    n: u64,
) {
    let addr = format!("127.0.0.1:{port}");
    let n = n.to_string();
    let server = Peer::spawn_in(
        ns,
        server_cgroup,
        &format!("{prefix}-srv"),
        true,
        &["server", "--listen", &addr, "--count", &n, "--close", "second"],
    );
    let client = Peer::spawn_in(
        ns,
        client_cgroup,
        &format!("{prefix}-cli"),
        false,
        &["client", "--connect", &addr, "--count", &n, "--close", "first"],
    );
    client.finish();
    server.finish();
    ns.wait_until_quiet();
}

pub fn start_tracer(filters: Filters) -> Tracer {
    Tracer::start(&TracerOptions { filters, ..Default::default() }).expect("tracer starts")
}

/// How long [`collect`] waits for what a test expects (scaled).
pub const EVENT_WAIT: Duration = Duration::from_secs(30);

/// What a tracer delivered for a scenario, and what it lost meanwhile.
pub struct Collected {
    pub events: Vec<Transition>,
    pub lost: Lost,
}

/// Drains the tracer until `done` says the test has seen enough, or
/// [`EVENT_WAIT`] (scaled) passes. Once transitions were lost the scenario
/// will run again, so after a short settling time it stops waiting for
/// events that may never come.
pub fn collect(tracer: &mut Tracer, done: impl Fn(&[Transition]) -> bool) -> Collected {
    let deadline = Instant::now() + scaled(EVENT_WAIT);
    let mut give_up_at = None;
    let mut seen = Vec::new();
    loop {
        tracer
            .drain_transitions(|t| -> Result<(), ()> {
                seen.push(t);
                Ok(())
            })
            .expect("drain");
        let lost = lost(tracer);
        if lost.any() && give_up_at.is_none() {
            give_up_at = Some(Instant::now() + scaled(Duration::from_secs(1)));
        }
        let now = Instant::now();
        if done(&seen) || now >= deadline || give_up_at.is_some_and(|t| now >= t) {
            return Collected { events: seen, lost };
        }
        sleep(Duration::from_millis(20));
    }
}

/// What the tracer lost since it attached.
pub fn lost(tracer: &Tracer) -> Lost {
    let counters = tracer.counters().expect("counters");
    Lost {
        hits_skipped: counters.recursion_misses.expect("this kernel reports skipped tracepoint hits"),
        sockets_with_gaps: counters.sockets_with_gaps,
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
/// CLOSE (addresses are reused as soon as a socket is freed). A child that
/// goes LISTEN → SYN_RECV → CLOSE and nothing else is left out: when two
/// CPUs complete one connection request at once (the ACK and the first
/// segment after it), the kernel makes two children and frees the loser,
/// which is no connection of the test's.
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
    done.retain(|life| states(life) != ["LISTEN", "SYN_RECV", "CLOSE"]);
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

/// The `tcpstate` binary, built beside the tests by `cargo test --workspace`.
pub fn tcpstate_exe() -> std::path::PathBuf {
    let exe = peer_exe().with_file_name("tcpstate");
    assert!(exe.is_file(), "{} missing: run `cargo xtask test` or `cargo test --workspace`", exe.display());
    exe
}

/// How long a command may take to attach (scaled): seconds under QEMU's
/// emulation, where aya parses the kernel's BTF and loads the fentry hooks.
pub const ATTACH_WAIT: Duration = Duration::from_secs(60);
/// How long a command may take to end once asked to (scaled).
pub const EXIT_WAIT: Duration = Duration::from_secs(30);

/// Text a pipe has delivered so far, read by a thread of its own.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<String>>);

impl Captured {
    fn spawn_reader(&self, pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<()> {
        let text = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut t = text.0.lock().unwrap();
                t.push_str(&line);
                t.push('\n');
            }
        })
    }

    fn get(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// A `tcpstate` command running as its own process, as a user runs it,
/// with its stdout and stderr captured.
pub struct CommandRun {
    child: Child,
    args: Vec<String>,
    stdout: Captured,
    stderr: Captured,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// From the start of the process to its start-up line.
    pub attach: Duration,
}

/// What a command printed, once it has ended.
#[derive(Debug)]
pub struct Finished {
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// What the command lost while it ran: from the summary on stderr
    /// (`trace`), or its reports on stdout, text or JSON. The most any of
    /// them says (`top` prints one per refresh, since the start or since
    /// the last).
    pub fn lost(&self) -> Lost {
        Lost {
            hits_skipped: self.count(
                &["tracepoint hits skipped by the kernel ", "tracepoint hits skipped "],
                "tracepoint_hits_skipped",
            ),
            sockets_with_gaps: self.count(
                &["sockets with missed transitions ", "Sockets with missed transitions "],
                "sockets_with_missed_transitions",
            ),
        }
    }

    fn count(&self, labels: &[&str], json_key: &str) -> u64 {
        let in_text = [&self.stderr, &self.stdout].into_iter().flat_map(|text| {
            labels.iter().flat_map(move |label| {
                text.match_indices(label).filter_map(move |(at, _)| {
                    let digits: String =
                        text[at + label.len()..].chars().take_while(char::is_ascii_digit).collect();
                    digits.parse::<u64>().ok()
                })
            })
        });
        let in_json = self
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|doc| doc["losses"][json_key].as_u64());
        in_text.chain(in_json).max().unwrap_or_else(|| panic!("no {json_key} count in the output: {self:#?}"))
    }
}

impl CommandRun {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(tcpstate_exe())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcpstate");
        let (stdout, stderr) = (Captured::default(), Captured::default());
        let readers = vec![
            stdout.spawn_reader(child.stdout.take().expect("stdout")),
            stderr.spawn_reader(child.stderr.take().expect("stderr")),
        ];
        let args = args.iter().map(|a| a.to_string()).collect();
        Self { child, args, stdout, stderr, readers, attach: Duration::ZERO }
    }

    /// Starts `tcpstate ARGS…` and returns once it says it is attached
    /// (its start-up line), within [`ATTACH_WAIT`] (scaled).
    pub fn start(args: &[&str]) -> Self {
        let started = Instant::now();
        let mut run = Self::spawn(args);
        let attached = wait_until(ATTACH_WAIT, || {
            let err = run.stderr.get();
            err.lines().any(|l| {
                l.starts_with("Tracing ") || l.starts_with("Collecting ") || l.starts_with("Exporting ")
            }) || run.exited()
        });
        run.attach = started.elapsed();
        if !attached || run.exited() {
            let _ = run.child.kill();
            let (status, out) = run.end();
            panic!("tcpstate {:?} did not attach (waited {:.1?}, {status}): {out:#?}", run.args, run.attach);
        }
        if let Some(log) = std::env::var_os(ATTACH_LOG_ENV) {
            let line = format!("{} {:.3}\n", run.args[0], run.attach.as_secs_f64());
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .and_then(|mut f| f.write_all(line.as_bytes()));
        }
        run
    }

    /// Runs a command that ends by itself (`census`, `sysctl`), and checks
    /// that it succeeded.
    pub fn run_to_end(args: &[&str]) -> Finished {
        Self::spawn(args).finish()
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.get()
    }

    /// Waits until the stdout so far satisfies `done`, within `timeout`
    /// (scaled); says whether it did.
    pub fn wait_for_stdout(&self, timeout: Duration, done: impl Fn(&str) -> bool) -> bool {
        wait_until(timeout, || done(&self.stdout.get()))
    }

    /// Reaps the process and takes all it printed.
    fn end(&mut self) -> (std::process::ExitStatus, Finished) {
        let status = self.child.wait().expect("wait tcpstate");
        for reader in self.readers.drain(..) {
            reader.join().expect("reader");
        }
        (status, Finished { stdout: self.stdout.get(), stderr: self.stderr.get() })
    }

    /// Waits for the end, within [`EXIT_WAIT`] (scaled), and checks that it
    /// was a success.
    fn wait_for_end(&mut self) -> Finished {
        let ended = wait_until(EXIT_WAIT, || self.exited());
        if !ended {
            let _ = self.child.kill();
        }
        let (status, out) = self.end();
        assert!(ended, "tcpstate {:?} did not end within {EXIT_WAIT:?} (scaled): {out:#?}", self.args);
        assert!(status.success(), "tcpstate {:?} failed with {status}: {out:#?}", self.args);
        out
    }

    /// Waits for the command to end by itself (`--duration`).
    pub fn finish(mut self) -> Finished {
        self.wait_for_end()
    }

    /// Ends the command as a user would (SIGTERM), and returns what it
    /// printed, its report included.
    pub fn stop(mut self) -> Finished {
        // SAFETY: signalling our own child, which has not been reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait_for_end()
    }
}

impl Drop for CommandRun {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
