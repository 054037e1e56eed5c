//! The userspace view of one transition, decoded from the ring buffer.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
    sync::Arc,
};

use tcpstate_ebpf::{self as abi, RecordFlags};

use super::{
    cgroup::Cgroup,
    socket::FourTuple,
    state::{CloseSide, SockError, TcpState},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
        }
    }
}

/// A process name as the kernel keeps it: at most 15 bytes, held inline so
/// that decoding and aggregating allocate nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Comm([u8; 16]);

impl Comm {
    /// From the kernel's NUL-padded bytes.
    pub fn from_raw(mut raw: [u8; 16]) -> Self {
        raw[15] = 0;
        Self(raw)
    }

    /// The NUL-padded bytes, as the kernel's filter map takes them.
    pub fn raw(&self) -> [u8; 16] {
        self.0
    }

    pub fn as_str(&self) -> &str {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(15);
        match std::str::from_utf8(&self.0[..end]) {
            Ok(s) => s,
            // The valid prefix; a name cut mid-character loses the tail.
            Err(e) => std::str::from_utf8(&self.0[..e.valid_up_to()]).unwrap_or_default(),
        }
    }
}

impl From<&str> for Comm {
    /// Truncates to 15 bytes, as the kernel does.
    fn from(s: &str) -> Self {
        let mut raw = [0u8; 16];
        let n = s.len().min(15);
        raw[..n].copy_from_slice(&s.as_bytes()[..n]);
        Self(raw)
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl serde::Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The process a socket is attributed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    pub pid: u32,
    pub comm: Comm,
    /// Inherited from the listening socket: the accepted socket has not yet
    /// made a transition in its own process's context.
    pub from_listener: bool,
    /// Found at start, for a socket (or its listener) that existed before
    /// the program: its process held the socket's file then.
    pub at_start: bool,
    /// Its cgroup v2 id when it was captured; 0 when unknown.
    pub cgroup_id: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub skaddr: u64,
    pub family: Family,
    pub tuple: FourTuple,
    pub old: TcpState,
    pub new: TcpState,
    pub in_old_state_ns: Option<u64>,
    /// When the socket was first seen, and whether that was its start.
    pub first_seen_ns: u64,
    pub seen_from_start: bool,
    /// Opened by `connect()`: the local port is the client's.
    pub connected: bool,
    pub owner: Option<Owner>,
    pub close: Option<CloseSide>,
    /// At CLOSE: the error a reset or a timeout closed the socket with.
    pub error: Option<SockError>,
    /// Inode of the socket's network namespace; 0 when unknown.
    pub netns: u32,
    /// The kernel skipped some of this socket's transitions just before
    /// this one: the state its table last saw (`old` was entered unseen).
    pub gap: Option<TcpState>,
    /// The owner's cgroup, resolved from its id (by the session, which can
    /// read the cgroup tree); `None` when unknown.
    pub cgroup: Option<Arc<Cgroup>>,
}

impl Transition {
    /// Whether this is a connection handed over to a timewait socket (in
    /// TIME_WAIT, or in FIN_WAIT2 while the peer has not closed): the
    /// active (or simultaneous) closer's full socket closing from a FIN
    /// state without an error (docs/ARCHITECTURE.md, "Timewait sockets").
    /// The rule is the kernel program's, shared through the ABI crate.
    pub fn enters_time_wait(&self) -> bool {
        abi::hands_over_to_timewait(
            self.old.0,
            self.new.0,
            self.close.map_or(abi::CLOSE_UNKNOWN, u8::from),
            self.error.map_or(0, |e| e.0),
        )
    }

