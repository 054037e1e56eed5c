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

use std::{collections::BTreeSet, net::IpAddr};

// Keys come from the local kernel, so a fast hasher is safe here.
use rustc_hash::FxHashMap as HashMap;

use serde::Serialize;

use super::{
    aggregate::enters_time_wait,
    transition::{Owner, TcpState, Transition, decode_addr},
};
use crate::source::sockdiag::SockEntry;

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
        let kind = match raw.hook {
            tcpstate_ebpf::TW_HOOK_SCHEDULE => TwHookKind::Scheduled,
            tcpstate_ebpf::TW_HOOK_RESCHEDULE => TwHookKind::Rescheduled,
            tcpstate_ebpf::TW_HOOK_EXPIRE => TwHookKind::Expired,
            tcpstate_ebpf::TW_HOOK_DESCHEDULE => TwHookKind::Descheduled,
            _ => return None,
        };
        let key = TwKey {
            netns: raw.netns,
            saddr: decode_addr(raw.saddr),
            sport: raw.sport,
            daddr: decode_addr(raw.daddr),
            dport: raw.dport,
        };
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
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
}

impl TwKey {
    fn of(t: &Transition) -> Self {
        Self { netns: t.netns, saddr: t.saddr, sport: t.sport, daddr: t.daddr, dport: t.dport }
    }

    fn of_sock(netns: u32, s: &SockEntry) -> Self {
        Self {
            netns,
            saddr: s.saddr.to_canonical(),
            sport: s.sport,
            daddr: s.daddr.to_canonical(),
            dport: s.dport,
        }
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
    /// What a dump showing this socket says about it.
    fn update(&mut self, key: TwKey, now_ns: u64, sock: &SockEntry, events: &mut Vec<TwEvent>) {
        let expires_at = now_ns + sock.expires.unwrap_or_default().as_nanos() as u64;
        // The last (re-)arm of a TIME_WAIT timer was 60 s before its end.
        let armed_at = expires_at.saturating_sub(TIME_WAIT_LEN_NS).max(self.entry_ns);
        match (self.substate, sock.state) {
            (None, state) => {
                let fin_wait2_first = state == TcpState::FIN_WAIT2
                    || (state == TcpState::TIME_WAIT && armed_at > self.entry_ns + SUBSTATE_CHANGE_MIN_NS);
                let first = if fin_wait2_first { TcpState::FIN_WAIT2 } else { TcpState::TIME_WAIT };
                events.push(TwEvent::Entered {
                    key,
                    owner: self.owner,
                    mode: Measured::SockDiag,
                    at_ns: self.entry_ns,
                    substate: first,
                    expires_at_ns: Some(expires_at),
                    fin_wait2_ns: if fin_wait2_first { None } else { self.full_fin_wait2_ns },
                });
                self.substate = Some(first);
                if state == TcpState::TIME_WAIT {
                    self.time_wait_since_ns = Some(if fin_wait2_first { armed_at } else { self.entry_ns });
                }
            }
            (Some(TcpState::FIN_WAIT2), TcpState::TIME_WAIT) => self.time_wait_since_ns = Some(armed_at),
            _ => {}
        }
        if self.substate == Some(TcpState::FIN_WAIT2) && sock.state == TcpState::TIME_WAIT {
            let since = self.time_wait_since_ns.unwrap_or(armed_at);
            events.push(TwEvent::FinArrived {
                key,
                owner: self.owner,
                mode: Measured::SockDiag,
                at_ns: since,
                fin_wait2_ns: since - self.entry_ns + self.full_fin_wait2_ns.unwrap_or(0),
            });
            self.substate = Some(TcpState::TIME_WAIT);
        }
        self.expires_at_ns = expires_at;
    }

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
        if enters_time_wait(t) {
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
            // The schedule hook fires inside tcp_time_wait(), just before
            // the handover: without it, no timewait socket was made
            // (tcp_max_tw_buckets), or the socket was reset instead.
            let Some(sched) = self.scheduled.remove(&key) else {
                return Some(entry.end(key, Measured::Fentry, t.ts_ns, EndCause::Unobserved));
            };
            entry.substate = Some(sched.substate);
            let time_wait = sched.substate == TcpState::TIME_WAIT;
            if time_wait {
                entry.time_wait_since_ns = Some(entry.entry_ns);
            }
            entered = Some(TwEvent::Entered {
                key,
                owner: entry.owner,
                mode: Measured::Fentry,
                at_ns: entry.entry_ns,
                substate: sched.substate,
                expires_at_ns: sched.timer_ns.map(|n| sched.at_ns + n),
                fin_wait2_ns: if time_wait { entry.full_fin_wait2_ns } else { None },
            });
        }
        if self.entries.len() >= self.capacity {
            self.over_capacity += 1;
            return None;
        }
        self.entries.insert(key, entry);
        entered
    }

