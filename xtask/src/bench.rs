//! `cargo xtask bench`: what tcpstate costs under connection churn.
//!
//! Each repetition runs every mode once, in turn, so that drift on this
//! noisy machine hits all modes alike; the table shows medians. The load
//! generator and the tracer share the machine's cores, so every CPU cycle
//! the tracer spends comes out of the connection rate.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{capture, cargo, run_cmd, workspace_root};

const NETNS: &str = "tcpstate-bench";
const PORT: u16 = 9900;

#[derive(Clone, clap::Args)]
pub struct Options {
    /// Seconds of churn per run
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Repetitions of the whole set of modes
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Client (and server) threads of the load generator
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Where to write the JSON results
    #[arg(long, default_value = "target/bench/results.json")]
    json: PathBuf,
    /// Only the census comparison (tcpstate census against ss and netstat)
    #[arg(long)]
    census_only: bool,
    /// Only the start-up cost (time to attach, peak RSS)
    #[arg(long)]
    attach_only: bool,
    /// Also a soak: `export` through this many million transitions, its
    /// RSS sampled every second
    #[arg(long, value_name = "MILLIONS")]
    soak: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Untraced,
    Floor,
    TraceJson,
    Stats,
    StatsNoTimewait,
    Top,
    /// `export`, scraped every second as Prometheus would.
    Export,
}

/// Where `export` listens during the bench.
const EXPORT_LISTEN: &str = "127.0.0.1:9979";

impl Mode {
    const ALL: [Mode; 7] = [
        Mode::Untraced,
        Mode::Floor,
        Mode::TraceJson,
        Mode::Stats,
        Mode::StatsNoTimewait,
        Mode::Top,
        Mode::Export,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Untraced => "untraced",
            Mode::Floor => "no-op program (floor)",
            Mode::TraceJson => "trace --json | last line",
            Mode::Stats => "stats",
            Mode::StatsNoTimewait => "stats --no-timewait",
            Mode::Top => "top (not a TTY)",
            Mode::Export => "export, scraped every 1 s",
        }
    }

    fn tracer_args(self) -> Option<Vec<String>> {
        let port = PORT.to_string();
        let args: &[&str] = match self {
            Mode::Untraced | Mode::Floor => return None,
            Mode::TraceJson => &["trace", "--json"],
            Mode::Stats => &["stats", "--json"],
            Mode::StatsNoTimewait => &["stats", "--json", "--no-timewait"],
            Mode::Top => &["top", "--json", "--interval", "1"],
            Mode::Export => &["export", "--listen", EXPORT_LISTEN],
        };
        Some(args.iter().copied().chain(["--port", &port]).map(String::from).collect())
    }
}

#[derive(Default, Clone)]
struct Run {
    connections: u64,
    seconds: f64,
    /// Transitions the kernel counted (all of them pass the port filter).
    transitions: Option<u64>,
    /// Records that went through the ring buffer to the tracer.
    events: Option<u64>,
    dropped: Option<u64>,
    cpu_s: Option<f64>,
    peak_rss_kib: Option<u64>,
    map_bytes: Option<u64>,
    /// `export`: how long each scrape took, in ms.
    scrape_ms: Vec<f64>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.connections as f64 / self.seconds
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run_cmd(Command::new("ip").args(args).stderr(Stdio::null()))
}

fn churn(bin: &Path, opts: &Options, noop: bool) -> anyhow::Result<(u64, f64)> {
    churn_with(bin, opts, noop, &[])
}

fn churn_with(bin: &Path, opts: &Options, noop: bool, extra: &[&str]) -> anyhow::Result<(u64, f64)> {
    let mut cmd = Command::new(bin);
    cmd.args([
        "--netns",
        NETNS,
        "--threads",
        &opts.threads.to_string(),
        "--seconds",
        &opts.seconds.to_string(),
    ]);
    cmd.args(["--port", &PORT.to_string()]);
    cmd.args(extra);
    if noop {
        cmd.arg("--noop-program");
    }
    let out = capture(&mut cmd)?;
    let v: serde_json::Value = serde_json::from_str(out.trim()).context("churn output")?;
    Ok((v["connections"].as_u64().unwrap_or(0), v["seconds"].as_f64().unwrap_or(opts.seconds)))
}

