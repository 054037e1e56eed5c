//! The program's configuration and maps: what userspace sets at load (the
//! `CONFIG` global, the filter maps) and reads back (counters, by name).

use bitflags::bitflags;
use bytemuck::{Pod, Zeroable};

use crate::state::{TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN, TCP_SYN_RECV, TCP_SYN_SENT};

bitflags! {
    /// `Config::filters`: which filter maps are in force.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct FilterSet: u8 {
        const LPORT = 1;
        const RPORT = 2;
        const PORT = 4;
        const PID = 8;
        const COMM = 16;
        /// The owner was under one of the `CGROUPS` when it was captured.
        const CGROUP = 32;
        /// The socket's network namespace is in `NAMESPACES`.
        const NETNS = 64;
    }
}

bitflags! {
    /// Values in the `PORTS` filter map: which roles the port is selected for.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PortRoles: u8 {
        const LOCAL = 1;
        const REMOTE = 2;
        const EITHER = 4;
    }
}

bitflags! {
    /// `Config::stream`. Empty streams every transition (`trace`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct StreamSet: u8 {
        /// Keep time-in-state histograms and per-state gauges in the kernel,
        /// and stream only transitions to CLOSE (closes and timewait
        /// handovers).
        const SUMMARY = 1;
        /// Also stream the two transitions that can take over a timewait
        /// socket's 4-tuple (SYN_SENT → ESTABLISHED, LISTEN → SYN_RECV).
        const REUSE_MARKERS = 2;
        /// Leave a handover's FIN_WAIT2 time out of the histogram: userspace
        /// records it whole once the timewait socket's FIN_WAIT2 phase ends.
        const DEFER_HANDOVER = 4;
    }
}

// The raw bits, for the program, which reads them from `Config`.
pub const FILTER_LPORT: u8 = FilterSet::LPORT.bits();
pub const FILTER_RPORT: u8 = FilterSet::RPORT.bits();
pub const FILTER_PORT: u8 = FilterSet::PORT.bits();
pub const FILTER_PID: u8 = FilterSet::PID.bits();
pub const FILTER_COMM: u8 = FilterSet::COMM.bits();
pub const FILTER_CGROUP: u8 = FilterSet::CGROUP.bits();
pub const FILTER_NETNS: u8 = FilterSet::NETNS.bits();
/// Entries of the `NAMESPACES` filter map (`--netns`, repeatable).
pub const MAX_NAMESPACES: u32 = 64;
/// Slots of the `PORTS` array: one per port, so that ranges cost nothing.
pub const PORT_SLOTS: u32 = 65536;
/// Slots of the `CGROUPS` array (`--cgroup`, repeatable).
pub const MAX_CGROUPS: u32 = 8;
pub const PORT_AS_LOCAL: u8 = PortRoles::LOCAL.bits();
pub const PORT_AS_REMOTE: u8 = PortRoles::REMOTE.bits();
pub const PORT_AS_EITHER: u8 = PortRoles::EITHER.bits();
pub const STREAM_SUMMARY: u8 = StreamSet::SUMMARY.bits();
pub const STREAM_REUSE_MARKERS: u8 = StreamSet::REUSE_MARKERS.bits();
pub const STREAM_DEFER_HANDOVER: u8 = StreamSet::DEFER_HANDOVER.bits();

/// Whether a transition goes through the ring buffer under `stream`.
#[inline(always)]
pub fn streamed(stream: u8, old: u8, new: u8) -> bool {
    stream & STREAM_SUMMARY == 0
        || new == TCP_CLOSE
        || (stream & STREAM_REUSE_MARKERS != 0
            && matches!((old, new), (TCP_SYN_SENT, TCP_ESTABLISHED) | (TCP_LISTEN, TCP_SYN_RECV)))
}

/// `Config::family`: which address families to report.
pub const FAMILY_ANY: u8 = 0;
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// Byte offsets of the tracepoint record's fields. They are read from the
/// tracepoint's `format` file at start, because the layout moved in 5.6 and
/// Rust eBPF has no CO-RE relocations.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SockOffsets {
    /// `struct sock` → `__sk_common.skc_net.net` (a `struct net *`).
    pub net: u16,
    /// `struct net` → `ns.inum`.
    pub net_inum: u16,
    /// `struct sock` → `__sk_common.skc_cookie`: the socket's cookie,
    /// which sock_diag hands out (and sets) when it dumps the socket.
    pub cookie: u16,
    /// `struct sock` → `sk_err`: the errno a reset or a timeout closed the
    /// socket with. A handover to a timewait socket never sets it.
    pub err: u16,
}

/// Offsets into a timewait socket, from BTF at start, for the exact-mode
/// hooks. `struct inet_timewait_sock` starts with a `struct sock_common`,
/// as `struct sock` does, so the 4-tuple sits where it does in a socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Config {
    /// Wake the reader once this many bytes are waiting; below it, events
    /// are submitted without a wakeup and the reader drains on a timer.
    /// 0 leaves wakeups to the kernel's default policy.
    pub wakeup_bytes: u64,
    pub offsets: RecordOffsets,
    pub family: u8,
    /// [`FilterSet`].
    pub filters: u8,
    pub sock: SockOffsets,
    pub tw: TwOffsets,
    /// [`StreamSet`].
    pub stream: u8,
    /// `CGROUPS` slots in use.
    pub cgroups: u8,
    pub _pad: [u8; 2],
}

/// The exact-mode programs, and the kernel functions each attaches to, in
/// the order they are tried. Each is optional: see `tcpstate::source::hooks`.
pub const TW_PROGRAMS: [(&str, &str); 3] = [
    ("tw_schedule", "__inet_twsk_schedule"),
    ("tw_expire", "tw_timer_handler"),
    ("tw_deschedule", "inet_twsk_deschedule_put"),
];

impl Config {
    /// All zeroes, for the program's compile-time default (a `const`, which
    /// `Zeroable::zeroed` is not); userspace always overrides it at load.
    pub const fn zeroed() -> Self {
        // SAFETY: Config is Zeroable (checked by its derive): all integers.
        unsafe { core::mem::zeroed() }
    }
}

/// Map and program names, shared so that neither side spells them twice.
pub const MAP_EVENTS: &str = "EVENTS";
/// The ring buffer's size unless `--ring-size` says otherwise: at 400k
/// events/s (about the most a 2-core VM makes), a quarter of it (the
/// wake-up threshold) is 50 ms of events.
pub const DEFAULT_RING_BYTES: u32 = 8 << 20;
pub const MAP_SOCKETS: &str = "SOCKETS";
pub const MAP_LISTENERS: &str = "LISTENERS";
/// Socket cookie → owner, for sockets that existed before the program.
pub const MAP_OWNERS_AT_START: &str = "OWNERS_AT_START";
/// Its largest capacity; userspace sizes it to the sockets found at start.
pub const MAX_OWNERS_AT_START: u32 = 1 << 20;
/// The listener table's capacity.
pub const MAX_LISTENERS: u32 = 4096;
pub const MAP_TRANSITIONS: &str = "TRANSITIONS";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_PORTS: &str = "PORTS";
pub const MAP_PIDS: &str = "PIDS";
pub const MAP_COMMS: &str = "COMMS";
pub const MAP_CGROUPS: &str = "CGROUPS";
pub const MAP_NAMESPACES: &str = "NAMESPACES";
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
