//! `tcpstate export`'s view: the aggregate as Prometheus metrics. Every
//! tick (at most once a second) it takes a [`Snapshot`] of what the metrics
//! say; a scrape encodes the latest snapshot with `prometheus-client`, so a
//! scrape costs the same however fast events come. The metric set is
//! documented in the README ("Fleets").

use std::{
    io,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};
use tcpstate_ebpf::{HIST_MIN_EXP, HIST_SUB_BITS, TCP_STATE_COUNT};

use super::{AggregateView, ViewRequest};
use crate::model::{
    aggregate::{Aggregator, Sides, Workload},
    counters::{KernelCounters, ProcessUsage, Readings, StateHistogram},
    state::{CloseSide, TcpState},
    timewait::Sources,
};

/// How often the snapshot is refreshed: a scrape is at most this stale.
const REFRESH: Duration = Duration::from_secs(1);

/// Histogram bucket bounds, in powers of two of nanoseconds: every second
/// power from 2^12 ns (~4 µs) to 2^42 ns (~73 min). Each is a boundary of
/// the kernel's log-linear buckets, so the cumulative counts are exact.
const BOUND_EXPS: [u32; 16] = [12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 42];

/// One histogram, as the exposition wants it.
#[derive(Clone, Debug, Default, PartialEq)]
struct Buckets {
    sum_seconds: f64,
    count: u64,
    /// (upper bound in seconds, count in that bucket alone); the encoder
    /// accumulates them, and a last bound of infinity is `+Inf`.
    buckets: Vec<(f64, u64)>,
}

/// Per-bucket counts from counts below each bound, closed by `+Inf`.
fn from_cumulative(cumulative: Vec<(f64, u64)>, count: u64) -> Vec<(f64, u64)> {
    let mut below = 0;
    let mut buckets: Vec<(f64, u64)> = cumulative
        .into_iter()
        .map(|(bound, n)| {
            let own = n.saturating_sub(below);
            below = below.max(n);
            (bound, own)
        })
        .collect();
    buckets.push((f64::INFINITY, count.saturating_sub(below)));
    buckets
}

impl Buckets {
    /// From a kernel histogram: counts summed up to each bound.
    fn of_kernel(h: &StateHistogram) -> Self {
        let per_power = 1usize << HIST_SUB_BITS;
        let cumulative: Vec<(f64, u64)> = BOUND_EXPS
            .iter()
            .map(|&exp| {
                // The buckets below index `below` hold exactly the values
                // under 2^exp (the first one also those under 2^HIST_MIN_EXP).
                let below = (exp - HIST_MIN_EXP) as usize * per_power;
                (2f64.powi(exp as i32) / 1e9, h.buckets.iter().take(below).sum())
            })
            .collect();
        Self {
            sum_seconds: h.sum_ns as f64 / 1e9,
            count: h.count(),
            buckets: from_cumulative(cumulative, h.count()),
        }
    }

    /// From one of the aggregator's HdrHistograms (the timewait follower's
    /// times); the sum is within its 1 % precision.
    fn of_hdr(h: &hdrhistogram::Histogram<u64>) -> Self {
        let cumulative: Vec<(f64, u64)> = BOUND_EXPS
            .iter()
            .map(|&exp| {
                let bound = 1u64 << exp;
                (
                    bound as f64 / 1e9,
                    h.iter_recorded()
                        .filter(|v| v.value_iterated_to() < bound)
                        .map(|v| v.count_at_value())
                        .sum(),
                )
            })
            .collect();
        Self {
            sum_seconds: h.mean() * h.len() as f64 / 1e9,
            count: h.len(),
            buckets: from_cumulative(cumulative, h.len()),
        }
    }
}

