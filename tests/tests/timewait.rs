//! Following connections into their timewait sockets, against the real
//! kernel: each test sets the namespace's sysctls and drives one connection.

use std::time::Duration;

use serde_json::Value;
use tcpstate_tests::*;

const MS: f64 = 1e6;
/// How close exact (fentry) times must be to the event that caused them,
/// and two kernel timestamps of one code path: only scheduling noise, which
/// the emulated test VM makes milliseconds.
const EXACT_MS: f64 = 20.0;
/// The sock_diag poll interval the tests ask for (`--tw-poll`).
const POLL_MS: f64 = 100.0;
/// How late a poll may run on a loaded machine (scaled): the follower
/// spaces polls at least 50 times a poll's own duration apart, so a poll
/// slowed to 40 ms by a busy machine puts the next 2 s later.
fn poll_slack_ms() -> f64 {
    scaled(Duration::from_secs(2)).as_secs_f64() * 1e3
}
/// How long a scenario may take to show what it waits for, beyond its own
/// timing (scaled by `Run::trace`).
const SCENARIO_WAIT: Duration = Duration::from_secs(30);

struct Run {
    rows: Vec<Value>,
}

impl Run {
    fn parse(stdout: &str) -> Self {
        Self { rows: stdout.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect() }
    }

    /// Traces a fresh port in a fresh namespace (with `sysctls`) while
    /// `drive` runs the peers there, until `done` holds for what was traced
    /// (waiting at most `within`, scaled); then ends the trace as a user
    /// would. Reruns when the kernel skipped hits meanwhile.
    fn trace<R>(
        test: &str,
        sysctls: &[&str],
        within: Duration,
        done: impl Fn(&Run) -> bool,
        drive: impl Fn(&Netns, u16) -> R,
    ) -> (Self, R) {
        rerun_if_transitions_lost(test, || {
            let ns = ns_with(test, sysctls);
            let port = unique_port();
            let p = port.to_string();
            let trace = CommandRun::start(&["trace", "--json", "--port", &p, "--tw-poll", "100ms"]);
            let driven = drive(&ns, port);
            let reached = trace.wait_for_stdout(within, |out| done(&Run::parse(out)));
            let out = trace.stop();
            let run = Run::parse(&out.stdout);
            let lost = out.lost();
            assert!(reached || lost.any(), "{test}: what the test waits for never came: {:#?}", run.rows);
            ((run, driven), lost)
        })
    }

    fn timewait(&self, event: &str) -> Vec<&Value> {
        self.rows.iter().filter(|r| r["kind"] == "timewait" && r["event"] == event).collect()
    }

    fn one(&self, event: &str) -> &Value {
        let found = self.timewait(event);
        assert_eq!(found.len(), 1, "want one {event}: {:#?}", self.rows);
        found[0]
    }

    fn transitions(&self, old: &str, new: &str) -> Vec<&Value> {
        self.rows
            .iter()
            .filter(|r| r["kind"] == "transition" && r["old_state"] == old && r["new_state"] == new)
            .collect()
    }

    fn has(&self, event: &str) -> bool {
        !self.timewait(event).is_empty()
    }
}

/// One connection on `port` in `ns`: the client (`tsp-T-cli`) closes first;
/// the server (`tsp-T-srv`) closes as `server_close` says, `hold_ms` after
/// its moment.
fn client_closes_first(ns: &Netns, port: u16, test: &str, server_close: &str, hold_ms: u64) {
    let addr = format!("127.0.0.1:{port}");
    let hold = hold_ms.to_string();
    let server = Peer::server(
        ns,
        &format!("tsp-{test}-srv"),
        &["server", "--listen", &addr, "--close", server_close, "--hold-ms", &hold],
    );
    Peer::spawn(ns, &format!("tsp-{test}-cli"), false, &["client", "--connect", &addr, "--close", "first"])
        .finish();
    server.finish();
}

fn ns_with(test: &str, sysctls: &[&str]) -> Netns {
    let ns = Netns::new(test);
    for s in sysctls {
        assert!(ns.exec(&["sysctl", "-qw", s]).status.success(), "{s}");
    }
    ns
}

fn ms(v: &Value) -> f64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}")) as f64 / MS
}

