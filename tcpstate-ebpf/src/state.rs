//! TCP states and close sides, each named once, and the rules over them
//! that both sides of the boundary apply: who closed, who owns a socket,
//! when a connection hands over to a timewait socket.

use core::fmt;

use num_enum::{IntoPrimitive, TryFromPrimitive};

/// A TCP state, numbered as the kernel numbers it
/// (include/net/tcp_states.h).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, IntoPrimitive, TryFromPrimitive)]
pub enum State {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    NewSynRecv = 12,
}

impl State {
    /// The kernel's name, without the `TCP_` prefix.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::NewSynRecv => "NEW_SYN_RECV",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

// The raw numbers, for the program, which compares the tracepoint's bytes.
pub const TCP_ESTABLISHED: u8 = State::Established as u8;
pub const TCP_SYN_SENT: u8 = State::SynSent as u8;
pub const TCP_SYN_RECV: u8 = State::SynRecv as u8;
pub const TCP_FIN_WAIT1: u8 = State::FinWait1 as u8;
pub const TCP_FIN_WAIT2: u8 = State::FinWait2 as u8;
pub const TCP_TIME_WAIT: u8 = State::TimeWait as u8;
pub const TCP_CLOSE: u8 = State::Close as u8;
pub const TCP_CLOSE_WAIT: u8 = State::CloseWait as u8;
pub const TCP_LAST_ACK: u8 = State::LastAck as u8;
pub const TCP_LISTEN: u8 = State::Listen as u8;
pub const TCP_CLOSING: u8 = State::Closing as u8;
pub const TCP_NEW_SYN_RECV: u8 = State::NewSynRecv as u8;
/// Slots for per-state arrays, indexed by state number (0 unused).
pub const TCP_STATE_COUNT: usize = State::NewSynRecv as usize + 1;

/// The kernel's name for a state, or `None` for a number it does not define.
pub fn state_name(state: u8) -> Option<&'static str> {
    State::try_from(state).ok().map(State::name)
}

/// Which side closed a connection (docs/ARCHITECTURE.md, "Close side").
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, IntoPrimitive, TryFromPrimitive)]
pub enum CloseSide {
    /// This side sent the first FIN and will hold the TIME_WAIT.
    Active = 1,
    /// The peer sent the first FIN.
    Passive = 2,
    /// Both sides sent FIN before seeing the other's (FIN_WAIT1→CLOSING).
    Simultaneous = 3,
    /// Ended by a reset or abort, without a FIN exchange.
    Reset = 4,
}

impl CloseSide {
    pub const ALL: [Self; 4] = [Self::Active, Self::Passive, Self::Simultaneous, Self::Reset];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Passive => "passive",
            Self::Simultaneous => "simultaneous",
            Self::Reset => "reset",
        }
    }
}

impl fmt::Display for CloseSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// No side known yet (the wire's 0).
pub const CLOSE_UNKNOWN: u8 = 0;
pub const CLOSE_ACTIVE: u8 = CloseSide::Active as u8;
pub const CLOSE_PASSIVE: u8 = CloseSide::Passive as u8;
pub const CLOSE_SIMULTANEOUS: u8 = CloseSide::Simultaneous as u8;
pub const CLOSE_RESET: u8 = CloseSide::Reset as u8;

/// The close side after the transition `old → new`, given the side known before.
///
/// A socket first seen mid-close still gets a side, inferred from the FIN
/// state it is leaving.
#[inline(always)]
pub fn close_side_after(known: u8, old: u8, new: u8) -> u8 {
    match (old, new) {
        (TCP_ESTABLISHED | TCP_SYN_RECV, TCP_FIN_WAIT1) => CLOSE_ACTIVE,
        (TCP_ESTABLISHED | TCP_SYN_RECV, TCP_CLOSE_WAIT) => CLOSE_PASSIVE,
        (TCP_FIN_WAIT1, TCP_CLOSING) => CLOSE_SIMULTANEOUS,
        // Straight to CLOSE without our FIN: a reset or an abort.
        (TCP_ESTABLISHED | TCP_SYN_RECV | TCP_CLOSE_WAIT, TCP_CLOSE) => CLOSE_RESET,
        _ if known != CLOSE_UNKNOWN => known,
        (TCP_FIN_WAIT1 | TCP_FIN_WAIT2, _) => CLOSE_ACTIVE,
        (TCP_LAST_ACK, _) | (TCP_CLOSE_WAIT, TCP_LAST_ACK) => CLOSE_PASSIVE,
        (TCP_CLOSING, _) => CLOSE_SIMULTANEOUS,
        _ => CLOSE_UNKNOWN,
    }
}

/// Whether the transition runs in the owning process's context, so that the
/// current task is the socket's owner. Everything else may run in softirq,
/// where `current` is whoever happened to be on the CPU.
#[inline(always)]
pub fn owner_is_current(old: u8, new: u8) -> bool {
    matches!(
        (old, new),
        (TCP_CLOSE, TCP_SYN_SENT)
            | (TCP_CLOSE, TCP_LISTEN)
            | (TCP_LISTEN, TCP_CLOSE)
            | (TCP_ESTABLISHED | TCP_SYN_RECV, TCP_FIN_WAIT1)
            | (TCP_CLOSE_WAIT, TCP_LAST_ACK)
    )
}

/// Whether the transition begins a new socket's life. Socket addresses are
/// reused as soon as a socket is freed, so any record under the same address
/// belongs to a dead socket.
#[inline(always)]
pub fn starts_new_socket(old: u8, new: u8) -> bool {
    matches!((old, new), (TCP_CLOSE, TCP_SYN_SENT) | (TCP_CLOSE, TCP_LISTEN) | (TCP_LISTEN, TCP_SYN_RECV))
}

/// Whether a child socket was just cloned from a listener; it then inherits
/// the listener's owner until a process-context transition names its own.
#[inline(always)]
pub fn is_accepted_child(old: u8, new: u8) -> bool {
    old == TCP_LISTEN && new == TCP_SYN_RECV
}

/// Whether `old → new` (with the close side after it, and the socket's
/// error at CLOSE) hands the connection over to a timewait socket: the
/// active or simultaneous closer's full socket closing from a FIN state
/// without an error. A reset or a retransmission timeout closes it from the
/// same states with `sk_err` set, and makes no timewait socket
/// (docs/ARCHITECTURE.md, "Timewait sockets", says what still looks alike).
#[inline(always)]
pub fn hands_over_to_timewait(old: u8, new: u8, close: u8, error: u8) -> bool {
    new == TCP_CLOSE
        && error == 0
        && matches!(old, TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_CLOSING)
        && matches!(close, CLOSE_ACTIVE | CLOSE_SIMULTANEOUS)
}

/// Whether a transition out of `old` shows that the socket table missed
/// transitions: the table last saw the socket enter `last_seen`, and a
/// socket leaves only the state it is in.
#[inline(always)]
pub fn missed_transitions(last_seen: u8, old: u8) -> bool {
    last_seen != old
}
