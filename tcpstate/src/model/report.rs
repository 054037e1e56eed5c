//! One report shape for `stats` and every `top` refresh, so both show the
//! same numbers. Serialised as the documented JSON; rendered as text by
//! `sink::report_text`.

use std::{net::IpAddr, sync::Arc};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{
    aggregate::{Aggregator, CappedTable, Ends, HIST_LOW_NS, LocalPort, ProcessKey, Reached, Sides, Tally},
    counters::{KernelCounters, StateHistogram},
    state::TcpState,
    transition::Comm,
};

/// A ranked table: the top rows, and everything else summed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ranked<R, V> {
    pub rows: Vec<R>,
    pub other: V,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcessCount {
    pub pid: Option<u32>,
    pub comm: Option<Comm>,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortCount {
    /// Null for the ephemeral ports of connected sockets, grouped.
    pub port: Option<u16>,
    pub count: u64,
}

/// A local port as a report shows it: null for the ephemeral ports of
/// connected sockets (the report's `ephemeral_ports`), grouped.
fn port_of(port: LocalPort) -> Option<u16> {
    match port {
        LocalPort::Port(p) => Some(p),
        LocalPort::Ephemeral => None,
    }
}

/// Connects that failed, by owner, destination and error.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailedConnects {
    pub total: u64,
    pub rows: Ranked<FailedConnectCount, u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailedConnectCount {
    pub pid: Option<u32>,
    pub comm: Option<Comm>,
    pub addr: IpAddr,
    pub port: u16,
    /// `ECONNREFUSED`, `ETIMEDOUT`, …; null when the socket closed without
    /// one (the connecting process gave up).
    pub error: Option<String>,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointCount {
    pub addr: IpAddr,
    /// Null for accepted connections: their clients' ports, grouped.
    pub port: Option<u16>,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimeWaitProducers {
    /// Connections that entered TIME_WAIT (their active closer holds it).
    pub total: u64,
    pub by_process: Ranked<ProcessCount, u64>,
    pub by_local_port: Ranked<PortCount, u64>,
    pub by_remote: Ranked<EndpointCount, u64>,
    pub by_container: Ranked<ContainerCount, u64>,
}

/// A container (short id or systemd unit), or the cgroup path outside
/// containers; `null` where the owner's cgroup is unknown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerCount {
    pub container: Option<Arc<str>>,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerSides {
    pub container: Option<Arc<str>>,
    #[serde(flatten)]
    pub sides: Sides,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcessSides {
    pub pid: Option<u32>,
    pub comm: Option<Comm>,
    #[serde(flatten)]
    pub sides: Sides,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CommSides {
    pub comm: Option<Comm>,
    #[serde(flatten)]
    pub sides: Sides,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcessEnds {
    pub pid: Option<u32>,
    pub comm: Option<Comm>,
    #[serde(flatten)]
    pub ends: Ends,
}

/// How followed timewait sockets ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimewaitEnds {
    /// How they are followed: "fentry" (exact hooks), "sock_diag"
    /// (polling), or which part each measures.
    pub mode: String,
    /// Connections in a timewait socket now (their TIME_WAIT time is
    /// recorded when they end).
    pub in_timewait_now: u64,
    /// Of those, in FIN_WAIT2 (waiting for the peer's FIN) and TIME_WAIT.
    pub in_fin_wait2_now: u64,
    pub in_time_wait_now: u64,
    /// The ended ones seen, by their last substate: whether the connection
    /// reached TIME_WAIT or expired in FIN_WAIT2. Those never seen are
    /// `total.unobserved`.
    pub ended_in: Reached,
    pub total: Ends,
    pub by_process: Ranked<ProcessEnds, Ends>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortSides {
    /// Null for the ephemeral ports of connected sockets, grouped.
    pub port: Option<u16>,
    #[serde(flatten)]
    pub sides: Sides,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AddrSides {
    pub addr: IpAddr,
    #[serde(flatten)]
    pub sides: Sides,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Closes {
    pub total: Sides,
    /// Connections that closed without a side: failed connects, or sockets
    /// first seen as they closed.
    pub unknown: u64,
    pub by_process: Ranked<ProcessSides, Sides>,
    pub by_comm: Ranked<CommSides, Sides>,
    pub by_local_port: Ranked<PortSides, Sides>,
    pub by_remote_addr: Ranked<AddrSides, Sides>,
    pub by_container: Ranked<ContainerSides, Sides>,
}

/// A distribution in nanoseconds. Percentiles and the maximum are upper
/// bounds within 1 % (HdrHistogram's highest equivalent value); the minimum
/// is a lower bound within 1 %.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Distribution {
    pub count: u64,
    pub min_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

/// Time in a state: what userspace recorded (timewait phases; everything
/// outside summary mode), merged with the kernel's histogram in summary
/// mode, whose buckets read back as their midpoints (±6.25 %) and whose
/// extremes are exact.
fn time_in_state(user: &Histogram<u64>, kernel: Option<&StateHistogram>) -> Option<Distribution> {
    let Some(kernel) = kernel.filter(|k| k.count() > 0) else { return Distribution::of(user) };
    let mut merged = user.clone();
    for (bucket, &n) in kernel.buckets.iter().enumerate().filter(|(_, n)| **n > 0) {
        merged.saturating_record_n(tcpstate_ebpf::hist_bucket_ns(bucket).max(HIST_LOW_NS), n);
    }
    let (kmin, kmax) = (kernel.min_ns.max(HIST_LOW_NS), kernel.max_ns.max(HIST_LOW_NS));
    let min_ns = if user.is_empty() { kmin } else { user.min().min(kmin) };
    let max_ns = if user.is_empty() { kmax } else { user.max().max(kmax) };
    // Midpoints may fall outside the exact extremes.
    Distribution::of(&merged).map(|d| Distribution {
        count: d.count,
        min_ns,
        p50_ns: d.p50_ns.clamp(min_ns, max_ns),
        p90_ns: d.p90_ns.clamp(min_ns, max_ns),
        p99_ns: d.p99_ns.clamp(min_ns, max_ns),
        max_ns,
    })
}

impl Distribution {
    fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Self {
            count: h.len(),
            min_ns: h.min(),
            p50_ns: h.value_at_quantile(0.50),
            p90_ns: h.value_at_quantile(0.90),
            p99_ns: h.value_at_quantile(0.99),
            max_ns: h.max(),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StateDistribution {
    pub state: &'static str,
    #[serde(flatten)]
    pub distribution: Distribution,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StateCount {
    pub state: &'static str,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sockets {
    /// Sockets followed now, by state.
    pub by_state: Vec<StateCount>,
    pub followed: u64,
    /// Sockets seen but not followed because the table was full.
    pub untracked: u64,
    /// The kernel's socket table, which follows every TCP socket (filtered
    /// or not): entries now, and its capacity (`--max-sockets`).
    pub table_entries: u64,
    pub table_capacity: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TransitionCount {
    pub old: &'static str,
    pub new: &'static str,
    pub count: u64,
}

impl TransitionCount {
    /// The kernel's exact counts, per pair.
    pub fn all(counters: &KernelCounters) -> Vec<Self> {
        counters
            .transitions
            .iter()
            .map(|(&(old, new), &count)| Self { old: old.name(), new: new.name(), count })
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Losses {
    pub events_received: u64,
    /// Events lost because the ring buffer was full.
    pub events_dropped: u64,
    pub socket_insert_failed: u64,
    pub unreadable_records: u64,
    /// Tracepoint hits the kernel skipped (another BPF program was running).
    pub tracepoint_hits_skipped: Option<u64>,
    /// Sockets whose life has a hole: a transition the kernel skipped.
    pub sockets_with_missed_transitions: u64,
    /// Live sockets the kernel's socket table forgot to make room for
    /// others; their later transitions have no owner or timing.
    pub sockets_evicted: u64,
}

impl Losses {
    pub fn of(counters: &KernelCounters) -> Self {
        Self {
            events_received: counters.received,
            events_dropped: counters.ringbuf_full,
            socket_insert_failed: counters.socket_insert_failed,
            unreadable_records: counters.read_failed,
            tracepoint_hits_skipped: counters.recursion_misses,
            sockets_with_missed_transitions: counters.sockets_with_gaps,
            sockets_evicted: counters.sockets_evicted,
        }
    }
}

/// The last line of `trace --json`: the kernel's exact counts over the run,
/// and every way an event can be lost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TraceSummary {
    pub kind: &'static str,
    /// RFC 3339, UTC: when the run ended.
    pub ended: String,
    pub transitions: Vec<TransitionCount>,
    pub total_transitions: u64,
    pub losses: Losses,
}

impl TraceSummary {
    pub fn of(counters: &KernelCounters, ended: String) -> Self {
        Self {
            kind: "summary",
            ended,
            transitions: TransitionCount::all(counters),
            total_transitions: counters.total_transitions(),
            losses: Losses::of(counters),
        }
    }
}

/// What a report came from: the tool, the host, the time span, the filters.
/// Also the first line of a `trace --json` recording.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SessionInfo {
    pub tool: String,
    pub version: String,
    pub host: String,
    /// The kernel release (`uname -r`).
    pub kernel: String,
    /// RFC 3339, UTC: when the tracer attached, and when the report was made.
    pub started: String,
    #[serde(default)]
    pub ended: String,
    /// The filters in force, by flag (`port`, `pid`, `netns`, …); empty:
    /// every TCP socket.
    pub filters: std::collections::BTreeMap<String, Vec<String>>,
    /// How timewait sockets were followed, if they were.
    pub timewait: Option<String>,
    /// `ip_local_port_range`, which the local-port tables group.
    pub ephemeral_ports: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub session: SessionInfo,
    /// Seconds the aggregates cover.
    pub elapsed_s: f64,
    pub time_wait: TimeWaitProducers,
    /// Null when timewait sockets are not followed (`--no-timewait`).
    pub timewait_ends: Option<TimewaitEnds>,
    pub closes: Closes,
    pub failed_connects: FailedConnects,
    /// The range whose connected ports the local-port tables group (as
    /// `port: null`), e.g. "32768-60999"; null when unknown.
    pub ephemeral_ports: Option<String>,
    pub time_in_state: Vec<StateDistribution>,
    /// From first sight to CLOSE, for connections seen from their start.
    pub lifetime: Option<Distribution>,
    pub sockets: Sockets,
    /// Kernel counters: exact even when events were dropped.
    pub transitions: Vec<TransitionCount>,
    pub losses: Losses,
    /// Growth of the kernel's TcpExt TIME_WAIT counters (TW, TWKilled,
    /// TWRecycled, TCPTimeWaitOverflow), per network namespace: tcpstate's
    /// own, and each one traced sockets live in; to set beside what
    /// tcpstate measured.
    pub tcpext: Vec<super::counters::NamespaceTcpExt>,
}

fn ranked<K, V, R>(table: &CappedTable<K, V>, n: usize, row: impl Fn(K, V) -> R) -> Ranked<R, V>
where
    K: std::hash::Hash + Eq + Clone + Ord,
    V: Tally,
{
    let (rows, other) = table.top(n, V::score);
    Ranked { rows: rows.into_iter().map(|(k, v)| row(k, v)).collect(), other }
}

impl Report {
    pub fn build(agg: &Aggregator, counters: &KernelCounters, top: usize, elapsed_s: f64) -> Self {
        let process = |k: ProcessKey| (k.pid, k.comm);
        Self {
            elapsed_s,
            time_wait: TimeWaitProducers {
                total: agg.time_wait,
                by_process: ranked(&agg.time_wait_by_process, top, |k, count| {
                    let (pid, comm) = process(k);
                    ProcessCount { pid, comm, count }
                }),
                by_local_port: ranked(&agg.time_wait_by_lport, top, |port, count| PortCount {
                    port: port_of(port),
                    count,
                }),
                by_remote: ranked(&agg.time_wait_by_remote, top, |(addr, port), count| EndpointCount {
                    addr,
                    port,
                    count,
                }),
                by_container: ranked(&agg.time_wait_by_container, top, |container, count| ContainerCount {
                    container,
                    count,
                }),
            },
            timewait_ends: agg.follows_timewait.map(|sources| TimewaitEnds {
                mode: sources.describe(),
                in_timewait_now: agg.in_timewait,
                in_fin_wait2_now: agg.in_substate[0],
                in_time_wait_now: agg.in_substate[1],
                ended_in: agg.ended_in,
                total: agg.timewait_ends,
                by_process: ranked(&agg.timewait_ends_by_process, top, |k, ends| {
                    let (pid, comm) = process(k);
                    ProcessEnds { pid, comm, ends }
                }),
            }),
            closes: Closes {
                total: agg.closes,
                unknown: agg.closes_unknown,
                by_process: ranked(&agg.closes_by_process, top, |k, sides| {
                    let (pid, comm) = process(k);
                    ProcessSides { pid, comm, sides }
                }),
                by_comm: ranked(&agg.closes_by_comm, top, |comm, sides| CommSides { comm, sides }),
                by_local_port: ranked(&agg.closes_by_lport, top, |port, sides| PortSides {
                    port: port_of(port),
                    sides,
                }),
                by_remote_addr: ranked(&agg.closes_by_raddr, top, |addr, sides| AddrSides { addr, sides }),
                by_container: ranked(&agg.closes_by_container, top, |container, sides| ContainerSides {
                    container,
                    sides,
                }),
            },
            failed_connects: FailedConnects {
                total: agg.failed_connects,
                rows: ranked(&agg.failed_connects_by, top, |k, count| {
                    let (pid, comm) = process(k.process);
                    FailedConnectCount {
                        pid,
                        comm,
                        addr: k.remote.ip(),
                        port: k.remote.port(),
                        error: k.error.map(|e| e.name().into_owned()),
                        count,
                    }
                }),
            },
            ephemeral_ports: agg.ephemeral.map(|r| r.to_string()),
            time_in_state: TcpState::LIFECYCLE
                .iter()
                .filter_map(|&s| {
                    let kernel = counters.summary.as_ref().map(|k| &k.state_time[s.0 as usize]);
                    time_in_state(&agg.time_in_state[s.0 as usize], kernel)
                        .map(|distribution| StateDistribution { state: s.name(), distribution })
                })
                .collect(),
            lifetime: Distribution::of(&agg.lifetime),
            sockets: match &counters.summary {
                None => Sockets {
                    by_state: TcpState::LIFECYCLE
                        .iter()
                        .map(|&s| StateCount { state: s.name(), count: agg.sockets.count(s) })
                        .filter(|c| c.count > 0)
                        .collect(),
                    followed: agg.sockets.len() as u64,
                    untracked: agg.sockets.untracked,
                    table_entries: counters.sockets_in_table,
                    table_capacity: counters.socket_table_capacity,
                },
                // The kernel's socket table is the one that follows them.
                Some(k) => {
                    let count = |s: TcpState| k.gauges[s.0 as usize].max(0) as u64;
                    Sockets {
                        by_state: TcpState::LIFECYCLE
                            .iter()
                            .map(|&s| StateCount { state: s.name(), count: count(s) })
                            .filter(|c| c.count > 0)
                            .collect(),
                        followed: TcpState::LIFECYCLE.iter().map(|&s| count(s)).sum(),
                        untracked: counters.socket_insert_failed,
                        table_entries: counters.sockets_in_table,
                        table_capacity: counters.socket_table_capacity,
                    }
                }
            },
            transitions: TransitionCount::all(counters),
            losses: Losses::of(counters),
            tcpext: Default::default(),
            session: SessionInfo::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::aggregate::tests::server_closes_first;

    #[test]
    fn report_leads_with_the_answers() {
        let mut agg = Aggregator::new(2, 64);
        for sk in 0..4 {
            server_closes_first(&mut agg, sk);
        }
        let mut counters = KernelCounters { received: 20, ringbuf_full: 1, ..Default::default() };
        counters.transitions.insert((TcpState::FIN_WAIT2, TcpState::CLOSE), 4);
        let r = Report::build(&agg, &counters, 1, 2.0);
        assert_eq!(r.time_wait.total, 4);
        assert_eq!(
            r.time_wait.by_process.rows,
            [ProcessCount { pid: Some(7), comm: Some(Comm::from("nginx")), count: 4 }]
        );
        // Four remote endpoints, two rows kept by the cap, one shown: the rest is "other".
        assert_eq!(r.time_wait.by_remote.rows.len(), 1);
        assert_eq!(r.time_wait.by_remote.rows[0].count + r.time_wait.by_remote.other, 4);
        assert_eq!(r.closes.total.active, 4);
        assert_eq!(r.transitions, [TransitionCount { old: "FIN_WAIT2", new: "CLOSE", count: 4 }]);
        assert_eq!(r.losses.events_dropped, 1);
        let states: Vec<_> = r.time_in_state.iter().map(|d| d.state).collect();
        assert_eq!(states, ["SYN_RECV", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2"]);

        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["closes"]["by_process"]["rows"][0]["active"], 4);
        let p50 = json["time_in_state"][0]["p50_ns"].as_u64().unwrap() as f64;
        assert!((2e6..2e6 * 1.01).contains(&p50), "{p50}");
        assert!(json["lifetime"]["count"].as_u64() == Some(4));
    }
}