    /// Applies one exact-mode hook firing.
    pub fn on_hook(&mut self, hook: &TwHook, events: &mut Vec<TwEvent>) {
        self.latest_ns = self.latest_ns.max(hook.ts_ns);
        let key = hook.key;
        match hook.kind {
            TwHookKind::Scheduled if self.sources.substates == Measured::Fentry => {
                if self.scheduled.len() >= self.capacity {
                    let oldest = self.latest_ns.saturating_sub(PENDING_MAX_AGE_NS);
                    self.scheduled.retain(|_, s| s.at_ns >= oldest);
                }
                let sched = Scheduled { at_ns: hook.ts_ns, substate: hook.substate, timer_ns: hook.timer_ns };
                self.scheduled.insert(key, sched);
            }
            TwHookKind::Rescheduled if self.sources.substates == Measured::Fentry => {
                let Some(entry) = self.entries.get_mut(&key) else { return };
                if entry.substate == Some(TcpState::FIN_WAIT2) && hook.substate == TcpState::TIME_WAIT {
                    entry.substate = Some(TcpState::TIME_WAIT);
                    entry.time_wait_since_ns = Some(hook.ts_ns);
                    events.push(TwEvent::FinArrived {
                        key,
                        owner: entry.owner,
                        mode: Measured::Fentry,
                        at_ns: hook.ts_ns,
                        fin_wait2_ns: hook.ts_ns.saturating_sub(entry.entry_ns)
                            + entry.full_fin_wait2_ns.unwrap_or(0),
                    });
                } else {
                    self.rearmed += 1;
                }
            }
            TwHookKind::Expired if self.sources.ends == Measured::Fentry => {
                if let Some(entry) = self.entries.remove(&key) {
                    events.push(entry.end(key, Measured::Fentry, hook.ts_ns, EndCause::Expired));
                }
            }
            TwHookKind::Descheduled if self.sources.ends == Measured::Fentry => {
                if let Some(entry) = self.entries.remove(&key) {
                    self.descheduled.insert(key, (entry, hook.ts_ns));
                }
            }
            _ => {}
        }
    }

    /// Early ends that no new connection claimed within the grace period
    /// were kills. `now_ns` is the monotonic clock, as events carry it.
    /// Called once per drain, not per event: it scans the waiting ends.
    pub fn settle(&mut self, now_ns: u64, events: &mut Vec<TwEvent>) {
        if self.descheduled.is_empty() {
            return;
        }
        let settled = self.descheduled.extract_if(|_, (_, at)| now_ns >= *at + REUSE_GRACE_NS);
        for (key, (entry, at)) in settled {
            events.push(entry.end(key, Measured::Fentry, at, EndCause::Killed));
        }
    }

    /// The namespaces with connections being followed.
    pub fn namespaces(&self) -> BTreeSet<u32> {
        self.entries.keys().map(|k| k.netns).collect()
    }

