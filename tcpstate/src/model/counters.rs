//! The kernel's own counters: exact even when events were dropped.

use std::{collections::BTreeMap, fmt};

use super::transition::TcpState;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Transitions that passed the filters, per (old, new).
    pub transitions: BTreeMap<(TcpState, TcpState), u64>,
    /// Events lost because the ring buffer was full.
    pub ringbuf_full: u64,
    pub socket_insert_failed: u64,
    /// Tracepoint records the program could not read.
    pub read_failed: u64,
    /// Tracepoint hits the kernel skipped; `None` where it does not say.
    pub recursion_misses: Option<u64>,
    /// Records received by userspace, and how many were malformed.
    pub received: u64,
    pub malformed: u64,
}

impl KernelCounters {
    pub fn total_transitions(&self) -> u64 {
        self.transitions.values().sum()
    }

    /// What changed since `earlier`: for rates, and for `top`'s reset.
    pub fn since(&self, earlier: &Self) -> Self {
        let before = |k| earlier.transitions.get(k).copied().unwrap_or(0);
        Self {
            transitions: self.transitions.iter().map(|(k, &n)| (*k, n.saturating_sub(before(k)))).collect(),
            ringbuf_full: self.ringbuf_full.saturating_sub(earlier.ringbuf_full),
            socket_insert_failed: self.socket_insert_failed.saturating_sub(earlier.socket_insert_failed),
            read_failed: self.read_failed.saturating_sub(earlier.read_failed),
            recursion_misses: self
                .recursion_misses
                .map(|n| n.saturating_sub(earlier.recursion_misses.unwrap_or(0))),
            received: self.received.saturating_sub(earlier.received),
            malformed: self.malformed.saturating_sub(earlier.malformed),
        }
    }
}

/// The end-of-run summary, for stderr.
impl fmt::Display for KernelCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<11}    {:<11} {:>12}", "OLDSTATE", "NEWSTATE", "TRANSITIONS")?;
        for ((old, new), n) in &self.transitions {
            writeln!(f, "{old:<11} -> {new:<11} {n:>12}")?;
        }
        writeln!(f, "{:<26} {:>12}", "total", self.total_transitions())?;
        let skipped = self.recursion_misses.map_or("n/a".to_string(), |n| n.to_string());
        write!(
            f,
            "events received {}, dropped (ring buffer full) {}, socket-table insert failures {}, \
             unreadable records {}, tracepoint hits skipped by the kernel {}",
            self.received, self.ringbuf_full, self.socket_insert_failed, self.read_failed, skipped
        )?;
        if self.malformed > 0 {
            write!(f, ", malformed records {}", self.malformed)?;
        }
        writeln!(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lists_pairs_and_losses() {
        let mut c =
            KernelCounters { ringbuf_full: 3, recursion_misses: Some(0), received: 5, ..Default::default() };
        c.transitions.insert((TcpState::ESTABLISHED, TcpState::FIN_WAIT1), 2);
        c.transitions.insert((TcpState::CLOSE, TcpState::SYN_SENT), 6);
        assert_eq!(c.total_transitions(), 8);
        let text = c.to_string();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines[1], "ESTABLISHED -> FIN_WAIT1              2");
        assert_eq!(lines[2], "CLOSE       -> SYN_SENT               6");
        assert!(lines[3].starts_with("total") && lines[3].ends_with(" 8"));
        assert!(lines[4].contains("dropped (ring buffer full) 3"));
        assert!(lines[4].contains("skipped by the kernel 0"));
    }

    #[test]
    fn deltas() {
        let mut before = KernelCounters { ringbuf_full: 1, recursion_misses: Some(2), ..Default::default() };
        before.transitions.insert((TcpState::CLOSE, TcpState::SYN_SENT), 4);
        let mut now = KernelCounters { ringbuf_full: 5, recursion_misses: Some(2), ..Default::default() };
        now.transitions.insert((TcpState::CLOSE, TcpState::SYN_SENT), 10);
        now.transitions.insert((TcpState::CLOSE, TcpState::LISTEN), 1);
        let d = now.since(&before);
        assert_eq!(d.ringbuf_full, 4);
        assert_eq!(d.recursion_misses, Some(0));
        assert_eq!(d.transitions[&(TcpState::CLOSE, TcpState::SYN_SENT)], 6);
        assert_eq!(d.transitions[&(TcpState::CLOSE, TcpState::LISTEN)], 1);
    }
}