/// What the metrics say, at one instant.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    transitions: Vec<((TcpState, TcpState), u64)>,
    sockets: Vec<(TcpState, i64)>,
    state_durations: Vec<(TcpState, Buckets)>,
    timewait_durations: Vec<(&'static str, Buckets)>,
    timewait_mode: Option<Sources>,
    /// Followed timewait sockets now, in FIN_WAIT2 and in TIME_WAIT.
    timewait_sockets: [u64; 2],
    timewait_ends: Vec<(&'static str, u64)>,
    closes: Vec<(Workload, Sides)>,
    closes_other: Sides,
    time_wait_entries: Vec<(Workload, u64)>,
    time_wait_other: u64,
    losses: Vec<(&'static str, &'static str, u64)>,
    process: ProcessUsage,
}

impl Snapshot {
    pub fn of(agg: &Aggregator, counters: &KernelCounters, process: ProcessUsage) -> Self {
        let summary = counters.summary.as_ref();
        let (closes, closes_other) = agg.closes_by_workload.top(usize::MAX, Sides::total);
        let (time_wait_entries, time_wait_other) = agg.time_wait_by_workload.top(usize::MAX, |n| *n);
        let ends = agg.timewait_ends;
        Self {
            transitions: counters.transitions.iter().map(|(&k, &n)| (k, n)).collect(),
            sockets: summary.map_or_else(Vec::new, |s| {
                TcpState::LIFECYCLE
                    .iter()
                    .map(|&st| (st, s.gauges[st.0 as usize % TCP_STATE_COUNT].max(0)))
                    .collect()
            }),
            state_durations: summary.map_or_else(Vec::new, |s| {
                TcpState::LIFECYCLE
                    .iter()
                    .filter(|st| s.state_time[st.0 as usize].count() > 0)
                    .map(|&st| (st, Buckets::of_kernel(&s.state_time[st.0 as usize])))
                    .collect()
            }),
            timewait_durations: agg
                .follows_timewait
                .map(|_| {
                    vec![
                        ("fin_wait2", Buckets::of_hdr(&agg.time_in_state[TcpState::FIN_WAIT2.0 as usize])),
                        ("time_wait", Buckets::of_hdr(&agg.time_in_state[TcpState::TIME_WAIT.0 as usize])),
                    ]
                })
                .unwrap_or_default(),
            timewait_mode: agg.follows_timewait,
            timewait_sockets: agg.in_substate,
            timewait_ends: vec![
                ("expired", ends.expired),
                ("reused", ends.reused),
                ("killed", ends.killed),
                ("unobserved", ends.unobserved),
            ],
            closes,
            closes_other,
            time_wait_entries,
            time_wait_other,
            losses: vec![
                ("events_dropped", "ring buffer full", counters.ringbuf_full),
                ("socket_insert_failures", "socket table inserts that failed", counters.socket_insert_failed),
                (
                    "tracepoint_hits_skipped",
                    "hits the kernel skipped (another BPF program ran)",
                    counters.recursion_misses.unwrap_or(0),
                ),
                (
                    "sockets_with_missed_transitions",
                    "sockets whose life has a hole",
                    counters.sockets_with_gaps,
                ),
                ("sockets_evicted", "live sockets the full socket table forgot", counters.sockets_evicted),
            ],
            process,
        }
    }
}

/// The latest snapshot, shared between the session (which writes it) and
/// the HTTP server (which encodes it on each scrape).
#[derive(Clone, Debug, Default)]
pub struct Shared(Arc<Mutex<Snapshot>>);

impl Shared {
    fn set(&self, snapshot: Snapshot) {
        // A poisoned lock only means a panicked scrape: the data is whole.
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = snapshot;
    }

    /// The exposition: OpenMetrics (what Prometheus asks for), or the
    /// classic Prometheus text format (curl, promtool, older scrapers).
    pub fn encode(&self, openmetrics: bool) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::with_prefix("tcpstate");
        registry.register_collector(Box::new(self.clone()));
        let mut text = String::new();
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut text, &registry)?;
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
        }
        Ok(text)
    }
}

fn labels<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    pairs.to_vec()
}

fn workload_labels(w: &Workload) -> [(&'static str, String); 2] {
    [
        ("container", w.0.as_deref().unwrap_or("").to_string()),
        ("comm", w.1.map_or(String::new(), |c| c.as_str().to_string())),
    ]
}

fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    rows: &[(&str, &Buckets)],
) -> std::fmt::Result {
    if rows.is_empty() {
        return Ok(());
    }
    let mut metric = e.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (value, b) in rows {
        let set = [(label, *value)];
        metric.encode_family(&set)?.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            b.sum_seconds,
            b.count,
            &b.buckets,
            None,
        )?;
    }
    Ok(())
}

