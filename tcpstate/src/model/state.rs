//! TCP states and close sides as the model holds them. The names and
//! numbers are the ABI crate's; a state here is the kernel's number, so a
//! state a newer kernel adds still shows (as UNKNOWN) rather than vanishing.

use std::fmt;

use tcpstate_ebpf as abi;

/// A TCP state number, named as the kernel names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TcpState(pub u8);

impl TcpState {
    pub const ESTABLISHED: Self = Self(abi::TCP_ESTABLISHED);
    pub const SYN_SENT: Self = Self(abi::TCP_SYN_SENT);
    pub const SYN_RECV: Self = Self(abi::TCP_SYN_RECV);
    pub const FIN_WAIT1: Self = Self(abi::TCP_FIN_WAIT1);
    pub const FIN_WAIT2: Self = Self(abi::TCP_FIN_WAIT2);
    pub const TIME_WAIT: Self = Self(abi::TCP_TIME_WAIT);
    pub const CLOSE: Self = Self(abi::TCP_CLOSE);
    pub const CLOSE_WAIT: Self = Self(abi::TCP_CLOSE_WAIT);
    pub const LAST_ACK: Self = Self(abi::TCP_LAST_ACK);
    pub const LISTEN: Self = Self(abi::TCP_LISTEN);
    pub const CLOSING: Self = Self(abi::TCP_CLOSING);

    /// States in the order a connection meets them, for reading.
    pub const LIFECYCLE: [Self; 11] = [
        Self::LISTEN,
        Self::SYN_SENT,
        Self::SYN_RECV,
        Self::ESTABLISHED,
        Self::FIN_WAIT1,
        Self::FIN_WAIT2,
        Self::CLOSING,
        Self::TIME_WAIT,
        Self::CLOSE_WAIT,
        Self::LAST_ACK,
        Self::CLOSE,
    ];

    pub fn name(self) -> &'static str {
        abi::state_name(self.0).unwrap_or("UNKNOWN")
    }

    /// The state a kernel name (`"FIN_WAIT2"`) names.
    pub fn from_name(name: &str) -> Option<Self> {
        (0..=u8::MAX).map(Self).find(|s| abi::state_name(s.0) == Some(name))
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// The error a socket closed with (`sk_err`): a reset or a timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockError(pub u8);

impl SockError {
    /// The errno's name, for the errors TCP closes a socket with.
    pub fn name(self) -> std::borrow::Cow<'static, str> {
        let name = match i32::from(self.0) {
            libc::ECONNRESET => "ECONNRESET",
            libc::ECONNREFUSED => "ECONNREFUSED",
            libc::ETIMEDOUT => "ETIMEDOUT",
            libc::EPIPE => "EPIPE",
            libc::ECONNABORTED => "ECONNABORTED",
            libc::EHOSTUNREACH => "EHOSTUNREACH",
            libc::ENETUNREACH => "ENETUNREACH",
            libc::EHOSTDOWN => "EHOSTDOWN",
            libc::ENETDOWN => "ENETDOWN",
            libc::EPROTO => "EPROTO",
            other => return format!("errno {other}").into(),
        };
        name.into()
    }
}

impl SockError {
    /// The error a name from [`SockError::name`] stands for.
    pub fn from_name(name: &str) -> Option<Self> {
        (1..=u8::MAX).map(Self).find(|e| e.name() == name)
    }
}

impl fmt::Display for SockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.name())
    }
}

/// Which side closed the connection (docs/ARCHITECTURE.md, "Close side"):
/// the ABI's enum, whose rules both sides apply.
pub use abi::CloseSide;