/// b. With tcp_fin_timeout=2, a client that closes first while the server
/// never does sits ~2 s in FIN_WAIT2, then its timewait socket expires.
#[test]
fn b_orphan_fin_wait2_lasts_tcp_fin_timeout() {
    if !kernel_tests_possible("b_fin_timeout") {
        return;
    }
    // The server never closes within the client's FIN_WAIT2 timeout.
    const HOLD_MS: u64 = 3500;
    let (run, ()) = Run::trace(
        "twb",
        &["net.ipv4.tcp_fin_timeout=2"],
        SCENARIO_WAIT,
        |r| r.has("ended"),
        |ns, port| client_closes_first(ns, port, "b", "second", HOLD_MS),
    );
    let entered = run.one("entered");
    assert_eq!(entered["substate"], "FIN_WAIT2");
    assert_eq!(entered["comm"], "tsp-b-cli");
    assert_eq!(entered["mode"], expected_timewait_mode().as_str());
    let ended = run.one("ended");
    assert_eq!(ended["cause"], "expired", "{ended}");
    assert_eq!(ended["mode"], expected_timewait_mode().as_str());
    assert_eq!(ended["substate"], "FIN_WAIT2");
    assert!(ended["time_wait_ns"].is_null());
    // At least tcp_fin_timeout, less what the mode can tell: the exact hook
    // times the timer itself; sock_diag reads its time left in whole
    // milliseconds of a timer that ticks in jiffies (10 ms at the coarsest
    // HZ). Less than the server's hold, or its FIN would have come first.
    let precision_ms = if expected_timewait_mode() == "fentry" { 0.0 } else { 10.0 + 1.0 };
    let fin_wait2 = ms(&ended["fin_wait2_ns"]);
    assert!((2000.0 - precision_ms..HOLD_MS as f64).contains(&fin_wait2), "FIN_WAIT2 lasted {fin_wait2} ms");
    assert!(run.timewait("fin_arrived").is_empty());
}

/// c. A server that closes ~300 ms after the client: ~300 ms of FIN_WAIT2,
/// then TIME_WAIT, at the moment the server's close sent its FIN.
#[test]
fn c_fin_after_300ms_then_time_wait() {
    if !kernel_tests_possible("c_fin_300ms") {
        return;
    }
    const HOLD_MS: u64 = 300;
    let (run, ()) = Run::trace(
        "twc",
        &[],
        SCENARIO_WAIT,
        |r| r.has("fin_arrived") && !r.transitions("LAST_ACK", "CLOSE").is_empty(),
        |ns, port| client_closes_first(ns, port, "c", "second", HOLD_MS),
    );
    assert_eq!(run.one("entered")["substate"], "FIN_WAIT2");
    let fin = run.one("fin_arrived");
    assert_eq!(fin["mode"], expected_timewait_mode().as_str());
    // The server's close is on the tracepoint: its FIN left then.
    let server_close = run.transitions("CLOSE_WAIT", "LAST_ACK");
    let close_at = ms(&server_close[0]["ts_ns"]);
    assert!(
        (ms(&fin["ts_ns"]) - close_at).abs() < 10.0,
        "FIN at {} vs close at {close_at}",
        ms(&fin["ts_ns"])
    );
    // The server held its half for its hold after the client's FIN came in
    // (its sleep against kernel timestamps: the emulated VM's clocks differ
    // by up to EXACT_MS).
    let client_fin_in = ms(&run.transitions("ESTABLISHED", "CLOSE_WAIT")[0]["ts_ns"]);
    assert!(
        close_at - client_fin_in >= HOLD_MS as f64 - EXACT_MS,
        "server closed {} ms after the FIN",
        close_at - client_fin_in
    );
    // FIN_WAIT2 ran from the client's FIN_WAIT1 -> FIN_WAIT2 to that FIN.
    let entered_fin_wait2 = ms(&run.transitions("FIN_WAIT1", "FIN_WAIT2")[0]["ts_ns"]);
    let fin_wait2 = ms(&fin["fin_wait2_ns"]);
    let on_the_tracepoint = close_at - entered_fin_wait2;
    assert!(
        (fin_wait2 - on_the_tracepoint).abs() < EXACT_MS,
        "FIN_WAIT2 {fin_wait2} ms vs {on_the_tracepoint} ms"
    );
    assert!(run.timewait("ended").is_empty(), "still in TIME_WAIT when the trace ends");
}