    /// A connection (not a listener) reaching CLOSE.
    pub fn closes_connection(&self) -> bool {
        self.new == TcpState::CLOSE && self.old != TcpState::LISTEN
    }
}

/// v4-mapped IPv6 addresses are shown as IPv4, as `ss` does.
pub(crate) fn decode_addr(raw: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(raw);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

impl Transition {
    pub fn from_raw(raw: &abi::Event) -> Self {
        let saddr = decode_addr(raw.saddr);
        let daddr = decode_addr(raw.daddr);
        let family = match (raw.family, daddr) {
            (abi::AF_INET, _) | (_, IpAddr::V4(_)) => Family::Ipv4,
            _ => Family::Ipv6,
        };
        let flags = RecordFlags::from_bits_retain(raw.flags);
        let owner = flags.contains(RecordFlags::OWNER_KNOWN).then(|| Owner {
            pid: raw.pid,
            comm: Comm::from_raw(raw.comm),
            from_listener: flags.contains(RecordFlags::OWNER_FROM_LISTENER),
            at_start: flags.contains(RecordFlags::OWNER_AT_START),
            cgroup_id: raw.cgroup_id,
        });
        Self {
            ts_ns: raw.ts_ns,
            skaddr: raw.skaddr,
            family,
            tuple: FourTuple { saddr, sport: raw.sport, daddr, dport: raw.dport },
            old: TcpState(raw.oldstate),
            new: TcpState(raw.newstate),
            in_old_state_ns: (raw.in_old_state_ns != abi::DURATION_UNKNOWN).then_some(raw.in_old_state_ns),
            first_seen_ns: raw.first_seen_ns,
            seen_from_start: flags.contains(RecordFlags::FROM_START),
            connected: flags.contains(RecordFlags::CONNECTED),
            owner,
            close: CloseSide::try_from(raw.close).ok(),
            error: (raw.error != 0).then_some(SockError(raw.error)),
            netns: raw.netns,
            gap: flags.contains(RecordFlags::GAP).then_some(TcpState(raw.last_state)),
            cgroup: None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn raw_event() -> abi::Event {
        let mut saddr = [0u8; 16];
        saddr[10..].copy_from_slice(&[0xff, 0xff, 127, 0, 0, 1]);
        let mut daddr = saddr;
        daddr[15] = 2;
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        abi::Event {
            kind: abi::RECORD_TRANSITION,
            ts_ns: 1_000_000_000,
            skaddr: 0xffff_8880_1234_5678,
            in_old_state_ns: 1_500_000,
            first_seen_ns: 900_000_000,
            saddr,
            daddr,
            comm,
            pid: 4242,
            cgroup_id: 77,
            sport: 40000,
            dport: 80,
            family: abi::AF_INET,
            oldstate: abi::TCP_ESTABLISHED,
            newstate: abi::TCP_FIN_WAIT1,
            close: abi::CLOSE_ACTIVE,
            flags: abi::FLAG_OWNER_KNOWN | abi::FLAG_FROM_START,
            netns: 4026531840,
            last_state: abi::TCP_ESTABLISHED,
            error: 0,
            _pad: [0; 3],
        }
    }

    #[test]
    fn decodes_ipv4_event() {
        let bytes = bytemuck::bytes_of(&raw_event()).to_vec();
        let Some(abi::Record::Transition(raw)) = abi::Record::decode(&bytes) else { panic!() };
        let t = Transition::from_raw(&raw);
        assert_eq!(t.family, Family::Ipv4);
        assert_eq!(t.tuple.saddr.to_string(), "127.0.0.1");
        assert_eq!(t.tuple.daddr.to_string(), "127.0.0.2");
        assert_eq!((t.tuple.sport, t.tuple.dport), (40000, 80));
        assert_eq!((t.old, t.new), (TcpState::ESTABLISHED, TcpState::FIN_WAIT1));
        assert_eq!(t.in_old_state_ns, Some(1_500_000));
        assert_eq!(t.close, Some(CloseSide::Active));
        assert_eq!(
            t.owner,
            Some(Owner {
                pid: 4242,
                comm: "curl".into(),
                from_listener: false,
                at_start: false,
                cgroup_id: 77
            })
        );
        assert!(t.seen_from_start);
        assert_eq!(t.gap, None);
    }

    #[test]
    fn decodes_a_gap_with_the_state_last_seen() {
        let mut raw = raw_event();
        raw.oldstate = abi::TCP_FIN_WAIT2;
        raw.newstate = abi::TCP_CLOSE;
        raw.last_state = abi::TCP_ESTABLISHED;
        raw.in_old_state_ns = abi::DURATION_UNKNOWN;
        raw.flags |= abi::FLAG_GAP | abi::FLAG_HAD_GAP;
        let t = Transition::from_raw(&raw);
        assert_eq!(t.gap, Some(TcpState::ESTABLISHED));
        assert_eq!(t.in_old_state_ns, None);
    }

    #[test]
    fn decodes_unknowns_and_ipv6() {
        let mut raw = raw_event();
        raw.family = abi::AF_INET6;
        raw.saddr = Ipv6Addr::LOCALHOST.octets();
        raw.daddr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        raw.in_old_state_ns = abi::DURATION_UNKNOWN;
        raw.flags = 0;
        raw.close = abi::CLOSE_UNKNOWN;
        let t = Transition::from_raw(&raw);
        assert_eq!(t.family, Family::Ipv6);
        assert_eq!(t.tuple.saddr.to_string(), "::1");
        assert_eq!(t.in_old_state_ns, None);
        assert_eq!(t.owner, None);
        assert_eq!(t.close, None);
    }

    #[test]
    fn v4_mapped_on_an_ipv6_socket_is_ipv4() {
        let mut raw = raw_event();
        raw.family = abi::AF_INET6;
        assert_eq!(Transition::from_raw(&raw).family, Family::Ipv4);
    }

    #[test]
    fn comms() {
        assert_eq!(Comm::from("a-very-long-process-name").as_str(), "a-very-long-pro");
        let mut raw = *b"nginx\0\0\0\0\0\0\0\0\0\0\0";
        assert_eq!(Comm::from_raw(raw).as_str(), "nginx");
        raw = [b'x'; 16];
        assert_eq!(Comm::from_raw(raw).as_str().len(), 15);
        // "é" cut in half by the kernel's truncation.
        let mut cut = [0u8; 16];
        cut[..15].copy_from_slice(b"abcdefghijklmn\xc3");
        assert_eq!(Comm::from_raw(cut).as_str(), "abcdefghijklmn");
        assert_eq!(serde_json::to_string(&Comm::from("curl")).unwrap(), "\"curl\"");
    }

    #[test]
    fn names() {
        assert_eq!(TcpState::CLOSE_WAIT.to_string(), "CLOSE_WAIT");
        assert_eq!(format!("{:<12}|", TcpState::LISTEN), "LISTEN      |");
        let names: Vec<_> = CloseSide::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["active", "passive", "simultaneous", "reset"]);
    }
}
