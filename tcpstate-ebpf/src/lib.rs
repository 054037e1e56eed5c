//! The kernel/userspace boundary of tcpstate, defined once.
//!
//! Everything here is `no_std` and free of aya-ebpf, so the eBPF program and
//! the userspace tool compile the same definitions: the `#[repr(C)]` types
//! that cross the boundary, the TCP state numbers and names, and the rules
//! that decide who owns a socket and which side closed it.
#![no_std]

// ---------------------------------------------------------------------------
// TCP states (include/net/tcp_states.h)
// ---------------------------------------------------------------------------

pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_SYN_RECV: u8 = 3;
pub const TCP_FIN_WAIT1: u8 = 4;
pub const TCP_FIN_WAIT2: u8 = 5;
pub const TCP_TIME_WAIT: u8 = 6;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_CLOSE_WAIT: u8 = 8;
pub const TCP_LAST_ACK: u8 = 9;
pub const TCP_LISTEN: u8 = 10;
pub const TCP_CLOSING: u8 = 11;
pub const TCP_NEW_SYN_RECV: u8 = 12;
/// One past the highest state number; sizes per-state tables.
pub const TCP_STATE_COUNT: usize = 13;

/// Kernel names without the `TCP_` prefix, indexed by state number.
const STATE_NAMES: [&str; TCP_STATE_COUNT] = [
    "UNKNOWN",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "NEW_SYN_RECV",
];

/// The kernel's name for a state, or `None` for a number it does not define.
pub fn state_name(state: u8) -> Option<&'static str> {
    match state {
        1..=12 => Some(STATE_NAMES[state as usize]),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Close side (docs/ARCHITECTURE.md, "Close side")
// ---------------------------------------------------------------------------

pub const CLOSE_UNKNOWN: u8 = 0;
/// This side sent the first FIN and will hold the TIME_WAIT.
pub const CLOSE_ACTIVE: u8 = 1;
/// The peer sent the first FIN.
pub const CLOSE_PASSIVE: u8 = 2;
/// Both sides sent FIN before seeing the other's (FIN_WAIT1→CLOSING).
pub const CLOSE_SIMULTANEOUS: u8 = 3;
/// Ended by a reset or abort, without a FIN exchange.
pub const CLOSE_RESET: u8 = 4;

pub fn close_side_name(side: u8) -> Option<&'static str> {
    match side {
        CLOSE_ACTIVE => Some("active"),
        CLOSE_PASSIVE => Some("passive"),
        CLOSE_SIMULTANEOUS => Some("simultaneous"),
        CLOSE_RESET => Some("reset"),
        _ => None,
    }
}

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

// ---------------------------------------------------------------------------
// Socket lifecycle rules (docs/ARCHITECTURE.md, "Owners")
// ---------------------------------------------------------------------------

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

/// Whether `old → new` (with the close side after it) hands the connection
/// over to a timewait socket: the active or simultaneous closer's full
/// socket closing from a FIN state (docs/ARCHITECTURE.md, "Timewait sockets").
#[inline(always)]
pub fn hands_over_to_timewait(old: u8, new: u8, close: u8) -> bool {
    new == TCP_CLOSE
        && matches!(old, TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_CLOSING)
        && matches!(close, CLOSE_ACTIVE | CLOSE_SIMULTANEOUS)
}

// ---------------------------------------------------------------------------
// Summary mode (`stats`, `top`): aggregate in the kernel, stream little
// ---------------------------------------------------------------------------

/// `Config::stream` bits. Zero streams every transition (`trace`).
/// Keep time-in-state histograms and per-state gauges in the kernel, and
/// stream only transitions to CLOSE (closes and timewait handovers).
pub const STREAM_SUMMARY: u8 = 1;
/// Also stream the two transitions that can take over a timewait socket's
/// 4-tuple (SYN_SENT → ESTABLISHED, LISTEN → SYN_RECV).
pub const STREAM_REUSE_MARKERS: u8 = 2;
/// Leave a handover's FIN_WAIT2 time out of the histogram: userspace
/// records it whole once the timewait socket's FIN_WAIT2 phase ends.
pub const STREAM_DEFER_HANDOVER: u8 = 4;