/// Sum of `memlock` over the BPF maps the process holds open.
fn map_bytes(pid: u32) -> u64 {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return 0 };
    fds.flatten()
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .filter(|info| info.contains("map_type:"))
        .filter_map(|info| {
            info.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// Waits for the child and returns its exit status and resource usage.
fn wait_rusage(child: &Child) -> anyhow::Result<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; wait4 on our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    if rc < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    Ok((status, usage))
}

fn tv_secs(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

/// Transitions counted, events received and events dropped, from the
/// tracer's last JSON line: `trace --json`'s summary record, or the final
/// report of `stats` and `top`. Both carry `transitions` and `losses`.
fn parse_counts(last_json_line: &str) -> (Option<u64>, Option<u64>, Option<u64>) {
    let v: serde_json::Value = serde_json::from_str(last_json_line).unwrap_or_default();
    let total = v["transitions"].as_array().map(|t| t.iter().filter_map(|t| t["count"].as_u64()).sum());
    (total, v["losses"]["events_received"].as_u64(), v["losses"]["events_dropped"].as_u64())
}

/// Reads a stream to its end, keeping only its last complete line: the
/// tracer never blocks on a full pipe, and a long trace costs no memory.
fn last_line(mut out: impl std::io::Read) -> String {
    let (mut chunk, mut tail) = (vec![0u8; 1 << 16], Vec::new());
    while let Ok(n) = out.read(&mut chunk) {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&chunk[..n]);
        // Keep from the start of the last line that may be incomplete or last.
        let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
        if let Some(cut) = body.iter().rposition(|&b| b == b'\n') {
            tail.drain(..=cut);
        }
    }
    String::from_utf8_lossy(&tail).trim().to_string()
}

/// Waits for the tracer's start-up line on stderr, whatever its wording;
/// `false` if stderr closed first (the tracer failed; its status says how).
fn started(stderr: &mut impl BufRead) -> anyhow::Result<bool> {
    let mut line = String::new();
    Ok(stderr.read_line(&mut line)? > 0)
}

fn traced(
    tcpstate: &Path,
    churn_bin: &Path,
    opts: &Options,
    mode: Mode,
    args: &[String],
) -> anyhow::Result<Run> {
    let mut child =
        Command::new(tcpstate).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut stderr = BufReader::new(child.stderr.take().context("stderr")?);
    let reader = child.stdout.take().map(|out| std::thread::spawn(move || last_line(out)));
    if !started(&mut stderr)? {
        let _ = child.wait();
        bail!("{} did not start", mode.name());
    }
    let scraper = (mode == Mode::Export).then(Scraper::start);
    let (connections, seconds) = churn(churn_bin, opts, false)?;
    let map = map_bytes(child.id());
    let scraped = scraper.map(Scraper::stop);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let (status, usage) = wait_rusage(&child)?;
    if status != 0 {
        bail!("{} exited with status {status}", mode.name());
    }
    let last = reader.map(|r| r.join().unwrap_or_default()).unwrap_or_default();
    let ((transitions, events, dropped), scrape_ms) = match scraped {
        Some((body, ms)) => (metric_counts(&body), ms),
        None => (parse_counts(&last), Vec::new()),
    };
    Ok(Run {
        connections,
        seconds,
        transitions,
        events,
        dropped,
        cpu_s: Some(tv_secs(usage.ru_utime) + tv_secs(usage.ru_stime)),
        peak_rss_kib: Some(usage.ru_maxrss as u64),
        map_bytes: Some(map),
        scrape_ms,
    })
}

/// Scrapes `export` every second from a thread of its own, as Prometheus
/// would, timing each scrape.
struct Scraper {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<(String, Vec<f64>)>,
}

impl Scraper {
    fn start() -> Self {
        let (stop, stopped) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let (mut last, mut times) = (String::new(), Vec::new());
            loop {
                let started = std::time::Instant::now();
                if let Some(body) = scrape() {
                    times.push(started.elapsed().as_secs_f64() * 1e3);
                    last = body;
                }
                if stopped.recv_timeout(Duration::from_secs(1)).is_ok() {
                    // One more once the exporter's snapshot (refreshed every
                    // second) has caught up with the end of the churn.
                    std::thread::sleep(Duration::from_millis(1500));
                    return (scrape().unwrap_or(last), times);
                }
            }
        });
        Self { stop, thread }
    }

    fn stop(self) -> (String, Vec<f64>) {
        let _ = self.stop.send(());
        self.thread.join().unwrap_or_default()
    }
}

