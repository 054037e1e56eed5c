//! What crosses the boundary: the ring buffer's records, each headed by a
//! one-byte [`RecordKind`], and the socket table's values.

use bitflags::bitflags;
use bytemuck::{Pod, Zeroable};
use num_enum::{IntoPrimitive, TryFromPrimitive};

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// `in_old_state_ns` when the time entering the old state is not known.
pub const DURATION_UNKNOWN: u64 = u64::MAX;

/// The first byte of every ring-buffer record: what follows.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, IntoPrimitive, TryFromPrimitive)]
pub enum RecordKind {
    /// An [`Event`].
    Transition = 1,
    /// A [`TwHookEvent`].
    TimewaitHook = 2,
}

bitflags! {
    /// `Event::flags` and `SockRecord::flags`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct RecordFlags: u8 {
        /// The owner fields are valid.
        const OWNER_KNOWN = 1;
        /// The owner was inherited from the listening socket, not seen in
        /// process context.
        const OWNER_FROM_LISTENER = 2;
        /// The socket has been followed since its first transition.
        const FROM_START = 4;
        /// `Event::flags` only: the kernel skipped at least one of this
        /// socket's transitions just before this one; `Event::last_state`
        /// is the state the socket table last saw, and the time in the old
        /// state is unknown.
        const GAP = 8;
        /// `SockRecord::flags` (and so every later event): the socket has
        /// missed a transition at some point, counted once per socket.
        const HAD_GAP = 16;
        /// The owner was under one of the `--cgroup` cgroups when captured.
        const OWNER_IN_CGROUP = 32;
        /// The owner was found at start, by matching the socket files of
        /// every process (/proc/PID/fd) with sock_diag's dump: the socket
        /// or its listener existed before the program was attached.
        const OWNER_AT_START = 64;
        /// The socket was opened by `connect()` (seen CLOSE → SYN_SENT): its
        /// local port is the client's, usually ephemeral.
        const CONNECTED = 128;
    }
}

// The raw bits, for the program's hot path, which works on the wire's bytes.
pub const FLAG_OWNER_KNOWN: u8 = RecordFlags::OWNER_KNOWN.bits();
pub const FLAG_OWNER_FROM_LISTENER: u8 = RecordFlags::OWNER_FROM_LISTENER.bits();
pub const FLAG_FROM_START: u8 = RecordFlags::FROM_START.bits();
pub const FLAG_GAP: u8 = RecordFlags::GAP.bits();
pub const FLAG_HAD_GAP: u8 = RecordFlags::HAD_GAP.bits();
pub const FLAG_OWNER_IN_CGROUP: u8 = RecordFlags::OWNER_IN_CGROUP.bits();
pub const FLAG_OWNER_AT_START: u8 = RecordFlags::OWNER_AT_START.bits();
pub const FLAG_CONNECTED: u8 = RecordFlags::CONNECTED.bits();

/// One state transition, as sent through the ring buffer. 112 bytes; the
/// one-byte fields come first so that the kind leads without padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Event {
    /// `RecordKind::Transition`.
    pub kind: u8,
    pub oldstate: u8,
    pub newstate: u8,
    pub close: u8,
    /// [`RecordFlags`].
    pub flags: u8,
    /// With `GAP`: the state the socket table last saw; else `oldstate`.
    pub last_state: u8,
    pub family: u16,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ts_ns: u64,
    pub skaddr: u64,
    /// Time spent in `oldstate`, or `DURATION_UNKNOWN`.
    pub in_old_state_ns: u64,
    /// When the socket was first seen; its start if `FROM_START`.
    pub first_seen_ns: u64,
    /// Always 16 bytes; IPv4 sockets' addresses are v4-mapped.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub comm: [u8; 16],
    /// The owner's cgroup v2 id when it was captured; 0 when unknown.
    pub cgroup_id: u64,
    pub pid: u32,
    /// Inode of the socket's network namespace; 0 when unknown.
    pub netns: u32,
    pub sport: u16,
    pub dport: u16,
    /// At CLOSE: the socket's error (`sk_err`, an errno) if a reset or a
    /// timeout closed it; 0 otherwise.
    pub error: u8,
    pub _pad: [u8; 3],
}

