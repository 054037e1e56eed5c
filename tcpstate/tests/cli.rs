//! The `tcpstate` binary end to end: exit codes, one-line errors, JSON
//! output, signals and a closed stdout. Traffic runs in a namespace the test
//! creates, from a thread that enters it.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_tcpstate");

/// A deadline's base, multiplied by `TCPSTATE_TEST_TIME_SCALE` (at least 1)
/// as in the real-kernel tests.
fn scaled(base: Duration) -> Duration {
    let scale = std::env::var("TCPSTATE_TEST_TIME_SCALE").ok().and_then(|s| s.parse::<f64>().ok());
    base.mul_f64(scale.filter(|f| *f >= 1.0).unwrap_or(1.0))
}

/// The tracepoint hits the kernel skipped, from the end-of-run summary.
fn skipped_hits(summary: &str) -> u64 {
    const LABEL: &str = "tracepoint hits skipped by the kernel ";
    let at = summary.find(LABEL).unwrap_or_else(|| panic!("no summary: {summary}"));
    let digits: String = summary[at + LABEL.len()..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap()
}

/// Runs a scenario until the kernel skipped no hits during it (at most 3
/// times); exact counts need every hit.
fn rerun_if_hits_skipped<T>(test: &str, mut scenario: impl FnMut() -> (T, String)) -> T {
    for run in 1..=3 {
        let (seen, summary) = scenario();
        let skipped = skipped_hits(&summary);
        if skipped == 0 {
            return seen;
        }
        eprintln!("{test}: the kernel skipped {skipped} tracepoint hits in run {run} of 3; running it again");
    }
    panic!("{test}: the kernel skipped tracepoint hits in all 3 runs");
}

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Real-kernel tests run as root; `cargo xtask test` makes a skip fatal.
fn kernel_tests_possible(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(std::env::var_os("TCPSTATE_REQUIRE_KERNEL_TESTS").is_none(), "{test} needs root");
    eprintln!("SKIP {test}: not root");
    false
}

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr).lines().map(str::to_string).collect()
}

#[test]
fn usage_errors_are_one_line_and_exit_2() {
    for args in [
        &["trace", "--port", "99999"][..],
        &["trace", "--bogus"],
        &["trace", "-4", "-6"],
        &["trace", "--comm", "much-too-long-for-a-comm"],
        &["nonsense"],
        &[],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        if !args.is_empty() {
            let lines = stderr_lines(&out);
            assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
            assert!(lines[0].starts_with("tcpstate: "), "{lines:?}");
        }
    }
}

#[test]
fn help_and_version_succeed() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("tcpstate "));
    let out = Command::new(BIN).args(["trace", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--json", "--csv", "-L, --lport", "-D, --rport", "-T, --timestamp", "-w, --wide", "--netns"]
    {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    assert!(help.contains("comma list of ports and ranges (80,8000-8099)"), "{help}");
}

#[test]
fn without_privileges_names_the_missing_capabilities() {
    if !is_root() {
        // Unprivileged already: the same check applies to us.
        let out = Command::new(BIN).args(["trace", "--duration", "1"]).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        return;
    }
    let out = Command::new(BIN).args(["trace", "--duration", "1"]).uid(65534).gid(65534).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("CAP_BPF") && lines[0].contains("CAP_PERFMON"), "{lines:?}");
}

/// A user with CAP_BPF and CAP_PERFMON but not root, where tracefs is
/// mounted with mode 0700 (as here): told that, not that it is unmounted.
#[test]
fn unreadable_tracefs_is_named_not_remounted() {
    use std::os::unix::fs::PermissionsExt as _;
    let tracefs = std::path::Path::new("/sys/kernel/tracing");
    let closed = std::fs::metadata(tracefs).is_ok_and(|m| m.permissions().mode() & 0o005 == 0);
    if !is_root() || !closed {
        eprintln!(
            "unreadable_tracefs: skipped (needs root, and tracefs at {} closed to others)",
            tracefs.display()
        );
        return;
    }
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(["--inh-caps", "+bpf,+perfmon", "--ambient-caps", "+bpf,+perfmon", BIN])
        .args(["trace", "--duration", "1"])
        .output()
        .expect("setpriv");
    assert_eq!(out.status.code(), Some(1));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("tracefs is mounted at /sys/kernel/tracing but this user cannot read it"),
        "{lines:?}"
    );
    assert!(!lines[0].contains("not mounted"), "{lines:?}");
}

