//! Which sockets to report. Every filter is applied in the kernel; this is
//! what they mean, and how the kernel program's maps encode them.

use std::collections::BTreeMap;

use tcpstate_ebpf::{FilterSet, PortRoles};

use super::transition::Family;

/// What to report; everything here is applied in the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    pub family: Option<Family>,
    pub lports: Vec<u16>,
    pub rports: Vec<u16>,
    pub ports: Vec<u16>,
    /// The attributed owner's pid, never the task that happens to be current.
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    /// cgroup v2 directories: owners captured under one of them.
    pub cgroups: Vec<std::path::PathBuf>,
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
        set
    }

    /// Port → the roles it is selected for, as the `PORTS` map holds them.
    pub fn port_roles(&self) -> BTreeMap<u16, PortRoles> {
        let mut roles = BTreeMap::new();
        for (list, role) in [
            (&self.lports, PortRoles::LOCAL),
            (&self.rports, PortRoles::REMOTE),
            (&self.ports, PortRoles::EITHER),
        ] {
            for &port in list {
                *roles.entry(port).or_insert(PortRoles::empty()) |= role;
            }
        }
        roles
    }

    /// The ports named in any role, sorted: what a sock_diag dump of the
    /// same sockets keeps.
    pub fn any_ports(&self) -> Vec<u16> {
        self.port_roles().into_keys().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_bits_and_roles() {
        let f = Filters { lports: vec![80], ports: vec![80, 443], pids: vec![1], ..Default::default() };
        assert_eq!(f.set(), FilterSet::LPORT | FilterSet::PORT | FilterSet::PID);
        let roles = f.port_roles();
        assert_eq!(roles[&80], PortRoles::LOCAL | PortRoles::EITHER);
        assert_eq!(roles[&443], PortRoles::EITHER);
        assert!(Filters::default().set().is_empty());
        assert_eq!(f.any_ports(), [80, 443]);
    }
}