/// Per-socket record in the kernel's socket table, keyed by `skaddr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SockRecord {
    pub first_seen_ns: u64,
    pub last_change_ns: u64,
    pub comm: [u8; 16],
    /// The owner's cgroup v2 id (`bpf_get_current_cgroup_id`), captured
    /// with `pid` and `comm`.
    pub cgroup_id: u64,
    pub pid: u32,
    pub netns: u32,
    pub close: u8,
    /// [`RecordFlags`].
    pub flags: u8,
    /// The state the socket entered at its last transition seen.
    pub state: u8,
    pub _pad: u8,
    /// Its ports at that transition, for the filters when a later socket
    /// finds this record stale.
    pub sport: u16,
    pub dport: u16,
}

/// A process that owns a socket: the value of the listener table and of
/// the owners found at start.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Owner {
    pub comm: [u8; 16],
    pub cgroup_id: u64,
    pub pid: u32,
    /// Its `OWNER_IN_CGROUP` and `OWNER_AT_START` [`RecordFlags`], for the
    /// sockets it is lent to.
    pub flags: u8,
    pub _pad: [u8; 3],
}

/// The listener table's key: a listening socket's namespace, port and
/// address (v4-mapped for IPv4; the unspecified address for a wildcard).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ListenerKey {
    /// Inode of the network namespace; 0 when unknown (no BTF).
    pub netns: u32,
    pub port: u16,
    pub _pad: u16,
    pub addr: [u8; 16],
}

/// `ListenerKey::addr` of an IPv4 wildcard listener (0.0.0.0, v4-mapped).
pub const V4_MAPPED_ANY: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0];

/// `TwHookEvent::hook`: which kernel function fired (docs/ARCHITECTURE.md,
/// "Timewait sockets").
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, IntoPrimitive, TryFromPrimitive)]
pub enum TwHookPoint {
    /// `__inet_twsk_schedule(tw, timeo, rearm = false)`: the timewait socket
    /// is made, in `substate`, with a timer of `timeo` jiffies.
    Schedule = 1,
    /// `__inet_twsk_schedule(tw, timeo, rearm = true)`: the timer restarted,
    /// on the peer's FIN (FIN_WAIT2 → TIME_WAIT) or a FIN retransmitted into
    /// TIME_WAIT.
    Reschedule = 2,
    /// `tw_timer_handler`: the timer fired; the socket expires.
    Expire = 3,
    /// `inet_twsk_deschedule_put`: ended early, by a reuse, an RST or a
    /// namespace going away.
    Deschedule = 4,
}

pub const TW_HOOK_SCHEDULE: u8 = TwHookPoint::Schedule as u8;
pub const TW_HOOK_RESCHEDULE: u8 = TwHookPoint::Reschedule as u8;
pub const TW_HOOK_EXPIRE: u8 = TwHookPoint::Expire as u8;
pub const TW_HOOK_DESCHEDULE: u8 = TwHookPoint::Deschedule as u8;

/// One timewait hook firing, through the same ring buffer as [`Event`].
/// 72 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TwHookEvent {
    /// `RecordKind::TimewaitHook`.
    pub kind: u8,
    /// [`TwHookPoint`].
    pub hook: u8,
    pub substate: u8,
    pub _pad0: u8,
    pub family: u16,
    pub sport: u16,
    pub ts_ns: u64,
    pub twaddr: u64,
    /// As in [`Event`]: IPv4 addresses v4-mapped.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub netns: u32,
    /// The timer's length in jiffies, on the two schedule hooks.
    pub timeo: u32,
    pub dport: u16,
    pub _pad: [u8; 6],
}

pub const RECORD_TRANSITION: u8 = RecordKind::Transition as u8;
pub const RECORD_TIMEWAIT_HOOK: u8 = RecordKind::TimewaitHook as u8;

/// A ring-buffer record, told apart by its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    Transition(Event),
    TimewaitHook(TwHookEvent),
}

impl Record {
    /// `None` for an unknown kind, or a length that is not the kind's.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let kind = RecordKind::try_from(*bytes.first()?).ok()?;
        match kind {
            RecordKind::Transition if bytes.len() == size_of::<Event>() => {
                Some(Self::Transition(bytemuck::pod_read_unaligned(bytes)))
            }
            RecordKind::TimewaitHook if bytes.len() == size_of::<TwHookEvent>() => {
                Some(Self::TimewaitHook(bytemuck::pod_read_unaligned(bytes)))
            }
            _ => None,
        }
    }
}