/// Whether a transition goes through the ring buffer under `stream`.
#[inline(always)]
pub fn streamed(stream: u8, old: u8, new: u8) -> bool {
    stream & STREAM_SUMMARY == 0
        || new == TCP_CLOSE
        || (stream & STREAM_REUSE_MARKERS != 0
            && matches!((old, new), (TCP_SYN_SENT, TCP_ESTABLISHED) | (TCP_LISTEN, TCP_SYN_RECV)))
}

/// Log-linear histogram of nanoseconds: 2^HIST_SUB_BITS buckets per power
/// of two, from 2^HIST_MIN_EXP (~1 µs; less counts there) to 2^HIST_MAX_EXP
/// (~73 min; more counts there). A bucket spans 1/8 of its power of two, so
/// a value read back as its bucket's midpoint is within ±6.25 %.
pub const HIST_SUB_BITS: u32 = 3;
pub const HIST_MIN_EXP: u32 = 10;
pub const HIST_MAX_EXP: u32 = 42;
pub const HIST_BUCKETS: usize = ((HIST_MAX_EXP - HIST_MIN_EXP + 1) << HIST_SUB_BITS) as usize;

/// The bucket `ns` falls in. No loops, so the verifier takes it as is.
#[inline(always)]
pub fn hist_bucket(ns: u64) -> usize {
    if ns < 1 << HIST_MIN_EXP {
        return 0;
    }
    if ns >= 1 << (HIST_MAX_EXP + 1) {
        return HIST_BUCKETS - 1;
    }
    // floor(log2(ns)) by halving.
    let (mut x, mut exp) = (ns, 0u32);
    if x >= 1 << 32 {
        x >>= 32;
        exp += 32;
    }
    if x >= 1 << 16 {
        x >>= 16;
        exp += 16;
    }
    if x >= 1 << 8 {
        x >>= 8;
        exp += 8;
    }
    if x >= 1 << 4 {
        x >>= 4;
        exp += 4;
    }
    if x >= 1 << 2 {
        x >>= 2;
        exp += 2;
    }
    if x >= 1 << 1 {
        exp += 1;
    }
    let sub = (ns >> (exp - HIST_SUB_BITS)) as usize & ((1 << HIST_SUB_BITS) - 1);
    (((exp - HIST_MIN_EXP) as usize) << HIST_SUB_BITS) + sub
}

/// The midpoint of bucket `bucket`, what it reads back as.
pub fn hist_bucket_ns(bucket: usize) -> u64 {
    let exp = HIST_MIN_EXP + (bucket >> HIST_SUB_BITS) as u32;
    let sub = (bucket & ((1 << HIST_SUB_BITS) - 1)) as u64;
    let width = 1u64 << (exp - HIST_SUB_BITS);
    (1u64 << exp) + sub * width + width / 2
}

/// Time spent in one state, per CPU: the `STATE_TIME` map's value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateTime {
    pub buckets: [u64; HIST_BUCKETS],
    /// Exact extremes; `min` is 0 until something was recorded.
    pub min_ns: u64,
    pub max_ns: u64,
}

// ---------------------------------------------------------------------------
// Types shared with the eBPF program
// ---------------------------------------------------------------------------

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// `in_old_state_ns` when the time entering the old state is not known.
pub const DURATION_UNKNOWN: u64 = u64::MAX;

/// `Event::flags` / `SockRecord::flags`: the owner fields are valid.
pub const FLAG_OWNER_KNOWN: u8 = 1;
/// The owner was inherited from the listening socket, not seen in process context.
pub const FLAG_OWNER_FROM_LISTENER: u8 = 2;
/// The socket has been followed since its first transition.
pub const FLAG_FROM_START: u8 = 4;
/// `Event::flags` only: the kernel skipped at least one of this socket's
/// transitions just before this one; `Event::last_state` is the state the
/// socket table last saw, and the time in the old state is unknown.
pub const FLAG_GAP: u8 = 8;
/// `SockRecord::flags` (and so every later event): the socket has missed a
/// transition at some point, counted once per socket.
pub const FLAG_HAD_GAP: u8 = 16;

