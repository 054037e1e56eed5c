//! The kernel's own counters: exact even when events were dropped.

use std::collections::BTreeMap;

use tcpstate_ebpf::{HIST_BUCKETS, TCP_STATE_COUNT};

use super::state::TcpState;

/// Time spent in one state, as the kernel aggregates it in summary mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateHistogram {
    /// Counts per `tcpstate_ebpf::hist_bucket`.
    pub buckets: Vec<u64>,
    /// Exact extremes since the program started; `min_ns` 0 if empty.
    pub min_ns: u64,
    pub max_ns: u64,
    /// The exact total of the times counted.
    pub sum_ns: u64,
}

impl Default for StateHistogram {
    fn default() -> Self {
        Self { buckets: vec![0; HIST_BUCKETS], min_ns: 0, max_ns: 0, sum_ns: 0 }
    }
}

impl StateHistogram {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// What the kernel aggregates in summary mode (`stats`, `top`), where only
/// closes are streamed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSummary {
    /// Indexed by state number: time spent in it, by the transition out.
    pub state_time: Vec<StateHistogram>,
    /// Sockets in each state now, among those the program has seen.
    pub gauges: [i64; TCP_STATE_COUNT],
}

impl KernelSummary {
    /// Histograms since `earlier` (extremes stay since the start); gauges
    /// are levels, so they stay as they are.
    fn since(&self, earlier: &Self) -> Self {
        let state_time = self
            .state_time
            .iter()
            .zip(&earlier.state_time)
            .map(|(now, then)| StateHistogram {
                buckets: now.buckets.iter().zip(&then.buckets).map(|(a, b)| a.saturating_sub(*b)).collect(),
                sum_ns: now.sum_ns.wrapping_sub(then.sum_ns),
                ..now.clone()
            })
            .collect();
        Self { state_time, gauges: self.gauges }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Transitions that passed the filters, per (old, new).
    pub transitions: BTreeMap<(TcpState, TcpState), u64>,
    /// Events lost because the ring buffer was full.
    pub ringbuf_full: u64,
    pub socket_insert_failed: u64,
    /// Sockets seen to have missed transitions (the kernel skipped hits).
    pub sockets_with_gaps: u64,
    /// Live sockets the socket table forgot to make room (an LRU evicts
    /// instead of failing): their later transitions lose owner and timing.
    pub sockets_evicted: u64,
    /// Sockets in the kernel's table now, and its capacity.
    pub sockets_in_table: u64,
    pub socket_table_capacity: u64,
    /// Tracepoint records the program could not read.
    pub read_failed: u64,
    /// Tracepoint hits the kernel skipped; `None` where it does not say.
    pub recursion_misses: Option<u64>,
    /// Records received by userspace, and how many were malformed.
    pub received: u64,
    pub malformed: u64,
    /// In summary mode, the in-kernel aggregates.
    pub summary: Option<KernelSummary>,
}

impl KernelCounters {
    pub fn total_transitions(&self) -> u64 {
        self.transitions.values().sum()
    }

    /// What changed since `earlier`: for rates, and for `top`'s reset.
    pub fn since(&self, earlier: &Self) -> Self {
        let before = |k| earlier.transitions.get(k).copied().unwrap_or(0);
        Self {
            transitions: self.transitions.iter().map(|(k, &n)| (*k, n.saturating_sub(before(k)))).collect(),
            ringbuf_full: self.ringbuf_full.saturating_sub(earlier.ringbuf_full),
            socket_insert_failed: self.socket_insert_failed.saturating_sub(earlier.socket_insert_failed),
            sockets_with_gaps: self.sockets_with_gaps.saturating_sub(earlier.sockets_with_gaps),
            sockets_evicted: self.sockets_evicted.saturating_sub(earlier.sockets_evicted),
            // Levels, not counts.
            sockets_in_table: self.sockets_in_table,
            socket_table_capacity: self.socket_table_capacity,
            read_failed: self.read_failed.saturating_sub(earlier.read_failed),
            recursion_misses: self
                .recursion_misses
                .map(|n| n.saturating_sub(earlier.recursion_misses.unwrap_or(0))),
            received: self.received.saturating_sub(earlier.received),
            malformed: self.malformed.saturating_sub(earlier.malformed),
            summary: match (&self.summary, &earlier.summary) {
                (Some(now), Some(then)) => Some(now.since(then)),
                (now, _) => now.clone(),
            },
        }
    }
}

/// What a sink reads on its tick: the kernel's counters, and how the
/// TcpExt counters (`/proc/net/netstat`) moved in each network namespace
/// the traced sockets live in.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Readings {
    pub counters: KernelCounters,
    pub tcpext: Vec<NamespaceTcpExt>,
    /// What tcpstate itself costs.
    pub process: ProcessUsage,
}

/// How one network namespace's TcpExt counters moved.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NamespaceTcpExt {
    /// The namespace's inode.
    pub netns: u32,
    /// tcpstate's own namespace.
    pub own: bool,
    /// Since the session began; else since the namespace's first traced
    /// transition.
    pub since_start: bool,
    pub counters: BTreeMap<String, u64>,
}

/// tcpstate's own CPU time and memory.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessUsage {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas() {
        let mut before = KernelCounters { ringbuf_full: 1, recursion_misses: Some(2), ..Default::default() };
        before.transitions.insert((TcpState::CLOSE, TcpState::SYN_SENT), 4);
        let mut now = KernelCounters { ringbuf_full: 5, recursion_misses: Some(2), ..Default::default() };
        now.transitions.insert((TcpState::CLOSE, TcpState::SYN_SENT), 10);
        now.transitions.insert((TcpState::CLOSE, TcpState::LISTEN), 1);
        let d = now.since(&before);
        assert_eq!(d.ringbuf_full, 4);
        assert_eq!(d.recursion_misses, Some(0));
        assert_eq!(d.transitions[&(TcpState::CLOSE, TcpState::SYN_SENT)], 6);
        assert_eq!(d.transitions[&(TcpState::CLOSE, TcpState::LISTEN)], 1);
    }

    #[test]
    fn summary_deltas_keep_levels() {
        let summary = |n: u64, gauge: i64| {
            let mut state_time = vec![StateHistogram::default(); TCP_STATE_COUNT];
            state_time[1].buckets[7] = n;
            (state_time[1].min_ns, state_time[1].max_ns) = (5, 9);
            KernelSummary { state_time, gauges: [gauge; TCP_STATE_COUNT] }
        };
        let before = KernelCounters { summary: Some(summary(4, 3)), ..Default::default() };
        let now = KernelCounters { summary: Some(summary(10, 7)), ..Default::default() };
        let d = now.since(&before).summary.unwrap();
        assert_eq!((d.state_time[1].count(), d.state_time[1].buckets[7]), (6, 6));
        assert_eq!((d.state_time[1].min_ns, d.gauges[1]), (5, 7));
    }
}
