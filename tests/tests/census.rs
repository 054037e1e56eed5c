//! `tcpstate census` and `tcpstate sysctl` against the real kernel, in a
//! namespace the test creates.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;
use tcpstate_tests::*;

const TIME_WAIT: usize = 5;
const ESTABLISHED: usize = 3;
const CLOSE_WAIT: usize = 4;

/// Builds a known set of sockets inside `ns` on a thread, keeps them until
/// told to stop, and returns when they are in place.
fn known_sockets(ns: &Netns, port: u16) -> (mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let path = format!("/run/netns/{}", ns.name);
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let handle = std::thread::spawn(move || {
        let file = std::fs::File::open(path).unwrap();
        // SAFETY: a valid fd; only this thread changes namespace.
        assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        // Another service, which `--port` must leave out.
        let other = TcpListener::bind(("127.0.0.1", port + 1000)).unwrap();
        let connect = || {
            let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (server, _) = listener.accept().unwrap();
            server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            (client, server)
        };
        // Client closes first, then the server: the client holds TIME_WAIT.
        for _ in 0..TIME_WAIT {
            let (client, mut server) = connect();
            drop(client);
            assert_eq!(server.read(&mut [0u8; 8]).unwrap(), 0);
        }
        // Open connections: both ends ESTABLISHED.
        let mut open: Vec<_> = (0..ESTABLISHED).map(|_| connect()).collect();
        for (client, _) in &mut open {
            client.write_all(b"x").unwrap();
        }
        // The client closes and the server never does: the server sits in
        // CLOSE_WAIT and the orphaned client in a FIN_WAIT2 timewait socket.
        let mut waiting = Vec::new();
        for _ in 0..CLOSE_WAIT {
            let (client, mut server) = connect();
            drop(client);
            assert_eq!(server.read(&mut [0u8; 8]).unwrap(), 0);
            waiting.push(server);
        }
        std::thread::sleep(Duration::from_millis(100));
        ready_tx.send(()).unwrap();
        let _ = stop_rx.recv_timeout(scaled(Duration::from_secs(60)));
        drop((open, waiting, listener, other));
    });
    ready_rx.recv_timeout(scaled(Duration::from_secs(10))).expect("sockets in place");
    (stop_tx, handle)
}

/// `ss -tan` in the namespace, counted per state under the kernel's names.
fn ss_counts(ns: &Netns) -> BTreeMap<String, u64> {
    let out = ns.exec(&["ss", "-tan"]);
    assert!(out.status.success());
    let mut counts = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
        let Some(state) = line.split_whitespace().next() else { continue };
        let name = match state {
            "ESTAB" => "ESTABLISHED".to_string(),
            "UNCONN" => continue,
            other => other.replace('-', "_").replace("WAIT_1", "WAIT1").replace("WAIT_2", "WAIT2"),
        };
        *counts.entry(name).or_default() += 1;
    }
    counts
}

fn states(doc: &Value) -> BTreeMap<String, u64> {
    doc["states"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap())).collect()
}

