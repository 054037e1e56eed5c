//! The aggregation model: running counts, close sides, TIME_WAIT producers
//! and time-in-state distributions, all in bounded memory.

use std::{
    hash::Hash,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use hdrhistogram::Histogram;
// Keys come from the local kernel, so a fast hasher is safe here; SipHash
// was a quarter of the per-event cost.
use rustc_hash::FxHashMap as HashMap;
use tcpstate_ebpf::TCP_STATE_COUNT;

use super::{
    filter::PortRange,
    state::{CloseSide, SockError, TcpState},
    timewait::{EndCause, Sources, TwEvent},
    transition::{Comm, Owner, Transition},
};

/// Rows an aggregate table keeps before counting new keys under "other".
pub const DEFAULT_TABLE_CAP: usize = 4096;
/// Sockets followed at once in userspace (the kernel has its own table).
pub const DEFAULT_SOCKET_CAP: usize = 262_144;
/// Histograms cover 1 µs to 1 h at two significant digits (±1 %, and
/// 512 ns steps below 64 µs, from the 1 µs lowest value); longer
/// times count as 1 h.
pub(crate) const HIST_LOW_NS: u64 = 1_000;
const HIST_HIGH_NS: u64 = 3_600_000_000_000;

/// Closes per side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Sides {
    pub active: u64,
    pub passive: u64,
    pub simultaneous: u64,
    pub reset: u64,
}

impl Sides {
    fn slot(&mut self, side: CloseSide) -> &mut u64 {
        match side {
            CloseSide::Active => &mut self.active,
            CloseSide::Passive => &mut self.passive,
            CloseSide::Simultaneous => &mut self.simultaneous,
            CloseSide::Reset => &mut self.reset,
        }
    }

    pub fn add(&mut self, side: CloseSide) {
        *self.slot(side) += 1;
    }

    pub fn get(&self, side: CloseSide) -> u64 {
        let mut copy = *self;
        *copy.slot(side)
    }

    pub fn total(&self) -> u64 {
        self.active + self.passive + self.simultaneous + self.reset
    }
}

/// Timewait sockets that ended, by the last substate they were seen in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reached {
    pub time_wait: u64,
    pub fin_wait2: u64,
}

/// How followed timewait sockets ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Ends {
    pub expired: u64,
    pub reused: u64,
    pub killed: u64,
    pub unobserved: u64,
}

impl Ends {
    fn slot(&mut self, cause: EndCause) -> &mut u64 {
        match cause {
            EndCause::Expired => &mut self.expired,
            EndCause::Reused => &mut self.reused,
            EndCause::Killed => &mut self.killed,
            EndCause::Unobserved => &mut self.unobserved,
        }
    }

    pub fn get(&self, cause: EndCause) -> u64 {
        let mut copy = *self;
        *copy.slot(cause)
    }
}

impl Tally for Ends {
    fn score(&self) -> u64 {
        EndCause::ALL.iter().map(|&c| self.get(c)).sum()
    }
    fn merge(&mut self, other: &Self) {
        for cause in EndCause::ALL {
            *self.slot(cause) += other.get(cause);
        }
    }
}

/// Something a table row can be ranked by.
pub trait Tally: Default + Clone {
    fn score(&self) -> u64;
    fn merge(&mut self, other: &Self);
}

impl Tally for u64 {
    fn score(&self) -> u64 {
        *self
    }
    fn merge(&mut self, other: &Self) {
        *self += other;
    }
}

impl Tally for Sides {
    fn score(&self) -> u64 {
        self.total()
    }
    fn merge(&mut self, other: &Self) {
        for side in CloseSide::ALL {
            *self.slot(side) += other.get(side);
        }
    }
}

/// A table that stops growing at `cap` keys; later keys count under `other`.
#[derive(Clone, Debug)]
pub struct CappedTable<K, V> {
    rows: HashMap<K, V>,
    other: V,
    cap: usize,
}