/// d. A client reconnecting from the same port (tcp_tw_reuse) takes over its
/// own TIME_WAIT: "reused", at the moment of the new connect().
#[test]
fn d_reuse_ends_time_wait_at_the_new_connect() {
    if !kernel_tests_possible("d_reuse") {
        return;
    }
    let is_reused = |e: &&Value| e["cause"] == "reused";
    let (run, local) = Run::trace(
        "twd",
        &["net.ipv4.tcp_tw_reuse=1"],
        SCENARIO_WAIT,
        |r| r.timewait("ended").iter().any(is_reused),
        |ns, port| {
            let local = unique_port();
            let addr = format!("127.0.0.1:{port}");
            let server = Peer::server(
                ns,
                "tsp-d-srv",
                &["server", "--listen", &addr, "--count", "2", "--close", "second"],
            );
            // Past tcp_tw_reuse_delay (1 s) before reconnecting.
            Peer::spawn(
                ns,
                "tsp-d-cli",
                false,
                &[
                    "client",
                    "--connect",
                    &addr,
                    "--count",
                    "2",
                    "--close",
                    "first",
                    "--pause-ms",
                    "1300",
                    "--bind-port",
                    &local.to_string(),
                ],
            )
            .finish();
            server.finish();
            local
        },
    );
    let reused: Vec<_> = run.timewait("ended").into_iter().filter(is_reused).collect();
    assert_eq!(reused.len(), 1, "{:#?}", run.rows);
    assert_eq!(reused[0]["sport"], local);
    assert_eq!(reused[0]["substate"], "TIME_WAIT");
    let connects = run.transitions("CLOSE", "SYN_SENT");
    assert_eq!(connects.len(), 2);
    // sock_diag mode dates it to the connect()'s SYN_SENT; the exact hook to
    // the deschedule a few microseconds later, inside the same connect().
    let after_connect = ms(&reused[0]["ts_ns"]) - ms(&connects[1]["ts_ns"]);
    assert!((0.0..EXACT_MS).contains(&after_connect), "reused {after_connect} ms after the second connect()");
    assert_eq!(reused[0]["mode"], expected_timewait_mode().as_str());
    // TIME_WAIT began when the server's FIN reached the client: after the
    // server sent it (its CLOSE_WAIT -> LAST_ACK), before the client's ACK
    // of it closed the server's socket (LAST_ACK -> CLOSE); both on the
    // tracepoint, so a slow loopback (a busy emulated VM) moves the bounds
    // with it. It ended at the second connect(), past the 1 s reuse delay.
    let sent = ms(&run.transitions("CLOSE_WAIT", "LAST_ACK")[0]["ts_ns"]);
    let acked = ms(&run.transitions("LAST_ACK", "CLOSE")[0]["ts_ns"]);
    let connect = ms(&connects[1]["ts_ns"]);
    let time_wait = ms(&reused[0]["time_wait_ns"]);
    assert!(time_wait >= 1000.0, "TIME_WAIT {time_wait} ms");
    let (shortest, longest) = (connect - acked - EXACT_MS, connect - sent + EXACT_MS);
    assert!(
        (shortest..=longest).contains(&time_wait),
        "TIME_WAIT {time_wait} ms, not in [{shortest}, {longest}] (FIN sent to connect, ACKed to connect)"
    );
}

/// e. An RST from the peer into a FIN_WAIT2 timewait socket kills it early.
#[test]
fn e_rst_kills_a_fin_wait2_timewait_socket() {
    if !kernel_tests_possible("e_rst") {
        return;
    }
    const HOLD_MS: u64 = 800;
    // Exact-mode kills are reported once no new connection claimed the
    // tuple for 3 s: the wait covers it. The server aborts (SO_LINGER 0)
    // after its hold, once the client's FIN is in: an RST into the client's
    // FIN_WAIT2 timewait socket.
    let (run, ()) = Run::trace(
        "twe",
        &[],
        SCENARIO_WAIT,
        |r| r.has("ended"),
        |ns, port| client_closes_first(ns, port, "e", "abort", HOLD_MS),
    );
    let entered = run.one("entered");
    let ended = run.one("ended");
    assert_eq!(ended["cause"], "killed", "{ended}");
    assert_eq!(ended["substate"], "FIN_WAIT2");
    let reset = run.transitions("CLOSE_WAIT", "CLOSE");
    assert_eq!(reset.len(), 1, "the server's abortive close");
    // The RST left the server's hold after the client's FIN came in (its
    // sleep against kernel timestamps: up to EXACT_MS apart in the emulated
    // VM), and after the handover.
    let reset_at = ms(&reset[0]["ts_ns"]);
    let client_fin_in = ms(&run.transitions("ESTABLISHED", "CLOSE_WAIT")[0]["ts_ns"]);
    assert!(
        reset_at - client_fin_in >= HOLD_MS as f64 - EXACT_MS,
        "RST {reset_at} ms, FIN in at {client_fin_in} ms"
    );
    assert!(reset_at > ms(&entered["ts_ns"]), "RST {reset_at} ms, entered {entered}");
    // Noticed at the first poll after the RST.
    let after_reset = ms(&ended["ts_ns"]) - reset_at;
    assert!(
        (0.0..=POLL_MS + poll_slack_ms()).contains(&after_reset),
        "killed {after_reset} ms after the RST"
    );
    if expected_timewait_mode() == "fentry" {
        let after_reset = ms(&ended["ts_ns"]) - ms(&reset[0]["ts_ns"]);
        assert!((0.0..EXACT_MS).contains(&after_reset), "killed {after_reset} ms after the RST was sent");
        assert_eq!(ended["mode"], "fentry");
    }
}

