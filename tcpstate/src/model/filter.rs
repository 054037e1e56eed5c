//! Which sockets to report. Every filter is applied in the kernel; this is
//! what they mean, and how the kernel program's maps encode them.

use std::collections::BTreeMap;

use tcpstate_ebpf::{FilterSet, PortRoles};

use super::transition::Family;

/// Ports `first..=last`; one port is a range of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn one(port: u16) -> Self {
        Self { first: port, last: port }
    }

    pub fn ports(self) -> std::ops::RangeInclusive<u16> {
        self.first..=self.last
    }

    /// `80` or `8000-8099`; ports are 1-65535.
    pub fn parse(s: &str) -> Result<Self, String> {
        let port = |p: &str| match p.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(format!("'{s}' is not a port (1-65535) or a range of them (8000-8099)")),
        };
        let range = match s.split_once('-') {
            Some((first, last)) => Self { first: port(first)?, last: port(last)? },
            None => Self::one(port(s)?),
        };
        if range.first > range.last {
            return Err(format!("'{s}': a range goes from low to high"));
        }
        Ok(range)
    }

    /// Sorted, with overlapping and adjacent ranges merged.
    pub fn merged(mut ranges: Vec<Self>) -> Vec<Self> {
        ranges.sort();
        let mut out: Vec<Self> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match out.last_mut() {
                Some(last) if u32::from(r.first) <= u32::from(last.last) + 1 => {
                    last.last = last.last.max(r.last)
                }
                _ => out.push(r),
            }
        }
        out
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// What to report; everything here is applied in the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    pub family: Option<Family>,
    pub lports: Vec<PortRange>,
    pub rports: Vec<PortRange>,
    pub ports: Vec<PortRange>,
    /// The attributed owner's pid, never the task that happens to be current.
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    /// cgroup v2 directories: owners captured under one of them.
    pub cgroups: Vec<std::path::PathBuf>,
    /// Network namespaces (inodes) the sockets must live in.
    pub namespaces: Vec<u32>,
}

impl Filters {
    /// The filter maps in force.
    pub fn set(&self) -> FilterSet {
        let mut set = FilterSet::empty();
        set.set(FilterSet::LPORT, !self.lports.is_empty());
        set.set(FilterSet::RPORT, !self.rports.is_empty());
        set.set(FilterSet::PORT, !self.ports.is_empty());
        set.set(FilterSet::PID, !self.pids.is_empty());
        set.set(FilterSet::COMM, !self.comms.is_empty());
        set.set(FilterSet::CGROUP, !self.cgroups.is_empty());
        set.set(FilterSet::NETNS, !self.namespaces.is_empty());
        set
    }

    /// Port → the roles it is selected for, as the `PORTS` array holds them.
    pub fn port_roles(&self) -> BTreeMap<u16, PortRoles> {
        let mut roles = BTreeMap::new();
        for (list, role) in [
            (&self.lports, PortRoles::LOCAL),
            (&self.rports, PortRoles::REMOTE),
            (&self.ports, PortRoles::EITHER),
        ] {
            for port in list.iter().flat_map(|r| r.ports()) {
                *roles.entry(port).or_insert(PortRoles::empty()) |= role;
            }
        }
        roles
    }

    /// The filters in force, by flag, as a report's header names them.
    pub fn describe(&self) -> BTreeMap<String, Vec<String>> {
        fn strings<T: ToString>(items: &[T]) -> Vec<String> {
            items.iter().map(T::to_string).collect()
        }
        let family = self.family.map(|f| vec![if f == Family::Ipv4 { "ipv4" } else { "ipv6" }.to_string()]);
        [
            ("family", family.unwrap_or_default()),
            ("lport", strings(&self.lports)),
            ("rport", strings(&self.rports)),
            ("port", strings(&self.ports)),
            ("pid", strings(&self.pids)),
            ("comm", self.comms.clone()),
            ("cgroup", self.cgroups.iter().map(|p| p.display().to_string()).collect()),
            ("netns", strings(&self.namespaces)),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The ports named in any role, merged: what a sock_diag dump of the
    /// same sockets keeps.
    pub fn any_ports(&self) -> Vec<PortRange> {
        PortRange::merged(self.lports.iter().chain(&self.rports).chain(&self.ports).copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(list: &[u16]) -> Vec<PortRange> {
        list.iter().map(|&p| PortRange::one(p)).collect()
    }

    #[test]
    fn filter_bits_and_roles() {
        let f =
            Filters { lports: ports(&[80]), ports: ports(&[80, 443]), pids: vec![1], ..Default::default() };
        assert_eq!(f.set(), FilterSet::LPORT | FilterSet::PORT | FilterSet::PID);
        let roles = f.port_roles();
        assert_eq!(roles[&80], PortRoles::LOCAL | PortRoles::EITHER);
        assert_eq!(roles[&443], PortRoles::EITHER);
        assert!(Filters::default().set().is_empty());
        assert_eq!(f.any_ports(), ports(&[80, 443]));
    }

    #[test]
    fn port_ranges() {
        let r = PortRange::parse("8000-8099").unwrap();
        assert_eq!((r.first, r.last, r.to_string()), (8000, 8099, "8000-8099".to_string()));
        assert_eq!(PortRange::parse("80").unwrap(), PortRange::one(80));
        for bad in ["0", "70000", "90-80", "a-b", "-", "80-", ""] {
            assert!(PortRange::parse(bad).is_err(), "{bad}");
        }
        let f = Filters {
            ports: vec![PortRange::parse("8000-8002").unwrap()],
            lports: ports(&[8003, 9000]),
            ..Default::default()
        };
        assert_eq!(f.port_roles().len(), 5);
        assert_eq!(f.any_ports(), [PortRange::parse("8000-8003").unwrap(), PortRange::one(9000)]);
        let described = f.describe();
        assert_eq!(described["port"], ["8000-8002"]);
        assert_eq!(described["lport"], ["8003", "9000"]);
        assert_eq!(described.len(), 2, "only the filters in force: {described:?}");
    }
}
