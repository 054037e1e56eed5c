//! What /proc tells about TCP: sysctls under /proc/sys/net/ipv4 and the
//! TcpExt counters in /proc/net/netstat (both belong to the network
//! namespace of the thread that reads them), and which process holds which
//! socket (/proc/PID/fd).

use std::{collections::BTreeMap, fs, path::Path};

use super::sockdiag::Netns;
use crate::model::{
    census::{Owners, SocketOwner},
    cgroup::Cgroup,
    counters::{NamespaceTcpExt, ProcessUsage},
    filter::PortRange,
    transition::Comm,
};

/// The host's name and kernel release (`uname -n`, `uname -r`).
pub fn host() -> (String, String) {
    // SAFETY: uname fills a zeroed struct it is given.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut name) } != 0 {
        return Default::default();
    }
    let text = |field: &[libc::c_char]| {
        let bytes: Vec<u8> = field.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (text(&name.nodename), text(&name.release))
}

/// This process's CPU time (user + system) and resident memory.
pub fn self_usage() -> ProcessUsage {
    // SAFETY: getrusage fills a zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let cpu_seconds = if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
        let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        secs(usage.ru_utime) + secs(usage.ru_stime)
    } else {
        0.0
    };
    // statm's second field: resident pages.
    let pages = fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()))
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    ProcessUsage { cpu_seconds, rss_bytes: pages * page }
}

/// The TcpExt counters that bear on TIME_WAIT, and on closes that make no
/// timewait socket though they look like a handover (`TCPAbortOnData`:
/// data after `close()`, answered with a reset).
pub const TCPEXT_KEYS: [&str; 5] = ["TW", "TWKilled", "TWRecycled", "TCPTimeWaitOverflow", "TCPAbortOnData"];

