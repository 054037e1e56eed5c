//! `tcpstate stats` and `tcpstate top` against the real kernel, with known
//! numbers.

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
    let ns = Netns::new("agg");
    let (pa, ps, pc) = (unique_port(), unique_port(), unique_port());
    let ports = format!("{pa},{ps},{pc}");
    // Long enough for the other two commands to start before the traffic
    // (seconds each in the emulated VM, where the exact hooks load too).
    let common = ["--port", ports.as_str(), "--duration", "8"];
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
        Peer::server(&ns, "tsp-srv-c", &["server", "--listen", &c_addr, "--count", "5", "--close", "second"]),
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

    let report: Value = serde_json::from_str(&stats.output()).expect("one JSON document");
    // Exact counts need every tracepoint hit: a heavily loaded machine can
    // make the kernel skip some, which tcpstate reports.
    assert_eq!(
        report["losses"]["tracepoint_hits_skipped"], 0,
        "the kernel skipped hits; counts would be short"
    );
    let tw = &report["time_wait"];
    assert_eq!(tw["total"], 30, "{tw}");
    assert_eq!(by_comm(&tw["by_process"], "count"), [("tsp-a".into(), 20), ("tsp-s".into(), 10)]);
    assert_eq!(tw["by_local_port"]["rows"][0], serde_json::json!({"port": ps, "count": 10}));

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
    // The kernel's own TIME_WAIT counters, over the session (tcpstate's namespace).
    let tcpext: Vec<&str> = report["tcpext"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(tcpext, ["TCPTimeWaitOverflow", "TW", "TWKilled", "TWRecycled"]);

    // top, off a terminal, ends with a document holding the same numbers.
    let top_docs: Vec<Value> = top_json.output().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(top_docs.len() >= 4, "one per second and a final one: {}", top_docs.len());
    let last = top_docs.last().unwrap();
    for key in ["time_wait", "closes", "transitions", "sockets"] {
        assert_eq!(last[key], report[key], "{key} differs between top and stats");
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

    let text = top_text.output();
    let blocks: Vec<&str> = text.split("--- tcpstate top ").filter(|b| !b.is_empty()).collect();
    assert!(blocks.len() >= 4, "{text}");
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

/// A server that holds each connection in CLOSE_WAIT for 200 ms.
#[test]
fn close_wait_hold_is_measured() {
    if !kernel_tests_possible("close_wait_hold") {
        return;
    }
    let ns = Netns::new("hold");
    let port = unique_port();
    let addr = format!("127.0.0.1:{port}");
    let stats = CommandRun::start(&["stats", "--json", "--port", &port.to_string(), "--duration", "4"]);
    let server = Peer::server(
        &ns,
        "tsp-hold",
        &["server", "--listen", &addr, "--count", "6", "--close", "second", "--hold-ms", "200"],
    );
    // A pause longer than the hold, so no connection waits in the backlog.
    Peer::spawn(
        &ns,
        "tsp-cli",
        false,
        &["client", "--connect", &addr, "--count", "6", "--close", "first", "--pause-ms", "300"],
    )
    .finish();
    server.finish();
    let report: Value = serde_json::from_str(&stats.output()).unwrap();
    let close_wait =
        report["time_in_state"].as_array().unwrap().iter().find(|d| d["state"] == "CLOSE_WAIT").cloned();
    let close_wait = close_wait.expect("CLOSE_WAIT measured");
    assert_eq!(close_wait["count"], 6);
    let ms = |field: &str| close_wait[field].as_u64().unwrap() as f64 / 1e6;
    assert!((200.0..=400.0).contains(&ms("p50_ns")), "CLOSE_WAIT p50 {} ms", ms("p50_ns"));
    // The kernel's extremes are exact, and bound its bucketed percentiles.
    assert!(ms("min_ns") >= 200.0 && ms("min_ns") <= ms("p50_ns") && ms("p50_ns") <= ms("max_ns"));
    // Summary mode: the kernel aggregated, and streamed only the closes and
    // the two transitions a timewait socket's reuse shows in: 4 of the 10
    // transitions of each connection.
    let total: u64 =
        report["transitions"].as_array().unwrap().iter().map(|t| t["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 60 + 2, "10 per connection, and the listener's two");
    // With the exact hooks, each timewait socket adds its making and the
    // FIN's arrival (it does not expire within the run).
    let hooks = if expected_timewait_mode() == "fentry" { 6 * 2 } else { 0 };
    assert_eq!(report["losses"]["events_received"], 6 * 4 + 1 + hooks, "and the listener's close");
    // Nothing is left open: the gauges came back to zero.
    assert_eq!(report["sockets"]["followed"], 0, "{}", report["sockets"]);
}
