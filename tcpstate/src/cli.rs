//! Command-line interface. Usage errors exit with status 2.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::{model::filter::PortRange, source::tracer::TracerOptions};

#[derive(Debug, Parser)]
#[command(
    name = "tcpstate",
    version,
    about = "Trace TCP state transitions with eBPF: who closes, who holds TIME_WAIT, and for how long",
    propagate_version = true
)]
pub struct Cli {
    /// More diagnostics on stderr (-v info, -vv debug; -vvv adds aya's)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print one line (or JSON object) per TCP state transition
    Trace(TraceArgs),
    /// Live view: a dashboard on a terminal, periodic reports otherwise
    Top(TopArgs),
    /// Collect until --duration or Ctrl-C, then print one report
    Stats(StatsArgs),
    /// Count current TCP sockets per state (sock_diag), timewait sockets included
    Census(CensusArgs),
    /// Show the TIME_WAIT-related sysctls and what they really do
    Sysctl(SysctlArgs),
    /// Serve Prometheus / OpenMetrics metrics: transitions, time in state,
    /// timewait ends, closes and TIME_WAIT producers by container
    Export(ExportArgs),
    /// Print a shell completion script or a man page (for packagers)
    #[command(hide = true)]
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[arg(value_enum)]
    pub kind: Generated,
    /// For `man`: the page of this subcommand (tcpstate-SUBCOMMAND)
    #[arg(long, value_name = "SUBCOMMAND")]
    pub command: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Generated {
    Man,
    CompleteBash,
    CompleteZsh,
    CompleteFish,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub filters: FilterArgs,
    #[command(flatten)]
    pub session: SessionArgs,
    /// Address to serve /metrics on. Loopback by default: the metrics name
    /// processes and containers; listen wider only on purpose
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9977")]
    pub listen: std::net::SocketAddr,
    /// Workloads (container and process name) with their own series, per
    /// producer metric; later ones count under container="other"
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_series: u32,
}

#[derive(Debug, Args)]
pub struct SysctlArgs {
    /// Network namespace: a name under /run/netns, or a path (the settings are per namespace)
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,
    /// One JSON document
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CensusArgs {
    /// IPv4 sockets only
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// IPv6 sockets only
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// Network namespace: a name under /run/netns, or a path such as /proc/PID/ns/net
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,
    /// Only sockets with one of these ports at either end: a comma list of
    /// ports and ranges (80,8000-8099; filtered in the kernel)
    #[arg(long, value_name = "PORTS", value_delimiter = ',', value_parser = PortRange::parse)]
    pub port: Vec<PortRange>,
    /// Also count per local port, remote address, owning process, or its
    /// container / cgroup
    #[arg(long, value_enum)]
    pub by: Option<CensusGroup>,
    /// With --by: the N largest groups, the rest summed as (other)
    #[arg(long, value_name = "N", requires = "by", value_parser = clap::value_parser!(u16).range(1..=10_000))]
    pub top: Option<u16>,
    /// One JSON document per census
    #[arg(long)]
    pub json: bool,
    /// Repeat every INTERVAL until Ctrl-C (e.g. 1, 500ms; 100ms to 1 day)
    #[arg(short, long, value_name = "INTERVAL", value_parser = parse_refresh)]
    pub watch: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CensusGroup {
    /// Local port
    Lport,
    /// Remote address
    Raddr,
    /// Owning process (timewait sockets have none)
    Process,
    /// The owning process's container, systemd unit or cgroup path
    Cgroup,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub filters: FilterArgs,
    #[command(flatten)]
    pub session: SessionArgs,
    /// JSON Lines output, one object per transition
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// CSV output with a header line, one row per transition (as BCC's -s)
    #[arg(long)]
    pub csv: bool,
    /// Text: add a CONTAINER column (the owner's container, systemd unit or
    /// cgroup path; JSON and CSV always have them)
    #[arg(long)]
    pub container: bool,
    /// Text: a first column with the time: `time` of day (the default),
    /// `datetime`, or `elapsed` seconds since the tracer attached
    #[arg(short = 'T', long, value_name = "KIND", num_args = 0..=1, default_missing_value = "time")]
    pub timestamp: Option<TimestampKind>,
    /// Text: address columns wide enough for any IPv6 address from the
    /// start (else they widen when one comes)
    #[arg(short, long)]
    pub wide: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TimestampKind {
    /// HH:MM:SS.ffffff (UTC)
    Time,
    /// YYYY-MM-DDTHH:MM:SS.ffffffZ
    Datetime,
    /// Seconds since the tracer attached
    Elapsed,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub stats: StatsArgs,
    /// Refresh every (e.g. 1, 500ms, 5s; 100ms to 1 day)
    #[arg(short, long, default_value = "1", value_parser = parse_refresh)]
    pub interval: Duration,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Report a recording (`trace --json` output; - for stdin) instead of
    /// tracing: the report `stats` would have printed live
    #[arg(long, value_name = "FILE")]
    pub from: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub filters: FilterArgs,
    #[command(flatten)]
    pub session: SessionArgs,
    #[command(flatten)]
    pub report: ReportArgs,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// JSON output (top: one document per refresh; stats: one document)
    #[arg(long)]
    pub json: bool,
    /// Rows per ranked table
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub top: u16,
}

/// Filters, applied in the kernel. Lists are comma-separated or repeated;
/// ports may be ranges (8000-8099).
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// IPv4 only (v4-mapped addresses on IPv6 sockets count as IPv4)
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// IPv6 only
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// Local ports: a comma list of ports and ranges (80,8000-8099)
    #[arg(short = 'L', long, value_name = "PORTS", value_delimiter = ',', value_parser = PortRange::parse)]
    pub lport: Vec<PortRange>,
    /// Remote ports: a comma list of ports and ranges
    #[arg(short = 'D', long, value_name = "PORTS", value_delimiter = ',', value_parser = PortRange::parse)]
    pub rport: Vec<PortRange>,
    /// Ports at either end: a comma list of ports and ranges
    #[arg(long, value_name = "PORTS", value_delimiter = ',', value_parser = PortRange::parse)]
    pub port: Vec<PortRange>,
    /// Owner pids (the process the socket is attributed to)
    #[arg(long, value_name = "PIDS", value_delimiter = ',', value_parser = parse_pid)]
    pub pid: Vec<u32>,
    /// Owner process names (as in /proc/PID/comm, at most 15 bytes)
    #[arg(long, value_name = "NAMES", value_delimiter = ',', value_parser = parse_comm)]
    pub comm: Vec<String>,
    /// Owners under this cgroup v2 directory (or a descendant) when they
    /// were seen: a path below the cgroup2 mount, or absolute; repeatable,
    /// up to 8
    #[arg(long, value_name = "PATH")]
    pub cgroup: Vec<std::path::PathBuf>,
    /// Sockets in these network namespaces: names under /run/netns, paths
    /// (/proc/PID/ns/net), or inode numbers (as events and `lsns -t net`
    /// show them); comma list or repeated, up to 64
    #[arg(long, value_name = "NAME|PATH|ID", value_delimiter = ',')]
    pub netns: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SessionArgs {
    /// Collect for this long once attached (e.g. 30, 30s, 5m; at most a year)
    #[arg(short, long, value_parser = parse_session_duration)]
    pub duration: Option<Duration>,
    /// Ring buffer size: a power of two of at least 4K (e.g. 256K, 8M) [default: 8M]
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_size)]
    pub ring_size: Option<u32>,
    /// Sockets the kernel-side table follows at once [default: twice the TCP
    /// sockets on the host at start, at least 65536]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(64..=TracerOptions::MAX_SOCKETS as i64))]
    pub max_sockets: Option<u32>,
    /// Do not follow connections into their timewait sockets
    #[arg(long)]
    pub no_timewait: bool,
    /// How often to poll sock_diag for followed timewait sockets (when the
    /// exact hooks cannot measure everything)
    #[arg(long, value_name = "INTERVAL", default_value = "200ms", value_parser = parse_tw_poll)]
    pub tw_poll: Duration,
    /// How to follow timewait sockets: `auto` uses fentry hooks where the
    /// kernel allows them and sock_diag polling for the rest; `sock-diag`
    /// polls only
    #[arg(long, value_name = "MODE", default_value = "auto")]
    pub tw_mode: TimewaitMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TimewaitMode {
    Auto,
    SockDiag,
}

fn parse_pid(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("'{s}' is not a pid")),
    }
}

fn parse_comm(s: &str) -> Result<String, String> {
    match s.len() {
        0 => Err("empty process name".into()),
        1..=15 => Ok(s.to_string()),
        _ => Err(format!("'{s}' is longer than the kernel's 15-byte process names")),
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// `--duration`: anything above zero, up to a year.
fn parse_session_duration(s: &str) -> Result<Duration, String> {
    parse_duration(s, Duration::from_nanos(1), YEAR)
}

/// `top --interval`, `census --watch`: a screen or a line at most ten times
/// a second, at least once a day.
fn parse_refresh(s: &str) -> Result<Duration, String> {
    parse_duration(s, Duration::from_millis(100), DAY)
}

/// `--tw-poll`: sock_diag dumps at most 100 times a second.
fn parse_tw_poll(s: &str) -> Result<Duration, String> {
    parse_duration(s, Duration::from_millis(10), Duration::from_secs(3600))
}

/// Plain seconds, or a humantime duration such as `500ms` or `2m`, within
/// `min..=max`.
fn parse_duration(s: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = match s.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => {
            Duration::try_from_secs_f64(secs).map_err(|_| format!("'{s}' is longer than {}", show(max)))?
        }
        Ok(_) => return Err(format!("'{s}' is not a duration")),
        Err(_) => humantime::parse_duration(s).map_err(|e| format!("'{s}' is not a duration: {e}"))?,
    };
    if d.is_zero() {
        return Err("the duration must be more than zero".into());
    }
    if d < min {
        return Err(format!("'{s}' is shorter than {}", show(min)));
    }
    if d > max {
        return Err(format!("'{s}' is longer than {}", show(max)));
    }
    Ok(d)
}

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Bytes with an optional K/M/G suffix (binary units).
fn parse_ring_size(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (digits, shift) = match t.as_bytes().last().map(u8::to_ascii_uppercase) {
        Some(b'K') => (&t[..t.len() - 1], 10),
        Some(b'M') => (&t[..t.len() - 1], 20),
        Some(b'G') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| format!("'{s}' is not a size"))?;
    let bytes = n.checked_shl(shift).filter(|&b| b <= 1 << 30).ok_or(format!("'{s}' is larger than 1G"))?;
    if bytes < 4096 || !bytes.is_power_of_two() {
        return Err(format!("'{s}' must be a power of two of at least 4K"));
    }
    Ok(bytes as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tcpstate").chain(args.iter().copied()))
    }

    #[test]
    fn top_and_stats() {
        let cli = parse(&["top", "--interval", "500ms", "--json", "--port", "80"]).unwrap();
        let Command::Top(t) = cli.command else { panic!() };
        assert_eq!(t.interval, Duration::from_millis(500));
        assert!(t.stats.report.json);
        assert_eq!(t.stats.report.top, 10);
        let cli = parse(&["stats", "-d", "5", "--top", "3"]).unwrap();
        let Command::Stats(s) = cli.command else { panic!() };
        assert_eq!(s.report.top, 3);
        assert_eq!(s.session.duration, Some(Duration::from_secs(5)));
        assert!(parse(&["top", "--interval", "0"]).is_err());
        assert!(parse(&["stats", "--top", "0"]).is_err());
    }

    #[test]
    fn census() {
        let cli = parse(&["census", "--by", "lport", "--netns", "blue", "-w", "2s", "-6"]).unwrap();
        let Command::Census(c) = cli.command else { panic!() };
        assert_eq!(c.by, Some(CensusGroup::Lport));
        assert_eq!(c.watch, Some(Duration::from_secs(2)));
        assert!(c.ipv6 && !c.ipv4);
        assert!(parse(&["census", "--by", "pid"]).is_err());
    }

    #[test]
    fn usage_errors() {
        for bad in [
            &["trace", "--port", "70000"][..],
            &["trace", "--port", "0"],
            &["trace", "--pid", "abc"],
            &["trace", "-4", "-6"],
            &["trace", "--comm", "a-name-longer-than-15"],
            &["trace", "--ring-size", "3000"],
            &["trace", "--duration", "-1"],
            &["trace", "--bogus"],
            &["frobnicate"],
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_session_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_session_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_session_duration("0").is_err());
        // Too large for a Duration, or for a deadline: usage errors, not panics.
        for huge in ["99999999999999999999", "18446744073709551615", "1e30", "400days"] {
            let err = parse_session_duration(huge).unwrap_err();
            assert!(err.contains("longer than"), "{huge}: {err}");
        }
        assert!(parse_refresh("1e30").is_err());
        assert!(parse_tw_poll("1e30").is_err());
        assert_eq!(parse_refresh("1e-9"), Err("'1e-9' is shorter than 100ms".into()));
        assert!(parse_refresh("100ms").is_ok());
        assert_eq!(parse_ring_size("256K"), Ok(256 << 10));
        assert_eq!(parse_ring_size("4096"), Ok(4096));
        assert!(parse_ring_size("2G").is_err());
        assert!(parse_ring_size("12K").is_err());
    }
}
