//! `tcpstate stats` and `tcpstate top` against the real kernel, with known
//! numbers.

use std::{collections::BTreeMap, time::Duration};

use serde_json::Value;
use tcpstate_tests::*;

/// Rows of a ranked table as (comm, value of `field`).
fn by_comm(table: &Value, field: &str) -> Vec<(String, u64)> {
    let mut rows: Vec<_> = table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["comm"].as_str().unwrap_or("?").to_string(), r[field].as_u64().unwrap()))
        .filter(|(_, n)| *n > 0)
        .collect();
    rows.sort();
    rows
}

/// A makes 20 connections and closes each first; B makes 10 that S closes
/// first; C makes 5 and aborts them. `stats` and `top` watch the same run.
#[test]
fn fixed_scenario_counts_sides_and_time_wait_producers() {
    if !kernel_tests_possible("fixed_scenario") {
        return;
    }
    let (report, top_docs, text, (pa, ps), netns) = rerun_if_transitions_lost("fixed_scenario", || {
        let ns = Netns::new("agg");
        let (pa, ps, pc) = (unique_port(), unique_port(), unique_port());
        let ports = format!("{pa},{ps},{pc}");
        // All three attach before the traffic, and end once it is over.
        let common = ["--port", ports.as_str()];
        let stats = CommandRun::start(&[&["stats", "--json"][..], &common].concat());
        let top_json = CommandRun::start(&[&["top", "--json", "--interval", "1"][..], &common].concat());
        let top_text = CommandRun::start(&[&["top", "--interval", "1"][..], &common].concat());

        let (a_addr, s_addr, c_addr) =
            (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{ps}"), format!("127.0.0.1:{pc}"));
        let servers = [
            Peer::server(
                &ns,
                "tsp-srv-a",
                &["server", "--listen", &a_addr, "--count", "20", "--close", "second"],
            ),
            Peer::server(&ns, "tsp-s", &["server", "--listen", &s_addr, "--count", "10", "--close", "first"]),
            Peer::server(
                &ns,
                "tsp-srv-c",
                &["server", "--listen", &c_addr, "--count", "5", "--close", "second"],
            ),
        ];
        let clients = [
            Peer::spawn(
                &ns,
                "tsp-a",
                false,
                &["client", "--connect", &a_addr, "--count", "20", "--close", "first"],
            ),
            Peer::spawn(
                &ns,
                "tsp-b",
                false,
                &["client", "--connect", &s_addr, "--count", "10", "--close", "second"],
            ),
            Peer::spawn(
                &ns,
                "tsp-c",
                false,
                &["client", "--connect", &c_addr, "--count", "5", "--close", "abort"],
            ),
        ];
        for peer in clients.into_iter().chain(servers) {
            peer.finish();
        }
        ns.wait_until_quiet();
        // Each top has shown a periodic view before its final one.
        let refreshes = Duration::from_secs(10);
        assert!(top_json.wait_for_stdout(refreshes, |o| o.lines().count() >= 1), "top --json shows nothing");
        assert!(
            top_text.wait_for_stdout(refreshes, |o| o.contains("--- tcpstate top ")),
            "top shows nothing"
        );
        let (stats, top_json, top_text) = (stats.stop(), top_json.stop(), top_text.stop());
        let lost = [&stats, &top_json, &top_text].iter().map(|f| f.lost()).fold(Lost::default(), Lost::max);
        let report: Value = serde_json::from_str(&stats.stdout).expect("one JSON document");
        let top_docs: Vec<Value> =
            top_json.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        ((report, top_docs, top_text.stdout, (pa, ps), ns.inode()), lost)
    });
    let tw = &report["time_wait"];
    assert_eq!(tw["total"], 30, "{tw}");
    assert_eq!(by_comm(&tw["by_process"], "count"), [("tsp-a".into(), 20), ("tsp-s".into(), 10)]);
    // The clients of A close first, from ephemeral ports: one row of 20;
    // the one server that closes first, on its own port: 10 from there.
    assert_eq!(
        tw["by_local_port"]["rows"],
        serde_json::json!([{"port": null, "count": 20}, {"port": ps, "count": 10}])
    );
    // By remote: A's clients went to A's port; S's TIME_WAITs are held
    // against its clients, whose ports are one row.
    assert_eq!(
        tw["by_remote"]["rows"],
        serde_json::json!([
            {"addr": "127.0.0.1", "port": pa, "count": 20},
            {"addr": "127.0.0.1", "port": null, "count": 10}
        ])
    );

    let closes = &report["closes"];
    assert_eq!(
        closes["total"],
        serde_json::json!({"active": 30, "passive": 30, "simultaneous": 0, "reset": 10})
    );
    assert_eq!(closes["unknown"], 0);
    let by_process = &closes["by_process"];
    assert_eq!(by_comm(by_process, "active"), [("tsp-a".into(), 20), ("tsp-s".into(), 10)]);
    assert_eq!(by_comm(by_process, "passive"), [("tsp-b".into(), 10), ("tsp-srv-a".into(), 20)]);
    assert_eq!(by_comm(by_process, "reset"), [("tsp-c".into(), 5), ("tsp-srv-c".into(), 5)]);
    assert_eq!(by_comm(&closes["by_comm"], "active"), [("tsp-a".into(), 20), ("tsp-s".into(), 10)]);

    let transitions = report["transitions"].as_array().unwrap();
    let count = |old: &str, new: &str| {
        transitions
            .iter()
            .find(|t| t["old"] == old && t["new"] == new)
            .map_or(0, |t| t["count"].as_u64().unwrap())
    };
    assert_eq!(count("ESTABLISHED", "FIN_WAIT1"), 30);
    assert_eq!(count("ESTABLISHED", "CLOSE_WAIT"), 30);
    assert_eq!(count("ESTABLISHED", "CLOSE"), 10);
    assert_eq!(count("CLOSE", "SYN_SENT"), 35);
    assert_eq!(report["losses"]["events_dropped"], 0);
    assert_eq!(report["sockets"]["followed"], 0, "every socket closed");
    assert!(report["time_in_state"].as_array().unwrap().iter().any(|d| d["state"] == "ESTABLISHED"));
    assert_eq!(report["lifetime"]["count"], 70);
    // The kernel's own TIME_WAIT counters, over the session, in the test's
    // namespace: it made the 30 timewait sockets (60 s timers: TW).
    let tcpext = report["tcpext"].as_array().unwrap();
    let ours = tcpext.iter().find(|n| n["netns"] == netns).unwrap_or_else(|| panic!("{tcpext:#?}"));
    let keys: Vec<&str> = ours["counters"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["TCPAbortOnData", "TCPTimeWaitOverflow", "TW", "TWKilled", "TWRecycled"]);
    assert_eq!(ours["counters"]["TW"], 30, "{ours:#}");
    assert_eq!(ours["counters"]["TWKilled"], 0, "{ours:#}");
    assert_eq!(ours["since_start"], true, "{ours:#}");

    assert_eq!(report["losses"]["sockets_with_missed_transitions"], 0);
    assert_eq!(report["losses"]["sockets_evicted"], 0);
    // What the report came from.
    let session = &report["session"];
    assert_eq!(session["tool"], "tcpstate");
    let version = std::process::Command::new(tcpstate_exe()).arg("--version").output().unwrap();
    let version = String::from_utf8(version.stdout).unwrap();
    assert_eq!(version.trim(), format!("tcpstate {}", session["version"].as_str().unwrap()));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(session["kernel"], release.trim());
    let ports: Vec<u16> = session["filters"]["port"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ports.len(), 3, "{session}");
    let time = |key: &str| humantime::parse_rfc3339(session[key].as_str().unwrap()).unwrap();
    assert!(time("started") < time("ended"), "{session}");
    // Client ports from the ephemeral range are one row of the LPORT table.
    let lports = report["closes"]["by_local_port"]["rows"].as_array().unwrap();
    assert!(lports.iter().any(|r| r["port"].is_null() && r["passive"] == 10), "{lports:#?}");
    assert!(lports.len() <= 4, "three servers and the clients' ephemeral ports: {lports:#?}");

    // top, off a terminal, ends with a document holding the same numbers.
    assert!(top_docs.len() >= 2, "a periodic one and a final one: {}", top_docs.len());
    let last = top_docs.last().unwrap();
    for key in ["time_wait", "closes", "transitions"] {
        assert_eq!(last[key], report[key], "{key} differs between top and stats");
    }
    // The socket table holds every TCP socket each program saw, the
    // parallel tests' too, read at different moments: compare the rest.
    for key in ["by_state", "followed", "untracked", "table_capacity"] {
        assert_eq!(
            last["sockets"][key], report["sockets"][key],
            "sockets.{key} differs between top and stats"
        );
    }
    // Each tracer takes its own timestamps, so compare the distributions'
    // counts, not their nanoseconds.
    let counts = |doc: &Value| -> Vec<(Value, Value)> {
        doc["time_in_state"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["state"].clone(), d["count"].clone()))
            .collect()
    };
    assert_eq!(counts(last), counts(&report));
    assert_eq!(last["lifetime"]["count"], report["lifetime"]["count"]);
    assert_eq!(last["losses"]["events_received"], report["losses"]["events_received"]);
    assert!(last["rates"].is_array());

    let blocks: Vec<&str> = text.split("--- tcpstate top ").filter(|b| !b.is_empty()).collect();
    assert!(blocks.len() >= 2, "{text}");
    let final_block = blocks.last().unwrap();
    assert!(final_block.contains("TIME_WAIT producers: 30 connections"), "{final_block}");
    let row = |comm: &str| {
        final_block
            .lines()
            .find(|l| l.contains(comm) && l.trim_end().ends_with(char::is_numeric))
            .map(str::to_string)
    };
    assert!(row("tsp-a").unwrap().trim_end().ends_with(" 20"), "{final_block}");
}

