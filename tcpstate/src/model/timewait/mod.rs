//! Following connections through their timewait sockets.
//!
//! The tracepoint loses a connection when its active closer's full socket
//! hands over to a timewait socket (docs/ARCHITECTURE.md, "Timewait sockets"): it shows only
//! FIN_WAIT1/FIN_WAIT2/CLOSING → CLOSE. From then on sock_diag dumps show the
//! timewait socket with its substate and the time left on its timer:
//! - the substate change FIN_WAIT2 → TIME_WAIT re-arms the timer to 60 s,
//!   so it happened at (scheduled end − 60 s), to the millisecond;
//! - the end is an expiry if the socket is gone at its scheduled end, a
//!   reuse if the tracepoint shows a new connection on the same 4-tuple
//!   (an exact time), and a kill (an RST, say) if it vanished before.
//!
//! Where the kernel allows fentry, hooks on the timewait functions report
//! each of these exactly instead ([`TwHook`]); the [`Sources`] say which
//! part comes from where, and every event carries the mode that measured it.
//!
//! This module holds the events and the table the two modes share;
//! [`polled`] is the sock_diag machine and [`exact`] the hooks' machine.

use std::collections::BTreeSet;

// Keys come from the local kernel, so a fast hasher is safe here.
use rustc_hash::FxHashMap as HashMap;

use serde::Serialize;
use tcpstate_ebpf::TwHookPoint;

use super::{
    socket::{FourTuple, SockEntry},
    state::TcpState,
    transition::{Owner, Transition, decode_addr},
};

mod exact;
mod polled;

/// TCP_TIMEWAIT_LEN: the kernel's fixed TIME_WAIT length.
pub const TIME_WAIT_LEN_NS: u64 = 60_000_000_000;
/// A FIN_WAIT2 phase shorter than this (timer granularity) counts as none.
const SUBSTATE_CHANGE_MIN_NS: u64 = 10_000_000;
/// A socket gone this close to its scheduled end expired.
const EXPIRY_SLACK_NS: u64 = 20_000_000;
/// Entries followed at once; more are counted and not followed.
pub const DEFAULT_CAPACITY: usize = 262_144;
/// An early end waits this long (in event time) for the new connection that
/// would make it a reuse; the new connection's handshake completes after
/// the old timewait socket is descheduled: microseconds later, or, when its
/// first SYN is lost on a busy host, after the 1 s SYN retransmission
/// timeout. 3 s covers that one retransmission.
const REUSE_GRACE_NS: u64 = 3_000_000_000;
/// Schedule hooks waiting for their handover: it follows within
/// microseconds on the same CPU, so older ones belong to filtered sockets.
const PENDING_MAX_AGE_NS: u64 = 1_000_000_000;

/// What measured a timewait event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Measured {
    /// Polled sock_diag dumps: ends to the poll interval, FIN arrivals to
    /// the millisecond.
    #[default]
    SockDiag,
    /// fentry hooks on the kernel's timewait functions: exact.
    Fentry,
}

impl Measured {
    pub fn name(self) -> &'static str {
        match self {
            Self::SockDiag => "sock_diag",
            Self::Fentry => "fentry",
        }
    }
}

/// Which source measures each part of a timewait socket's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    /// Entry substate and the FIN's arrival (the schedule hook).
    pub substates: Measured,
    /// Expiry and early ends (the timer and deschedule hooks).
    pub ends: Measured,
}

impl Sources {
    /// Whether sock_diag must still be polled.
    pub fn needs_polling(self) -> bool {
        self.substates == Measured::SockDiag || self.ends == Measured::SockDiag
    }

    /// One word for reports: `fentry`, `sock_diag`, or which does what.
    pub fn describe(self) -> String {
        if self.substates == self.ends {
            self.ends.name().to_string()
        } else {
            format!("substates by {}, ends by {}", self.substates.name(), self.ends.name())
        }
    }

    /// What [`Sources::describe`] said (a recording's session line).
    pub fn from_description(text: &str) -> Option<Self> {
        let measured =
            |name: &str| [Measured::SockDiag, Measured::Fentry].into_iter().find(|m| m.name() == name);
        match text.strip_prefix("substates by ").and_then(|rest| rest.split_once(", ends by ")) {
            Some((substates, ends)) => Some(Self { substates: measured(substates)?, ends: measured(ends)? }),
            None => measured(text).map(|m| Self { substates: m, ends: m }),
        }
    }
}