impl Collector for Shared {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        {
            let mut m = e.encode_descriptor("build", "tcpstate's version", None, MetricType::Info)?;
            m.encode_info(&labels(&[("version", env!("CARGO_PKG_VERSION"))]))?;
        }
        {
            let mut m = e.encode_descriptor(
                "transitions",
                "TCP state transitions of the sockets selected, from the kernel's exact counters",
                None,
                MetricType::Counter,
            )?;
            for ((old, new), n) in &s.transitions {
                ConstCounter::new(*n)
                    .encode(m.encode_family(&[("from", old.name()), ("to", new.name())])?)?;
            }
        }
        if !s.sockets.is_empty() {
            let mut m = e.encode_descriptor(
                "sockets",
                "Sockets in each state now, among those tcpstate has seen since it started",
                None,
                MetricType::Gauge,
            )?;
            for (state, n) in &s.sockets {
                ConstGauge::new(*n).encode(m.encode_family(&[("state", state.name())])?)?;
            }
        }
        let durations: Vec<(&str, &Buckets)> =
            s.state_durations.iter().map(|(st, b)| (st.name(), b)).collect();
        histogram(
            &mut e,
            "state_duration",
            "Time sockets spent in a state, counted when they left it (kernel histograms)",
            "state",
            &durations,
        )?;
        let tw: Vec<(&str, &Buckets)> = s.timewait_durations.iter().map(|(p, b)| (*p, b)).collect();
        histogram(
            &mut e,
            "timewait_duration",
            "Time connections spent in a timewait socket's phases (FIN_WAIT2 whole, TIME_WAIT), counted when the phase ended",
            "phase",
            &tw,
        )?;
        if let Some(mode) = s.timewait_mode {
            {
                let mut m = e.encode_descriptor(
                    "timewait_mode",
                    "How timewait sockets are followed: fentry hooks or sock_diag polling",
                    None,
                    MetricType::Info,
                )?;
                m.encode_info(&labels(&[("substates", mode.substates.name()), ("ends", mode.ends.name())]))?;
            }
            {
                let mut m = e.encode_descriptor(
                    "timewait_sockets",
                    "Connections in a timewait socket now, among those followed",
                    None,
                    MetricType::Gauge,
                )?;
                for (substate, n) in ["FIN_WAIT2", "TIME_WAIT"].into_iter().zip(s.timewait_sockets) {
                    ConstGauge::new(n as i64).encode(m.encode_family(&[("substate", substate)])?)?;
                }
            }
            let mut m = e.encode_descriptor(
                "timewait_ends",
                "Followed timewait sockets that ended, by cause",
                None,
                MetricType::Counter,
            )?;
            for (cause, n) in &s.timewait_ends {
                ConstCounter::new(*n).encode(m.encode_family(&[("cause", *cause)])?)?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                "closes",
                "Connections closed, by side, container and process name (the first --max-series workloads; the rest under container=\"other\")",
                None,
                MetricType::Counter,
            )?;
            for (w, sides) in &s.closes {
                let base = workload_labels(w);
                for side in CloseSide::ALL {
                    let set = [
                        ("side", side.name().to_string()),
                        (base[0].0, base[0].1.clone()),
                        (base[1].0, base[1].1.clone()),
                    ];
                    ConstCounter::new(sides.get(side)).encode(m.encode_family(&set)?)?;
                }
            }
            for side in CloseSide::ALL {
                let set = [("side", side.name()), ("container", "other"), ("comm", "other")];
                ConstCounter::new(s.closes_other.get(side)).encode(m.encode_family(&set)?)?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                "time_wait_entries",
                "Connections handed to a timewait socket (TIME_WAIT, or FIN_WAIT2 until the peer's FIN), by container and process name of their active closer",
                None,
                MetricType::Counter,
            )?;
            for (w, n) in &s.time_wait_entries {
                ConstCounter::new(*n).encode(m.encode_family(&workload_labels(w))?)?;
            }
            ConstCounter::new(s.time_wait_other)
                .encode(m.encode_family(&[("container", "other"), ("comm", "other")])?)?;
        }
        for (name, help, n) in &s.losses {
            let m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(*n).encode(m)?;
        }
        {
            let m = e.encode_descriptor(
                "process_cpu",
                "tcpstate's own CPU time, user and system",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?;
            ConstCounter::new(s.process.cpu_seconds).encode(m)?;
        }
        let m = e.encode_descriptor(
            "process_resident_memory",
            "tcpstate's resident memory",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        ConstGauge::new(s.process.rss_bytes as i64).encode(m)?;
        Ok(())
    }
}

/// The session's view for `export`: refreshes the shared snapshot.
pub struct MetricsView {
    shared: Shared,
    last: Option<Instant>,
}

impl MetricsView {
    pub fn new(shared: Shared) -> Self {
        Self { shared, last: None }
    }