/// f. Left alone, TIME_WAIT expires after its fixed 60 s, or a little more:
/// the kernel's timer wheel files a 60 s timer with seconds of granularity
/// and fires it late (up to ~2 s at HZ=250, ~4 s at HZ=1000); meanwhile
/// sock_diag shows it with 0 ms left. The one slow test.
#[test]
fn f_time_wait_expires_after_60s() {
    if !kernel_tests_possible("f_expiry") {
        return;
    }
    let (run, ()) = Run::trace(
        "twf",
        &[],
        Duration::from_secs(65) + SCENARIO_WAIT,
        |r| r.has("ended"),
        |ns, port| client_closes_first(ns, port, "f", "second", 0),
    );
    let ended = run.one("ended");
    assert_eq!(ended["cause"], "expired", "{ended}");
    assert_eq!(ended["substate"], "TIME_WAIT");
    let time_wait = ms(&ended["time_wait_ns"]);
    assert!((59_900.0..=64_500.0).contains(&time_wait), "TIME_WAIT {time_wait} ms");
    assert_eq!(ended["comm"], "tsp-f-cli");
}

/// e. An RST into TIME_WAIT kills it (tcp_rfc1337=0, the default): the old
/// peer connects back on the same 4-tuple, the timewait socket answers its
/// SYN with an ACK, and the peer's reply to that is an in-window RST.
#[test]
fn e_rst_into_time_wait_kills_it() {
    if !kernel_tests_possible("e_rst_time_wait") {
        return;
    }
    let (run, client_port) = Run::trace(
        "twe2",
        &[],
        SCENARIO_WAIT,
        |r| r.has("ended"),
        |ns, port| {
            let client_port = unique_port();
            let addr = format!("127.0.0.1:{port}");
            let server = Peer::server(ns, "tsp-e2-srv", &["server", "--listen", &addr, "--close", "second"]);
            Peer::spawn(
                ns,
                "tsp-e2-cli",
                false,
                &["client", "--connect", &addr, "--close", "first", "--bind-port", &client_port.to_string()],
            )
            .finish();
            server.finish();
            // Let a poll see it in TIME_WAIT, then connect back from the
            // server's port.
            std::thread::sleep(Duration::from_millis(5 * POLL_MS as u64));
            let back = format!("127.0.0.1:{client_port}");
            // Its connect fails once the RST has gone out; only the RST matters.
            let _ = Peer::spawn(
                ns,
                "tsp-e2-rst",
                false,
                &[
                    "client",
                    "--connect",
                    &back,
                    "--close",
                    "first",
                    "--bind-port",
                    &port.to_string(),
                    "--timeout",
                    "3",
                ],
            )
            .exit_status();
            client_port
        },
    );
    // The client's timewait socket starts in FIN_WAIT2 or, if the server's
    // FIN came first, in TIME_WAIT; either way it is in TIME_WAIT when the
    // SYN comes.
    let entered = run.one("entered");
    assert!(entered["substate"] == "TIME_WAIT" || run.has("fin_arrived"), "{:#?}", run.rows);
    let ended = run.one("ended");
    assert_eq!(ended["cause"], "killed", "{ended}");
    assert_eq!(ended["substate"], "TIME_WAIT");
    assert_eq!(ended["sport"], client_port);
    // Noticed at the first poll after the SYN that drew the RST.
    let syn_at = run
        .rows
        .iter()
        .find(|r| r["kind"] == "transition" && r["comm"] == "tsp-e2-rst")
        .map(|r| ms(&r["ts_ns"]));
    let syn_at = syn_at.expect("the connect back is on the tracepoint");
    let after = ms(&ended["ts_ns"]) - syn_at;
    let bound = if expected_timewait_mode() == "fentry" { EXACT_MS } else { POLL_MS + poll_slack_ms() };
    assert!((0.0..=bound).contains(&after), "killed {after} ms after the SYN: {:#?}", run.rows);
}

