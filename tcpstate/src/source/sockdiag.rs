//! Socket dumps over NETLINK_SOCK_DIAG, the interface `ss` uses, in this
//! network namespace or another one.

use std::{
    fs::File,
    io,
    net::IpAddr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use crate::model::transition::{Family, TcpState};

/// One TCP socket as sock_diag reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SockEntry {
    /// For a timewait socket, its substate: TIME_WAIT or FIN_WAIT2.
    pub state: TcpState,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// A timewait socket (`idiag_timer == 3`): it has no owner.
    pub timewait: bool,
    /// Time left on the socket's timer, if one runs.
    pub expires: Option<Duration>,
    /// 0 for timewait and request sockets.
    pub inode: u32,
}

/// `idiag_timer` value of a timewait socket's timer.
const TIMER_TIMEWAIT: u8 = 3;
/// Offsets in `struct inet_diag_msg`: timer, then `idiag_expires` after the
/// 48-byte socket id.
const MSG_TIMER_OFFSET: usize = 2;
const MSG_EXPIRES_OFFSET: usize = 52;
const NLMSG_HEADER_LEN: usize = 16;

/// Reads `idiag_timer` and `idiag_expires` from a raw sock_diag message.
/// netlink-packet-sock-diag 0.5 drops the expiry of timewait timers, which
/// is exactly what the census needs.
fn timer_of(raw_message: &[u8]) -> Option<(u8, u32)> {
    let msg = raw_message.get(NLMSG_HEADER_LEN..)?;
    let timer = *msg.get(MSG_TIMER_OFFSET)?;
    let expires = msg.get(MSG_EXPIRES_OFFSET..MSG_EXPIRES_OFFSET + 4)?;
    Some((timer, u32::from_ne_bytes(expires.try_into().ok()?)))
}

/// Where to take the census: this namespace, or one named under
/// `/run/netns` or given as a path (`/proc/PID/ns/net`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Netns {
    #[default]
    Current,
    Path(PathBuf),
}

impl Netns {
    pub fn parse(name_or_path: &str) -> Self {
        if name_or_path.contains('/') {
            Self::Path(PathBuf::from(name_or_path))
        } else {
            Self::Path(Path::new("/run/netns").join(name_or_path))
        }
    }

    /// Runs `f` in this namespace: on a helper thread that enters it, so
    /// the caller's namespace never changes. Sockets made there stay there.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
        let Self::Path(path) = self else { return f() };
        let file = File::open(path).with_context(|| format!("network namespace {}", path.display()))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: a valid fd; only this helper thread changes namespace.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error())
                        .with_context(|| format!("entering {}", path.display()));
                }
                f()
            })
            .join()
            .map_err(|_| anyhow!("namespace helper thread panicked"))?
        })
    }
}

pub struct SockDiag {
    socket: Socket,
    buf: Vec<u8>,
}

impl SockDiag {
    /// Opens a sock_diag socket in `netns`; it answers for that namespace.
    pub fn open(netns: &Netns) -> anyhow::Result<Self> {
        let socket = netns.run(open_socket)?;
        Ok(Self { socket, buf: vec![0; 64 * 1024] })
    }

    /// Dumps the TCP sockets of the given families in the given states.
    pub fn dump(&mut self, families: &[Family], states: StateFlags) -> anyhow::Result<Vec<SockEntry>> {
        let mut out = Vec::new();
        for &family in families {
            self.dump_family(family, states.clone(), &mut out)?;
        }
        Ok(out)
    }

    fn dump_family(
        &mut self,
        family: Family,
        states: StateFlags,
        out: &mut Vec<SockEntry>,
    ) -> anyhow::Result<()> {
        let (af, id) = match family {
            Family::Ipv4 => (AF_INET, SocketId::new_v4()),
            Family::Ipv6 => (AF_INET6, SocketId::new_v6()),
        };
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let request = SockDiagMessage::InetRequest(InetRequest {
            family: af,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states,
            socket_id: id,
        });
        let mut packet = NetlinkMessage::new(header, request.into());
        packet.finalize();
        let mut req = vec![0; packet.buffer_len()];
        packet.serialize(&mut req);
        self.socket.send(&req, 0).context("sock_diag request")?;

        loop {
            let size = self.socket.recv(&mut &mut self.buf[..], 0).context("sock_diag reply")?;
            let mut offset = 0;
            while offset < size {
                let bytes = &self.buf[offset..size];
                let msg = NetlinkMessage::<SockDiagMessage>::deserialize(bytes)
                    .map_err(|e| anyhow!("malformed sock_diag reply: {e}"))?;
                let len = msg.header.length as usize;
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => bail!("sock_diag: {e}"),
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(resp)) => {
                        let h = &resp.header;
                        let (timer, expires_ms) = timer_of(&bytes[..len.min(bytes.len())]).unwrap_or((0, 0));
                        out.push(SockEntry {
                            state: TcpState(h.state),
                            saddr: h.socket_id.source_address,
                            sport: h.socket_id.source_port,
                            daddr: h.socket_id.destination_address,
                            dport: h.socket_id.destination_port,
                            timewait: timer == TIMER_TIMEWAIT,
                            expires: (timer != 0).then(|| Duration::from_millis(expires_ms.into())),
                            inode: h.inode,
                        });
                    }
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }
}

fn open_socket() -> anyhow::Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).context("opening a sock_diag socket")?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_timer_the_crate_drops() {
        let mut raw = vec![0u8; NLMSG_HEADER_LEN + 72];
        raw[NLMSG_HEADER_LEN + MSG_TIMER_OFFSET] = TIMER_TIMEWAIT;
        raw[NLMSG_HEADER_LEN + MSG_EXPIRES_OFFSET..][..4].copy_from_slice(&59_123u32.to_ne_bytes());
        assert_eq!(timer_of(&raw), Some((TIMER_TIMEWAIT, 59_123)));
        assert_eq!(timer_of(&raw[..40]), None);
    }

    #[test]
    fn netns_names_and_paths() {
        assert_eq!(Netns::parse("blue"), Netns::Path("/run/netns/blue".into()));
        assert_eq!(Netns::parse("/proc/1/ns/net"), Netns::Path("/proc/1/ns/net".into()));
    }

    /// Our own listener shows up in a dump of this namespace.
    #[test]
    fn dumps_this_namespace() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut diag = SockDiag::open(&Netns::Current).unwrap();
        let socks = diag.dump(&[Family::Ipv4], StateFlags::LISTEN).unwrap();
        let ours = socks.iter().find(|s| s.sport == port).expect("our listener");
        assert_eq!(ours.state, TcpState::LISTEN);
        assert!(!ours.timewait);
        assert_ne!(ours.inode, 0);
    }
}