/// Whether a transition out of `old` shows that the socket table missed
/// transitions: the table last saw the socket enter `last_seen`, and a
/// socket leaves only the state it is in.
#[inline(always)]
pub fn missed_transitions(last_seen: u8, old: u8) -> bool {
    last_seen != old
}

/// One state transition, as sent through the ring buffer. 104 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ts_ns: u64,
    pub skaddr: u64,
    /// Time spent in `oldstate`, or `DURATION_UNKNOWN`.
    pub in_old_state_ns: u64,
    /// When the socket was first seen; its start if `FLAG_FROM_START`.
    pub first_seen_ns: u64,
    /// Always 16 bytes; IPv4 sockets' addresses are v4-mapped.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub comm: [u8; 16],
    pub pid: u32,
    /// Inode of the socket's network namespace; 0 when unknown.
    pub netns: u32,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub oldstate: u8,
    pub newstate: u8,
    pub close: u8,
    pub flags: u8,
    /// With `FLAG_GAP`: the state the socket table last saw; else `oldstate`.
    pub last_state: u8,
    pub _pad: [u8; 5],
}

/// Per-socket record in the kernel's socket table, keyed by `skaddr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRecord {
    pub first_seen_ns: u64,
    pub last_change_ns: u64,
    pub comm: [u8; 16],
    pub pid: u32,
    pub netns: u32,
    pub close: u8,
    pub flags: u8,
    /// The state the socket entered at its last transition seen.
    pub state: u8,
    pub _pad: u8,
    /// Its ports at that transition, for the filters when a later socket
    /// finds this record stale.
    pub sport: u16,
    pub dport: u16,
}

/// A process that owns a socket: the listener table's value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub comm: [u8; 16],
    pub pid: u32,
    pub _pad: u32,
}

/// `Config::filters` bits: which filter maps are in force.
pub const FILTER_LPORT: u8 = 1;
pub const FILTER_RPORT: u8 = 2;
pub const FILTER_PORT: u8 = 4;
pub const FILTER_PID: u8 = 8;
pub const FILTER_COMM: u8 = 16;

/// Values in the `PORTS` filter map: which roles the port is selected for.
pub const PORT_AS_LOCAL: u8 = 1;
pub const PORT_AS_REMOTE: u8 = 2;
pub const PORT_AS_EITHER: u8 = 4;

/// `Config::family`: which address families to report.
pub const FAMILY_ANY: u8 = 0;
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// Byte offsets of the tracepoint record's fields. They are read from the
/// tracepoint's `format` file at start, because the layout moved in 5.6 and
/// Rust eBPF has no CO-RE relocations.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordOffsets {
    pub skaddr: u16,
    pub oldstate: u16,
    pub newstate: u16,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub protocol: u16,
    pub saddr_v6: u16,
    pub daddr_v6: u16,
    /// 1 before Linux 5.6, 2 after.
    pub protocol_size: u16,
    /// Bytes of the record that hold these fields, read in one go.
    pub record_len: u16,
}

/// The program copies the record into a scratch buffer of this size and
/// masks offsets with `RECORD_OFFSET_MASK`, so every field read stays in
/// bounds whatever the offsets say.
pub const RECORD_SCRATCH_LEN: usize = 144;
pub const RECORD_OFFSET_MASK: u16 = 0x7f;

/// Offsets into kernel structures, from BTF at start: how to read a
/// socket's network namespace. Zero when BTF is missing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `struct sock` → `__sk_common.skc_net.net` (a `struct net *`).
    pub net: u16,
    /// `struct net` → `ns.inum`.
    pub net_inum: u16,
}