impl<K: Hash + Eq + Clone + Ord, V: Tally> CappedTable<K, V> {
    pub fn new(cap: usize) -> Self {
        Self { rows: HashMap::default(), other: V::default(), cap }
    }

    pub fn entry(&mut self, key: K) -> &mut V {
        if self.rows.len() >= self.cap && !self.rows.contains_key(&key) {
            return &mut self.other;
        }
        self.rows.entry(key).or_default()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The `n` highest-scoring rows (ties by key), and everything else merged.
    pub fn top(&self, n: usize, score: impl Fn(&V) -> u64) -> (Vec<(K, V)>, V) {
        let mut rows: Vec<_> = self.rows.iter().collect();
        rows.sort_by(|a, b| score(b.1).cmp(&score(a.1)).then_with(|| a.0.cmp(b.0)));
        let mut other = self.other.clone();
        for (_, v) in rows.iter().skip(n) {
            other.merge(v);
        }
        (rows.into_iter().take(n).map(|(k, v)| (k.clone(), v.clone())).collect(), other)
    }
}

/// `Aggregator::in_substate`'s slot for a timewait substate.
fn substate_slot(substate: TcpState) -> Option<usize> {
    match substate {
        TcpState::FIN_WAIT2 => Some(0),
        TcpState::TIME_WAIT => Some(1),
        _ => None,
    }
}

/// A workload as a fleet sees it: the owner's container (or cgroup) and its
/// process name, never a pid or a port, so that label sets stay few.
pub type Workload = (Option<Arc<str>>, Option<Comm>);

/// The owner a row is filed under; unknown owners share one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessKey {
    pub pid: Option<u32>,
    pub comm: Option<Comm>,
}

impl ProcessKey {
    fn of(owner: Option<&Owner>) -> Self {
        Self { pid: owner.map(|o| o.pid), comm: owner.map(|o| o.comm) }
    }
}

/// Sockets followed now, by state. Entries go when the socket closes; past
/// `cap` new sockets are counted but not followed.
#[derive(Clone, Debug)]
pub struct SocketTable {
    states: HashMap<u64, TcpState>,
    by_state: [u64; TCP_STATE_COUNT],
    cap: usize,
    pub untracked: u64,
}

impl SocketTable {
    fn new(cap: usize) -> Self {
        Self { states: HashMap::default(), by_state: [0; TCP_STATE_COUNT], cap, untracked: 0 }
    }

    fn observe(&mut self, t: &Transition) {
        if let Some(old) = self.states.remove(&t.skaddr) {
            self.by_state[old.0 as usize % TCP_STATE_COUNT] -= 1;
        }
        if t.new == TcpState::CLOSE {
            return;
        }
        if self.states.len() >= self.cap {
            self.untracked += 1;
            return;
        }
        self.states.insert(t.skaddr, t.new);
        self.by_state[t.new.0 as usize % TCP_STATE_COUNT] += 1;
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    pub fn count(&self, state: TcpState) -> u64 {
        self.by_state[state.0 as usize % TCP_STATE_COUNT]
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HIST_LOW_NS, HIST_HIGH_NS, 2).expect("constant bounds are valid")
}

/// A local port as the tables group it: the ports `connect()` took from the
/// ephemeral range are one row, not one each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LocalPort {
    Port(u16),
    Ephemeral,
}

/// A failed connect's key: its owner, where it went, and why it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FailedConnect {
    pub process: ProcessKey,
    pub remote: SocketAddr,
    pub error: Option<SockError>,
}