/// g. A reset after the active closer's FIN (its socket still open after
/// `shutdown`) closes it from a FIN state with ECONNRESET: no timewait
/// socket is made, and none is looked for.
#[test]
fn g_reset_after_the_fin_is_not_a_handover() {
    if !kernel_tests_possible("g_reset_after_fin") {
        return;
    }
    let client_close = |r: &Run| -> Vec<Value> {
        r.rows
            .iter()
            .filter(|t| t["kind"] == "transition" && t["comm"] == "tsp-g-cli" && t["new_state"] == "CLOSE")
            .cloned()
            .collect()
    };
    let closed = |r: &Run| client_close(r).len() == 1 && r.transitions("CLOSE_WAIT", "CLOSE").len() == 1;
    let (run, ()) = Run::trace("twg", &[], SCENARIO_WAIT, closed, |ns, port| {
        let addr = format!("127.0.0.1:{port}");
        let server = Peer::server(ns, "tsp-g-srv", &["server", "--listen", &addr, "--close", "abort-second"]);
        Peer::spawn(ns, "tsp-g-cli", false, &["client", "--connect", &addr, "--close", "half-close"])
            .finish();
        server.finish();
    });
    let close = &client_close(&run)[0];
    assert!(["FIN_WAIT1", "FIN_WAIT2"].contains(&close["old_state"].as_str().unwrap()), "{close}");
    assert_eq!(close["close"], "active", "{close}");
    assert_eq!(close["error"], "ECONNRESET", "{close}");
    assert_eq!(close["handover"], false, "{close}");
    assert!(run.rows.iter().all(|r| r["kind"] != "timewait"), "no timewait socket: {:#?}", run.rows);
}

/// h. `stats` says what the timewait sockets reached: with
/// tcp_fin_timeout=2 and a server that closes only after it, the client's
/// connection is handed to a timewait socket that expires in FIN_WAIT2 and
/// never reaches TIME_WAIT. (2 s, as in b: the timewait socket must be
/// polled at least once while it lives, on a slow machine too.)
#[test]
fn h_stats_counts_what_the_timewait_socket_reached() {
    if !kernel_tests_possible("h_reached") {
        return;
    }
    // The server never closes within the client's FIN_WAIT2 timeout.
    const HOLD_MS: u64 = 3500;
    let report = rerun_if_transitions_lost("twh", || {
        let ns = ns_with("twh", &["net.ipv4.tcp_fin_timeout=2"]);
        let port = unique_port();
        let p = port.to_string();
        let stats = CommandRun::start(&["stats", "--json", "--port", &p, "--tw-poll", "100ms"]);
        client_closes_first(&ns, port, "h", "second", HOLD_MS);
        // The server closed after its hold, past the timewait socket's end.
        let out = stats.stop();
        let lost = out.lost();
        let report: Value = serde_json::from_str(out.stdout.lines().last().expect("a report")).expect("JSON");
        ((report, ns.inode()), lost)
    });
    let (report, netns) = report;
    // TcpExt is per namespace: the test's own counted the timewait socket
    // when the kernel made it, under TWKilled (a timer of 4 s or less).
    let tcpext = report["tcpext"].as_array().expect("tcpext");
    let ours = tcpext.iter().find(|n| n["netns"] == netns).unwrap_or_else(|| panic!("{tcpext:#?}"));
    assert_eq!(ours["counters"]["TWKilled"], 1, "{ours:#}");
    assert_eq!(ours["counters"]["TW"], 0, "{ours:#}");
    assert_eq!(ours["own"], false);
    assert!(tcpext[0]["own"] == true, "tcpstate's own namespace first: {tcpext:#?}");
    assert_eq!(report["time_wait"]["total"], 1, "{report:#}");
    let ends = &report["timewait_ends"];
    assert_eq!(ends["ended_in"]["fin_wait2"], 1, "{ends:#}");
    assert_eq!(ends["ended_in"]["time_wait"], 0, "{ends:#}");
    assert_eq!(ends["total"]["expired"], 1, "{ends:#}");
    assert_eq!(ends["total"]["unobserved"], 0, "{ends:#}");
    assert_eq!(ends["in_timewait_now"], 0, "{ends:#}");
}