/// Offsets into a timewait socket, from BTF at start, for the exact-mode
/// hooks. `struct inet_timewait_sock` starts with a `struct sock_common`,
/// as `struct sock` does, so the 4-tuple sits where it does in a socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TwOffsets {
    /// `sock_common` members.
    pub daddr: u16,
    pub rcv_saddr: u16,
    /// Network byte order.
    pub dport: u16,
    /// The local port, host byte order.
    pub num: u16,
    pub family: u16,
    pub v6_daddr: u16,
    pub v6_rcv_saddr: u16,
    /// `inet_timewait_sock` members.
    pub substate: u16,
    /// The `timer_list` handed to `tw_timer_handler`.
    pub timer: u16,
    pub _pad: u16,
}

/// Load-time configuration, the program's `CONFIG` global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Wake the reader once this many bytes are waiting; below it, events
    /// are submitted without a wakeup and the reader drains on a timer.
    /// 0 leaves wakeups to the kernel's default policy.
    pub wakeup_bytes: u64,
    pub offsets: RecordOffsets,
    pub family: u8,
    pub filters: u8,
    pub sock: SockOffsets,
    pub tw: TwOffsets,
    /// `STREAM_*` bits.
    pub stream: u8,
    pub _pad: [u8; 7],
}

// ---------------------------------------------------------------------------
// Exact timewait hooks (fentry, where the kernel allows it; docs/ARCHITECTURE.md)
// ---------------------------------------------------------------------------

/// `TwHookEvent::hook`: which kernel function fired.
/// `__inet_twsk_schedule(tw, timeo, rearm = false)`: the timewait socket is
/// made, in `substate`, with a timer of `timeo` jiffies.
pub const TW_HOOK_SCHEDULE: u8 = 1;
/// `__inet_twsk_schedule(tw, timeo, rearm = true)`: the timer restarted, on
/// the peer's FIN (FIN_WAIT2 → TIME_WAIT) or a FIN retransmitted into TIME_WAIT.
pub const TW_HOOK_RESCHEDULE: u8 = 2;
/// `tw_timer_handler`: the timer fired; the socket expires.
pub const TW_HOOK_EXPIRE: u8 = 3;
/// `inet_twsk_deschedule_put`: ended early, by a reuse, an RST or a
/// namespace going away.
pub const TW_HOOK_DESCHEDULE: u8 = 4;

/// One timewait hook firing, through the same ring buffer as [`Event`]; the
/// reader tells the two apart by their sizes. 72 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TwHookEvent {
    pub ts_ns: u64,
    pub twaddr: u64,
    /// As in [`Event`]: IPv4 addresses v4-mapped.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub netns: u32,
    /// The timer's length in jiffies, on the two schedule hooks.
    pub timeo: u32,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub hook: u8,
    pub substate: u8,
    pub _pad: [u8; 4],
}

/// The exact-mode programs, and the kernel functions each attaches to, in
/// the order they are tried. Each is optional: see `tcpstate::source::hooks`.
pub const TW_PROGRAMS: [(&str, &str); 3] = [
    ("tw_schedule", "__inet_twsk_schedule"),
    ("tw_expire", "tw_timer_handler"),
    ("tw_deschedule", "inet_twsk_deschedule_put"),
];

impl Config {
    /// All zeroes, for the program's compile-time default; userspace always
    /// overrides it at load.
    pub const fn zeroed() -> Self {
        Self {
            wakeup_bytes: 0,
            offsets: RecordOffsets {
                skaddr: 0,
                oldstate: 0,
                newstate: 0,
                sport: 0,
                dport: 0,
                family: 0,
                protocol: 0,
                saddr_v6: 0,
                daddr_v6: 0,
                protocol_size: 0,
                record_len: 0,
            },
            family: FAMILY_ANY,
            filters: 0,
            sock: SockOffsets { net: 0, net_inum: 0 },
            tw: TwOffsets {
                daddr: 0,
                rcv_saddr: 0,
                dport: 0,
                num: 0,
                family: 0,
                v6_daddr: 0,
                v6_rcv_saddr: 0,
                substate: 0,
                timer: 0,
                _pad: 0,
            },
            stream: 0,
            _pad: [0; 7],
        }
    }
}

