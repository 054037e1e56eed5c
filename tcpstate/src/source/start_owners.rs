//! Owners of the sockets that existed before the program was attached.
//!
//! The program learns a socket's owner at the few transitions that run in
//! the owner's context (docs/ARCHITECTURE.md, "Owners"); a socket opened
//! before the start, or accepted from a listener opened before it, has
//! had those already. So at start, every process's socket files
//! (/proc/PID/fd) are matched by inode with sock_diag's dump of each
//! network namespace they live in, and the tracer writes the result into
//! the program's tables before attaching: listeners by (namespace, port,
//! address), other sockets by cookie. sock_diag sets each dumped socket's
//! cookie, which the program reads from the socket when it first sees it.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use netlink_packet_sock_diag::inet::StateFlags;
use tcpstate_ebpf as abi;

use super::{
    cgroup::cgroup2_root,
    procnet::{SocketHolder, socket_holders},
    sockdiag::{Netns, SockDiag},
};
use crate::model::{socket::SockEntry, state::TcpState, transition::Family};

/// What the scan found, in the program's terms.
#[derive(Debug, Default)]
pub struct StartOwners {
    pub listeners: Vec<(abi::ListenerKey, abi::Owner)>,
    /// Cookie → owner.
    pub sockets: Vec<(u64, abi::Owner)>,
    /// Namespaces whose sockets could not be dumped.
    pub unreachable_namespaces: usize,
}

/// Scans /proc and dumps every namespace that holds a process's socket.
/// `selected_cgroups` are the `--cgroup` directories: an owner under one of
/// them carries `OWNER_IN_CGROUP`, as the program would have set it.
pub fn scan(selected_cgroups: &[PathBuf]) -> StartOwners {
    let started = std::time::Instant::now();
    let holders = socket_holders();
    let cgroups = CgroupIds::new(selected_cgroups);
    // Socket inode → its holder (the first found, where one is shared).
    let mut owner_of_inode: HashMap<u32, abi::Owner> = HashMap::new();
    // Namespace inode → a process in it, to enter it by.
    let mut namespaces: BTreeMap<u32, u32> = BTreeMap::new();
    for holder in &holders {
        let owner = cgroups.owner(holder);
        for &inode in &holder.sockets {
            owner_of_inode.entry(inode).or_insert(owner);
        }
        if let Some(netns) = holder.netns {
            namespaces.entry(netns).or_insert(holder.pid);
        }
    }
    let own_netns = Netns::own_inode();
    let mut found = StartOwners::default();
    for (netns, pid) in namespaces {
        let entered = if netns == own_netns {
            Netns::Current
        } else {
            Netns::Path(PathBuf::from(format!("/proc/{pid}/ns/net")))
        };
        let dump = SockDiag::open(&entered)
            .and_then(|mut diag| diag.dump(&[Family::Ipv4, Family::Ipv6], StateFlags::all(), &[]));
        match dump {
            Ok(sockets) => found.add(netns, &sockets, &owner_of_inode),
            Err(e) => {
                log::info!("owners at start: network namespace {netns} not dumped: {e:#}");
                found.unreachable_namespaces += 1;
            }
        }
    }
    log::info!(
        "owners at start: {} listeners and {} other sockets of {} processes, found in {:.1?}",
        found.listeners.len(),
        found.sockets.len(),
        holders.len(),
        started.elapsed()
    );
    found
}

impl StartOwners {
    fn add(&mut self, netns: u32, sockets: &[SockEntry], owner_of_inode: &HashMap<u32, abi::Owner>) {
        for socket in sockets {
            let Some(&owner) = owner_of_inode.get(&socket.inode) else { continue };
            if socket.state == TcpState::LISTEN {
                let key = abi::ListenerKey {
                    netns,
                    port: socket.tuple.sport,
                    _pad: 0,
                    addr: v6_octets(socket.tuple.saddr),
                };
                self.listeners.push((key, owner));
            } else if socket.cookie != 0 {
                self.sockets.push((socket.cookie, owner));
            }
        }
    }
}

/// As the tracepoint records addresses: IPv4 v4-mapped.
fn v6_octets(addr: std::net::IpAddr) -> [u8; 16] {
    match addr {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    }
}

/// Cgroup v2 ids (directory inodes below the cgroup2 mount) of processes'
/// cgroups, and whether they are under a `--cgroup` directory.
struct CgroupIds {
    root: Option<PathBuf>,
    selected: Vec<u64>,
}

impl CgroupIds {
    fn new(selected: &[PathBuf]) -> Self {
        let selected = selected.iter().filter_map(|dir| fs::metadata(dir).ok()).map(|m| m.ino()).collect();
        Self { root: cgroup2_root(), selected }
    }

    fn owner(&self, holder: &SocketHolder) -> abi::Owner {
        let dir = match (&self.root, &holder.cgroup_path) {
            (Some(root), Some(path)) => Some(root.join(path.trim_start_matches('/'))),
            _ => None,
        };
        let id = |dir: &Path| fs::metadata(dir).map(|m| m.ino()).unwrap_or(0);
        let in_selected = dir.as_deref().is_some_and(|dir| {
            let root = self.root.as_deref().unwrap_or(Path::new("/"));
            dir.ancestors().take_while(|a| a.starts_with(root)).any(|a| self.selected.contains(&id(a)))
        });
        let flags = if in_selected {
            abi::FLAG_OWNER_AT_START | abi::FLAG_OWNER_IN_CGROUP
        } else {
            abi::FLAG_OWNER_AT_START
        };
        abi::Owner {
            comm: holder.comm.raw(),
            cgroup_id: dir.as_deref().map_or(0, id),
            pid: holder.pid,
            flags,
            _pad: [0; 3],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our own listener and connected socket are found, keyed as the
    /// program keys them.
    #[test]
    fn finds_our_own_sockets() {
        if !nix_is_root() {
            return;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let found = scan(&[]);
        let own = std::process::id();
        let listener_key = found.listeners.iter().find(|(k, o)| k.port == port && o.pid == own);
        let (key, owner) = listener_key.expect("our listener");
        assert_eq!(key.addr, v6_octets("127.0.0.1".parse().unwrap()));
        assert_eq!(owner.flags & abi::FLAG_OWNER_AT_START, abi::FLAG_OWNER_AT_START);
        assert!(found.sockets.iter().any(|(cookie, o)| *cookie != 0 && o.pid == own), "our client socket");
    }

    fn nix_is_root() -> bool {
        // SAFETY: no preconditions.
        unsafe { libc::geteuid() == 0 }
    }
}