#[test]
fn census_counts_exactly_and_agrees_with_ss() {
    if !kernel_tests_possible("census_counts") {
        return;
    }
    let ns = Netns::new("census");
    // Loopback reuses TIME_WAIT 4-tuples by default (tcp_tw_reuse=2): a later
    // connect() could take one over and change the count.
    assert!(ns.exec(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=0"]).status.success());
    let port = unique_port();
    let started = std::time::Instant::now();
    let (stop, holder) = known_sockets(&ns, port);
    let census: Value =
        serde_json::from_str(&CommandRun::run_to_end(&["census", "--netns", &ns.name, "--json"]).stdout)
            .unwrap();
    let ss = ss_counts(&ns);
    let by_process: Value = serde_json::from_str(
        &CommandRun::run_to_end(&["census", "--netns", &ns.name, "--json", "--by", "process"]).stdout,
    )
    .unwrap();
    let by_cgroup: Value = serde_json::from_str(
        &CommandRun::run_to_end(&["census", "--netns", &ns.name, "--json", "--by", "cgroup"]).stdout,
    )
    .unwrap();
    let text = CommandRun::run_to_end(&["census", "--netns", &ns.name, "--by", "lport"]).stdout;
    let top: Value = serde_json::from_str(
        &CommandRun::run_to_end(&["census", "--netns", &ns.name, "--json", "--by", "lport", "--top", "2"])
            .stdout,
    )
    .unwrap();
    let only: Value = serde_json::from_str(
        &CommandRun::run_to_end(&["census", "--netns", &ns.name, "--json", "--port", &port.to_string()])
            .stdout,
    )
    .unwrap();
    let other: Value = serde_json::from_str(
        &CommandRun::run_to_end(&[
            "census",
            "--netns",
            &ns.name,
            "--json",
            "--port",
            &(port + 1000).to_string(),
        ])
        .stdout,
    )
    .unwrap();
    // The timewait sockets were made after `started` and counted before now.
    let counted_within_ms = started.elapsed().as_millis() as u64;
    stop.send(()).unwrap();
    holder.join().unwrap();

    let expected: BTreeMap<String, u64> = [
        ("LISTEN", 2),
        ("ESTABLISHED", 2 * ESTABLISHED as u64),
        ("TIME_WAIT", TIME_WAIT as u64),
        ("CLOSE_WAIT", CLOSE_WAIT as u64),
        ("FIN_WAIT2", CLOSE_WAIT as u64),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(states(&census), expected);
    assert_eq!(states(&census), ss, "census and ss -tan disagree");
    assert_eq!(census["total"], expected.values().sum::<u64>());
    // --port, filtered in the kernel: everything on the port, nothing else.
    assert_eq!(only["total"], expected.values().sum::<u64>() - 1);
    assert_eq!(only["states"]["LISTEN"], 1);
    assert_eq!(other["total"], 1);
    assert_eq!(other["states"]["LISTEN"], 1);

    // Timewait sockets under their real substate, with their timers.
    let tw: BTreeMap<String, &Value> = census["timewait"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["substate"].as_str().unwrap().to_string(), t))
        .collect();
    assert_eq!(tw["TIME_WAIT"]["count"], TIME_WAIT as u64);
    assert_eq!(tw["FIN_WAIT2"]["count"], CLOSE_WAIT as u64);
    for t in tw.values() {
        let max = t["remaining"]["max_ms"].as_u64().unwrap();
        let min = t["remaining"]["min_ms"].as_u64().unwrap();
        // Timers start at 60 s and tick in jiffies: up to 1 s of rounding.
        assert!(
            min + counted_within_ms + 1000 >= 60_000 && max <= 60_000,
            "timers {t} after {counted_within_ms} ms"
        );
    }

    // The test process owns every full socket; timewait sockets have no owner.
    let groups = by_process["groups"].as_array().unwrap();
    let ours = format!("{}/", std::process::id());
    let owned: u64 = groups
        .iter()
        .filter(|g| g["key"].as_str().unwrap().starts_with(&ours))
        .map(|g| g["total"].as_u64().unwrap())
        .sum();
    assert_eq!(owned, 2 + 2 * ESTABLISHED as u64 + CLOSE_WAIT as u64);
    let unowned = groups.iter().find(|g| g["key"].as_str().unwrap().starts_with("(timewait")).unwrap();
    assert_eq!(unowned["total"], (TIME_WAIT + CLOSE_WAIT) as u64);
    // The same owners by cgroup: this process's, named as its path says.
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = own.lines().find_map(|l| l.strip_prefix("0::")).expect("a cgroup v2 path");
    let label = tcpstate::model::cgroup::Cgroup::of_path(path).label.to_string();
    let groups = by_cgroup["groups"].as_array().unwrap();
    let ours = groups
        .iter()
        .find(|g| g["key"] == label.as_str())
        .unwrap_or_else(|| panic!("no {label} in {groups:?}"));
    assert_eq!(ours["total"], owned);

    assert!(text.contains("BY LPORT"), "{text}");
    assert!(text.contains("1 timewait") || text.contains("timewait, timer left"), "{text}");
    let port_row = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{port} ")))
        .expect("row for the server port");
    // LISTEN, the server ends of the open and half-closed connections.
    assert_eq!(port_row.split_whitespace().nth(1), Some((1 + ESTABLISHED + CLOSE_WAIT).to_string().as_str()));

    // The client ends, on ports from the ephemeral range, are one group;
    // --top 2 keeps it and the server's port, and sums the other listener.
    let groups: Vec<(String, u64)> = top["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["key"].as_str().unwrap().to_string(), g["total"].as_u64().unwrap()))
        .collect();
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let range = range.split_whitespace().collect::<Vec<_>>().join("-");
    let clients = (TIME_WAIT + ESTABLISHED + CLOSE_WAIT) as u64;
    let server = (1 + ESTABLISHED + CLOSE_WAIT) as u64;
    assert_eq!(
        groups,
        [(format!("ephemeral ({range})"), clients), (port.to_string(), server), ("(other)".to_string(), 1)],
        "{top:#}"
    );
}

#[test]
fn sysctl_prints_the_namespace_values() {
    if !kernel_tests_possible("sysctl_values") {
        return;
    }
    let ns = Netns::new("sysctl");
    assert!(ns.exec(&["sysctl", "-qw", "net.ipv4.tcp_fin_timeout=7"]).status.success());
    let doc: Value =
        serde_json::from_str(&CommandRun::run_to_end(&["sysctl", "--netns", &ns.name, "--json"]).stdout)
            .unwrap();
    assert_eq!(doc["time_wait_len_s"], 60);
    let settings = doc["settings"].as_array().unwrap();
    assert_eq!(settings.len(), 9);
    for s in settings {
        let name = s["name"].as_str().unwrap();
        let file = format!("/proc/sys/{}", name.replace('.', "/"));
        let out = ns.exec(&["cat", &file]);
        if out.status.success() {
            let want = String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>().join(" ");
            assert_eq!(s["value"], want.as_str(), "{name}");
        } else {
            assert!(s["value"].is_null(), "{name} is not in this kernel");
        }
        assert!(!s["meaning"].as_str().unwrap().is_empty());
    }
    let fin = settings.iter().find(|s| s["name"] == "net.ipv4.tcp_fin_timeout").unwrap();
    assert_eq!(fin["value"], "7");
    assert_eq!((&fin["default"], &fin["differs"]), (&Value::from("60"), &Value::from(true)));
    let recycle = settings.iter().find(|s| s["name"] == "net.ipv4.tcp_tw_recycle").unwrap();
    assert!(recycle["value"].is_null());
    // A fresh namespace has the defaults everywhere else.
    let differing: Vec<_> = settings.iter().filter(|s| s["differs"] == true).map(|s| &s["name"]).collect();
    assert_eq!(differing, [&Value::from("net.ipv4.tcp_fin_timeout")]);

    // The text marks it, and keeps to 100 columns.
    let text = CommandRun::run_to_end(&["sysctl", "--netns", &ns.name]).stdout;
    assert!(text.lines().all(|l| l.len() <= 100), "{text}");
    let marked: Vec<_> = text.lines().filter(|l| l.starts_with("* ")).collect();
    assert_eq!(marked.len(), 1, "{text}");
    assert!(marked[0].starts_with("* net.ipv4.tcp_fin_timeout") && marked[0].ends_with(" 60"), "{text}");
}