/// A namespace for the test's traffic, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(test: &str) -> Self {
        let name = format!("tcpst-cli-{test}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        assert!(Command::new("ip").args(["netns", "add", &name]).status().unwrap().success());
        assert!(
            Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]).status().unwrap().success()
        );
        Self(name)
    }

    /// Runs `n` connections to a listener on `port`, closed by the client,
    /// from a thread inside the namespace.
    fn connections(&self, port: u16, n: usize) {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(path).unwrap();
            // SAFETY: valid fd; only this thread changes namespace.
            assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
            for _ in 0..n {
                let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let (mut server, _) = listener.accept().unwrap();
                drop(client);
                let mut buf = [0u8; 16];
                server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                assert_eq!(server.read(&mut buf).unwrap(), 0);
            }
        })
        .join()
        .unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn port_for(test_index: u16) -> u16 {
    31000 + (std::process::id() % 500) as u16 * 16 + test_index
}

/// Starts `tcpstate` and waits until it says it is tracing.
fn spawn_tracing(args: &[&str]) -> (Child, BufReader<std::process::ChildStderr>) {
    let mut child =
        Command::new(BIN).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.starts_with("Tracing") || line.starts_with("Collecting"), "unexpected: {line}");
    (child, stderr)
}

/// Waits for the exit, at most `timeout` (scaled).
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let timeout = scaled(timeout);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tcpstate did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn json_lines_with_documented_fields_and_a_summary() {
    if !kernel_tests_possible("json_lines") {
        return;
    }
    let (stdout, summary) = rerun_if_hits_skipped("json_lines", || {
        let ns = Netns::new("json");
        let port = port_for(0);
        // Counted from attach: time for the three connections and a poll
        // of their timewait sockets (every 200 ms).
        let duration = scaled(Duration::from_secs(3)).as_secs_f64().to_string();
        let (mut child, mut stderr) =
            spawn_tracing(&["trace", "--json", "--port", &port.to_string(), "--duration", &duration]);
        ns.connections(port, 3);
        let status = wait_with_timeout(&mut child, Duration::from_secs(30));
        assert!(status.success());
        let mut stdout = String::new();
        child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
        let mut summary = String::new();
        stderr.read_to_string(&mut summary).unwrap();
        ((stdout, summary.clone()), summary)
    });
    let port = port_for(0);

    let all: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let rows: Vec<&serde_json::Value> = all.iter().filter(|r| r["kind"] == "transition").collect();
    // Listener 2 + 3 × (client 5 + server 5).
    assert_eq!(rows.len(), 32, "{stdout}");
    // Each client-side close was followed into its timewait socket.
    let entered: Vec<_> = all.iter().filter(|r| r["kind"] == "timewait" && r["event"] == "entered").collect();
    assert_eq!(entered.len(), 3, "{stdout}");
    assert!(entered.iter().all(|r| r["pid"] == std::process::id() && r["mode"] == "sock_diag"));
    for row in &rows {
        for key in [
            "ts_ns",
            "time",
            "skaddr",
            "family",
            "saddr",
            "sport",
            "daddr",
            "dport",
            "old_state",
            "new_state",
            "in_old_state_ns",
            "pid",
            "comm",
            "close",
        ] {
            assert!(row.get(key).is_some(), "{key} missing in {row}");
        }
        assert_eq!(row["family"], "ipv4");
        assert!(row["skaddr"].as_str().unwrap().starts_with("0x"));
        assert!(row["time"].as_str().unwrap().ends_with('Z'));
        assert!(row["sport"] == port || row["dport"] == port);
    }
    let fin1: Vec<_> = rows.iter().filter(|r| r["new_state"] == "FIN_WAIT1").collect();
    assert_eq!(fin1.len(), 3);
    assert!(fin1.iter().all(|r| r["close"] == "active" && r["pid"] == std::process::id()));
    assert_eq!(rows.iter().filter(|r| r["new_state"] == "CLOSE_WAIT" && r["close"] == "passive").count(), 3);
    assert!(summary.contains("ESTABLISHED -> FIN_WAIT1              3"), "{summary}");
    assert!(summary.contains("events received 32, dropped (ring buffer full) 0"), "{summary}");
}