#[derive(Clone, Debug)]
pub struct Aggregator {
    pub sockets: SocketTable,
    pub time_in_state: Vec<Histogram<u64>>,
    pub lifetime: Histogram<u64>,
    pub closes: Sides,
    /// Connections that closed with no side: failed connects and sockets
    /// first seen as they closed.
    pub closes_unknown: u64,
    pub closes_by_process: CappedTable<ProcessKey, Sides>,
    pub closes_by_comm: CappedTable<Option<Comm>, Sides>,
    pub closes_by_lport: CappedTable<LocalPort, Sides>,
    pub closes_by_raddr: CappedTable<IpAddr, Sides>,
    /// By the owner's container (or cgroup, outside containers); `None`
    /// where it is unknown.
    pub closes_by_container: CappedTable<Option<Arc<str>>, Sides>,
    pub time_wait: u64,
    pub time_wait_by_process: CappedTable<ProcessKey, u64>,
    pub time_wait_by_lport: CappedTable<LocalPort, u64>,
    /// By remote address and port; an accepted socket's remote port is its
    /// client's ephemeral one, so those count under the address (`None`).
    pub time_wait_by_remote: CappedTable<(IpAddr, Option<u16>), u64>,
    pub time_wait_by_container: CappedTable<Option<Arc<str>>, u64>,
    /// Closes and TIME_WAIT entries by workload, for metrics: the first
    /// `workload_cap` workloads keep their own row for the whole run (a
    /// counter's series must not come and go), later ones count in `other`.
    pub closes_by_workload: CappedTable<Workload, Sides>,
    pub time_wait_by_workload: CappedTable<Workload, u64>,
    workload_cap: usize,
    /// Followed timewait sockets: how many are in one now, and how they
    /// ended, overall and per producer.
    pub in_timewait: u64,
    /// Of those, how many are in each substate now: [FIN_WAIT2, TIME_WAIT].
    pub in_substate: [u64; 2],
    pub timewait_ends: Ends,
    /// Of the ended ones seen: how many had reached TIME_WAIT, and how many
    /// ended still in FIN_WAIT2 (the peer never sent its FIN).
    pub ended_in: Reached,
    pub timewait_ends_by_process: CappedTable<ProcessKey, Ends>,
    /// How timewait sockets are followed, if they are. The FIN_WAIT2 time
    /// of a connection handed to one is then recorded when it ends, whole.
    pub follows_timewait: Option<Sources>,
    /// Whether the kernel keeps time in state and the state gauges (summary
    /// mode): only closes then reach userspace, and the report merges the
    /// kernel's histograms with what the timewait follower records here.
    pub kernel_summary: bool,
    /// Connects that failed (SYN_SENT → CLOSE): by owner, destination and
    /// error.
    pub failed_connects: u64,
    pub failed_connects_by: CappedTable<FailedConnect, u64>,
    /// The ephemeral port range (`ip_local_port_range`): connected
    /// sockets' local ports in it count as one [`LocalPort::Ephemeral`].
    pub ephemeral: Option<PortRange>,
    /// Transitions observed in userspace.
    pub events: u64,
    table_cap: usize,
}

impl Aggregator {
    pub fn new(table_cap: usize, socket_cap: usize) -> Self {
        Self {
            sockets: SocketTable::new(socket_cap),
            time_in_state: (0..TCP_STATE_COUNT).map(|_| histogram()).collect(),
            lifetime: histogram(),
            closes: Sides::default(),
            closes_unknown: 0,
            closes_by_process: CappedTable::new(table_cap),
            closes_by_comm: CappedTable::new(table_cap),
            closes_by_lport: CappedTable::new(table_cap),
            closes_by_raddr: CappedTable::new(table_cap),
            closes_by_container: CappedTable::new(table_cap),
            time_wait: 0,
            time_wait_by_process: CappedTable::new(table_cap),
            time_wait_by_lport: CappedTable::new(table_cap),
            time_wait_by_remote: CappedTable::new(table_cap),
            time_wait_by_container: CappedTable::new(table_cap),
            closes_by_workload: CappedTable::new(table_cap),
            time_wait_by_workload: CappedTable::new(table_cap),
            workload_cap: table_cap,
            in_timewait: 0,
            in_substate: [0; 2],
            ended_in: Reached::default(),
            failed_connects: 0,
            failed_connects_by: CappedTable::new(table_cap),
            ephemeral: None,
            timewait_ends: Ends::default(),
            timewait_ends_by_process: CappedTable::new(table_cap),
            follows_timewait: None,
            kernel_summary: false,
            events: 0,
            table_cap,
        }
    }

