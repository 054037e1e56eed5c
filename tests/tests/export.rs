//! `tcpstate export` against the real kernel: known numbers through
//! /metrics, `promtool check metrics`, a real Prometheus scraping it, and
//! bad input that must not stop it serving.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tcpstate_tests::*;

/// A free loopback port for a server of the test's own.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One HTTP/1.0 request; the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, scaled(Duration::from_secs(5))).ok()?;
    s.set_read_timeout(Some(scaled(Duration::from_secs(10)))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The value of the sample `series` (name and labels, as exposed).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// One exporter, bound on a free loopback port.
struct Exporter {
    run: CommandRun,
    addr: SocketAddr,
}

impl Exporter {
    fn start(extra: &[&str]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let listen = addr.to_string();
        let run = CommandRun::start(&[&["export", "--listen", listen.as_str()][..], extra].concat());
        Self { run, addr }
    }

    fn metrics(&self) -> String {
        let (status, body) = http_get(self.addr, "/metrics").expect("a scrape");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Scrapes until `done` holds (the snapshot is refreshed every second).
    fn wait_for(&self, done: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let ok = wait_until(scaled(Duration::from_secs(30)), || {
            last = self.metrics();
            done(&last)
        });
        assert!(ok, "the metrics never showed it:\n{last}");
        last
    }
}

/// A client in a cgroup named as docker names a container closes N
/// connections first, against a server in a systemd service's cgroup.
#[test]
fn known_scenario_through_metrics_and_prometheus() {
    if !kernel_tests_possible("export") {
        return;
    }
    const N: u64 = 8;
    let id = format!("{:016x}", u64::from(std::process::id()) << 20 | 0xe4).repeat(4);
    let short = id[..12].to_string();
    let container = TestCgroup::new("export", &format!("docker-{id}.scope"));
    let service = TestCgroup::new("export", "tsp-exp.service");
    let metrics = rerun_if_transitions_lost("export", || {
        let ns = Netns::new("export");
        let port = unique_port().to_string();
        let exporter = Exporter::start(&["--port", &port]);
        close_first_across_cgroups(&ns, (&container, &service), "tsp-exp", &port, N);
        let entries =
            format!("tcpstate_time_wait_entries_total{{container=\"{short}\",comm=\"tsp-exp-cli\"}}");
        let metrics = exporter.wait_for(|m| sample(m, &entries).is_some_and(|v| v >= N as f64));

        // promtool, where the setup installed it, checks the exposition.
        if let Some(promtool) = required_program("export", "promtool") {
            let mut check = Command::new(promtool)
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            check.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
            let out = check.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if let Some(prometheus) = required_program("export", "prometheus") {
            prometheus_agrees(&prometheus, exporter.addr, &short, N as f64);
        }
        exporter.run.stop();
        // What the exporter lost, from its own metrics.
        let count = |name: &str| sample(&metrics, name).unwrap_or(0.0) as u64;
        let lost = Lost {
            hits_skipped: count("tcpstate_tracepoint_hits_skipped_total"),
            sockets_with_gaps: count("tcpstate_sockets_with_missed_transitions_total"),
        };
        (metrics, lost)
    });
    let n = N as f64;
    let at = |series: &str| sample(&metrics, series).unwrap_or_else(|| panic!("no {series} in\n{metrics}"));
    assert_eq!(
        at(&format!("tcpstate_time_wait_entries_total{{container=\"{short}\",comm=\"tsp-exp-cli\"}}")),
        n
    );
    assert_eq!(
        at(&format!("tcpstate_closes_total{{side=\"active\",container=\"{short}\",comm=\"tsp-exp-cli\"}}")),
        n
    );
    assert_eq!(
        at("tcpstate_closes_total{side=\"passive\",container=\"tsp-exp.service\",comm=\"tsp-exp-srv\"}"),
        n
    );
    assert_eq!(at("tcpstate_transitions_total{from=\"ESTABLISHED\",to=\"FIN_WAIT1\"}"), n);
    assert_eq!(at("tcpstate_transitions_total{from=\"ESTABLISHED\",to=\"CLOSE_WAIT\"}"), n);
    assert!(metrics.contains("tcpstate_build_info{version="), "{metrics}");
    assert!(metrics.contains("# TYPE tcpstate_state_duration_seconds histogram"), "{metrics}");
    assert!(at("tcpstate_process_resident_memory_bytes") > 0.0);
}

/// A query string's value, percent-encoded.
fn url_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// Starts Prometheus scraping `target` every second, and asks its API for
/// the container's TIME_WAIT entries and active closes, and the transitions,
/// until each is `expected`.
fn prometheus_agrees(prometheus: &str, target: SocketAddr, container: &str, expected: f64) {
    let dir = std::env::temp_dir().join(format!("tcpstate-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tcpstate\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut child = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    // What a PromQL query answers, as a number.
    let ask = |promql: &str| -> Option<f64> {
        let (status, body) = http_get(web, &format!("/api/v1/query?query={}", url_encoded(promql)))?;
        let v: Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let questions = [
        format!("sum(tcpstate_time_wait_entries_total{{container=\"{container}\"}})"),
        format!("sum(tcpstate_closes_total{{side=\"active\",container=\"{container}\"}})"),
        "sum(tcpstate_transitions_total{from=\"ESTABLISHED\",to=\"FIN_WAIT1\"})".to_string(),
    ];
    let mut last = Vec::new();
    let got = wait_until(scaled(Duration::from_secs(60)), || {
        last = questions.iter().map(|q| ask(q)).collect();
        last.iter().all(|a| *a == Some(expected))
    });
    // Every query of the shipped Grafana dashboard runs on that data.
    let mut failed = Vec::new();
    for expr in dashboard_queries() {
        let expr = expr.replace("$instance", ".*");
        let answer = http_get(web, &format!("/api/v1/query?query={}", url_encoded(&expr)));
        let ok = answer.as_ref().is_some_and(|(status, body)| {
            *status == 200 && serde_json::from_str::<Value>(body).is_ok_and(|v| v["status"] == "success")
        });
        if !ok {
            failed.push((expr, answer));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(got, "Prometheus answered {last:?} to {questions:#?}, not {expected}");
    assert!(failed.is_empty(), "dashboard queries Prometheus refused: {failed:#?}");
}

/// The PromQL of every panel in deploy/grafana-tcpstate.json.
fn dashboard_queries() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana-tcpstate.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(!queries.is_empty());
    queries
}

/// The shipped systemd unit's capabilities are enough: the exporter runs
/// with that bounding set alone and counts a connection.
#[test]
fn runs_with_the_units_capabilities_only() {
    if !kernel_tests_possible("export_caps") {
        return;
    }
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/tcpstate-export.service"),
    )
    .unwrap();
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("a bounding set")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let bounding = format!("-all,{}", caps.join(","));
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let port = unique_port();
    let mut child = Command::new("setpriv")
        .args(["--bounding-set", &bounding, "--inh-caps", "-all", "--"])
        .arg(tcpstate_exe())
        .args(["export", "--listen", &addr.to_string(), "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv");
    let up = wait_until(scaled(Duration::from_secs(60)), || {
        http_get(addr, "/metrics").is_some_and(|(s, _)| s == 200) || matches!(child.try_wait(), Ok(Some(_)))
    });
    let ns = Netns::new("expcaps");
    let at = format!("127.0.0.1:{port}");
    let server =
        Peer::server(&ns, "tsp-cap-srv", &["server", "--listen", &at, "--count", "1", "--close", "second"]);
    Peer::spawn(&ns, "tsp-cap-cli", false, &["client", "--connect", &at, "--count", "1", "--close", "first"])
        .finish();
    server.finish();
    let series = "tcpstate_transitions_total{from=\"ESTABLISHED\",to=\"FIN_WAIT1\"}";
    let mut last = String::new();
    let counted = up
        && wait_until(scaled(Duration::from_secs(30)), || {
            last = http_get(addr, "/metrics").map(|r| r.1).unwrap_or_default();
            sample(&last, series) == Some(1.0)
        });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(up, "it never served with {bounding}: {stderr}");
    assert!(counted, "with {bounding} it did not count the connection: {stderr}\n{last}");
    assert!(out.status.success(), "{stderr}");
}

/// Bad input and hostile clients: each is refused or answered, and the
/// exporter keeps serving.
#[test]
fn bad_input_and_clients_leave_it_serving() {
    if !kernel_tests_possible("export_bad_input") {
        return;
    }
    // Each fails at once, before loading anything: status and stderr.
    let run = |args: &[&str]| {
        let out = Command::new(tcpstate_exe()).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = run(&["export", "--max-series", "0"]);
    assert_eq!(code, Some(2), "{stderr}");
    let (code, stderr) = run(&["export", "--cgroup", "/no/such/cgroup"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("not a cgroup v2 directory"), "{stderr}");
    // A port in use: one clear line, exit 1.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = run(&["export", "--listen", &addr]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("cannot listen on {addr}")), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // An address not on this host.
    let (code, stderr) = run(&["export", "--listen", "192.0.2.1:9977"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let exporter = Exporter::start(&["--port", &unique_port().to_string()]);
    assert_eq!(http_get(exporter.addr, "/nothing").map(|r| r.0), Some(404));
    assert_eq!(http_get(exporter.addr, "/").map(|r| r.0), Some(200));
    // Garbage instead of HTTP.
    let mut junk = TcpStream::connect(exporter.addr).unwrap();
    junk.write_all(b"\x00\x01 NOT HTTP\r\n\r\n").unwrap();
    // A client that asks and never reads, and one that never finishes asking.
    let mut silent = TcpStream::connect(exporter.addr).unwrap();
    write!(silent, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut slow = TcpStream::connect(exporter.addr).unwrap();
    write!(slow, "GET /metr").unwrap();
    // Still serving.
    assert!(exporter.metrics().contains("tcpstate_build_info{"));
    // SIGTERM with those clients still connected: a clean end, exit 0
    // (stop checks it, within its deadline).
    exporter.run.stop();
    drop((junk, silent, slow));
}