/// `--csv`: a header, then one row per transition with the JSON lines'
/// fields, quoted where needed; `-T elapsed` and `-w` on text.
#[test]
fn csv_rows_and_text_timestamps() {
    if !kernel_tests_possible("csv_rows") {
        return;
    }
    let run = |args: &[&str], index: u16| {
        rerun_if_hits_skipped("csv_rows", || {
            let ns = Netns::new("csv");
            let port = port_for(index);
            let duration = scaled(Duration::from_secs(2)).as_secs_f64().to_string();
            let p = port.to_string();
            let all: Vec<&str> = ["trace", "--port", &p, "--no-timewait", "--duration", &duration]
                .into_iter()
                .chain(args.iter().copied())
                .collect();
            let (mut child, mut stderr) = spawn_tracing(&all);
            ns.connections(port, 1);
            assert!(wait_with_timeout(&mut child, Duration::from_secs(30)).success());
            let mut stdout = String::new();
            child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
            let mut summary = String::new();
            stderr.read_to_string(&mut summary).unwrap();
            (stdout, summary)
        })
    };
    let csv = run(&["--csv"], 8);
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header[..4], ["kind", "time", "ts_ns", "netns"]);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    // Listener 2 + client 5 + server 5.
    assert_eq!(rows.len(), 12, "{csv}");
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let fin1: Vec<_> = rows.iter().filter(|r| &r[column("new_state")] == "FIN_WAIT1").collect();
    assert_eq!(fin1.len(), 1, "{csv}");
    assert_eq!(&fin1[0][column("close")], "active");
    assert_eq!(fin1[0][column("pid")], std::process::id().to_string());
    let handovers = rows.iter().filter(|r| &r[column("handover")] == "true").count();
    assert_eq!(handovers, 1, "the client's close: {csv}");

    let text = run(&["-T", "elapsed", "-w"], 9);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].trim_start().starts_with("SECONDS     PID COMM"), "{text}");
    assert_eq!(lines.len(), 13, "{text}");
    for line in &lines[1..] {
        let seconds: f64 = line.split_whitespace().next().unwrap().parse().unwrap();
        assert!(seconds >= 0.0 && seconds < scaled(Duration::from_secs(2)).as_secs_f64(), "{line}");
    }
}

#[test]
fn sigterm_detaches_and_prints_the_summary() {
    if !kernel_tests_possible("sigterm") {
        return;
    }
    let (stdout, summary) = rerun_if_hits_skipped("sigterm", || {
        let ns = Netns::new("term");
        let port = port_for(1);
        let (mut child, mut stderr) = spawn_tracing(&["trace", "--port", &port.to_string()]);
        ns.connections(port, 1);
        // Once the header, 12 transitions and the timewait line are out, or
        // the wait is over: the end-of-run summary tells which.
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut stdout = String::new();
        let deadline = Instant::now() + scaled(Duration::from_secs(10));
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut line = String::new();
            while out.read_line(&mut line).unwrap_or(0) > 0 {
                let _ = tx.send(std::mem::take(&mut line));
            }
        });
        while stdout.lines().count() < 1 + 12 + 1 {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => stdout.push_str(&line),
                Err(_) => break,
            }
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = wait_with_timeout(&mut child, Duration::from_secs(10));
        assert!(status.success(), "{status}");
        reader.join().unwrap();
        stdout.extend(rx.try_iter());
        let mut summary = String::new();
        stderr.read_to_string(&mut summary).unwrap();
        ((stdout, summary.clone()), summary)
    });
    let transitions = stdout.lines().filter(|l| !l.ends_with(" timewait")).count();
    assert_eq!(transitions, 1 + 12, "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.contains("(handover)   -> tw:")).count(), 1, "{stdout}");
    assert!(stdout.lines().next().unwrap().trim_start().starts_with("PID COMM"));
    assert!(summary.contains("total                                12"), "{summary}");
}