    pub fn following_timewait(mut self, follows: Option<Sources>) -> Self {
        self.follows_timewait = follows;
        self
    }

    /// Rows the workload tables keep before counting under `other`.
    pub fn workload_rows(mut self, cap: usize) -> Self {
        self.workload_cap = cap;
        self.closes_by_workload = CappedTable::new(cap);
        self.time_wait_by_workload = CappedTable::new(cap);
        self
    }

    pub fn summarized_in_kernel(mut self, yes: bool) -> Self {
        self.kernel_summary = yes;
        self
    }

    /// Groups connected sockets' local ports in `range` as ephemeral.
    pub fn ephemeral_ports(mut self, range: Option<PortRange>) -> Self {
        self.ephemeral = range;
        self
    }

    fn local_port(&self, t: &Transition) -> LocalPort {
        match self.ephemeral {
            Some(range) if t.connected && range.ports().contains(&t.tuple.sport) => LocalPort::Ephemeral,
            _ => LocalPort::Port(t.tuple.sport),
        }
    }

    fn record(&mut self, state: TcpState, ns: u64) {
        self.time_in_state[state.0 as usize % TCP_STATE_COUNT].saturating_record(ns.max(HIST_LOW_NS));
    }

    /// Takes in what the timewait follower saw: FIN_WAIT2 time as soon as
    /// that phase is over, TIME_WAIT time and the cause when a socket ends.
    pub fn observe_timewait(&mut self, e: &TwEvent) {
        if let Some(ns) = e.completed_fin_wait2_ns() {
            self.record(TcpState::FIN_WAIT2, ns);
        }
        match e {
            TwEvent::Entered { substate, .. } => {
                self.in_timewait += 1;
                if let Some(slot) = substate_slot(*substate) {
                    self.in_substate[slot] += 1;
                }
            }
            TwEvent::FinArrived { .. } => {
                self.in_substate[0] = self.in_substate[0].saturating_sub(1);
                self.in_substate[1] += 1;
            }
            TwEvent::Ended { substate: Some(s), .. } => {
                self.in_timewait = self.in_timewait.saturating_sub(1);
                if let Some(slot) = substate_slot(*s) {
                    self.in_substate[slot] = self.in_substate[slot].saturating_sub(1);
                }
            }
            _ => {}
        }
        let TwEvent::Ended { cause, time_wait_ns, owner, substate, .. } = e else { return };
        if let Some(ns) = *time_wait_ns {
            self.record(TcpState::TIME_WAIT, ns);
        }
        match (substate, time_wait_ns) {
            (_, Some(_)) | (Some(TcpState::TIME_WAIT), _) => self.ended_in.time_wait += 1,
            (Some(_), None) => self.ended_in.fin_wait2 += 1,
            (None, None) => {}
        }
        *self.timewait_ends.slot(*cause) += 1;
        *self.timewait_ends_by_process.entry(ProcessKey::of(owner.as_ref())).slot(*cause) += 1;
    }

    /// Forgets everything but the sockets being followed (the `r` key in top).
    pub fn reset(&mut self) {
        let sockets = std::mem::replace(&mut self.sockets, SocketTable::new(0));
        *self = Self::new(self.table_cap, sockets.cap)
            .following_timewait(self.follows_timewait)
            .summarized_in_kernel(self.kernel_summary)
            .workload_rows(self.workload_cap)
            .ephemeral_ports(self.ephemeral);
        self.sockets = sockets;
    }