/// Map and program names, shared so that neither side spells them twice.
pub const MAP_EVENTS: &str = "EVENTS";
pub const MAP_SOCKETS: &str = "SOCKETS";
pub const MAP_LISTENERS: &str = "LISTENERS";
pub const MAP_TRANSITIONS: &str = "TRANSITIONS";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_PORTS: &str = "PORTS";
pub const MAP_PIDS: &str = "PIDS";
pub const MAP_COMMS: &str = "COMMS";
pub const MAP_STATE_TIME: &str = "STATE_TIME";
pub const MAP_GAUGES: &str = "GAUGES";
pub const GLOBAL_CONFIG: &str = "CONFIG";
pub const PROGRAM_NAME: &str = "inet_sock_set_state";
/// An empty program on the same tracepoint, for the benchmark's floor.
pub const NOOP_PROGRAM_NAME: &str = "noop";

/// `TRANSITIONS` is indexed by `old * TRANSITION_STRIDE + new`.
pub const TRANSITION_STRIDE: u32 = 16;
pub const TRANSITION_SLOTS: u32 = TRANSITION_STRIDE * TRANSITION_STRIDE;

#[inline(always)]
pub fn transition_index(old: u8, new: u8) -> u32 {
    ((old as u32) & (TRANSITION_STRIDE - 1)) * TRANSITION_STRIDE + ((new as u32) & (TRANSITION_STRIDE - 1))
}

/// Indices into the per-CPU `COUNTERS` array.
pub const COUNTER_RINGBUF_FULL: u32 = 0;
pub const COUNTER_SOCKET_INSERT_FAILED: u32 = 1;
pub const COUNTER_READ_FAILED: u32 = 2;
/// Sockets that pass the filters found to have missed a transition (each
/// counted once).
pub const COUNTER_SOCKETS_WITH_GAPS: u32 = 3;
/// Records added to the socket table, and removed from it at CLOSE. What
/// was added and neither removed nor is in the table now was evicted by
/// the LRU: a live socket forgotten, which an LRU does without failing.
pub const COUNTER_SOCKETS_INSERTED: u32 = 4;
pub const COUNTER_SOCKETS_REMOVED: u32 = 5;
pub const COUNTER_SLOTS: u32 = 8;

#[cfg(all(feature = "user", not(target_arch = "bpf")))]
mod user {
    // SAFETY: all of these are repr(C), Copy, made only of integers, with
    // explicit padding, so every bit pattern is valid and none is uninit.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::SockRecord {}
    unsafe impl aya::Pod for super::Owner {}
    unsafe impl aya::Pod for super::StateTime {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names() {
        let names: [Option<&str>; 3] =
            [state_name(TCP_FIN_WAIT1), state_name(TCP_CLOSE_WAIT), state_name(TCP_LISTEN)];
        assert_eq!(names, [Some("FIN_WAIT1"), Some("CLOSE_WAIT"), Some("LISTEN")]);
        assert!((1..TCP_STATE_COUNT as u8).all(|s| state_name(s).is_some()));
        assert_eq!(state_name(0), None);
        assert_eq!(state_name(13), None);
    }

    /// Walk a sequence of transitions and return the final close side.
    fn walk(states: &[u8]) -> u8 {
        states.windows(2).fold(CLOSE_UNKNOWN, |side, w| close_side_after(side, w[0], w[1]))
    }