/// The time in FIN_WAIT2 of a connection handed to a timewait socket is
/// complete once a poll sees it in TIME_WAIT. With polls an hour apart, only
/// the first batch is polled during the run; the second must still be in the
/// final report, through the poll made on the way out.
#[test]
fn the_final_report_polls_once_more() {
    if !kernel_tests_possible("final_poll") {
        return;
    }
    const FIRST: u64 = 1;
    const SECOND: u64 = 4;
    let fin_wait2_count = |doc: &Value| {
        doc["time_in_state"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["state"] == "FIN_WAIT2"))
            .map_or(0, |d| d["count"].as_u64().unwrap())
    };
    let last = rerun_if_transitions_lost("final_poll", || {
        let ns = Netns::new("fpoll");
        let port = unique_port();
        let port_arg = port.to_string();
        let top = CommandRun::start(&[
            "top",
            "--json",
            "--interval",
            "1",
            "--tw-poll",
            "3600",
            "--port",
            &port_arg,
        ]);
        let addr = format!("127.0.0.1:{port}");
        let batch = |n: u64| {
            let n = n.to_string();
            let server = Peer::server(
                &ns,
                "tsp-fp-srv",
                &["server", "--listen", &addr, "--count", &n, "--close", "second"],
            );
            let client = Peer::spawn(
                &ns,
                "tsp-fp",
                false,
                &["client", "--connect", &addr, "--count", &n, "--close", "first"],
            );
            client.finish();
            server.finish();
        };
        batch(FIRST);
        // The first poll is due at once: a periodic view shows it made.
        let polled = |o: &str| {
            o.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|d| fin_wait2_count(&d) == FIRST)
        };
        assert!(top.wait_for_stdout(scaled(Duration::from_secs(30)), polled), "the first poll never showed");
        batch(SECOND);
        ns.wait_until_quiet();
        let finished = top.stop();
        let lost = finished.lost();
        let last: Value = serde_json::from_str(finished.stdout.lines().last().unwrap()).unwrap();
        (last, lost)
    });
    assert_eq!(last["time_wait"]["total"], FIRST + SECOND, "{last}");
    assert_eq!(fin_wait2_count(&last), FIRST + SECOND, "{last}");
}

