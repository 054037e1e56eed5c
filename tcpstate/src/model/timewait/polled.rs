//! The sock_diag machine: what periodic dumps of timewait sockets tell
//! about each followed connection (substates, FIN arrivals to the
//! millisecond from the re-armed timer, ends to the poll interval).

use super::{
    EXPIRY_SLACK_NS, EndCause, Entry, Measured, SUBSTATE_CHANGE_MIN_NS, TIME_WAIT_LEN_NS, Tracker, TwEvent,
    TwKey,
};
use crate::model::{socket::SockEntry, state::TcpState};

impl Entry {
    /// What a dump showing this socket says about it.
    fn update(&mut self, key: TwKey, now_ns: u64, sock: &SockEntry, events: &mut Vec<TwEvent>) {
        let expires_at = now_ns + sock.expires.unwrap_or_default().as_nanos() as u64;
        // The last (re-)arm of a TIME_WAIT timer was 60 s before its end.
        let armed_at = expires_at.saturating_sub(TIME_WAIT_LEN_NS).max(self.entry_ns);
        match (self.substate, sock.state) {
            (None, state) => {
                let fin_wait2_first = state == TcpState::FIN_WAIT2
                    || (state == TcpState::TIME_WAIT && armed_at > self.entry_ns + SUBSTATE_CHANGE_MIN_NS);
                let first = if fin_wait2_first { TcpState::FIN_WAIT2 } else { TcpState::TIME_WAIT };
                events.push(TwEvent::Entered {
                    key,
                    owner: self.owner,
                    mode: Measured::SockDiag,
                    at_ns: self.entry_ns,
                    substate: first,
                    expires_at_ns: Some(expires_at),
                    fin_wait2_ns: if fin_wait2_first { None } else { self.full_fin_wait2_ns },
                });
                self.substate = Some(first);
                if state == TcpState::TIME_WAIT {
                    self.time_wait_since_ns = Some(if fin_wait2_first { armed_at } else { self.entry_ns });
                }
            }
            (Some(TcpState::FIN_WAIT2), TcpState::TIME_WAIT) => self.time_wait_since_ns = Some(armed_at),
            _ => {}
        }
        if self.substate == Some(TcpState::FIN_WAIT2) && sock.state == TcpState::TIME_WAIT {
            let since = self.time_wait_since_ns.unwrap_or(armed_at);
            events.push(TwEvent::FinArrived {
                key,
                owner: self.owner,
                mode: Measured::SockDiag,
                at_ns: since,
                fin_wait2_ns: since - self.entry_ns + self.full_fin_wait2_ns.unwrap_or(0),
            });
            self.substate = Some(TcpState::TIME_WAIT);
        }
        self.expires_at_ns = expires_at;
    }
}