/// Parses the `TcpExt:` header and value lines of /proc/net/netstat.
pub fn parse_tcpext(netstat: &str) -> BTreeMap<String, u64> {
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { return BTreeMap::new() };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// The TIME_WAIT-related TcpExt counters now, in this thread's namespace.
pub fn tcpext() -> BTreeMap<String, u64> {
    of_interest(parse_tcpext(&fs::read_to_string("/proc/net/netstat").unwrap_or_default()))
}

fn of_interest(all: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    all.into_iter().filter(|(k, _)| TCPEXT_KEYS.contains(&k.as_str())).collect()
}

/// The TcpExt counters of a namespace: read in it, by a helper thread
/// (`/proc/thread-self/net` is the namespace of the thread that reads it).
fn tcpext_in(netns: &Netns) -> Option<BTreeMap<String, u64>> {
    let read = || -> anyhow::Result<String> { Ok(fs::read_to_string("/proc/thread-self/net/netstat")?) };
    let text = netns.run(read).ok()?;
    Some(of_interest(parse_tcpext(&text)))
}

/// Namespaces whose counters are read, at most: a reading enters each.
const MAX_WATCHED: usize = 64;

/// How the TcpExt counters move, over the session, in tcpstate's namespace
/// and in each namespace the traced sockets live in: TcpExt is per
/// namespace, and the traffic is often not in tcpstate's. Baselines are
/// read at start for the namespaces that exist then (the kernel counts a
/// timewait socket when it makes it, before its connection's first
/// transition reaches userspace); a namespace made later starts at zero.
pub struct TcpExtWatch {
    own: u32,
    /// `None`: seen, but not read (no way in, or past [`MAX_WATCHED`]).
    namespaces: BTreeMap<u32, Option<Watched>>,
    /// Namespaces that existed at start, with their baselines if read.
    at_start: BTreeMap<u32, Option<Watched>>,
    last_seen: u32,
}

struct Watched {
    netns: Netns,
    baseline: BTreeMap<String, u64>,
    since_start: bool,
    /// The last reading, kept for a namespace that has gone since.
    last: std::cell::RefCell<BTreeMap<String, u64>>,
}

impl Watched {
    fn new(netns: Netns, baseline: BTreeMap<String, u64>, since_start: bool) -> Self {
        Self { netns, baseline, since_start, last: Default::default() }
    }
}

impl TcpExtWatch {
    /// Takes the baselines of the namespaces that exist now.
    pub fn start() -> Self {
        let own = Netns::own_inode();
        let own_watched = Watched::new(Netns::Current, tcpext(), true);
        let mut read = 0;
        let at_start = Netns::all()
            .into_iter()
            .filter(|&(inode, _)| inode != own)
            .map(|(inode, path)| {
                let netns = Netns::Path(path);
                let watched = (read < MAX_WATCHED).then(|| tcpext_in(&netns)).flatten();
                read += usize::from(watched.is_some());
                (inode, watched.map(|baseline| Watched::new(netns, baseline, true)))
            })
            .collect();
        Self { own, namespaces: BTreeMap::from([(own, Some(own_watched))]), at_start, last_seen: own }
    }

    /// A traced socket lives in `netns`: its counters are read from now on.
    pub fn see(&mut self, netns: u32) {
        let netns = if netns == 0 { self.own } else { netns };
        if netns == self.last_seen {
            return;
        }
        self.last_seen = netns;
        if self.namespaces.contains_key(&netns) {
            return;
        }
        let watched = match self.at_start.remove(&netns) {
            Some(Some(from_start)) => Some(from_start),
            // There at start, but not read then: from now on.
            Some(None) => Netns::of_inode(netns, self.own)
                .and_then(|path| Some(Watched::new(path.clone(), tcpext_in(&path)?, false))),
            // Made since the start: its counters started at zero.
            None => Netns::of_inode(netns, self.own).map(|path| Watched::new(path, BTreeMap::new(), true)),
        };
        let reading = self.namespaces.values().filter(|w| w.is_some()).count() < MAX_WATCHED;
        self.namespaces.insert(netns, watched.filter(|_| reading));
    }

    /// How each namespace's counters moved, tcpstate's first.
    pub fn readings(&self) -> Vec<NamespaceTcpExt> {
        let mut out: Vec<_> = self
            .namespaces
            .iter()
            .filter_map(|(&netns, w)| {
                let w = w.as_ref()?;
                let now = match &w.netns {
                    Netns::Current => Some(tcpext()),
                    path => tcpext_in(path),
                };
                if let Some(now) = now {
                    *w.last.borrow_mut() = now;
                }
                let counters = delta(&w.baseline, &w.last.borrow());
                Some(NamespaceTcpExt { netns, own: netns == self.own, since_start: w.since_start, counters })
            })
            .collect();
        out.sort_by_key(|n| (!n.own, n.netns));
        out
    }
}

/// Full TCP sockets allocated on the whole host, every namespace included
/// (`alloc` in /proc/net/sockstat, a global count; timewait sockets are
/// not in it).
pub fn tcp_sockets_allocated() -> Option<u64> {
    parse_sockstat_alloc(&fs::read_to_string("/proc/net/sockstat").ok()?)
}

fn parse_sockstat_alloc(sockstat: &str) -> Option<u64> {
    let fields = sockstat.lines().find_map(|l| l.strip_prefix("TCP: "))?;
    let mut words = fields.split_whitespace();
    while let Some(word) = words.next() {
        if word == "alloc" {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// How much each counter grew between two readings.
pub fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after.iter().map(|(k, v)| (k.clone(), v.saturating_sub(before.get(k).copied().unwrap_or(0)))).collect()
}

/// A TCP setting people copy from blog posts, and what it really does.
pub struct Knob {
    pub name: &'static str,
    /// The kernel's default; `None` where the kernel sizes it at boot from
    /// the machine's memory.
    pub default: Option<&'static str>,
    pub meaning: &'static str,
}

/// In the order an SRE fighting TIME_WAIT should read them.
pub const KNOBS: [Knob; 9] = [
    Knob {
        name: "tcp_fin_timeout",
        default: Some("60"),
        meaning: "how long an orphaned socket (its app already closed it) waits in FIN_WAIT2 for the peer's FIN. \
                  It does NOT shorten TIME_WAIT, which is fixed at 60 s; a socket's TCP_LINGER2 overrides it.",
    },
    Knob {
        name: "tcp_tw_reuse",
        default: Some("2"),
        meaning: "lets connect() take over a TIME_WAIT 4-tuple once it is tcp_tw_reuse_delay old (needs TCP \
                  timestamps). Outgoing connections only; it does nothing for a server. 0 off, 1 on, 2 loopback only.",
    },
    Knob {
        name: "tcp_tw_reuse_delay",
        default: Some("1000"),
        meaning: "ms a TIME_WAIT socket must age before tcp_tw_reuse may reuse its 4-tuple.",
    },
    Knob {
        name: "tcp_max_tw_buckets",
        default: None,
        meaning: "cap on timewait sockets in this namespace. Past it, TIME_WAIT is skipped (the connection loses its \
                  protection against old duplicates) and TcpExt TCPTimeWaitOverflow counts each one.",
    },
    Knob {
        name: "tcp_tw_recycle",
        default: None,
        meaning: "removed in Linux 4.12: it broke clients behind NAT. A recipe that sets it fails.",
    },
    Knob {
        name: "ip_local_port_range",
        default: Some("32768 60999"),
        meaning: "ephemeral ports for outgoing connections. A client-side TIME_WAIT keeps its port busy for that \
                  4-tuple for 60 s, which is how TIME_WAIT exhausts ports.",
    },
    Knob {
        name: "tcp_syncookies",
        default: Some("1"),
        meaning: "answer SYNs with cookies when the SYN backlog overflows: 0 off, 1 on overflow, 2 always.",
    },
    Knob {
        name: "tcp_max_syn_backlog",
        default: None,
        meaning: "half-open connections kept per listener before SYNs are dropped or cookied.",
    },
    Knob {
        name: "tcp_keepalive_time",
        default: Some("7200"),
        meaning: "seconds an idle connection waits before the first keepalive probe, for sockets with SO_KEEPALIVE.",
    },
];

/// `ip_local_port_range` of tcpstate's namespace: where `connect()` takes
/// its local ports (the traced namespaces usually keep the default).
pub fn ephemeral_ports() -> Option<PortRange> {
    let range = read_knob(Path::new("/proc/sys/net/ipv4"), "ip_local_port_range")?;
    let (first, last) = range.split_once(' ')?;
    Some(PortRange { first: first.parse().ok()?, last: last.parse().ok()? })
}

/// Fixed in the kernel, with no sysctl: what every TIME_WAIT lasts.
pub const TIME_WAIT_LEN_S: u64 = 60;

/// A knob's current value, or `None` where the running kernel has no such
/// setting.
pub fn read_knob(root: &Path, name: &str) -> Option<String> {
    let raw = fs::read_to_string(root.join(name)).ok()?;
    Some(raw.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Where filesystems of type `fstype` are mounted, from mountinfo's lines
/// (field 5 is the mount point; the type follows the ` - ` separator).
pub fn mount_points(mountinfo: &str, fstype: &str) -> Vec<std::path::PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next() == Some(fstype)).then(|| left.split_whitespace().nth(4))?
        })
        .map(std::path::PathBuf::from)
        .collect()
}

/// [`mount_points`] of this process's mount namespace.
pub fn mounts_of(fstype: &str) -> Vec<std::path::PathBuf> {
    fs::read_to_string("/proc/self/mountinfo").map(|m| mount_points(&m, fstype)).unwrap_or_default()
}

/// A process's cgroup v2 path, from /proc/PID/cgroup's `0::` line.
fn cgroup_path_of(proc_dir: &Path) -> Option<String> {
    let text = fs::read_to_string(proc_dir.join("cgroup")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_string)
}

/// A process holding sockets, from /proc/PID.
#[derive(Clone, Debug)]
pub struct SocketHolder {
    pub pid: u32,
    pub comm: Comm,
    /// Its cgroup v2 path (below the cgroup2 mount).
    pub cgroup_path: Option<String>,
    /// Inode of its network namespace.
    pub netns: Option<u32>,
    /// Inodes of the sockets its fds hold.
    pub sockets: Vec<u32>,
}

/// Every process holding a socket, by reading `/proc/PID/fd`. Processes
/// that vanish or deny access are skipped.
pub fn socket_holders() -> Vec<SocketHolder> {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(procs) = fs::read_dir("/proc") else { return Vec::new() };
    let mut holders = Vec::new();
    for proc_entry in procs.flatten() {
        let Some(pid) = proc_entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let dir = proc_entry.path();
        let Ok(fds) = fs::read_dir(dir.join("fd")) else { continue };
        let sockets: Vec<u32> = fds
            .flatten()
            .filter_map(|fd| {
                let target = fs::read_link(fd.path()).ok()?;
                target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
            })
            .collect();
        if sockets.is_empty() {
            continue;
        }
        let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
        holders.push(SocketHolder {
            pid,
            comm: Comm::from(comm.trim_end()),
            cgroup_path: cgroup_path_of(&dir),
            netns: fs::metadata(dir.join("ns/net")).ok().and_then(|m| u32::try_from(m.ino()).ok()),
            sockets,
        });
    }
    holders
}

/// Maps socket inodes to the processes holding them (the first found,
/// where a socket is shared).
pub fn socket_owners() -> Owners {
    let mut owners = Owners::new();
    for holder in socket_holders() {
        let cgroup = holder.cgroup_path.as_deref().map(|p| Cgroup::of_path(p).label.clone());
        for inode in holder.sockets {
            owners.entry(inode).or_insert_with(|| SocketOwner {
                pid: holder.pid,
                comm: holder.comm,
                cgroup: cgroup.clone(),
            });
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_by_type() {
        let hybrid = "25 30 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate\n\
                      27 25 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                      48 23 0:13 / /sys/kernel/tracing rw,relatime - tracefs nodev rw\n\
                      60 33 0:13 / /sys/kernel/debug/tracing rw - tracefs tracefs rw\n";
        let path = std::path::PathBuf::from;
        assert_eq!(mount_points(hybrid, "cgroup2"), [path("/sys/fs/cgroup/unified")]);
        assert_eq!(
            mount_points(hybrid, "tracefs"),
            [path("/sys/kernel/tracing"), path("/sys/kernel/debug/tracing")]
        );
        let pure = "30 1 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(mount_points(pure, "cgroup2"), [path("/sys/fs/cgroup")]);
        let none = "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n";
        assert!(mount_points(none, "cgroup2").is_empty() && mount_points(none, "tracefs").is_empty());
    }

    #[test]
    fn sockstat_alloc() {
        let text = "sockets: used 10\nTCP: inuse 1 orphan 0 tw 3 alloc 17 mem 97\nUDP: inuse 0 mem 0\n";
        assert_eq!(parse_sockstat_alloc(text), Some(17));
        assert_eq!(parse_sockstat_alloc("TCP: inuse 1\n"), None);
    }

    #[test]
    fn parses_tcpext() {
        let netstat = "TcpExt: SyncookiesSent TW TWKilled TWRecycled TCPTimeWaitOverflow\n\
                       TcpExt: 0 12 3 0 7\n\
                       IpExt: InNoRoutes\nIpExt: 0\n";
        let m = parse_tcpext(netstat);
        assert_eq!(m["TW"], 12);
        assert_eq!(m["TCPTimeWaitOverflow"], 7);
        let before = m.clone();
        let mut after = m;
        *after.get_mut("TW").unwrap() += 5;
        assert_eq!(delta(&before, &after)["TW"], 5);
        assert_eq!(delta(&before, &after)["TWKilled"], 0);
    }

    #[test]
    fn live_counters_and_knobs() {
        let now = tcpext();
        assert_eq!(now.len(), TCPEXT_KEYS.len(), "{now:?}");
        let root = Path::new("/proc/sys/net/ipv4");
        assert!(read_knob(root, "tcp_fin_timeout").unwrap().parse::<u32>().is_ok());
        assert_eq!(read_knob(root, "ip_local_port_range").unwrap().split(' ').count(), 2);
        assert_eq!(read_knob(root, "tcp_tw_recycle"), None, "removed in 4.12");
    }

    #[test]
    fn finds_our_own_socket_owner() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        use std::os::fd::AsRawFd as _;
        let link = std::fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd())).unwrap();
        let inode: u32 =
            link.to_str().unwrap().trim_start_matches("socket:[").trim_end_matches(']').parse().unwrap();
        let owners = socket_owners();
        assert_eq!(owners.get(&inode).map(|o| o.pid), Some(std::process::id()));
    }
}