#[test]
fn closed_stdout_ends_quietly() {
    if !kernel_tests_possible("closed_stdout") {
        return;
    }
    let ns = Netns::new("pipe");
    // Enough rows to overflow any output buffer after the reader has gone.
    for (format, index) in [(None, 2), (Some("--csv"), 10), (Some("--json"), 11)] {
        let port = port_for(index).to_string();
        let args: Vec<&str> =
            ["trace", "--port", &port, "--duration", "20"].into_iter().chain(format).collect();
        let (mut child, mut stderr) = spawn_tracing(&args);
        // Read the header, then go away like `| head -1`.
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut header = String::new();
        stdout.read_line(&mut header).unwrap();
        drop(stdout);
        ns.connections(port_for(index), 60);
        let status = wait_with_timeout(&mut child, Duration::from_secs(10));
        assert!(status.success(), "{format:?}: {status}");
        let mut rest = String::new();
        stderr.read_to_string(&mut rest).unwrap();
        assert!(!rest.contains("tcpstate:") && !rest.contains("panicked"), "{format:?}: {rest}");
    }
}

/// With tracefs unmounted (in a private mount namespace), tcpstate mounts it.
#[test]
fn mounts_tracefs_itself() {
    if !kernel_tests_possible("mounts_tracefs") {
        return;
    }
    let script = format!(
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; \
         test -d /sys/kernel/tracing/events && exit 9; exec {BIN} -v trace --duration 0.5"
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("mounted tracefs at /sys/kernel/tracing"), "{stderr}");
    let _ = std::io::stderr().flush();
}

/// `--duration` counts from the start-up line, however long attaching took.
#[test]
fn duration_counts_from_attach() {
    if !kernel_tests_possible("duration_from_attach") {
        return;
    }
    let (mut child, _stderr) =
        spawn_tracing(&["trace", "--port", &port_for(3).to_string(), "--duration", "1"]);
    let attached = Instant::now();
    let status = wait_with_timeout(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status}");
    assert!(attached.elapsed() >= Duration::from_secs(1), "ended {:?} after attaching", attached.elapsed());
}

/// Durations too large for a deadline, and refreshes too fast, are usage
/// errors: one line and exit 2, never a panic.
#[test]
fn out_of_range_durations_are_usage_errors() {
    for args in [
        &["trace", "-d", "99999999999999999999"][..],
        &["stats", "-d", "18446744073709551615"],
        &["top", "-i", "1e30"],
        &["trace", "--tw-poll", "1e30"],
        &["census", "-w", "1e30"],
        &["census", "-w", "1e-9"],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let lines = stderr_lines(&out);
        assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
        assert!(lines[0].starts_with("tcpstate: ") && !lines[0].contains("panicked"), "{lines:?}");
    }
}

/// A stdout that cannot take the report fails at once, naming stdout,
/// instead of collecting for the whole duration and losing it.
#[test]
fn a_full_stdout_fails_at_start() {
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let started = Instant::now();
    let out = Command::new(BIN).args(["stats", "-d", "60"]).stdout(full).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("stdout") && lines[0].contains("no space"), "{lines:?}");
    assert!(started.elapsed() < scaled(Duration::from_secs(30)), "it collected first");
}