    #[test]
    fn close_sides_from_full_sequences() {
        use super::{
            TCP_CLOSE as C, TCP_CLOSE_WAIT as CW, TCP_CLOSING as CG, TCP_ESTABLISHED as E,
            TCP_FIN_WAIT1 as F1, TCP_FIN_WAIT2 as F2, TCP_LAST_ACK as LA, TCP_LISTEN as L,
            TCP_SYN_RECV as SR, TCP_SYN_SENT as SS,
        };
        assert_eq!(walk(&[C, SS, E, F1, F2, C]), CLOSE_ACTIVE);
        assert_eq!(walk(&[L, SR, E, CW, LA, C]), CLOSE_PASSIVE);
        assert_eq!(walk(&[C, SS, E, F1, CG, C]), CLOSE_SIMULTANEOUS);
        assert_eq!(walk(&[C, SS, E, C]), CLOSE_RESET);
        assert_eq!(walk(&[L, SR, E, C]), CLOSE_RESET);
        // Abort after the peer's FIN: a reset, not a passive close.
        assert_eq!(walk(&[L, SR, E, CW, C]), CLOSE_RESET);
        // An RST while waiting for the peer's FIN does not undo the active close.
        assert_eq!(walk(&[C, SS, E, F1, C]), CLOSE_ACTIVE);
        // A failed connect is not a close.
        assert_eq!(walk(&[C, SS, C]), CLOSE_UNKNOWN);
        assert_eq!(walk(&[C, L, C]), CLOSE_UNKNOWN);
    }

    #[test]
    fn close_side_inferred_mid_life() {
        assert_eq!(close_side_after(CLOSE_UNKNOWN, TCP_FIN_WAIT2, TCP_CLOSE), CLOSE_ACTIVE);
        assert_eq!(close_side_after(CLOSE_UNKNOWN, TCP_LAST_ACK, TCP_CLOSE), CLOSE_PASSIVE);
        assert_eq!(close_side_after(CLOSE_UNKNOWN, TCP_CLOSE_WAIT, TCP_LAST_ACK), CLOSE_PASSIVE);
        assert_eq!(close_side_after(CLOSE_UNKNOWN, TCP_CLOSING, TCP_CLOSE), CLOSE_SIMULTANEOUS);
        assert_eq!(close_side_after(CLOSE_UNKNOWN, TCP_SYN_SENT, TCP_ESTABLISHED), CLOSE_UNKNOWN);
    }

    #[test]
    fn owner_only_in_process_context() {
        assert!(owner_is_current(TCP_CLOSE, TCP_SYN_SENT));
        assert!(owner_is_current(TCP_ESTABLISHED, TCP_FIN_WAIT1));
        assert!(owner_is_current(TCP_CLOSE_WAIT, TCP_LAST_ACK));
        assert!(!owner_is_current(TCP_SYN_SENT, TCP_ESTABLISHED));
        assert!(!owner_is_current(TCP_ESTABLISHED, TCP_CLOSE_WAIT));
        assert!(!owner_is_current(TCP_FIN_WAIT1, TCP_FIN_WAIT2));
        assert!(!owner_is_current(TCP_LISTEN, TCP_SYN_RECV));
        assert!(!owner_is_current(TCP_ESTABLISHED, TCP_CLOSE));
    }

    #[test]
    fn new_sockets() {
        assert!(starts_new_socket(TCP_CLOSE, TCP_SYN_SENT));
        assert!(starts_new_socket(TCP_LISTEN, TCP_SYN_RECV));
        assert!(!starts_new_socket(TCP_SYN_SENT, TCP_ESTABLISHED));
        assert!(is_accepted_child(TCP_LISTEN, TCP_SYN_RECV));
        assert!(!is_accepted_child(TCP_LISTEN, TCP_CLOSE));
    }