    /// Applies a dump of `netns`'s timewait and FIN_WAIT2 sockets taken at
    /// `now_ns`, for what the hooks do not measure. Work and memory are in
    /// proportion to the dump: entries are marked as the dump shows them,
    /// and the unmarked ones swept out.
    pub fn on_dump(&mut self, netns: u32, now_ns: u64, socks: &[SockEntry], events: &mut Vec<TwEvent>) {
        self.dumps += 1;
        let dump = self.dumps;
        let polled_substates = self.sources.substates == Measured::SockDiag;
        for sock in socks.iter().filter(|s| s.timewait) {
            let key = TwKey::of_sock(netns, sock);
            if let Some(entry) = self.entries.get_mut(&key) {
                entry.seen_in = dump;
                if polled_substates {
                    entry.update(key, now_ns, sock, events);
                } else {
                    entry.expires_at_ns = now_ns + sock.expires.unwrap_or_default().as_nanos() as u64;
                }
            }
        }
        if self.sources.ends == Measured::Fentry {
            return;
        }
        for (key, entry) in self.entries.extract_if(|k, e| k.netns == netns && e.seen_in != dump) {
            let (at, cause) = match entry.substate {
                None => (now_ns, EndCause::Unobserved),
                Some(_) if now_ns + EXPIRY_SLACK_NS >= entry.expires_at_ns => {
                    (entry.expires_at_ns, EndCause::Expired)
                }
                Some(_) => (now_ns, EndCause::Killed),
            };
            events.push(entry.end(key, Measured::SockDiag, at, cause));
        }
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
    use crate::model::{aggregate::tests::step, transition::CloseSide};

    const MS: u64 = 1_000_000;

    /// The client's socket handing over to a timewait socket at `at_ns`.
    fn handover(at_ns: u64) -> Transition {
        let mut t = step(1, TcpState::FIN_WAIT2, TcpState::CLOSE, Some(CloseSide::Active));
        t.ts_ns = at_ns;
        t.in_old_state_ns = Some(30_000);
        t
    }

    fn sock(t: &Transition, state: TcpState, expires_ms: u64) -> SockEntry {
        SockEntry {
            state,
            saddr: t.saddr,
            sport: t.sport,
            daddr: t.daddr,
            dport: t.dport,
            timewait: true,
            expires: Some(Duration::from_millis(expires_ms)),
            inode: 0,
        }
    }

    fn dump(tr: &mut Tracker, now: u64, socks: &[SockEntry]) -> Vec<TwEvent> {
        let mut ev = Vec::new();
        tr.on_dump(1, now, socks, &mut ev);
        ev
    }

    #[test]
    fn orphan_fin_wait2_then_fin_then_expiry() {
        let mut tr = Tracker::new(16, Sources::default());
        let t = handover(1_000 * MS);
        assert_eq!(tr.on_transition(&t), None);
        // 100 ms later: FIN_WAIT2 with tcp_fin_timeout (60 s) left.
        let ev = dump(&mut tr, 1_100 * MS, &[sock(&t, TcpState::FIN_WAIT2, 59_900)]);
        assert!(
            matches!(ev[..], [TwEvent::Entered { substate: TcpState::FIN_WAIT2, at_ns, .. }] if at_ns == 1_000 * MS)
        );
        // The FIN came at 1.3 s: the timer was re-armed to 60 s then.
        let ev = dump(&mut tr, 1_400 * MS, &[sock(&t, TcpState::TIME_WAIT, 59_900)]);
        assert_eq!(
            ev,
            [TwEvent::FinArrived {
                key: TwKey::of(&t),
                owner: t.owner,
                mode: Measured::SockDiag,
                at_ns: 1_300 * MS,
                fin_wait2_ns: 300 * MS + 30_000
            }]
        );
        // Gone at its scheduled end: expired, 60 s in TIME_WAIT.
        let ev = dump(&mut tr, 61_310 * MS, &[]);
        let TwEvent::Ended { cause, at_ns, time_wait_ns, fin_wait2_ns, .. } = ev[0] else { panic!("{ev:?}") };
        assert_eq!((cause, at_ns), (EndCause::Expired, 61_300 * MS));
        assert_eq!(time_wait_ns, Some(TIME_WAIT_LEN_NS));
        assert_eq!(fin_wait2_ns, Some(300 * MS + 30_000));
        assert!(tr.is_empty());
    }

    #[test]
    fn fin_between_polls_is_still_seen() {
        let mut tr = Tracker::new(16, Sources::default());
        let t = handover(1_000 * MS);
        tr.on_transition(&t);
        // First sighting already TIME_WAIT, armed 300 ms after the handover.
        let ev = dump(&mut tr, 1_500 * MS, &[sock(&t, TcpState::TIME_WAIT, 59_800)]);
        assert!(matches!(ev[0], TwEvent::Entered { substate: TcpState::FIN_WAIT2, .. }), "{ev:?}");
        assert!(matches!(ev[1], TwEvent::FinArrived { at_ns, .. } if at_ns == 1_300 * MS), "{ev:?}");
        let completed: Vec<_> = ev.iter().filter_map(TwEvent::completed_fin_wait2_ns).collect();
        assert_eq!(completed, [300 * MS + 30_000], "once, when the FIN came");
    }

    #[test]
    fn straight_to_time_wait() {
        let mut tr = Tracker::new(16, Sources::default());
        let t = handover(1_000 * MS);
        tr.on_transition(&t);
        let ev = dump(&mut tr, 1_100 * MS, &[sock(&t, TcpState::TIME_WAIT, 59_900)]);
        assert!(matches!(ev[..], [TwEvent::Entered { substate: TcpState::TIME_WAIT, .. }]), "{ev:?}");
        // The full socket's 30 µs of FIN_WAIT2 are complete: reported once, now.
        assert_eq!(ev[0].completed_fin_wait2_ns(), Some(30_000));
    }

    #[test]
    fn orphan_fin_wait2_expires_at_fin_timeout() {
        let mut tr = Tracker::new(16, Sources::default());
        let t = handover(1_000 * MS);
        tr.on_transition(&t);
        dump(&mut tr, 1_100 * MS, &[sock(&t, TcpState::FIN_WAIT2, 1_900)]);
        let ev = dump(&mut tr, 3_050 * MS, &[]);
        let TwEvent::Ended { cause, fin_wait2_ns, time_wait_ns, .. } = ev[0] else { panic!() };
        assert_eq!(cause, EndCause::Expired);
        assert_eq!(fin_wait2_ns, Some(2_000 * MS + 30_000));
        assert_eq!(time_wait_ns, None);
    }

    #[test]
    fn killed_reused_and_unobserved() {
        let mut tr = Tracker::new(16, Sources::default());
        let t = handover(1_000 * MS);
        tr.on_transition(&t);
        dump(&mut tr, 1_100 * MS, &[sock(&t, TcpState::TIME_WAIT, 59_900)]);
        let ev = dump(&mut tr, 5_000 * MS, &[]);
        assert!(
            matches!(ev[0], TwEvent::Ended { cause: EndCause::Killed, at_ns, .. } if at_ns == 5_000 * MS)
        );

        tr.on_transition(&t);
        let mut again = step(9, TcpState::SYN_SENT, TcpState::ESTABLISHED, None);
        again.ts_ns = 8_000 * MS;
        again.in_old_state_ns = Some(MS);
        again.dport = t.dport;
        let ev = tr.on_transition(&again).unwrap();
        assert!(
            matches!(ev, TwEvent::Ended { cause: EndCause::Reused, at_ns, .. } if at_ns == 7_999 * MS),
            "{ev:?}"
        );

        tr.on_transition(&t);
        let ev = dump(&mut tr, 1_100 * MS, &[]);
        assert!(matches!(ev[0], TwEvent::Ended { cause: EndCause::Unobserved, .. }));
        // Other namespaces' dumps leave this one alone.
        tr.on_transition(&t);
        let mut ev = Vec::new();
        tr.on_dump(2, 9_000 * MS, &[], &mut ev);
        assert!(ev.is_empty() && tr.len() == 1);
        assert_eq!(tr.abandon(1), 1);
    }

    const EXACT: Sources = Sources { substates: Measured::Fentry, ends: Measured::Fentry };

    fn hook(t: &Transition, kind: TwHookKind, ts_ns: u64, substate: TcpState) -> TwHook {
        TwHook { kind, key: TwKey::of(t), ts_ns, substate, timer_ns: Some(2_000 * MS) }
    }

    #[test]
    fn exact_fin_wait2_fin_and_expiry() {
        let mut tr = Tracker::new(16, EXACT);
        assert!(!EXACT.needs_polling() && EXACT.describe() == "fentry");
        let t = handover(1_000 * MS);
        let mut ev = Vec::new();
        // The schedule hook fires inside tcp_time_wait(), before the handover.
        tr.on_hook(&hook(&t, TwHookKind::Scheduled, 1_000 * MS - 5_000, TcpState::FIN_WAIT2), &mut ev);
        assert!(ev.is_empty());
        let entered = tr.on_transition(&t).unwrap();
        assert!(
            matches!(entered, TwEvent::Entered { mode: Measured::Fentry, substate: TcpState::FIN_WAIT2, at_ns, expires_at_ns: Some(e), .. } if at_ns == 1_000 * MS && e == 3_000 * MS - 5_000),
            "{entered:?}"
        );
        tr.on_hook(&hook(&t, TwHookKind::Rescheduled, 1_300 * MS, TcpState::TIME_WAIT), &mut ev);
        assert!(
            matches!(ev[..], [TwEvent::FinArrived { mode: Measured::Fentry, at_ns, fin_wait2_ns, .. }] if at_ns == 1_300 * MS && fin_wait2_ns == 300 * MS + 30_000),
            "{ev:?}"
        );
        // A FIN retransmitted into TIME_WAIT restarts the timer: counted only.
        ev.clear();
        tr.on_hook(&hook(&t, TwHookKind::Rescheduled, 1_400 * MS, TcpState::TIME_WAIT), &mut ev);
        assert!(ev.is_empty() && tr.rearmed == 1);
        tr.on_hook(&hook(&t, TwHookKind::Expired, 61_400 * MS, TcpState::TIME_WAIT), &mut ev);
        let TwEvent::Ended { cause, mode, time_wait_ns, .. } = ev[0] else { panic!("{ev:?}") };
        assert_eq!((cause, mode, time_wait_ns), (EndCause::Expired, Measured::Fentry, Some(60_100 * MS)));
        assert!(tr.is_empty());
        // Dumps change nothing in exact mode.
        tr.on_transition(&t);
        assert!(dump(&mut tr, 90_000 * MS, &[]).is_empty());
    }

    #[test]
    fn exact_early_end_is_a_reuse_or_a_kill() {
        let mut tr = Tracker::new(16, EXACT);
        let t = handover(1_000 * MS);
        let mut ev = Vec::new();
        tr.on_hook(&hook(&t, TwHookKind::Scheduled, 1_000 * MS, TcpState::TIME_WAIT), &mut ev);
        assert!(matches!(tr.on_transition(&t), Some(TwEvent::Entered { substate: TcpState::TIME_WAIT, .. })));
        tr.on_hook(&hook(&t, TwHookKind::Descheduled, 2_500 * MS, TcpState::TIME_WAIT), &mut ev);
        assert!(ev.is_empty(), "waits to learn the cause");
        // The new connection's handshake names it a reuse, timed by the hook.
        let mut again = step(9, TcpState::SYN_SENT, TcpState::ESTABLISHED, None);
        (again.ts_ns, again.in_old_state_ns, again.dport) = (2_501 * MS, Some(MS), t.dport);
        let reused = tr.on_transition(&again).unwrap();
        assert!(
            matches!(reused, TwEvent::Ended { cause: EndCause::Reused, mode: Measured::Fentry, at_ns, .. } if at_ns == 2_500 * MS),
            "{reused:?}"
        );
        // Nothing claims this one: a kill, once the grace period has passed.
        tr.on_hook(&hook(&t, TwHookKind::Scheduled, 5_000 * MS, TcpState::TIME_WAIT), &mut ev);
        tr.on_transition(&handover(5_000 * MS));
        tr.on_hook(&hook(&t, TwHookKind::Descheduled, 6_000 * MS, TcpState::TIME_WAIT), &mut ev);
        tr.settle(8_900 * MS, &mut ev);
        assert!(ev.is_empty());
        tr.settle(9_000 * MS, &mut ev);
        assert!(
            matches!(ev[..], [TwEvent::Ended { cause: EndCause::Killed, at_ns, .. }] if at_ns == 6_000 * MS),
            "{ev:?}"
        );
        // A handover without a timewait socket (tcp_max_tw_buckets): unobserved at once.
        let none = tr.on_transition(&handover(9_000 * MS)).unwrap();
        assert!(
            matches!(none, TwEvent::Ended { cause: EndCause::Unobserved, substate: None, .. }),
            "{none:?}"
        );
    }

    #[test]
    fn exact_substates_with_polled_ends() {
        let sources = Sources { substates: Measured::Fentry, ends: Measured::SockDiag };
        assert!(sources.needs_polling());
        assert_eq!(sources.describe(), "substates by fentry, ends by sock_diag");
        let mut tr = Tracker::new(16, sources);
        let t = handover(1_000 * MS);
        let mut ev = Vec::new();
        tr.on_hook(&hook(&t, TwHookKind::Scheduled, 1_000 * MS, TcpState::FIN_WAIT2), &mut ev);
        tr.on_transition(&t).unwrap();
        // The dump does not report the substate again, and the end hook is ignored.
        assert!(dump(&mut tr, 1_100 * MS, &[sock(&t, TcpState::FIN_WAIT2, 1_900)]).is_empty());
        tr.on_hook(&hook(&t, TwHookKind::Expired, 3_000 * MS, TcpState::FIN_WAIT2), &mut ev);
        assert!(ev.is_empty());
        let ev = dump(&mut tr, 3_050 * MS, &[]);
        assert!(
            matches!(ev[..], [TwEvent::Ended { cause: EndCause::Expired, mode: Measured::SockDiag, .. }]),
            "{ev:?}"
        );
    }

    #[test]
    fn capacity_is_bounded() {
        let mut tr = Tracker::new(1, Sources::default());
        let a = handover(MS);
        let mut b = handover(2 * MS);
        b.sport += 1;
        tr.on_transition(&a);
        tr.on_transition(&b);
        assert_eq!((tr.len(), tr.over_capacity), (1, 1));
    }
}
