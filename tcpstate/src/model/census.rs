//! A census of current TCP sockets: counts per state (timewait sockets
//! under their real substate), their remaining timers, and groupings.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use serde::Serialize;

use super::{filter::PortRange, socket::SockEntry, state::TcpState, transition::Comm};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    /// Local port
    Lport,
    /// Remote address
    Raddr,
    /// Owning process (timewait sockets have none)
    Process,
    /// The owning process's container, systemd unit or cgroup
    Cgroup,
}

impl GroupBy {
    pub fn name(self) -> &'static str {
        match self {
            Self::Lport => "lport",
            Self::Raddr => "raddr",
            Self::Process => "process",
            Self::Cgroup => "cgroup",
        }
    }
}

/// inode → owning process, from /proc (as `ss -p` does).
pub type Owners = HashMap<u32, SocketOwner>;

/// A process holding a socket, and what its cgroup names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketOwner {
    pub pid: u32,
    pub comm: Comm,
    /// Its container (short id), systemd unit or cgroup path.
    pub cgroup: Option<Arc<str>>,
}

/// Remaining time on timewait timers, in ms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Remaining {
    pub min_ms: u64,
    pub p50_ms: u64,
    pub p90_ms: u64,
    pub max_ms: u64,
}

impl Remaining {
    fn of(mut ms: Vec<u64>) -> Option<Self> {
        ms.sort_unstable();
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        (!ms.is_empty()).then(|| Self {
            min_ms: ms[0],
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            max_ms: ms[ms.len() - 1],
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Timewait {
    /// TIME_WAIT, or FIN_WAIT2 for an orphan waiting for the peer's FIN.
    pub substate: &'static str,
    pub count: u64,
    pub remaining: Option<Remaining>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Group {
    pub key: String,
    pub total: u64,
    pub states: BTreeMap<&'static str, u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Census {
    pub time: String,
    pub netns: String,
    pub total: u64,
    /// Sockets per state, as `ss -tan` counts them.
    pub states: BTreeMap<&'static str, u64>,
    /// The timewait sockets among them, by substate.
    pub timewait: Vec<Timewait>,
    pub by: Option<&'static str>,
    pub groups: Vec<Group>,
}

/// How groups are formed and cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Grouping {
    pub by: Option<GroupBy>,
    /// Groups shown, the largest first; the rest are summed as `(other)`.
    pub top: Option<usize>,
    /// By local port: ports in this range with no listener on them (the
    /// client side of connections) are one group.
    pub ephemeral: Option<PortRange>,
}

/// The key of the group of ephemeral local ports.
pub fn ephemeral_key(range: PortRange) -> String {
    format!("ephemeral ({range})")
}

fn group_key(
    s: &SockEntry,
    by: GroupBy,
    owners: &Owners,
    grouping: &Grouping,
    listening: &HashSet<u16>,
) -> String {
    match by {
        GroupBy::Lport => match grouping.ephemeral {
            Some(range) if range.ports().contains(&s.tuple.sport) && !listening.contains(&s.tuple.sport) => {
                ephemeral_key(range)
            }
            _ => s.tuple.sport.to_string(),
        },
        GroupBy::Raddr => s.tuple.daddr.to_string(),
        GroupBy::Process => match owners.get(&s.inode) {
            Some(o) => format!("{}/{}", o.pid, o.comm),
            None if s.timewait => "(timewait: no owner in the kernel)".into(),
            None => "(no owner found)".into(),
        },
        GroupBy::Cgroup => match owners.get(&s.inode).map(|o| o.cgroup.as_deref()) {
            Some(Some(label)) => label.to_string(),
            Some(None) => "(no cgroup found)".into(),
            None if s.timewait => "(timewait: no owner in the kernel)".into(),
            None => "(no owner found)".into(),
        },
    }
}

impl Census {
    pub fn build(
        entries: &[SockEntry],
        grouping: Grouping,
        owners: &Owners,
        netns: String,
        time: String,
    ) -> Self {
        let by = grouping.by;
        let listening: HashSet<u16> =
            entries.iter().filter(|s| s.state == TcpState::LISTEN).map(|s| s.tuple.sport).collect();
        let mut states: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut timers: BTreeMap<TcpState, Vec<u64>> = BTreeMap::new();
        let mut groups: HashMap<String, BTreeMap<&'static str, u64>> = HashMap::new();
        for s in entries {
            *states.entry(s.state.name()).or_default() += 1;
            if s.timewait {
                timers
                    .entry(s.state)
                    .or_default()
                    .push(s.expires.unwrap_or(Duration::ZERO).as_millis() as u64);
            }
            if let Some(by) = by {
                let key = group_key(s, by, owners, &grouping, &listening);
                *groups.entry(key).or_default().entry(s.state.name()).or_default() += 1;
            }
        }
        let mut groups: Vec<Group> = groups
            .into_iter()
            .map(|(key, states)| Group { key, total: states.values().sum(), states })
            .collect();
        groups.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.key.cmp(&b.key)));
        if let Some(top) = grouping.top
            && groups.len() > top
        {
            let mut other = Group { key: "(other)".into(), total: 0, states: BTreeMap::new() };
            for g in groups.drain(top..) {
                other.total += g.total;
                for (state, n) in g.states {
                    *other.states.entry(state).or_default() += n;
                }
            }
            groups.push(other);
        }
        Self {
            time,
            netns,
            total: entries.len() as u64,
            states,
            timewait: timers
                .into_iter()
                .map(|(state, ms)| Timewait {
                    substate: state.name(),
                    count: ms.len() as u64,
                    remaining: Remaining::of(ms),
                })
                .collect(),
            by: by.map(GroupBy::name),
            groups,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::socket::FourTuple;

    fn sock(state: TcpState, sport: u16, timewait: bool, expires_ms: u64, inode: u32) -> SockEntry {
        SockEntry {
            state,
            tuple: FourTuple {
                saddr: "127.0.0.1".parse().unwrap(),
                sport,
                daddr: "127.0.0.2".parse().unwrap(),
                dport: 80,
            },
            timewait,
            expires: timewait.then(|| Duration::from_millis(expires_ms)),
            inode,
            cookie: 0,
        }
    }

    fn by(by: Option<GroupBy>) -> Grouping {
        Grouping { by, ..Default::default() }
    }

    #[test]
    fn counts_states_and_timewait_timers() {
        let socks = [
            sock(TcpState::ESTABLISHED, 1000, false, 0, 11),
            sock(TcpState::ESTABLISHED, 1001, false, 0, 12),
            sock(TcpState::TIME_WAIT, 1002, true, 59_000, 0),
            sock(TcpState::TIME_WAIT, 1003, true, 30_000, 0),
            sock(TcpState::TIME_WAIT, 1004, true, 1_000, 0),
            sock(TcpState::FIN_WAIT2, 1005, true, 40_000, 0),
            sock(TcpState::FIN_WAIT2, 1006, false, 0, 13),
        ];
        let mut owners = Owners::new();
        owners.insert(
            11,
            SocketOwner { pid: 42, comm: Comm::from("nginx"), cgroup: Some("nginx.service".into()) },
        );
        let c = Census::build(&socks, by(Some(GroupBy::Process)), &owners, "current".into(), "t".into());
        let by_cgroup =
            Census::build(&socks, by(Some(GroupBy::Cgroup)), &owners, "current".into(), "t".into());
        assert!(by_cgroup.groups.iter().any(|g| g.key == "nginx.service"), "{by_cgroup:?}");
        assert_eq!(c.total, 7);
        assert_eq!(c.states["ESTABLISHED"], 2);
        assert_eq!(c.states["TIME_WAIT"], 3);
        assert_eq!(c.states["FIN_WAIT2"], 2);
        let tw: Vec<_> = c.timewait.iter().map(|t| (t.substate, t.count)).collect();
        assert_eq!(tw, [("FIN_WAIT2", 1), ("TIME_WAIT", 3)]);
        let r = c.timewait[1].remaining.as_ref().unwrap();
        assert_eq!((r.min_ms, r.p50_ms, r.max_ms), (1_000, 30_000, 59_000));
        let keys: Vec<_> = c.groups.iter().map(|g| (g.key.as_str(), g.total)).collect();
        assert_eq!(
            keys,
            [("(timewait: no owner in the kernel)", 4), ("(no owner found)", 2), ("42/nginx", 1)]
        );
    }

    #[test]
    fn groups_by_port_and_address() {
        let socks = [sock(TcpState::ESTABLISHED, 80, false, 0, 1), sock(TcpState::TIME_WAIT, 80, true, 5, 0)];
        let c = Census::build(&socks, by(Some(GroupBy::Lport)), &Owners::new(), "n".into(), "t".into());
        assert_eq!(c.groups.len(), 1);
        assert_eq!(c.groups[0].key, "80");
        assert_eq!(c.groups[0].states["TIME_WAIT"], 1);
        let c = Census::build(&socks, by(Some(GroupBy::Raddr)), &Owners::new(), "n".into(), "t".into());
        assert_eq!(c.groups[0].key, "127.0.0.2");
        assert!(Census::build(&socks, by(None), &Owners::new(), "n".into(), "t".into()).groups.is_empty());
    }

    /// Client ports from the ephemeral range are one group, unless a
    /// listener is on them; `top` keeps the largest and sums the rest.
    #[test]
    fn ephemeral_ports_and_top() {
        let mut socks: Vec<SockEntry> =
            (40000..40010).map(|port| sock(TcpState::TIME_WAIT, port, true, 5, 0)).collect();
        socks.push(sock(TcpState::LISTEN, 50051, false, 0, 1));
        socks.push(sock(TcpState::ESTABLISHED, 50051, false, 0, 2));
        socks.push(sock(TcpState::ESTABLISHED, 22, false, 0, 3));
        socks.push(sock(TcpState::ESTABLISHED, 80, false, 0, 4));
        let range = PortRange { first: 32768, last: 60999 };
        let grouping = Grouping { by: Some(GroupBy::Lport), top: Some(2), ephemeral: Some(range) };
        let c = Census::build(&socks, grouping, &Owners::new(), "n".into(), "t".into());
        let keys: Vec<_> = c.groups.iter().map(|g| (g.key.as_str(), g.total)).collect();
        assert_eq!(keys, [("ephemeral (32768-60999)", 10), ("50051", 2), ("(other)", 2)]);
        assert_eq!(c.groups[2].states["ESTABLISHED"], 2);
    }
}