    /// Takes a snapshot now, whatever the time since the last.
    pub fn refresh(&mut self, aggregator: &Aggregator, readings: &Readings) {
        self.shared.set(Snapshot::of(aggregator, &readings.counters, readings.process));
        self.last = Some(Instant::now());
    }
}

impl AggregateView for MetricsView {
    fn tick(
        &mut self,
        aggregator: &Aggregator,
        read: &dyn Fn() -> io::Result<Readings>,
    ) -> io::Result<ViewRequest> {
        if self.last.is_none_or(|at| at.elapsed() >= REFRESH) {
            self.refresh(aggregator, &read()?);
        }
        Ok(ViewRequest::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        aggregate::tests::step,
        cgroup::Cgroup,
        counters::KernelSummary,
        state::CloseSide,
        transition::{Comm, Owner},
    };

    /// A connection of `comm` in `cgroup` closing first into TIME_WAIT.
    fn active_close(agg: &mut Aggregator, n: u64, comm: &str, cgroup: &str) {
        let mut t = step(n, TcpState::FIN_WAIT2, TcpState::CLOSE, Some(CloseSide::Active));
        t.owner = Some(Owner {
            pid: 1,
            comm: Comm::from(comm),
            from_listener: false,
            at_start: false,
            cgroup_id: 1,
        });
        t.cgroup = Some(Cgroup::of_path(cgroup));
        agg.observe(&t);
    }

    fn encoded(agg: &Aggregator, counters: &KernelCounters) -> String {
        let shared = Shared::default();
        shared.set(Snapshot::of(agg, counters, ProcessUsage { cpu_seconds: 1.5, rss_bytes: 4096 }));
        shared.encode(true).unwrap()
    }

    #[test]
    fn producers_are_bounded_by_max_series() {
        let mut agg = Aggregator::new(16, 4096).workload_rows(10);
        for i in 0..1000 {
            active_close(&mut agg, i, &format!("w{i}"), "/system.slice/app.service");
        }
        let text = encoded(&agg, &KernelCounters::default());
        let series: Vec<&str> =
            text.lines().filter(|l| l.starts_with("tcpstate_time_wait_entries_total{")).collect();
        assert_eq!(series.len(), 11, "{text}");
        let sum: f64 = series.iter().map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap()).sum();
        assert_eq!(sum, 1000.0, "none lost: the rest under other");
        assert!(
            text.contains("tcpstate_time_wait_entries_total{container=\"other\",comm=\"other\"} 990"),
            "{text}"
        );
        assert!(
            text.contains("tcpstate_time_wait_entries_total{container=\"app.service\",comm=\"w0\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn kernel_histograms_and_counters() {
        let mut summary = KernelSummary {
            state_time: vec![StateHistogram::default(); TCP_STATE_COUNT],
            gauges: [0; TCP_STATE_COUNT],
        };
        let est = TcpState::ESTABLISHED.0 as usize;
        // 3 µs, 1 ms and 2 s in ESTABLISHED.
        for ns in [3_000u64, 1_000_000, 2_000_000_000] {
            summary.state_time[est].buckets[tcpstate_ebpf::hist_bucket(ns)] += 1;
            summary.state_time[est].sum_ns += ns;
        }
        summary.gauges[est] = 5;
        let mut counters = KernelCounters { summary: Some(summary), ringbuf_full: 2, ..Default::default() };
        counters.transitions.insert((TcpState::ESTABLISHED, TcpState::FIN_WAIT1), 7);
        let text = encoded(&Aggregator::new(16, 64), &counters);
        let has = |line: &str| assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        has("tcpstate_transitions_total{from=\"ESTABLISHED\",to=\"FIN_WAIT1\"} 7");
        has("tcpstate_sockets{state=\"ESTABLISHED\"} 5");
        has("tcpstate_events_dropped_total 2");
        has("tcpstate_state_duration_seconds_count{state=\"ESTABLISHED\"} 3");
        has("tcpstate_state_duration_seconds_sum{state=\"ESTABLISHED\"} 2.001003");
        // 2^12 ns = 4.096 µs: the 3 µs; 2^20 ns ≈ 1.05 ms: also the 1 ms.
        has("tcpstate_state_duration_seconds_bucket{le=\"0.000004096\",state=\"ESTABLISHED\"} 1");
        has("tcpstate_state_duration_seconds_bucket{le=\"0.001048576\",state=\"ESTABLISHED\"} 2");
        has("tcpstate_state_duration_seconds_bucket{le=\"+Inf\",state=\"ESTABLISHED\"} 3");
        has("tcpstate_process_cpu_seconds_total 1.5");
        has("tcpstate_process_resident_memory_bytes 4096");
        assert!(text.contains("tcpstate_build_info{version=\""), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        let classic = Shared::default();
        classic.set(Snapshot::of(&Aggregator::new(16, 64), &counters, ProcessUsage::default()));
        let classic = classic.encode(false).unwrap();
        assert!(
            classic.contains("tcpstate_transitions_total{from=\"ESTABLISHED\",to=\"FIN_WAIT1\"} 7"),
            "{classic}"
        );
        assert!(!classic.contains("# EOF"), "{classic}");
    }
}
