//! A socket as the model knows it: the 4-tuple that names its connection
//! (one type for the tracepoint's view and sock_diag's), and sock_diag's
//! entry for it.

use std::{net::IpAddr, time::Duration};

use super::state::TcpState;

/// Local and remote address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FourTuple {
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
}

impl FourTuple {
    /// v4-mapped IPv6 addresses as IPv4, as the tracepoint's records are
    /// decoded, so that both views of one connection compare equal.
    pub fn canonical(self) -> Self {
        Self { saddr: self.saddr.to_canonical(), daddr: self.daddr.to_canonical(), ..self }
    }
}

/// One TCP socket as sock_diag reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SockEntry {
    /// For a timewait socket, its substate: TIME_WAIT or FIN_WAIT2.
    pub state: TcpState,
    pub tuple: FourTuple,
    /// A timewait socket (`idiag_timer == 3`): it has no owner.
    pub timewait: bool,
    /// Time left on the socket's timer, if one runs.
    pub expires: Option<Duration>,
    /// 0 for timewait and request sockets.
    pub inode: u32,
    /// The socket's cookie, which the dump also sets in the socket, where
    /// the kernel program reads it.
    pub cookie: u64,
}