/// Owners in two cgroups the test makes, one named as docker names a
/// container's scope, one as a systemd service: `stats` ranks TIME_WAIT
/// producers and close sides by them, and `trace` names them.
#[test]
fn producers_by_container() {
    if !kernel_tests_possible("by_container") {
        return;
    }
    assert!(cgroup2_root().is_some(), "no cgroup2 mount");
    const N: u64 = 6;
    let id = format!("{:016x}", u64::from(std::process::id()) << 20 | 0xc0ffee).repeat(4);
    let container = TestCgroup::new("bycont", &format!("docker-{id}.scope"));
    let service = TestCgroup::new("bycont", "tsp-web.service");
    let (report, rows, selected) = rerun_if_transitions_lost("by_container", || {
        let ns = Netns::new("bycont");
        let port = unique_port().to_string();
        let stats = CommandRun::start(&["stats", "--json", "--port", &port]);
        let trace = CommandRun::start(&["trace", "--json", "--no-timewait", "--port", &port]);
        // Filtered in the kernel to the container's owners.
        let only = CommandRun::start(&[
            "trace",
            "--json",
            "--no-timewait",
            "--port",
            &port,
            "--cgroup",
            container.relative.as_str(),
        ]);
        close_first_across_cgroups(&ns, (&container, &service), "tsp-bc", &port, N);
        let (stats, trace, only) = (stats.stop(), trace.stop(), only.stop());
        let lost = stats.lost().max(trace.lost()).max(only.lost());
        let report: Value = serde_json::from_str(&stats.stdout).expect("one JSON document");
        let parse = |text: &str| -> Vec<Value> {
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .filter(|r| r["kind"] == "transition")
                .collect()
        };
        ((report, parse(&trace.stdout), parse(&only.stdout)), lost)
    });
    let short = &id[..12];
    let tw = &report["time_wait"]["by_container"];
    assert_eq!(tw["rows"], serde_json::json!([{"container": short, "count": N}]), "{tw}");
    let closes: Vec<(String, u64, u64)> = report["closes"]["by_container"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["container"].as_str().unwrap_or("-").to_string(),
                r["active"].as_u64().unwrap(),
                r["passive"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(closes.contains(&(short.to_string(), N, 0)), "{closes:?}");
    assert!(closes.contains(&("tsp-web.service".to_string(), 0, N)), "{closes:?}");

    // trace: the client's connects carry the container, the server's
    // listener the service.
    let connects: Vec<&Value> =
        rows.iter().filter(|r| r["comm"] == "tsp-bc-cli" && r["new_state"] == "SYN_SENT").collect();
    assert_eq!(connects.len() as u64, N);
    for r in connects {
        assert_eq!(r["cgroup"], container.relative.as_str(), "{r}");
        assert_eq!(r["container"], serde_json::json!({"id": id, "runtime": "docker", "pod_uid": null}));
    }
    let listen = rows.iter().find(|r| r["new_state"] == "LISTEN").expect("the server's listen");
    assert_eq!(listen["cgroup"], service.relative.as_str());
    assert_eq!(listen["container"]["runtime"], "systemd");

    // --cgroup: the container's sockets, every transition of them, and
    // none of the service's (its accepted sockets inherit its listener's).
    assert!(selected.iter().all(|r| r["cgroup"] == container.relative.as_str()), "{selected:#?}");
    let client_rows =
        rows.iter().filter(|r| r["comm"] == "tsp-bc-cli" && r["cgroup"] == container.relative.as_str());
    assert_eq!(selected.len(), client_rows.count(), "{selected:#?}");
    let connects = selected.iter().filter(|r| r["new_state"] == "SYN_SENT").count() as u64;
    assert_eq!(connects, N);
}

/// A server that holds each connection in CLOSE_WAIT for 200 ms.
#[test]
fn close_wait_hold_is_measured() {
    if !kernel_tests_possible("close_wait_hold") {
        return;
    }
    const HOLD_MS: u64 = 200;
    const CONNECTIONS: usize = 6;
    let (report, traced) = rerun_if_transitions_lost("close_wait_hold", || {
        let ns = Netns::new("hold");
        let port = unique_port();
        let addr = format!("127.0.0.1:{port}");
        let p = port.to_string();
        let stats = CommandRun::start(&["stats", "--json", "--port", &p]);
        // The same connections, one by one, to check the kernel's histogram.
        let trace = CommandRun::start(&["trace", "--json", "--no-timewait", "--port", &p]);
        let n = CONNECTIONS.to_string();
        let server = Peer::server(
            &ns,
            "tsp-hold",
            &[
                "server",
                "--listen",
                &addr,
                "--count",
                &n,
                "--close",
                "second",
                "--hold-ms",
                &HOLD_MS.to_string(),
            ],
        );
        // A pause longer than the hold, so no connection waits in the backlog.
        Peer::spawn(
            &ns,
            "tsp-cli",
            false,
            &["client", "--connect", &addr, "--count", &n, "--close", "first", "--pause-ms", "300"],
        )
        .finish();
        server.finish();
        ns.wait_until_quiet();
        let (stats, trace) = (stats.stop(), trace.stop());
        let lost = stats.lost().max(trace.lost());
        let report: Value = serde_json::from_str(&stats.stdout).unwrap();
        let mut traced: Vec<f64> = trace
            .stdout
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["old_state"] == "CLOSE_WAIT")
            .map(|r| r["in_old_state_ns"].as_u64().unwrap() as f64 / 1e6)
            .collect();
        traced.sort_by(f64::total_cmp);
        ((report, traced), lost)
    });
    let close_wait =
        report["time_in_state"].as_array().unwrap().iter().find(|d| d["state"] == "CLOSE_WAIT").cloned();
    let close_wait = close_wait.expect("CLOSE_WAIT measured");
    assert_eq!(close_wait["count"], CONNECTIONS);
    assert_eq!(traced.len(), CONNECTIONS);
    let ms = |field: &str| close_wait[field].as_u64().unwrap() as f64 / 1e6;
    // At least the hold; the kernel's extremes are exact, and bound its
    // bucketed percentiles.
    assert!(ms("min_ns") >= HOLD_MS as f64, "{close_wait}");
    assert!(ms("min_ns") <= ms("p50_ns") && ms("p50_ns") <= ms("max_ns"), "{close_wait}");
    // Each tracer's program takes its own timestamps of a transition, one
    // after the other: apart by scheduling noise only, which the emulated
    // test VM makes milliseconds. So the extremes agree within that, and
    // the median within a bucket (6.25 %) and that.
    const NOISE_MS: f64 = 20.0;
    assert!((ms("min_ns") - traced[0]).abs() < NOISE_MS, "{close_wait} vs {traced:?}");
    assert!((ms("max_ns") - traced[CONNECTIONS - 1]).abs() < NOISE_MS, "{close_wait} vs {traced:?}");
    let median = traced[(CONNECTIONS - 1) / 2];
    assert!((ms("p50_ns") - median).abs() <= median * 0.0625 + NOISE_MS, "{close_wait} vs {traced:?}");
    // Summary mode: the kernel aggregated, and streamed only the closes and
    // the two transitions a timewait socket's reuse shows in: 4 of the 10
    // transitions of each connection.
    let total: u64 =
        report["transitions"].as_array().unwrap().iter().map(|t| t["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 10 * CONNECTIONS as u64 + 2, "10 per connection, and the listener's two");
    // With the exact hooks, each timewait socket adds its making and the
    // FIN's arrival (it does not expire within the run).
    let hooks = if expected_timewait_mode() == "fentry" { CONNECTIONS * 2 } else { 0 };
    assert_eq!(report["losses"]["events_received"], CONNECTIONS * 4 + 1 + hooks, "and the listener's close");
    // Nothing is left open: the gauges came back to zero.
    assert_eq!(report["sockets"]["followed"], 0, "{}", report["sockets"]);
}

/// Opens `n` connections to a listener on `port` inside `ns`, all at once.
/// Every client shuts down its sending side and waits in FIN_WAIT2; then
/// every server closes, and each client hands over to a TIME_WAIT: `n`
/// TIME_WAITs whose owner, this test process, was named at its shutdown.
fn half_closed_connections(ns: &Netns, port: u16, n: usize) {
    use std::{
        io::Read as _,
        net::{Shutdown, TcpListener, TcpStream},
        os::fd::AsRawFd as _,
    };
    let path = format!("/run/netns/{}", ns.name);
    std::thread::spawn(move || {
        let file = std::fs::File::open(path).unwrap();
        // SAFETY: a valid fd; only this thread changes namespace.
        assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let pairs: Vec<(TcpStream, TcpStream)> = (0..n)
            .map(|_| {
                let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let (server, _) = listener.accept().unwrap();
                (client, server)
            })
            .collect();
        let timeout = Some(scaled(Duration::from_secs(10)));
        for (client, server) in &pairs {
            client.shutdown(Shutdown::Write).unwrap();
            server.set_read_timeout(timeout).unwrap();
            assert_eq!((&*server).read(&mut [0u8; 8]).unwrap(), 0);
        }
        for (client, server) in pairs {
            drop(server);
            client.set_read_timeout(timeout).unwrap();
            assert_eq!((&client).read(&mut [0u8; 8]).unwrap(), 0);
        }
    })
    .join()
    .unwrap();
}

/// A socket table far smaller than the sockets open at once evicts live
/// sockets: the report counts them, and they explain every TIME_WAIT
/// producer it could not name. The same traffic, watched with the default
/// table, loses nothing.
#[test]
fn evicted_sockets_are_counted_and_explain_unknown_owners() {
    if !kernel_tests_possible("evictions") {
        return;
    }
    // 300 sockets open at once, in a table of 64: the clients waiting in
    // FIN_WAIT2 are evicted, and their handovers to TIME_WAIT find no owner.
    const CONNECTIONS: usize = 150;
    let (tiny, default) = rerun_if_transitions_lost("evictions", || {
        let ns = Netns::new("evict");
        let port = unique_port();
        let p = port.to_string();
        let tiny =
            CommandRun::start(&["stats", "--json", "--no-timewait", "--port", &p, "--max-sockets", "64"]);
        let default = CommandRun::start(&["stats", "--json", "--no-timewait", "--port", &p]);
        half_closed_connections(&ns, port, CONNECTIONS);
        ns.wait_until_quiet();
        let (tiny, default) = (tiny.stop(), default.stop());
        // With evictions, a record updated in place can be reused for
        // another socket meanwhile, which then shows a gap it did not have;
        // and on the VM's 6.1 kernel the default table has reported gaps in
        // this scenario that are not understood yet (README, Limits).
        // Skipped hits mean lost transitions here; the exact counts asserted
        // below show whether any were lost otherwise.
        let lost = Lost { sockets_with_gaps: 0, ..default.lost().max(tiny.lost()) };
        let parse = |out: &Finished| -> Value { serde_json::from_str(&out.stdout).unwrap() };
        ((parse(&tiny), parse(&default)), lost)
    });
    let unknown_owners = |report: &Value| -> u64 {
        let rows = report["time_wait"]["by_process"]["rows"].as_array().unwrap();
        rows.iter().filter(|r| r["pid"].is_null()).map(|r| r["count"].as_u64().unwrap()).sum()
    };
    let ours = |report: &Value| -> u64 {
        let rows = report["time_wait"]["by_process"]["rows"].as_array().unwrap();
        rows.iter().filter(|r| r["pid"] == std::process::id()).map(|r| r["count"].as_u64().unwrap()).sum()
    };
    for report in [&tiny, &default] {
        assert_eq!(report["time_wait"]["total"], CONNECTIONS, "{report}");
        assert_eq!(report["losses"]["socket_insert_failed"], 0, "an LRU evicts rather than fails");
        assert_eq!(ours(report) + unknown_owners(report), CONNECTIONS as u64, "{report}");
    }
    let evicted = tiny["losses"]["sockets_evicted"].as_u64().unwrap();
    assert!(evicted > 0, "{}", tiny["losses"]);
    let unknown = unknown_owners(&tiny);
    assert!(unknown > 0 && unknown <= evicted, "{unknown} unknown owners, {evicted} sockets evicted");
    assert_eq!(tiny["sockets"]["table_capacity"], 64);
    assert!(tiny["sockets"]["table_entries"].as_u64().unwrap() <= 64);

    assert_eq!(default["losses"]["sockets_evicted"], 0, "{}", default["losses"]);
    assert_eq!(unknown_owners(&default), 0, "{default}");
    assert!(default["sockets"]["table_capacity"].as_u64().unwrap() >= 65536);
}

/// Connects that fail are a table of their own, by owner, destination and
/// error: here, refused by a port nobody listens on.
#[test]
fn failed_connects_by_process_and_destination() {
    if !kernel_tests_possible("failed_connects") {
        return;
    }
    const TRIES: u32 = 3;
    let (report, port) = rerun_if_transitions_lost("failed_connects", || {
        let ns = Netns::new("failcon");
        let port = unique_port();
        let p = port.to_string();
        let stats = CommandRun::start(&["stats", "--json", "--port", &p]);
        let addr = format!("127.0.0.1:{port}");
        for _ in 0..TRIES {
            let status =
                Peer::spawn(&ns, "tsp-refused", false, &["client", "--connect", &addr, "--close", "first"])
                    .exit_status();
            assert!(!status.success(), "nothing listens on {addr}");
        }
        let out = stats.stop();
        let lost = out.lost();
        let report: serde_json::Value = serde_json::from_str(out.stdout.lines().last().unwrap()).unwrap();
        ((report, port), lost)
    });
    let failed = &report["failed_connects"];
    assert_eq!(failed["total"], TRIES, "{failed:#}");
    // One row per connecting process (each tried once).
    let rows = failed["rows"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), TRIES as usize, "{failed:#}");
    for row in rows {
        assert_eq!(row["comm"], "tsp-refused", "{row}");
        assert_eq!(row["port"], port, "{row}");
        assert_eq!(row["error"], "ECONNREFUSED", "{row}");
        assert_eq!(row["count"], 1, "{row}");
    }
    assert_eq!(report["time_wait"]["total"], 0);
}

/// A recording (`trace --json`) reported later (`stats --from`) says what
/// `stats` said live about the same traffic: the same counts; percentiles
/// within the replay's histogram precision (±1 %) of the recorded
/// durations; and, for states long enough that the two tracers' own
/// timestamps cannot matter, within the live histogram's (±6.25 %).
#[test]
fn a_recording_reports_as_stats_did_live() {
    if !kernel_tests_possible("recording_round_trip") {
        return;
    }
    let (live, recorded, lines) = rerun_if_transitions_lost("recording_round_trip", || {
        let ns = Netns::new("record");
        let (pa, ps) = (unique_port(), unique_port());
        let ports = format!("{pa},{ps}");
        let stats = CommandRun::start(&["stats", "--json", "--port", &ports]);
        let trace = CommandRun::start(&["trace", "--json", "--port", &ports]);
        let (a, s) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{ps}"));
        // A's server answers each client's FIN 20 ms later (CLOSE_WAIT and
        // the client's FIN_WAIT2); S's server closes first 30 ms after
        // accepting (ESTABLISHED).
        let servers = [
            Peer::server(
                &ns,
                "tsp-rec-a",
                &["server", "--listen", &a, "--count", "12", "--close", "second", "--hold-ms", "20"],
            ),
            Peer::server(
                &ns,
                "tsp-rec-s",
                &["server", "--listen", &s, "--count", "6", "--close", "first", "--hold-ms", "30"],
            ),
        ];
        let clients = [
            Peer::spawn(
                &ns,
                "tsp-rec-ca",
                false,
                &["client", "--connect", &a, "--count", "12", "--close", "first"],
            ),
            Peer::spawn(
                &ns,
                "tsp-rec-cs",
                false,
                &["client", "--connect", &s, "--count", "6", "--close", "second"],
            ),
        ];
        for peer in clients.into_iter().chain(servers) {
            peer.finish();
        }
        ns.wait_until_quiet();
        let (stats, trace) = (stats.stop(), trace.stop());
        let lost = stats.lost().max(trace.lost());
        let recording = std::env::temp_dir().join(format!("tcpstate-recording-{}.jsonl", std::process::id()));
        std::fs::write(&recording, &trace.stdout).unwrap();
        let replayed = CommandRun::run_to_end(&["stats", "--json", "--from", recording.to_str().unwrap()]);
        let _ = std::fs::remove_file(&recording);
        let live: Value = serde_json::from_str(&stats.stdout).expect("stats: one JSON document");
        let recorded: Value = serde_json::from_str(&replayed.stdout)
            .unwrap_or_else(|e| panic!("stats --from: {e}: {replayed:?}"));
        let lines: Vec<Value> = trace.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        ((live, recorded, lines), lost)
    });
    for key in ["time_wait", "closes", "failed_connects", "transitions"] {
        assert_eq!(recorded[key], live[key], "{key}");
    }
    assert_eq!(recorded["time_wait"]["total"], 18, "{:#}", recorded["time_wait"]);
    assert_eq!(recorded["timewait_ends"]["in_timewait_now"], live["timewait_ends"]["in_timewait_now"]);
    assert_eq!(recorded["lifetime"]["count"], live["lifetime"]["count"]);
    assert_eq!(recorded["session"]["filters"], live["session"]["filters"]);
    let distributions = |doc: &Value| -> BTreeMap<String, Value> {
        doc["time_in_state"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["state"].as_str().unwrap().to_string(), d.clone()))
            .collect()
    };
    let (live_d, recorded_d) = (distributions(&live), distributions(&recorded));
    assert_eq!(live_d.keys().collect::<Vec<_>>(), recorded_d.keys().collect::<Vec<_>>());

    // The replay against the recorded durations themselves: the value at
    // each rank, as HdrHistogram reports it (its bucket's top: within 1 %,
    // in steps of 512 ns below 64 µs; values under 1 µs count as 1 µs).
    // FIN_WAIT2 is left out: a handover's is recorded whole from its
    // timewait socket's events.
    let mut recorded_ns: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for t in lines.iter().filter(|l| l["kind"] == "transition" && l["gap"] == false) {
        if let Some(ns) = t["in_old_state_ns"].as_u64() {
            recorded_ns.entry(t["old_state"].as_str().unwrap().to_string()).or_default().push(ns.max(1_000));
        }
    }
    for (state, mut values) in recorded_ns.into_iter().filter(|(s, _)| s != "FIN_WAIT2") {
        values.sort_unstable();
        let r = &recorded_d[&state];
        assert_eq!(r["count"], values.len(), "{state}");
        for (q, key) in [(0.5, "p50_ns"), (0.9, "p90_ns")] {
            let rank = ((q * values.len() as f64).ceil() as usize).max(1);
            let exact = values[rank - 1] as f64;
            let reported = r[key].as_f64().unwrap();
            let bucket = (exact / 100.0).max(512.0);
            assert!((exact..=exact + bucket).contains(&reported), "{state} {key}: {reported} for {exact}");
        }
    }

    // Live against the replay, where a state lasted long enough: both are
    // their buckets' tops (±6.25 % live, ±1 % replayed), and each tracer's
    // program takes its own timestamps at every hit, a program's run apart:
    // microseconds here, a hundred or more under emulation.
    let jitter_ns = scaled(Duration::from_micros(50)).as_nanos() as f64;
    let mut compared = 0;
    for (state, l) in &live_d {
        let r = &recorded_d[state];
        assert_eq!(r["count"], l["count"], "{state}");
        for q in ["p50_ns", "p90_ns"] {
            let (lv, rv) = (l[q].as_f64().unwrap(), r[q].as_f64().unwrap());
            if lv < 5e6 {
                continue;
            }
            compared += 1;
            assert!(
                (lv - rv).abs() <= 0.0725 * lv.max(rv) + jitter_ns,
                "{state} {q}: live {lv}, recorded {rv}"
            );
        }
    }
    assert!(compared >= 3, "the held states (CLOSE_WAIT, FIN_WAIT2, ESTABLISHED) were compared: {compared}");
}