    #[test]
    fn missed_transitions_are_told_by_the_state_left() {
        // Seen entering ESTABLISHED, now leaving it: nothing missed.
        assert!(!missed_transitions(TCP_ESTABLISHED, TCP_ESTABLISHED));
        // Seen entering FIN_WAIT1, now leaving FIN_WAIT2: FIN_WAIT1 ->
        // FIN_WAIT2 was skipped.
        assert!(missed_transitions(TCP_FIN_WAIT1, TCP_FIN_WAIT2));
        // A whole life through a table: with every step seen nothing is
        // flagged; with one step skipped, exactly the next one is.
        let life = [TCP_CLOSE, TCP_SYN_SENT, TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_CLOSE];
        let flagged = |skip: Option<usize>| -> [bool; 5] {
            let mut seen = life[0];
            let mut out = [false; 5];
            for (i, step) in life.windows(2).enumerate() {
                if Some(i) == skip {
                    continue;
                }
                out[i] = missed_transitions(seen, step[0]);
                seen = step[1];
            }
            out
        };
        assert_eq!(flagged(None), [false; 5]);
        assert_eq!(flagged(Some(3)), [false, false, false, false, true]);
    }

    #[test]
    fn histogram_buckets() {
        assert_eq!(HIST_BUCKETS, 264);
        assert_eq!(hist_bucket(0), 0);
        assert_eq!(hist_bucket(1023), 0);
        assert_eq!(hist_bucket(1024), 0);
        assert_eq!(hist_bucket(1024 + 128), 1);
        assert_eq!(hist_bucket(2048), 8);
        assert_eq!(hist_bucket(u64::MAX), HIST_BUCKETS - 1);
        // Every value reads back within 6.25 % of itself, across the range.
        let mut ns = 1500u64;
        while ns < 1 << HIST_MAX_EXP {
            let back = hist_bucket_ns(hist_bucket(ns));
            let err = back.abs_diff(ns) as f64 / ns as f64;
            assert!(err <= 0.0625, "{ns} reads back as {back}");
            ns = ns * 21 / 19;
        }
        // Buckets are in order.
        assert!((1..HIST_BUCKETS).all(|b| hist_bucket_ns(b) > hist_bucket_ns(b - 1)));
        assert_eq!(hist_bucket(hist_bucket_ns(100)), 100);
    }

    #[test]
    fn summary_streams_closes_and_reuse_markers() {
        assert!(streamed(0, TCP_ESTABLISHED, TCP_FIN_WAIT1));
        let summary = STREAM_SUMMARY;
        assert!(!streamed(summary, TCP_ESTABLISHED, TCP_FIN_WAIT1));
        assert!(streamed(summary, TCP_FIN_WAIT2, TCP_CLOSE));
        assert!(!streamed(summary, TCP_SYN_SENT, TCP_ESTABLISHED));
        assert!(streamed(summary | STREAM_REUSE_MARKERS, TCP_SYN_SENT, TCP_ESTABLISHED));
        assert!(streamed(summary | STREAM_REUSE_MARKERS, TCP_LISTEN, TCP_SYN_RECV));
        assert!(hands_over_to_timewait(TCP_FIN_WAIT2, TCP_CLOSE, CLOSE_ACTIVE));
        assert!(hands_over_to_timewait(TCP_CLOSING, TCP_CLOSE, CLOSE_SIMULTANEOUS));
        assert!(!hands_over_to_timewait(TCP_LAST_ACK, TCP_CLOSE, CLOSE_PASSIVE));
        assert!(!hands_over_to_timewait(TCP_FIN_WAIT1, TCP_CLOSE, CLOSE_RESET));
    }

    #[test]
    fn abi_sizes_are_fixed() {
        assert_eq!(core::mem::size_of::<Event>(), 104);
        assert_eq!(core::mem::size_of::<SockRecord>(), 48);
        assert_eq!(core::mem::size_of::<Owner>(), 24);
        assert_eq!(core::mem::size_of::<RecordOffsets>(), 22);
        assert_eq!(core::mem::size_of::<Config>(), 64);
        assert_eq!(core::mem::size_of::<TwHookEvent>(), 72);
        // The reader tells ring records apart by size.
        assert_ne!(core::mem::size_of::<TwHookEvent>(), core::mem::size_of::<Event>());
        assert!(transition_index(15, 15) < TRANSITION_SLOTS);
        assert_eq!(transition_index(TCP_ESTABLISHED, TCP_FIN_WAIT1), 16 + 4);
    }
}