/// A closed or full stderr ends nothing: the transitions still reach stdout
/// and the exit is clean.
#[test]
fn an_unwritable_stderr_is_no_crash() {
    if !kernel_tests_possible("unwritable_stderr") {
        return;
    }
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = Command::new(BIN)
        .args(["trace", "--port", &port_for(4).to_string(), "--duration", "0.5"])
        .stderr(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).trim_start().starts_with("PID COMM"));
    // Like `2>&1 | head -1`: the reader of stderr goes away.
    let mut child = Command::new(BIN)
        .args(["trace", "--port", &port_for(5).to_string(), "--duration", "0.5"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let status = wait_with_timeout(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{status}");
}

/// SIGHUP (a closed terminal or ssh session) and Ctrl-C end a session as
/// SIGTERM does: detach, report, exit 0.
#[test]
fn sighup_and_ctrl_c_report_and_exit_0() {
    if !kernel_tests_possible("sighup") {
        return;
    }
    for (signal, index) in [(libc::SIGHUP, 6), (libc::SIGINT, 7)] {
        let (mut child, _stderr) =
            spawn_tracing(&["stats", "--json", "--port", &port_for(index).to_string()]);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = wait_with_timeout(&mut child, Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "signal {signal}: {status}");
        let mut stdout = String::new();
        child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
        let report: serde_json::Value = serde_json::from_str(&stdout).expect("the report");
        assert!(report["losses"]["events_received"].is_u64(), "{report}");
    }
}

/// `--netns` given something that is not a network namespace: one line that
/// says so, exit 2.
#[test]
fn netns_that_is_not_a_network_namespace_is_a_usage_error() {
    if !kernel_tests_possible("netns_usage") {
        return;
    }
    for (args, says) in [
        (&["census", "--netns", "/proc/self/ns/mnt"][..], "not a network namespace (a mnt namespace)"),
        (&["census", "--netns", "/etc/passwd"], "not a network namespace"),
        (&["trace", "--port", "90-80"], "a range goes from low to high"),
        (&["trace", "-L", "0"], "is not a port"),
        (&["sysctl", "--netns", "no-such-namespace-here"], "no such network namespace"),
        (&["trace", "--netns", "/etc/passwd"], "not a network namespace"),
        (&["stats", "--netns", "/proc/self/ns/mnt"], "not a network namespace (a mnt namespace)"),
        (&["top", "--netns", "no-such-namespace-here"], "no such network namespace"),
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let lines = stderr_lines(&out);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains(says), "{lines:?}");
    }
}

/// `-v` is tcpstate's own diagnostics (the socket table's size, why the exact
/// hooks did not attach), not aya's relocation internals, which wait for
/// `-vvv`; the start-up line names the mode without an error in it.
#[test]
fn verbosity_levels() {
    if !kernel_tests_possible("verbosity") {
        return;
    }
    let run = |v: &str| {
        let out = Command::new(BIN)
            .args([v, "trace", "--port", &port_for(3).to_string(), "--duration", "0.3"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success());
        stderr_lines(&out)
    };
    let v = run("-v");
    assert!(v.iter().any(|l| l.contains("socket table: ") && l.contains("entries")), "{v:#?}");
    assert!(!v.iter().any(|l| l.contains("aya")), "{v:#?}");
    let start = v.iter().find(|l| l.starts_with("Tracing")).unwrap();
    assert!(!start.contains("Operation not permitted") && !start.contains("error"), "{start}");
    let vvv = run("-vvv");
    assert!(vvv.iter().any(|l| l.contains("aya")), "{} lines", vvv.len());
}

/// `stats --from` with bad input: one line, exit 1 for a file that is not a
/// recording, 2 for flags that cannot go with it.
#[test]
fn stats_from_bad_input() {
    let dir = std::env::temp_dir();
    let garbage = dir.join(format!("tcpstate-garbage-{}.jsonl", std::process::id()));
    std::fs::write(&garbage, "this is not a recording\n").unwrap();
    let headless = dir.join(format!("tcpstate-headless-{}.jsonl", std::process::id()));
    std::fs::write(&headless, "{\"kind\":\"summary\",\"ended\":\"2026-12-03T00:00:00Z\",\"transitions\":[],\"total_transitions\":0,\"losses\":{\"events_received\":0,\"events_dropped\":0,\"socket_insert_failed\":0,\"unreadable_records\":0,\"tracepoint_hits_skipped\":0,\"sockets_with_missed_transitions\":0,\"sockets_evicted\":0}}\n").unwrap();
    let (garbage_s, headless_s) = (garbage.to_str().unwrap(), headless.to_str().unwrap());
    for (args, code, says) in [
        (&["stats", "--from", garbage_s][..], 1, ":1: not a line of tcpstate trace --json"),
        (&["stats", "--from", headless_s], 1, "no session line first"),
        (&["stats", "--from", "/no/such/recording"], 1, "opening /no/such/recording"),
        (&["stats", "--from", garbage_s, "--port", "80"], 2, "--from reports the recording as it was made"),
        (&["top", "--from", garbage_s], 2, "--from is for stats"),
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
        let lines = stderr_lines(&out);
        assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
        assert!(lines[0].contains(says), "{args:?}: {lines:?}");
    }
    let _ = std::fs::remove_file(garbage);
    let _ = std::fs::remove_file(headless);
}