/// Workloads the churn makes for the series-limit run: more than the
/// default `--max-series` (500), so the exporter holds its most series.
const WORKLOADS: u32 = 600;

/// Starts `export` and waits for its start-up line.
fn start_export(tcpstate: &Path) -> anyhow::Result<std::process::Child> {
    let mut child = Command::new(tcpstate)
        .args(["export", "--listen", EXPORT_LISTEN, "--port", &PORT.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if !started(&mut BufReader::new(child.stderr.take().context("stderr")?))? {
        let _ = child.wait();
        bail!("export did not start");
    }
    Ok(child)
}

/// `export` with its producer series at the limit (churn from more
/// workloads than `--max-series`), scraped every second: how long a scrape
/// of the most series takes.
fn export_at_series_limit(
    tcpstate: &Path,
    churn_bin: &Path,
    opts: &Options,
) -> anyhow::Result<serde_json::Value> {
    let child = start_export(tcpstate)?;
    let scraper = Scraper::start();
    let comms = WORKLOADS.to_string();
    churn_with(churn_bin, opts, false, &["--comms", &comms])?;
    let (body, mut times) = scraper.stop();
    // Scrapes once the table is full: the last half of the run.
    let full = times.split_off(times.len() / 2);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = wait_rusage(&child)?;
    let series = body.lines().filter(|l| !l.starts_with('#')).count();
    let producers = body.lines().filter(|l| l.starts_with("tcpstate_time_wait_entries_total{")).count();
    let slowest = full.iter().copied().fold(0.0, f64::max);
    let median = median(full);
    println!(
        "export at the series limit ({WORKLOADS} workloads, --max-series 500): {series} series ({producers} TIME_WAIT producer series), scrape median {median:.2} ms, slowest {slowest:.2} ms"
    );
    Ok(
        serde_json::json!({"workloads": WORKLOADS, "series": series, "producer_series": producers, "scrape_median_ms": median, "scrape_max_ms": slowest}),
    )
}

/// The exporter through `millions` × 10^6 transitions (a connection makes
/// 10) from many workloads, its RSS sampled every second: flat after
/// warm-up, or it leaks.
fn soak(
    tcpstate: &Path,
    churn_bin: &Path,
    opts: &Options,
    millions: u64,
) -> anyhow::Result<serde_json::Value> {
    let child = start_export(tcpstate)?;
    let pid = child.id();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let sampler = std::thread::spawn(move || {
        let mut rss = Vec::new();
        while stopped.recv_timeout(Duration::from_secs(1)).is_err() {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let kib = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
            rss.extend(kib);
            let _ = scrape();
        }
        rss
    });
    let connections = (millions * 1_000_000 / 10).to_string();
    let long = Options { seconds: 3600.0, ..opts.clone() };
    let comms = WORKLOADS.to_string();
    let (made, seconds) =
        churn_with(churn_bin, &long, false, &["--connections", &connections, "--comms", &comms])?;
    let _ = stop.send(());
    let rss = sampler.join().unwrap_or_default();
    let body = scrape().unwrap_or_default();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = wait_rusage(&child)?;
    let transitions = metric_counts(&body).0.unwrap_or(0);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let after_warmup = rss.get(rss.len().min(10).saturating_sub(1)).copied().unwrap_or(0);
    let end = rss.last().copied().unwrap_or(0);
    let peak = rss.iter().copied().max().unwrap_or(0);
    println!(
        "export soak: {made} connections, {transitions} transitions in {seconds:.0} s; RSS after 10 s {:.1} MiB, at the end {:.1} MiB, peak {:.1} MiB",
        mib(after_warmup),
        mib(end),
        mib(peak)
    );
    Ok(
        serde_json::json!({"connections": made, "transitions": transitions, "seconds": seconds, "rss_kib": rss}),
    )
}

/// One GET /metrics; the body.
fn scrape() -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(EXPORT_LISTEN).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// Transitions and drops from a scrape (the exporter does not count the
/// records it received).
fn metric_counts(body: &str) -> (Option<u64>, Option<u64>, Option<u64>) {
    let value = |l: &str| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).map(|v| v as u64);
    let transitions =
        body.lines().filter(|l| l.starts_with("tcpstate_transitions_total{")).filter_map(value).sum();
    let dropped = body.lines().find(|l| l.starts_with("tcpstate_events_dropped_total ")).and_then(value);
    (Some(transitions), None, dropped)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The in-kernel cost of one run of `mode`'s program, with
/// bpf_stats_enabled on for one extra run only (the statistics cost a little).
fn program_ns_per_run(
    tcpstate: &Path,
    churn_bin: &Path,
    opts: &Options,
    mode: Mode,
) -> anyhow::Result<Option<f64>> {
    let Some(args) = mode.tracer_args() else { return Ok(None) };
    let knob = "/proc/sys/kernel/bpf_stats_enabled";
    let before = fs::read_to_string(knob).unwrap_or_default();
    fs::write(knob, "1").context("enabling bpf_stats")?;
    let mut child =
        Command::new(tcpstate).args(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    if !started(&mut BufReader::new(child.stderr.take().context("stderr")?))? {
        let _ = child.wait();
        bail!("{} did not start", mode.name());
    }
    churn(churn_bin, opts, false)?;
    let mut per_run = None;
    for entry in fs::read_dir(format!("/proc/{}/fdinfo", child.id()))?.flatten() {
        let info = fs::read_to_string(entry.path()).unwrap_or_default();
        let field =
            |k: &str| info.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.trim().parse::<f64>().ok());
        if let (Some(ns), Some(runs)) = (field("run_time_ns:"), field("run_cnt:"))
            && runs > 0.0
        {
            per_run = Some(ns / runs);
        }
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
    let _ = fs::write(knob, before.trim());
    Ok(per_run)
}

const CENSUS_NETNS: &str = "tcpstate-census";

/// Median wall time of a command over `reps` runs, in ms.
fn time_ms(cmd: &[String], reps: usize) -> anyhow::Result<f64> {
    let mut times = Vec::new();
    for _ in 0..reps {
        let start = std::time::Instant::now();
        let out =
            Command::new(&cmd[0]).args(&cmd[1..]).stdout(Stdio::piped()).stderr(Stdio::null()).output()?;
        if !out.status.success() {
            bail!("{cmd:?} failed");
        }
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(times))
}

/// `tcpstate census` against the commands people run today, at 10k and
/// 100k sockets (client-side TIME_WAITs, in a namespace of their own).
fn census(tcpstate: &Path, churn_bin: &Path, opts: &Options) -> anyhow::Result<serde_json::Value> {
    let have_netstat = Command::new("netstat").arg("--version").output().is_ok();
    let mut rows = Vec::new();
    println!(
        "\n{:<10} {:>14} {:>16} {:>20} {:>12}",
        "SOCKETS", "census ms", "ss|awk ms", "netstat|awk ms", "ss/census"
    );
    for n in [10_000u64, 100_000] {
        let _ = ip(&["netns", "del", CENSUS_NETNS]);
        ip(&["netns", "add", CENSUS_NETNS])?;
        ip(&["-n", CENSUS_NETNS, "link", "set", "lo", "up"])?;
        for s in ["net.ipv4.tcp_max_tw_buckets=262144", "net.ipv4.tcp_tw_reuse=0"] {
            run_cmd(Command::new("ip").args(["netns", "exec", CENSUS_NETNS, "sysctl", "-qw", s]))?;
        }
        capture(
            Command::new(churn_bin)
                .args(["--netns", CENSUS_NETNS, "--seconds", "50", "--port", "9901"])
                .args(["--threads", &opts.threads.to_string(), "--connections", &n.to_string()]),
        )?;
        let exec = |args: &[&str]| -> Vec<String> {
            ["ip", "netns", "exec", CENSUS_NETNS].iter().chain(args).map(|s| s.to_string()).collect()
        };
        let census_cmd = exec(&[tcpstate.to_str().unwrap_or("tcpstate"), "census", "--json"]);
        let counted: serde_json::Value =
            serde_json::from_str(&capture(Command::new(&census_cmd[0]).args(&census_cmd[1..]))?)?;
        let ss_cmd = exec(&["sh", "-c", "ss -tan | awk 'NR>1 {++S[$1]} END {for (a in S) print a, S[a]}'"]);
        let ns_cmd =
            exec(&["sh", "-c", "netstat -n | awk '/^tcp/ {++S[$NF]} END {for(a in S) print a, S[a]}'"]);
        let reps = 5;
        let census_ms = time_ms(&census_cmd, reps)?;
        let ss_ms = time_ms(&ss_cmd, reps)?;
        let netstat_ms = if have_netstat { Some(time_ms(&ns_cmd, reps)?) } else { None };
        println!(
            "{:<10} {:>14.1} {:>16.1} {:>20} {:>12.2}",
            counted["total"],
            census_ms,
            ss_ms,
            netstat_ms.map_or("-".into(), |v| format!("{v:.1}")),
            ss_ms / census_ms
        );
        rows.push(serde_json::json!({
            "sockets": counted["total"], "states": counted["states"], "census_ms": census_ms,
            "ss_awk_ms": ss_ms, "netstat_awk_ms": netstat_ms,
        }));
    }
    let _ = ip(&["netns", "del", CENSUS_NETNS]);
    Ok(serde_json::Value::Array(rows))
}

pub fn bench(opts: &Options) -> anyhow::Result<()> {
    run_cmd(cargo().args(["build", "--release", "--package", "tcpstate", "--package", "tcpstate-tests"]))?;
    let target = workspace_root().join("target/release");
    let (tcpstate, churn_bin) = (target.join("tcpstate"), target.join("tcpstate-churn"));
    let _ = ip(&["netns", "del", NETNS]);
    ip(&["netns", "add", NETNS])?;
    ip(&["-n", NETNS, "link", "set", "lo", "up"])?;
    let only = opts.census_only || opts.attach_only;
    let result = if only { Ok(serde_json::json!({})) } else { measure(&tcpstate, &churn_bin, opts) };
    let at_limit =
        if only { Ok(serde_json::Value::Null) } else { export_at_series_limit(&tcpstate, &churn_bin, opts) };
    let soak = match opts.soak {
        Some(millions) if !only => soak(&tcpstate, &churn_bin, opts, millions),
        _ => Ok(serde_json::Value::Null),
    };
    let _ = ip(&["netns", "del", NETNS]);
    let mut doc = result?;
    if let Some(obj) = doc.as_object_mut() {
        obj.insert("export_at_series_limit".into(), at_limit?);
        obj.insert("export_soak".into(), soak?);
    }
    let attach = attach_cost(&tcpstate, opts.reps.max(5))?;
    let census =
        if opts.attach_only { serde_json::Value::Null } else { census(&tcpstate, &churn_bin, opts)? };
    if let Some(obj) = doc.as_object_mut() {
        obj.insert("attach".into(), attach);
        obj.insert("census".into(), census);
    }
    let path = workspace_root().join(&opts.json);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
    println!("results: {}", path.display());
    Ok(())
}

/// Start-up cost: from spawning each command to its start-up line (it is
/// attached then), and the process's peak RSS; medians of `reps` runs.
fn attach_cost(tcpstate: &Path, reps: usize) -> anyhow::Result<serde_json::Value> {
    let commands: [&[&str]; 3] = [&["trace"], &["stats"], &["trace", "--no-timewait"]];
    println!("\nstart-up, median of {reps}: {:<22} {:>10} {:>14}", "command", "attach ms", "peak RSS MiB");
    let mut rows = Vec::new();
    for command in commands {
        let (mut times, mut rss) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let start = std::time::Instant::now();
            let mut child = Command::new(tcpstate)
                .args(command)
                .args(["--port", &PORT.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()?;
            if !started(&mut BufReader::new(child.stderr.take().context("stderr")?))? {
                let _ = child.wait();
                bail!("{command:?} did not start");
            }
            times.push(start.elapsed().as_secs_f64() * 1e3);
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let (status, usage) = wait_rusage(&child)?;
            if status != 0 {
                bail!("{command:?} exited with status {status}");
            }
            rss.push(usage.ru_maxrss as f64 / 1024.0);
        }
        let (ms, mib) = (median(times), median(rss));
        let name = command.join(" ");
        println!("{:>38} {ms:>10.0} {mib:>14.1}", name);
        rows.push(serde_json::json!({ "command": name, "attach_ms": ms, "peak_rss_mib": mib }));
    }
    Ok(serde_json::Value::Array(rows))
}

fn measure(tcpstate: &Path, churn_bin: &Path, opts: &Options) -> anyhow::Result<serde_json::Value> {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "bench: {} reps × {} modes, {} s churn each, {} client threads, {nproc} CPUs",
        opts.reps,
        Mode::ALL.len(),
        opts.seconds,
        opts.threads
    );
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); Mode::ALL.len()];
    for rep in 0..opts.reps {
        for (i, mode) in Mode::ALL.into_iter().enumerate() {
            let run = match mode.tracer_args() {
                None => {
                    let (connections, seconds) = churn(churn_bin, opts, mode == Mode::Floor)?;
                    Run { connections, seconds, ..Default::default() }
                }
                Some(args) => traced(tcpstate, churn_bin, opts, mode, &args)?,
            };
            println!(
                "  rep {rep} {:<26} {:>8.0} conn/s  events {:?} dropped {:?}",
                mode.name(),
                run.rate(),
                run.events,
                run.dropped
            );
            runs[i].push(run);
            // Let TIME_WAITs from the last run drain a little.
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let per_run_ns: Vec<Option<f64>> = Mode::ALL
        .into_iter()
        .map(|mode| program_ns_per_run(tcpstate, churn_bin, opts, mode))
        .collect::<anyhow::Result<_>>()?;

    let rate = |i: usize| median(runs[i].iter().map(Run::rate).collect());
    // Each repetition's runs follow one another: compare within it, then
    // take the median, which drift between repetitions does not move.
    let ratio = |i: usize, base: usize| {
        median(runs[i].iter().zip(&runs[base]).map(|(run, base)| run.rate() / base.rate()).collect())
    };
    let mut rows = Vec::new();
    println!(
        "\n{:<26} {:>9} {:>8} {:>8} {:>12} {:>11} {:>8} {:>11} {:>9} {:>9}",
        "MODE",
        "CONN/S",
        "VS NONE",
        "VS NOOP",
        "TRANSIT./S",
        "STREAMED/S",
        "DROPPED",
        "CPU µs/TR",
        "RSS MiB",
        "MAPS MiB"
    );
    for (i, mode) in Mode::ALL.into_iter().enumerate() {
        let r = &runs[i];
        let opt_median = |f: &dyn Fn(&Run) -> Option<f64>| {
            let v: Vec<f64> = r.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| median(v))
        };
        let transitions_per_s = opt_median(&|x| x.transitions.map(|e| e as f64 / x.seconds));
        let events_per_s = opt_median(&|x| x.events.map(|e| e as f64 / x.seconds));
        let dropped = r.iter().filter_map(|x| x.dropped).max();
        let cpu_us = opt_median(&|x| Some(x.cpu_s? * 1e6 / x.transitions? as f64));
        let rss = opt_median(&|x| x.peak_rss_kib.map(|k| k as f64 / 1024.0));
        let maps = opt_median(&|x| x.map_bytes.map(|b| b as f64 / (1 << 20) as f64));
        let fmt = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
        println!(
            "{:<26} {:>9.0} {:>8.3} {:>8.3} {:>12} {:>11} {:>8} {:>11} {:>9} {:>9}",
            mode.name(),
            rate(i),
            ratio(i, 0),
            ratio(i, 1),
            fmt(transitions_per_s, 0),
            fmt(events_per_s, 0),
            dropped.map_or("-".into(), |d| d.to_string()),
            fmt(cpu_us, 3),
            fmt(rss, 1),
            fmt(maps, 1),
        );
        rows.push(serde_json::json!({
            "mode": mode.name(),
            "connections_per_s": rate(i),
            "vs_untraced": ratio(i, 0),
            "vs_noop_program": ratio(i, 1),
            "transitions_per_s": transitions_per_s,
            "events_per_s": events_per_s,
            "events_dropped_max": dropped,
            "tracer_cpu_us_per_transition": cpu_us,
            "tracer_peak_rss_mib": rss,
            "kernel_map_mib": maps,
            "runs": r.iter().map(|x| serde_json::json!({"connections": x.connections, "seconds": x.seconds, "transitions": x.transitions, "events": x.events, "dropped": x.dropped, "cpu_s": x.cpu_s})).collect::<Vec<_>>(),
        }));
    }
    // The same comparison by CPU accounting, which the machine's drifting
    // speed moves much less: what one untraced connection costs (both CPUs
    // busy), against what tracing adds to it, measured directly (the
    // program's run time from bpf_stats, the tracer's rusage).
    println!(
        "\n{:<26} {:>12} {:>12} {:>14} {:>14} {:>10}",
        "CPU ACCOUNTING", "PROG ns/HIT", "HITS/CONN", "PROG µs/CONN", "TRACER µs/CONN", "MODELLED"
    );
    let base_us = nproc as f64 * 1e6 / rate(0);
    let mut model = Vec::new();
    for (i, mode) in Mode::ALL.into_iter().enumerate().skip(1) {
        let r = &runs[i];
        let per_conn = |f: &dyn Fn(&Run) -> Option<f64>| {
            let v: Vec<f64> = r.iter().filter_map(|x| Some(f(x)? / x.connections.max(1) as f64)).collect();
            (!v.is_empty()).then(|| median(v))
        };
        let hits = per_conn(&|x| x.transitions.map(|t| t as f64)).unwrap_or(10.0);
        let tracer_us = per_conn(&|x| x.cpu_s.map(|s| s * 1e6)).unwrap_or(0.0);
        let Some(ns) = per_run_ns[i] else { continue };
        let prog_us = ns * hits / 1e3;
        let modelled = base_us / (base_us + prog_us + tracer_us);
        println!(
            "{:<26} {:>12.0} {:>12.2} {:>14.2} {:>14.2} {:>10.3}",
            mode.name(),
            ns,
            hits,
            prog_us,
            tracer_us,
            modelled
        );
        model.push(serde_json::json!({"mode": mode.name(), "program_ns_per_hit": ns, "hits_per_connection": hits, "tracer_us_per_connection": tracer_us, "modelled_vs_untraced": modelled}));
    }
    println!("untraced: {base_us:.1} µs of CPU per connection ({nproc} CPUs busy)");
    let scrapes: Vec<f64> = runs.iter().flatten().flat_map(|r| r.scrape_ms.iter().copied()).collect();
    let slowest = scrapes.iter().copied().fold(0.0, f64::max);
    println!(
        "export under churn: {} scrapes, median {:.2} ms, slowest {slowest:.2} ms",
        scrapes.len(),
        median(scrapes.clone())
    );
    let doc = serde_json::json!({
        "export_scrape_ms": {"count": scrapes.len(), "median": median(scrapes), "max": slowest},
        "kernel": capture(Command::new("uname").arg("-r")).unwrap_or_default().trim(),
        "cpus": nproc,
        "seconds_per_run": opts.seconds,
        "reps": opts.reps,
        "threads": opts.threads,
        "program_ns_per_run": per_run_ns,
        "modes": rows,
        "cpu_accounting": model,
    });
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_the_last_json_line() {
        let stream = "{\"kind\":\"transition\"}\n".repeat(20_000)
            + "{\"kind\":\"summary\",\"transitions\":[{\"count\":3},{\"count\":4}],\"losses\":{\"events_received\":9,\"events_dropped\":0}}\n";
        let last = last_line(stream.as_bytes());
        assert!(last.starts_with("{\"kind\":\"summary\""), "{last}");
        assert_eq!(parse_counts(&last), (Some(7), Some(9), Some(0)));
        assert_eq!(last_line("".as_bytes()), "");
    }
}