/// What following timewait sockets has seen and cost, for the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FollowerStats {
    pub sources: Sources,
    /// Still followed now.
    pub followed: usize,
    pub polls: u64,
    pub sockets_read: u64,
    pub poll_time: std::time::Duration,
    /// Connections given up because their namespace could not be entered.
    pub unreachable: u64,
    /// Connections not followed because the table was full.
    pub over_capacity: u64,
    /// TIME_WAIT timers restarted by a retransmitted FIN (exact mode).
    pub rearmed: u64,
}

/// One firing of an exact-mode hook, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TwHook {
    pub kind: TwHookKind,
    pub key: TwKey,
    pub ts_ns: u64,
    pub substate: TcpState,
    /// The timer's length, on the schedule hooks (when the kernel's HZ is known).
    pub timer_ns: Option<u64>,
}

impl TwHook {
    /// Decodes a ring record; `None` for a hook number this build does not know.
    pub fn from_raw(raw: &tcpstate_ebpf::TwHookEvent, timer_ns: Option<u64>) -> Option<Self> {
        let kind = match TwHookPoint::try_from(raw.hook) {
            Ok(TwHookPoint::Schedule) => TwHookKind::Scheduled,
            Ok(TwHookPoint::Reschedule) => TwHookKind::Rescheduled,
            Ok(TwHookPoint::Expire) => TwHookKind::Expired,
            Ok(TwHookPoint::Deschedule) => TwHookKind::Descheduled,
            Err(_) => return None,
        };
        let tuple = FourTuple {
            saddr: decode_addr(raw.saddr),
            sport: raw.sport,
            daddr: decode_addr(raw.daddr),
            dport: raw.dport,
        };
        let key = TwKey { netns: raw.netns, tuple };
        let timer_ns = timer_ns.filter(|_| matches!(kind, TwHookKind::Scheduled | TwHookKind::Rescheduled));
        Some(Self { kind, key, ts_ns: raw.ts_ns, substate: TcpState(raw.substate), timer_ns })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TwHookKind {
    Scheduled,
    Rescheduled,
    Expired,
    Descheduled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TwKey {
    pub netns: u32,
    pub tuple: FourTuple,
}

impl TwKey {
    fn of(t: &Transition) -> Self {
        Self { netns: t.netns, tuple: t.tuple }
    }

    fn of_sock(netns: u32, s: &SockEntry) -> Self {
        Self { netns, tuple: s.tuple.canonical() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndCause {
    /// Gone at its scheduled end.
    Expired,
    /// A new connection took over its 4-tuple.
    Reused,
    /// Gone before its scheduled end: an RST, or the namespace going away.
    Killed,
    /// Never seen by sock_diag: gone before the first poll, or never made
    /// (tcp_max_tw_buckets overflow).
    Unobserved,
}

impl EndCause {
    pub const ALL: [Self; 4] = [Self::Expired, Self::Reused, Self::Killed, Self::Unobserved];

    pub fn name(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Reused => "reused",
            Self::Killed => "killed",
            Self::Unobserved => "unobserved",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TwEvent {
    /// The timewait socket was found, in `substate`. `at_ns` is when the
    /// connection entered it (from the tracepoint). Straight into TIME_WAIT,
    /// the FIN_WAIT2 phase (the full socket's, if any) is complete.
    Entered {
        key: TwKey,
        owner: Option<Owner>,
        mode: Measured,
        at_ns: u64,
        substate: TcpState,
        /// When its timer is due, if known.
        expires_at_ns: Option<u64>,
        fin_wait2_ns: Option<u64>,
    },
    /// The peer's FIN arrived: FIN_WAIT2 became TIME_WAIT at `at_ns`.
    FinArrived { key: TwKey, owner: Option<Owner>, mode: Measured, at_ns: u64, fin_wait2_ns: u64 },
    Ended {
        key: TwKey,
        owner: Option<Owner>,
        mode: Measured,
        at_ns: u64,
        cause: EndCause,
        /// The substate it ended in, if it was ever seen.
        substate: Option<TcpState>,
        /// All the time in FIN_WAIT2: the full socket's, then the timewait's.
        fin_wait2_ns: Option<u64>,
        time_wait_ns: Option<u64>,
    },
}

impl TwEvent {
    /// The connection's whole time in FIN_WAIT2, on the one event that
    /// completes that phase: entering TIME_WAIT directly, the FIN arriving,
    /// or an end while still in FIN_WAIT2 (or never seen).
    pub fn completed_fin_wait2_ns(&self) -> Option<u64> {
        match self {
            Self::Entered { fin_wait2_ns, .. } => *fin_wait2_ns,
            Self::FinArrived { fin_wait2_ns, .. } => Some(*fin_wait2_ns),
            Self::Ended { substate: None | Some(TcpState::FIN_WAIT2), fin_wait2_ns, .. } => *fin_wait2_ns,
            Self::Ended { .. } => None,
        }
    }

    pub fn key(&self) -> &TwKey {
        match self {
            Self::Entered { key, .. } | Self::FinArrived { key, .. } | Self::Ended { key, .. } => key,
        }
    }

    pub fn at_ns(&self) -> u64 {
        match self {
            Self::Entered { at_ns, .. } | Self::FinArrived { at_ns, .. } | Self::Ended { at_ns, .. } => {
                *at_ns
            }
        }
    }

    pub fn mode(&self) -> Measured {
        match self {
            Self::Entered { mode, .. } | Self::FinArrived { mode, .. } | Self::Ended { mode, .. } => *mode,
        }
    }

    pub fn owner(&self) -> Option<&Owner> {
        match self {
            Self::Entered { owner, .. } | Self::FinArrived { owner, .. } | Self::Ended { owner, .. } => {
                owner.as_ref()
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    owner: Option<Owner>,
    entry_ns: u64,
    /// The full socket's time in FIN_WAIT2 before the handover, if it went
    /// through FIN_WAIT2 (real with shutdown(), microseconds after close()).
    full_fin_wait2_ns: Option<u64>,
    substate: Option<TcpState>,
    time_wait_since_ns: Option<u64>,
    expires_at_ns: u64,
    /// The last dump that showed it.
    seen_in: u64,
}

impl Entry {
    fn end(self, key: TwKey, mode: Measured, at_ns: u64, cause: EndCause) -> TwEvent {
        let tw_fin_wait2 = match (self.substate, self.time_wait_since_ns) {
            (_, Some(since)) => since.saturating_sub(self.entry_ns),
            (Some(TcpState::FIN_WAIT2), None) => at_ns.saturating_sub(self.entry_ns),
            _ => 0,
        };
        let fin_wait2_ns = match (self.full_fin_wait2_ns, tw_fin_wait2) {
            (None, 0) => None,
            (full, phase) => Some(full.unwrap_or(0) + phase),
        };
        TwEvent::Ended {
            key,
            owner: self.owner,
            mode,
            at_ns,
            cause,
            substate: self.substate,
            fin_wait2_ns,
            time_wait_ns: self.time_wait_since_ns.map(|since| at_ns.saturating_sub(since)),
        }
    }
}

/// A schedule hook waiting for its connection's handover.
#[derive(Clone, Copy, Debug)]
struct Scheduled {
    at_ns: u64,
    substate: TcpState,
    timer_ns: Option<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct Tracker {
    entries: HashMap<TwKey, Entry>,
    capacity: usize,
    sources: Sources,
    /// Schedule hooks not yet matched with a handover.
    scheduled: HashMap<TwKey, Scheduled>,
    /// Ended early by the deschedule hook, waiting to learn whether a new
    /// connection took the 4-tuple: (entry, when it ended).
    descheduled: HashMap<TwKey, (Entry, u64)>,
    /// The latest event time seen, to age pending schedule hooks.
    latest_ns: u64,
    /// Counts dumps, to tell which entries the latest one showed.
    dumps: u64,
    /// Connections not followed because the table was full.
    pub over_capacity: u64,
    /// Timers restarted by a FIN retransmitted into TIME_WAIT (exact mode).
    pub rearmed: u64,
}

impl Tracker {
    pub fn new(capacity: usize, sources: Sources) -> Self {
        Self { capacity, sources, ..Self::default() }
    }

    pub fn sources(&self) -> Sources {
        self.sources
    }

    pub fn len(&self) -> usize {
        self.entries.len() + self.descheduled.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.descheduled.is_empty()
    }

    /// Starts following a connection entering TIME_WAIT, or ends one whose
    /// 4-tuple a new connection just took.
    pub fn on_transition(&mut self, t: &Transition) -> Option<TwEvent> {
        self.latest_ns = self.latest_ns.max(t.ts_ns);
        if t.enters_time_wait() {
            return self.enter(t);
        }
        // connect() reusing the tuple (tcp_tw_reuse): it happened when the
        // socket entered SYN_SENT. A SYN taking over a server's timewait
        // socket: when the child socket appears.
        let reused_at = match (t.old, t.new) {
            (TcpState::SYN_SENT, TcpState::ESTABLISHED) => t.ts_ns - t.in_old_state_ns.unwrap_or(0),
            (TcpState::LISTEN, TcpState::SYN_RECV) => t.ts_ns,
            _ => return None,
        };
        let key = TwKey::of(t);
        // The deschedule hook timed the end exactly; this names its cause.
        if let Some((entry, at)) = self.descheduled.remove(&key) {
            return Some(entry.end(key, Measured::Fentry, at, EndCause::Reused));
        }
        self.entries.remove(&key).map(|e| e.end(key, Measured::SockDiag, reused_at, EndCause::Reused))
    }

    fn enter(&mut self, t: &Transition) -> Option<TwEvent> {
        let key = TwKey::of(t);
        let mut entry = Entry {
            owner: t.owner,
            entry_ns: t.ts_ns,
            full_fin_wait2_ns: (t.old == TcpState::FIN_WAIT2).then_some(t.in_old_state_ns).flatten(),
            substate: None,
            time_wait_since_ns: None,
            expires_at_ns: t.ts_ns + TIME_WAIT_LEN_NS,
            seen_in: 0,
        };
        let mut entered = None;
        if self.sources.substates == Measured::Fentry {
            match self.scheduled_entry(key, &mut entry) {
                Ok(event) => entered = Some(event),
                Err(unobserved) => return Some(unobserved),
            }
        }
        if self.entries.len() >= self.capacity {
            self.over_capacity += 1;
            return None;
        }
        self.entries.insert(key, entry);
        entered
    }

    /// The namespaces with connections being followed.
    pub fn namespaces(&self) -> BTreeSet<u32> {
        self.entries.keys().map(|k| k.netns).collect()
    }

    /// Gives up on a namespace that cannot be reached (no path to it).
    pub fn abandon(&mut self, netns: u32) -> usize {
        let before = self.entries.len();
        self.entries.retain(|k, _| k.netns != netns);
        before - self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::{aggregate::tests::step, state::CloseSide};

    pub(super) const MS: u64 = 1_000_000;

    /// The client's socket handing over to a timewait socket at `at_ns`.
    pub(super) fn handover(at_ns: u64) -> Transition {
        let mut t = step(1, TcpState::FIN_WAIT2, TcpState::CLOSE, Some(CloseSide::Active));
        t.ts_ns = at_ns;
        t.in_old_state_ns = Some(30_000);
        t
    }

    pub(super) fn sock(t: &Transition, state: TcpState, expires_ms: u64) -> SockEntry {
        SockEntry {
            state,
            tuple: t.tuple,
            timewait: true,
            expires: Some(Duration::from_millis(expires_ms)),
            inode: 0,
            cookie: 0,
        }
    }

    pub(super) fn dump(tr: &mut Tracker, now: u64, socks: &[SockEntry]) -> Vec<TwEvent> {
        let mut ev = Vec::new();
        tr.on_dump(1, now, socks, &mut ev);
        ev
    }

    #[test]
    fn capacity_is_bounded() {
        let mut tr = Tracker::new(1, Sources::default());
        let a = handover(MS);
        let mut b = handover(2 * MS);
        b.tuple.sport += 1;
        tr.on_transition(&a);
        tr.on_transition(&b);
        assert_eq!((tr.len(), tr.over_capacity), (1, 1));
    }
}
