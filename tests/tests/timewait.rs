//! Following connections into their timewait sockets, against the real
//! kernel: each test sets the namespace's sysctls and drives one connection.

use serde_json::Value;
use tcpstate_tests::*;

const MS: f64 = 1e6;
/// How close exact (fentry) times must be to the event that caused them:
/// only scheduling noise, which the emulated test VM makes milliseconds.
const EXACT_MS: f64 = 20.0;

struct Run {
    rows: Vec<Value>,
}

impl Run {
    /// Traces `port` for `seconds` while `drive` runs the peers.
    fn trace(port: u16, seconds: f64, drive: impl FnOnce()) -> Self {
        let (p, d) = (port.to_string(), seconds.to_string());
        let run =
            CommandRun::start(&["trace", "--json", "--port", &p, "--duration", &d, "--tw-poll", "100ms"]);
        drive();
        let rows = run.output().lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
        Self { rows }
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
    let ns = ns_with("twb", &["net.ipv4.tcp_fin_timeout=2"]);
    let port = unique_port();
    let addr = format!("127.0.0.1:{port}");
    let run = Run::trace(port, 4.5, || {
        let server = Peer::server(
            &ns,
            "tsp-b-srv",
            &["server", "--listen", &addr, "--close", "second", "--hold-ms", "3500"],
        );
        Peer::spawn(&ns, "tsp-b-cli", false, &["client", "--connect", &addr, "--close", "first"]).finish();
        server.finish();
    });
    let entered = run.one("entered");
    assert_eq!(entered["substate"], "FIN_WAIT2");
    assert_eq!(entered["comm"], "tsp-b-cli");
    assert_eq!(entered["mode"], expected_timewait_mode().as_str());
    let ended = run.one("ended");
    assert_eq!(ended["cause"], "expired", "{ended}");
    assert_eq!(ended["mode"], expected_timewait_mode().as_str());
    assert_eq!(ended["substate"], "FIN_WAIT2");
    assert!(ended["time_wait_ns"].is_null());
    let fin_wait2 = ms(&ended["fin_wait2_ns"]);
    assert!((2000.0..=3500.0).contains(&fin_wait2), "FIN_WAIT2 lasted {fin_wait2} ms");
    assert!(run.timewait("fin_arrived").is_empty());
}

/// c. A server that closes ~300 ms after the client: ~300 ms of FIN_WAIT2,
/// then TIME_WAIT, at the moment the server's close sent its FIN.
#[test]
fn c_fin_after_300ms_then_time_wait() {
    if !kernel_tests_possible("c_fin_300ms") {
        return;
    }
    let ns = ns_with("twc", &[]);
    let port = unique_port();
    let addr = format!("127.0.0.1:{port}");
    let run = Run::trace(port, 2.0, || {
        let server = Peer::server(
            &ns,
            "tsp-c-srv",
            &["server", "--listen", &addr, "--close", "second", "--hold-ms", "300"],
        );
        Peer::spawn(&ns, "tsp-c-cli", false, &["client", "--connect", &addr, "--close", "first"]).finish();
        server.finish();
    });
    assert_eq!(run.one("entered")["substate"], "FIN_WAIT2");
    let fin = run.one("fin_arrived");
    assert_eq!(fin["mode"], expected_timewait_mode().as_str());
    let fin_wait2 = ms(&fin["fin_wait2_ns"]);
    assert!((280.0..=400.0).contains(&fin_wait2), "FIN_WAIT2 lasted {fin_wait2} ms");
    // The server's close is on the tracepoint: its FIN left then.
    let server_close = run.transitions("CLOSE_WAIT", "LAST_ACK");
    let close_at = ms(&server_close[0]["ts_ns"]);
    assert!(
        (ms(&fin["ts_ns"]) - close_at).abs() < 10.0,
        "FIN at {} vs close at {close_at}",
        ms(&fin["ts_ns"])
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
    let ns = ns_with("twd", &["net.ipv4.tcp_tw_reuse=1"]);
    let (port, local) = (unique_port(), unique_port());
    let addr = format!("127.0.0.1:{port}");
    let run = Run::trace(port, 3.0, || {
        let server = Peer::server(
            &ns,
            "tsp-d-srv",
            &["server", "--listen", &addr, "--count", "2", "--close", "second"],
        );
        // Past tcp_tw_reuse_delay (1 s) before reconnecting.
        Peer::spawn(
            &ns,
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
    });
    let reused: Vec<_> = run.timewait("ended").into_iter().filter(|e| e["cause"] == "reused").collect();
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
    let time_wait = ms(&reused[0]["time_wait_ns"]);
    assert!((1300.0..2500.0).contains(&time_wait), "TIME_WAIT {time_wait} ms");
}

/// e. An RST from the peer into a FIN_WAIT2 timewait socket kills it early.
#[test]
fn e_rst_kills_a_fin_wait2_timewait_socket() {
    if !kernel_tests_possible("e_rst") {
        return;
    }
    let ns = ns_with("twe", &[]);
    let port = unique_port();
    let addr = format!("127.0.0.1:{port}");
    // Exact-mode kills are reported once no new connection claimed the
    // tuple for 1 s.
    let run = Run::trace(port, 3.0, || {
        // The server aborts (SO_LINGER 0) 800 ms after the client's FIN: an
        // RST into the client's FIN_WAIT2 timewait socket.
        let server = Peer::server(
            &ns,
            "tsp-e-srv",
            &["server", "--listen", &addr, "--close", "abort", "--hold-ms", "800"],
        );
        Peer::spawn(&ns, "tsp-e-cli", false, &["client", "--connect", &addr, "--close", "first"]).finish();
        server.finish();
    });
    let entered = run.one("entered");
    let ended = run.one("ended");
    assert_eq!(ended["cause"], "killed", "{ended}");
    assert_eq!(ended["substate"], "FIN_WAIT2");
    let after = ms(&ended["ts_ns"]) - ms(&entered["ts_ns"]);
    // Noticed at the first poll after the RST (every 100 ms).
    assert!((750.0..=1100.0).contains(&after), "killed {after} ms after the handover");
    let reset = run.transitions("CLOSE_WAIT", "CLOSE");
    assert_eq!(reset.len(), 1, "the server's abortive close");
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
    let ns = ns_with("twf", &[]);
    let port = unique_port();
    let addr = format!("127.0.0.1:{port}");
    let run = Run::trace(port, 67.0, || {
        let server = Peer::server(&ns, "tsp-f-srv", &["server", "--listen", &addr, "--close", "second"]);
        Peer::spawn(&ns, "tsp-f-cli", false, &["client", "--connect", &addr, "--close", "first"]).finish();
        server.finish();
    });
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
    let ns = ns_with("twe2", &[]);
    let (port, client_port) = (unique_port(), unique_port());
    let addr = format!("127.0.0.1:{port}");
    let run = Run::trace(port, 2.5, || {
        let server = Peer::server(&ns, "tsp-e2-srv", &["server", "--listen", &addr, "--close", "second"]);
        Peer::spawn(
            &ns,
            "tsp-e2-cli",
            false,
            &["client", "--connect", &addr, "--close", "first", "--bind-port", &client_port.to_string()],
        )
        .finish();
        server.finish();
        // Let a poll see it in TIME_WAIT, then connect back from the server's port.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let back = format!("127.0.0.1:{client_port}");
        // Its connect fails once the RST has gone out; only the RST matters.
        let _ = Peer::spawn(
            &ns,
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
    });
    assert_eq!(run.one("entered")["substate"], "TIME_WAIT");
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
    let bound = if expected_timewait_mode() == "fentry" { EXACT_MS } else { 400.0 };
    assert!((0.0..=bound).contains(&after), "killed {after} ms after the SYN");
}