impl Tracker {
    /// Applies a dump of `netns`'s timewait and FIN_WAIT2 sockets taken at
    /// `now_ns`, for what the hooks do not measure. Work and memory are in
    /// proportion to the dump: entries are marked as the dump shows them,
    /// and the unmarked ones swept out.
    pub fn on_dump(&mut self, netns: u32, now_ns: u64, socks: &[SockEntry], events: &mut Vec<TwEvent>) {
        self.dumps += 1;
        let dump = self.dumps;
        let polled_substates = self.sources.substates == Measured::SockDiag;
        for sock in socks.iter().filter(|s| s.timewait) {
            let key = TwKey::of_sock(netns, sock);
            if let Some(entry) = self.entries.get_mut(&key) {
                entry.seen_in = dump;
                if polled_substates {
                    entry.update(key, now_ns, sock, events);
                } else {
                    entry.expires_at_ns = now_ns + sock.expires.unwrap_or_default().as_nanos() as u64;
                }
            }
        }
        if self.sources.ends == Measured::Fentry {
            return;
        }
        for (key, entry) in self.entries.extract_if(|k, e| k.netns == netns && e.seen_in != dump) {
            let (at, cause) = match entry.substate {
                None => (now_ns, EndCause::Unobserved),
                Some(_) if now_ns + EXPIRY_SLACK_NS >= entry.expires_at_ns => {
                    (entry.expires_at_ns, EndCause::Expired)
                }
                Some(_) => (now_ns, EndCause::Killed),
            };
            events.push(entry.end(key, Measured::SockDiag, at, cause));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{super::tests::*, *};
    use crate::model::{aggregate::tests::step, timewait::Sources};

    #[test]
    fn orphan_fin_wait2_then_fin_then_expiry() {
        let mut tr = Tracker::new(16, Sources::default());
        let t = handover(1_000 * MS);
        assert_eq!(tr.on_transition(&t), None);
        // 100 ms later: FIN_WAIT2 with tcp_fin_timeout (60 s) left.
        let ev = dump(&mut tr, 1_100 * MS, &[sock(&t, TcpState::FIN_WAIT2, 59_900)]);
        assert!(
            matches!(ev[..], [TwEvent::Entered { substate: TcpState::FIN_WAIT2, at_ns, .. }] if at_ns == 1_000 * MS)
        );
        // The FIN came at 1.3 s: the timer was re-armed to 60 s then.
        let ev = dump(&mut tr, 1_400 * MS, &[sock(&t, TcpState::TIME_WAIT, 59_900)]);
        assert_eq!(
            ev,
            [TwEvent::FinArrived {
                key: TwKey::of(&t),
                owner: t.owner,
                mode: Measured::SockDiag,
                at_ns: 1_300 * MS,
                fin_wait2_ns: 300 * MS + 30_000
            }]
        );
        // Gone at its scheduled end: expired, 60 s in TIME_WAIT.
        let ev = dump(&mut tr, 61_310 * MS, &[]);
        let TwEvent::Ended { cause, at_ns, time_wait_ns, fin_wait2_ns, .. } = ev[0] else { panic!("{ev:?}") };
        assert_eq!((cause, at_ns), (EndCause::Expired, 61_300 * MS));
        assert_eq!(time_wait_ns, Some(TIME_WAIT_LEN_NS));
        assert_eq!(fin_wait2_ns, Some(300 * MS + 30_000));
        assert!(tr.is_empty());
    }

    #[test]
    fn fin_between_polls_is_still_seen() {
        let mut tr = Tracker::new(16, Sources::default());
        let t = handover(1_000 * MS);
        tr.on_transition(&t);
        // First sighting already TIME_WAIT, armed 300 ms after the handover.
        let ev = dump(&mut tr, 1_500 * MS, &[sock(&t, TcpState::TIME_WAIT, 59_800)]);
        assert!(matches!(ev[0], TwEvent::Entered { substate: TcpState::FIN_WAIT2, .. }), "{ev:?}");
        assert!(matches!(ev[1], TwEvent::FinArrived { at_ns, .. } if at_ns == 1_300 * MS), "{ev:?}");
        let completed: Vec<_> = ev.iter().filter_map(TwEvent::completed_fin_wait2_ns).collect();
        assert_eq!(completed, [300 * MS + 30_000], "once, when the FIN came");
    }

    #[test]
    fn straight_to_time_wait() {
        let mut tr = Tracker::new(16, Sources::default());
        let t = handover(1_000 * MS);
        tr.on_transition(&t);
        let ev = dump(&mut tr, 1_100 * MS, &[sock(&t, TcpState::TIME_WAIT, 59_900)]);
        assert!(matches!(ev[..], [TwEvent::Entered { substate: TcpState::TIME_WAIT, .. }]), "{ev:?}");
        // The full socket's 30 µs of FIN_WAIT2 are complete: reported once, now.
        assert_eq!(ev[0].completed_fin_wait2_ns(), Some(30_000));
    }

    #[test]
    fn orphan_fin_wait2_expires_at_fin_timeout() {
        let mut tr = Tracker::new(16, Sources::default());
        let t = handover(1_000 * MS);
        tr.on_transition(&t);
        dump(&mut tr, 1_100 * MS, &[sock(&t, TcpState::FIN_WAIT2, 1_900)]);
        let ev = dump(&mut tr, 3_050 * MS, &[]);
        let TwEvent::Ended { cause, fin_wait2_ns, time_wait_ns, .. } = ev[0] else { panic!() };
        assert_eq!(cause, EndCause::Expired);
        assert_eq!(fin_wait2_ns, Some(2_000 * MS + 30_000));
        assert_eq!(time_wait_ns, None);
    }

    #[test]
    fn killed_reused_and_unobserved() {
        let mut tr = Tracker::new(16, Sources::default());
        let t = handover(1_000 * MS);
        tr.on_transition(&t);
        dump(&mut tr, 1_100 * MS, &[sock(&t, TcpState::TIME_WAIT, 59_900)]);
        let ev = dump(&mut tr, 5_000 * MS, &[]);
        assert!(
            matches!(ev[0], TwEvent::Ended { cause: EndCause::Killed, at_ns, .. } if at_ns == 5_000 * MS)
        );

        tr.on_transition(&t);
        let mut again = step(9, TcpState::SYN_SENT, TcpState::ESTABLISHED, None);
        again.ts_ns = 8_000 * MS;
        again.in_old_state_ns = Some(MS);
        again.tuple.dport = t.tuple.dport;
        let ev = tr.on_transition(&again).unwrap();
        assert!(
            matches!(ev, TwEvent::Ended { cause: EndCause::Reused, at_ns, .. } if at_ns == 7_999 * MS),
            "{ev:?}"
        );

        tr.on_transition(&t);
        let ev = dump(&mut tr, 1_100 * MS, &[]);
        assert!(matches!(ev[0], TwEvent::Ended { cause: EndCause::Unobserved, .. }));
        // Other namespaces' dumps leave this one alone.
        tr.on_transition(&t);
        let mut ev = Vec::new();
        tr.on_dump(2, 9_000 * MS, &[], &mut ev);
        assert!(ev.is_empty() && tr.len() == 1);
        assert_eq!(tr.abandon(1), 1);
    }
}
