//! Socket dumps over NETLINK_SOCK_DIAG, the interface `ss` uses, in this
//! network namespace or another one.

use std::{
    fs::File,
    io,
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

use crate::model::{
    filter::PortRange,
    socket::{FourTuple, SockEntry},
    state::TcpState,
    transition::Family,
};

/// `idiag_timer` value of a timewait socket's timer.
const TIMER_TIMEWAIT: u8 = 3;
/// Offsets in `struct inet_diag_msg`: timer, then `idiag_expires` after the
/// 48-byte socket id.
const MSG_TIMER_OFFSET: usize = 2;
const MSG_EXPIRES_OFFSET: usize = 52;
const NLMSG_HEADER_LEN: usize = 16;

/// `INET_DIAG_REQ_BYTECODE`: a filter program attached to a dump request.
const INET_DIAG_REQ_BYTECODE: u16 = 1;
// inet_diag_bc_op codes (include/uapi/linux/inet_diag.h).
const BC_JMP: u8 = 1;
const BC_S_GE: u8 = 2;
const BC_S_LE: u8 = 3;
const BC_D_GE: u8 = 4;
const BC_D_LE: u8 = 5;

fn op(code: u8, yes: u8, no: u16) -> [u8; 4] {
    let [n0, n1] = no.to_ne_bytes();
    [code, yes, n0, n1]
}

/// A filter program keeping sockets whose local or remote port is in one
/// of `ports`, in the kernel, as `ss '( sport >= :A and sport <= :B or … )'`
/// does.
///
/// The kernel audits a program by walking its `yes` jumps, which must visit
/// every op, so each `yes` steps to the next op and branching uses `no`: a
/// failed comparison skips ahead, a match falls through to a JMP whose `no`
/// lands exactly on the end (accept); the last op jumps past it (reject).
pub fn port_filter(ports: &[PortRange]) -> Vec<u8> {
    const BLOCK: usize = 40; // per range: 2 comparisons + JMP, for each side
    let end = ports.len() * BLOCK + 4;
    let mut bc = Vec::with_capacity(end);
    for range in ports {
        for (ge, le) in [(BC_S_GE, BC_S_LE), (BC_D_GE, BC_D_LE)] {
            // A comparison is two ops, the second holding the port.
            bc.extend(op(ge, 8, 20));
            bc.extend(op(0, 0, range.first));
            bc.extend(op(le, 8, 12));
            bc.extend(op(0, 0, range.last));
            let to_end = (end - bc.len()) as u16;
            bc.extend(op(BC_JMP, 4, to_end));
        }
    }
    bc.extend(op(BC_JMP, 4, 8));
    bc
}

/// Appends a netlink attribute to a serialised message, fixing its length.
fn append_attribute(message: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = (4 + payload.len()) as u16;
    message.extend(len.to_ne_bytes());
    message.extend(kind.to_ne_bytes());
    message.extend(payload);
    message.resize(message.len().next_multiple_of(4), 0);
    let total = message.len() as u32;
    message[..4].copy_from_slice(&total.to_ne_bytes());
}

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

    /// `--netns NAME|PATH`, checked to be a network namespace: anything else
    /// is the user's mistake (a [`crate::UsageError`]), said plainly.
    pub fn from_arg(name_or_path: &str) -> anyhow::Result<Self> {
        let netns = Self::parse(name_or_path);
        let Self::Path(path) = &netns else { return Ok(netns) };
        let usage = |why: &str| crate::UsageError(format!("--netns {name_or_path}: {why}"));
        // /proc/PID/ns/* are links named after their type ("mnt:[4026…]"),
        // readable where the namespace itself may not be.
        if let Ok(link) = std::fs::read_link(path)
            && let Some((kind, _)) = link.to_string_lossy().split_once(":[")
            && kind != "net"
        {
            return Err(usage(&format!("not a network namespace (a {kind} namespace)")).into());
        }
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(usage("no such network namespace").into());
            }
            Err(e) => return Err(anyhow::Error::from(e).context(format!("opening {}", path.display()))),
        };
        /// `ioctl(NS_GET_NSTYPE)`: the namespace type of an nsfs file.
        const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
        // SAFETY: an ioctl without arguments on an open fd.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
        if kind != libc::CLONE_NEWNET {
            return Err(usage("not a network namespace").into());
        }
        Ok(netns)
    }

    /// Inode of this process's network namespace (0 if unreadable).
    pub fn own_inode() -> u32 {
        inode(Path::new("/proc/self/ns/net")).unwrap_or(0)
    }

    /// A way into the namespace with inode `netns`: this one (also for 0,
    /// a socket whose namespace the program could not read), a name under
    /// /run/netns, or any process living in it. `None` if none is found.
    pub fn of_inode(netns: u32, own: u32) -> Option<Self> {
        if netns == 0 || netns == own {
            return Some(Self::Current);
        }
        Self::all().remove(&netns).map(Self::Path)
    }

    /// Every network namespace now, by inode, each with a path to enter it
    /// by: those named under /run/netns first, then those of processes.
    pub fn all() -> std::collections::BTreeMap<u32, PathBuf> {
        let mut found = std::collections::BTreeMap::new();
        for path in std::fs::read_dir("/run/netns").into_iter().flatten().flatten().map(|e| e.path()) {
            if let Some(netns) = inode(&path) {
                found.entry(netns).or_insert(path);
            }
        }
        for path in
            std::fs::read_dir("/proc").into_iter().flatten().flatten().map(|e| e.path().join("ns/net"))
        {
            let Ok(link) = std::fs::read_link(&path) else { continue };
            let netns = link.to_str().and_then(|l| l.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok());
            if let Some(netns) = netns {
                found.entry(netns).or_insert(path);
            }
        }
        found
    }

    /// `--netns NAME|PATH|ID` as a filter: the namespace's inode. A number
    /// is taken as the inode itself (as events and `lsns -t net` show it);
    /// a name or path must be a network namespace.
    pub fn inode_of_arg(arg: &str) -> anyhow::Result<u32> {
        if let Ok(inode) = arg.parse::<u32>() {
            return Ok(inode);
        }
        match Self::from_arg(arg)? {
            Self::Current => Ok(Self::own_inode()),
            Self::Path(path) => inode(&path).ok_or_else(|| anyhow::anyhow!("reading {}", path.display())),
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

fn inode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().and_then(|m| u32::try_from(m.ino()).ok())
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

    /// Dumps the TCP sockets of the given families in the given states;
    /// with `ports`, only those with one of them at either end (filtered in
    /// the kernel).
    pub fn dump(
        &mut self,
        families: &[Family],
        states: StateFlags,
        ports: &[PortRange],
    ) -> anyhow::Result<Vec<SockEntry>> {
        let filter = (!ports.is_empty()).then(|| port_filter(ports));
        let mut out = Vec::new();
        for &family in families {
            self.dump_family(family, states.clone(), filter.as_deref(), &mut out)?;
        }
        Ok(out)
    }

    fn dump_family(
        &mut self,
        family: Family,
        states: StateFlags,
        filter: Option<&[u8]>,
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
        // netlink-packet-sock-diag has no way to attach attributes.
        if let Some(bytecode) = filter {
            append_attribute(&mut req, INET_DIAG_REQ_BYTECODE, bytecode);
        }
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
                            tuple: FourTuple {
                                saddr: h.socket_id.source_address,
                                sport: h.socket_id.source_port,
                                daddr: h.socket_id.destination_address,
                                dport: h.socket_id.destination_port,
                            },
                            timewait: timer == TIMER_TIMEWAIT,
                            expires: (timer != 0).then(|| Duration::from_millis(expires_ms.into())),
                            inode: h.inode,
                            cookie: cookie_of(h.socket_id.cookie),
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

/// `idiag_cookie`: two native-endian u32 halves, low first.
fn cookie_of(raw: [u8; 8]) -> u64 {
    let half = |at: usize| u64::from(u32::from_ne_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]));
    half(0) | half(4) << 32
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
        let socks = diag.dump(&[Family::Ipv4], StateFlags::LISTEN, &[]).unwrap();
        let ours = socks.iter().find(|s| s.tuple.sport == port).expect("our listener");
        assert_eq!(ours.state, TcpState::LISTEN);
        assert!(!ours.timewait);
        assert_ne!(ours.inode, 0);
        // The kernel accepts the port filter and applies it.
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let only = diag.dump(&[Family::Ipv4], StateFlags::LISTEN, &[PortRange::one(port)]).unwrap();
        assert_eq!(only.iter().map(|s| s.tuple.sport).collect::<Vec<_>>(), [port]);
        let both = diag
            .dump(
                &[Family::Ipv4],
                StateFlags::LISTEN,
                &[PortRange::one(port), PortRange::one(other.local_addr().unwrap().port())],
            )
            .unwrap();
        assert_eq!(both.len(), 2);
    }

    #[test]
    fn port_filter_shape() {
        let bc = port_filter(&[PortRange::one(80)]);
        assert_eq!(bc.len(), 44);
        let ops: Vec<(u8, u8, u16)> =
            bc.chunks(4).map(|c| (c[0], c[1], u16::from_ne_bytes([c[2], c[3]]))).collect();
        // Every yes steps to the next op, so the kernel's audit sees them all.
        assert!(ops.iter().filter(|o| o.0 != 0).all(|o| o.1 == 4 || o.1 == 8));
        assert_eq!(ops[0], (BC_S_GE, 8, 20));
        assert_eq!(ops[1], (0, 0, 80));
        assert_eq!(ops[4], (BC_JMP, 4, 44 - 16));
        assert_eq!(ops[10], (BC_JMP, 4, 8));
        let range = port_filter(&[PortRange { first: 8000, last: 8099 }]);
        let ops: Vec<u16> = range.chunks(4).map(|c| u16::from_ne_bytes([c[2], c[3]])).collect();
        assert_eq!((ops[1], ops[3]), (8000, 8099), "S_GE first, S_LE last");
        let mut msg = vec![0u8; 16];
        append_attribute(&mut msg, INET_DIAG_REQ_BYTECODE, &[1, 2, 3]);
        assert_eq!(msg.len(), 24);
        assert_eq!(u32::from_ne_bytes(msg[..4].try_into().unwrap()), 24);
        assert_eq!(u16::from_ne_bytes([msg[16], msg[17]]), 7);
    }
}