    pub fn observe(&mut self, t: &Transition) {
        self.events += 1;
        if !self.kernel_summary {
            self.sockets.observe(t);
            // A followed handover's FIN_WAIT2 time is recorded whole when its
            // timewait socket ends.
            let deferred =
                self.follows_timewait.is_some() && t.old == TcpState::FIN_WAIT2 && t.enters_time_wait();
            if let Some(ns) = t.in_old_state_ns
                && !deferred
            {
                self.record(t.old, ns);
            }
        }
        if !t.closes_connection() {
            return;
        }
        if t.seen_from_start {
            self.lifetime.saturating_record(t.ts_ns.saturating_sub(t.first_seen_ns).max(HIST_LOW_NS));
        }
        let process = ProcessKey::of(t.owner.as_ref());
        let container = t.cgroup.as_ref().map(|c| c.label.clone());
        let workload = (container.clone(), t.owner.map(|o| o.comm));
        let lport = self.local_port(t);
        if t.old == TcpState::SYN_SENT {
            self.failed_connects += 1;
            let remote = SocketAddr::new(t.tuple.daddr, t.tuple.dport);
            *self.failed_connects_by.entry(FailedConnect { process, remote, error: t.error }) += 1;
        }
        match t.close {
            Some(side) => {
                self.closes.add(side);
                self.closes_by_process.entry(process).add(side);
                self.closes_by_comm.entry(process.comm).add(side);
                self.closes_by_lport.entry(lport).add(side);
                self.closes_by_raddr.entry(t.tuple.daddr).add(side);
                self.closes_by_container.entry(container.clone()).add(side);
                self.closes_by_workload.entry(workload.clone()).add(side);
            }
            None => self.closes_unknown += 1,
        }
        if t.enters_time_wait() {
            self.time_wait += 1;
            *self.time_wait_by_process.entry(process) += 1;
            *self.time_wait_by_lport.entry(lport) += 1;
            let remote_port = t.connected.then_some(t.tuple.dport);
            *self.time_wait_by_remote.entry((t.tuple.daddr, remote_port)) += 1;
            *self.time_wait_by_container.entry(container) += 1;
            *self.time_wait_by_workload.entry(workload) += 1;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::timewait::Measured;
    use crate::model::{
        socket::FourTuple,
        transition::{Family, Owner},
    };

    pub(crate) fn step(skaddr: u64, old: TcpState, new: TcpState, close: Option<CloseSide>) -> Transition {
        Transition {
            ts_ns: 10_000_000_000,
            skaddr,
            family: Family::Ipv4,
            tuple: FourTuple {
                saddr: "10.0.0.1".parse().unwrap(),
                sport: 8080,
                daddr: "10.0.0.2".parse().unwrap(),
                dport: 40000 + (skaddr % 1000) as u16,
            },
            old,
            new,
            in_old_state_ns: Some(2_000_000),
            first_seen_ns: 9_000_000_000,
            seen_from_start: true,
            connected: false,
            owner: Some(Owner {
                pid: 7,
                comm: Comm::from("nginx"),
                from_listener: false,
                at_start: false,
                cgroup_id: 0,
            }),
            close,
            netns: 1,
            gap: None,
            error: None,
            cgroup: None,
        }
    }

    /// The server side of a connection it closes first.
    pub(crate) fn server_closes_first(agg: &mut Aggregator, skaddr: u64) {
        use TcpState as S;
        let a = Some(CloseSide::Active);
        for (old, new, close) in [
            (S::LISTEN, S::SYN_RECV, None),
            (S::SYN_RECV, S::ESTABLISHED, None),
            (S::ESTABLISHED, S::FIN_WAIT1, a),
            (S::FIN_WAIT1, S::FIN_WAIT2, a),
            (S::FIN_WAIT2, S::CLOSE, a),
        ] {
            let mut t = step(skaddr, old, new, close);
            // The kernel knows no duration for the listener's LISTEN.
            if old == S::LISTEN {
                t.in_old_state_ns = None;
            }
            agg.observe(&t);
        }
    }

    /// Connected sockets' ports in the ephemeral range are one row; a
    /// server's port, or a connect from a port bound outside the range,
    /// keeps its own. Failed connects count by owner, destination, error.
    #[test]
    fn ephemeral_ports_grouped_and_failed_connects() {
        let range = PortRange { first: 32768, last: 60999 };
        let mut agg = Aggregator::new(16, 1024).ephemeral_ports(Some(range));
        for (sk, sport, connected) in [(1, 40000, true), (2, 40001, true), (3, 8080, true), (4, 50051, false)]
        {
            let mut t = step(sk, TcpState::FIN_WAIT2, TcpState::CLOSE, Some(CloseSide::Active));
            (t.tuple.sport, t.connected) = (sport, connected);
            agg.observe(&t);
        }
        let mut rows = agg.time_wait_by_lport.top(10, |v| *v).0;
        rows.sort();
        assert_eq!(
            rows,
            [(LocalPort::Port(8080), 1), (LocalPort::Port(50051), 1), (LocalPort::Ephemeral, 2)],
            "50051 is a server's port in the range: not grouped"
        );
        for _ in 0..2 {
            let mut refused = step(5, TcpState::SYN_SENT, TcpState::CLOSE, None);
            refused.error = Some(SockError(libc::ECONNREFUSED as u8));
            agg.observe(&refused);
        }
        assert_eq!(agg.failed_connects, 2);
        let (rows, _) = agg.failed_connects_by.top(10, |v| *v);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0.error.unwrap().name(), "ECONNREFUSED");
        assert_eq!(rows[0].1, 2);
    }

    #[test]
    fn counts_closes_and_time_wait_producers() {
        let mut agg = Aggregator::new(16, 1024);
        for sk in 0..3 {
            server_closes_first(&mut agg, sk);
        }
        let mut reset = step(99, TcpState::ESTABLISHED, TcpState::CLOSE, Some(CloseSide::Reset));
        reset.owner = None;
        agg.observe(&reset);
        agg.observe(&step(100, TcpState::SYN_SENT, TcpState::CLOSE, None));

        assert_eq!(agg.closes, Sides { active: 3, reset: 1, ..Default::default() });
        assert_eq!(agg.closes_unknown, 1);
        assert_eq!(agg.time_wait, 3);
        let (rows, other) = agg.time_wait_by_process.top(10, |v| *v);
        assert_eq!(rows, [(ProcessKey { pid: Some(7), comm: Some(Comm::from("nginx")) }, 3)]);
        assert_eq!(other, 0);
        assert_eq!(agg.time_wait_by_lport.top(10, |v| *v).0, [(LocalPort::Port(8080), 3)]);
        let (by_comm, _) = agg.closes_by_comm.top(10, Sides::total);
        assert_eq!(by_comm.len(), 2, "nginx and the unknown owner");
        // 3 sockets × 4 timed steps, and the reset's ESTABLISHED time.
        assert_eq!(agg.time_in_state[TcpState::FIN_WAIT1.0 as usize].len(), 3);
        assert_eq!(agg.lifetime.len(), 5);
        assert!(agg.sockets.is_empty());
    }

    #[test]
    fn socket_table_follows_states_and_forgets_closed_sockets() {
        let mut agg = Aggregator::new(16, 2);
        agg.observe(&step(1, TcpState::CLOSE, TcpState::SYN_SENT, None));
        agg.observe(&step(1, TcpState::SYN_SENT, TcpState::ESTABLISHED, None));
        agg.observe(&step(2, TcpState::CLOSE, TcpState::LISTEN, None));
        agg.observe(&step(3, TcpState::CLOSE, TcpState::SYN_SENT, None));
        assert_eq!(agg.sockets.len(), 2);
        assert_eq!(agg.sockets.untracked, 1);
        assert_eq!(agg.sockets.count(TcpState::ESTABLISHED), 1);
        assert_eq!(agg.sockets.count(TcpState::LISTEN), 1);
        agg.observe(&step(1, TcpState::ESTABLISHED, TcpState::CLOSE, Some(CloseSide::Reset)));
        assert_eq!(agg.sockets.count(TcpState::ESTABLISHED), 0);
        assert_eq!(agg.sockets.len(), 1);
    }

    #[test]
    fn tables_are_capped_with_an_other_row() {
        let mut table: CappedTable<u16, u64> = CappedTable::new(3);
        for port in 0..10u16 {
            *table.entry(port) += u64::from(port);
        }
        assert_eq!(table.len(), 3);
        let (rows, other) = table.top(2, |v| *v);
        assert_eq!(rows, [(2, 2), (1, 1)]);
        // Row 0 plus ports 3..10, which came after the cap.
        assert_eq!(other, (3..10).sum::<u64>());
    }

    #[test]
    fn reset_keeps_followed_sockets() {
        let mut agg = Aggregator::new(16, 16);
        agg.observe(&step(1, TcpState::CLOSE, TcpState::LISTEN, None));
        server_closes_first(&mut agg, 2);
        agg.reset();
        assert_eq!(agg.time_wait, 0);
        assert_eq!(agg.events, 0);
        assert_eq!(agg.sockets.count(TcpState::LISTEN), 1);
    }

    #[test]
    fn timewait_ends_and_whole_fin_wait2() {
        use crate::model::timewait::TwKey;
        let mut agg = Aggregator::new(16, 16).following_timewait(Some(Sources::default()));
        server_closes_first(&mut agg, 1);
        // The handover's 2 ms of FIN_WAIT2 wait for the timewait socket's end.
        assert_eq!(agg.time_in_state[TcpState::FIN_WAIT2.0 as usize].len(), 0);
        let t = step(1, TcpState::FIN_WAIT2, TcpState::CLOSE, Some(CloseSide::Active));
        let key = TwKey { netns: 1, tuple: t.tuple };
        agg.observe_timewait(&TwEvent::Entered {
            mode: Measured::SockDiag,
            key,
            owner: t.owner,
            at_ns: 0,
            substate: TcpState::FIN_WAIT2,
            expires_at_ns: Some(0),
            fin_wait2_ns: None,
        });
        assert_eq!(agg.in_timewait, 1);
        assert_eq!(agg.in_timewait, agg.in_substate.iter().sum::<u64>());
        agg.observe_timewait(&TwEvent::FinArrived {
            mode: Measured::SockDiag,
            key,
            owner: t.owner,
            at_ns: 0,
            fin_wait2_ns: 302_000_000,
        });
        assert_eq!(agg.time_in_state[TcpState::FIN_WAIT2.0 as usize].len(), 1, "recorded when the FIN came");
        agg.observe_timewait(&TwEvent::Ended {
            mode: Measured::SockDiag,
            key,
            owner: t.owner,
            at_ns: 0,
            cause: EndCause::Expired,
            substate: Some(TcpState::TIME_WAIT),
            fin_wait2_ns: Some(302_000_000),
            time_wait_ns: Some(60_000_000_000),
        });
        assert_eq!(agg.time_in_state[TcpState::FIN_WAIT2.0 as usize].len(), 1, "not twice");
        assert_eq!(agg.time_in_state[TcpState::TIME_WAIT.0 as usize].len(), 1);
        assert_eq!(agg.in_timewait, 0);
        assert_eq!(agg.in_substate, [0, 0]);
        assert_eq!(agg.timewait_ends.expired, 1);
        let (rows, _) = agg.timewait_ends_by_process.top(5, Ends::score);
        assert_eq!(rows[0].1.expired, 1);
    }

    #[test]
    fn percentiles_are_within_one_percent() {
        let mut agg = Aggregator::new(16, 16);
        for (i, ms) in [100u64, 200, 300, 400, 500].into_iter().enumerate() {
            let mut t = step(i as u64, TcpState::CLOSE_WAIT, TcpState::LAST_ACK, Some(CloseSide::Passive));
            t.in_old_state_ns = Some(ms * 1_000_000);
            agg.observe(&t);
        }
        let h = &agg.time_in_state[TcpState::CLOSE_WAIT.0 as usize];
        let p50 = h.value_at_quantile(0.5) as f64;
        assert!((p50 / 300e6 - 1.0).abs() < 0.01, "{p50}");
    }
}
