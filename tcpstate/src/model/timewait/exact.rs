//! The exact machine: fentry hooks on the kernel's timewait functions
//! report each substate change and end as it happens.

use super::{
    EndCause, Entry, Measured, PENDING_MAX_AGE_NS, REUSE_GRACE_NS, Scheduled, Tracker, TwEvent, TwHook,
    TwHookKind, TwKey,
};
use crate::model::state::TcpState;

impl Tracker {
    /// The schedule hook's account of a connection entering TIME_WAIT: it
    /// fires inside tcp_time_wait(), just before the handover; without it, no
    /// timewait socket was made (tcp_max_tw_buckets), or the socket was reset
    /// instead, and the `Err` is the end to report.
    pub(super) fn scheduled_entry(&mut self, key: TwKey, entry: &mut Entry) -> Result<TwEvent, TwEvent> {
        let Some(sched) = self.scheduled.remove(&key) else {
            return Err(entry.clone().end(key, Measured::Fentry, entry.entry_ns, EndCause::Unobserved));
        };
        entry.substate = Some(sched.substate);
        let time_wait = sched.substate == TcpState::TIME_WAIT;
        if time_wait {
            entry.time_wait_since_ns = Some(entry.entry_ns);
        }
        Ok(TwEvent::Entered {
            key,
            owner: entry.owner,
            mode: Measured::Fentry,
            at_ns: entry.entry_ns,
            substate: sched.substate,
            expires_at_ns: sched.timer_ns.map(|n| sched.at_ns + n),
            fin_wait2_ns: if time_wait { entry.full_fin_wait2_ns } else { None },
        })
    }

    /// Applies one exact-mode hook firing.
    pub fn on_hook(&mut self, hook: &TwHook, events: &mut Vec<TwEvent>) {
        self.latest_ns = self.latest_ns.max(hook.ts_ns);
        let key = hook.key;
        match hook.kind {
            TwHookKind::Scheduled if self.sources.substates == Measured::Fentry => {
                if self.scheduled.len() >= self.capacity {
                    let oldest = self.latest_ns.saturating_sub(PENDING_MAX_AGE_NS);
                    self.scheduled.retain(|_, s| s.at_ns >= oldest);
                }
                let sched = Scheduled { at_ns: hook.ts_ns, substate: hook.substate, timer_ns: hook.timer_ns };
                self.scheduled.insert(key, sched);
            }
            TwHookKind::Rescheduled if self.sources.substates == Measured::Fentry => {
                let Some(entry) = self.entries.get_mut(&key) else { return };
                if entry.substate == Some(TcpState::FIN_WAIT2) && hook.substate == TcpState::TIME_WAIT {
                    entry.substate = Some(TcpState::TIME_WAIT);
                    entry.time_wait_since_ns = Some(hook.ts_ns);
                    events.push(TwEvent::FinArrived {
                        key,
                        owner: entry.owner,
                        mode: Measured::Fentry,
                        at_ns: hook.ts_ns,
                        fin_wait2_ns: hook.ts_ns.saturating_sub(entry.entry_ns)
                            + entry.full_fin_wait2_ns.unwrap_or(0),
                    });
                } else {
                    self.rearmed += 1;
                }
            }
            TwHookKind::Expired if self.sources.ends == Measured::Fentry => {
                if let Some(entry) = self.entries.remove(&key) {
                    events.push(entry.end(key, Measured::Fentry, hook.ts_ns, EndCause::Expired));
                }
            }
            TwHookKind::Descheduled if self.sources.ends == Measured::Fentry => {
                if let Some(entry) = self.entries.remove(&key) {
                    self.descheduled.insert(key, (entry, hook.ts_ns));
                }
            }
            _ => {}
        }
    }

    /// Early ends that no new connection claimed within the grace period
    /// were kills. `now_ns` is the monotonic clock, as events carry it.
    /// Called once per drain, not per event: it scans the waiting ends.
    pub fn settle(&mut self, now_ns: u64, events: &mut Vec<TwEvent>) {
        if self.descheduled.is_empty() {
            return;
        }
        let settled = self.descheduled.extract_if(|_, (_, at)| now_ns >= *at + REUSE_GRACE_NS);
        for (key, (entry, at)) in settled {
            events.push(entry.end(key, Measured::Fentry, at, EndCause::Killed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{super::tests::*, *};
    use crate::model::{aggregate::tests::step, timewait::Sources, transition::Transition};

    const EXACT: Sources = Sources { substates: Measured::Fentry, ends: Measured::Fentry };

    fn hook(t: &Transition, kind: TwHookKind, ts_ns: u64, substate: TcpState) -> TwHook {
        TwHook { kind, key: TwKey::of(t), ts_ns, substate, timer_ns: Some(2_000 * MS) }
    }

    #[test]
    fn exact_fin_wait2_fin_and_expiry() {
        let mut tr = Tracker::new(16, EXACT);
        assert!(!EXACT.needs_polling() && EXACT.describe() == "fentry");
        let t = handover(1_000 * MS);
        let mut ev = Vec::new();
        // The schedule hook fires inside tcp_time_wait(), before the handover.
        tr.on_hook(&hook(&t, TwHookKind::Scheduled, 1_000 * MS - 5_000, TcpState::FIN_WAIT2), &mut ev);
        assert!(ev.is_empty());
        let entered = tr.on_transition(&t).unwrap();
        assert!(
            matches!(entered, TwEvent::Entered { mode: Measured::Fentry, substate: TcpState::FIN_WAIT2, at_ns, expires_at_ns: Some(e), .. } if at_ns == 1_000 * MS && e == 3_000 * MS - 5_000),
            "{entered:?}"
        );
        tr.on_hook(&hook(&t, TwHookKind::Rescheduled, 1_300 * MS, TcpState::TIME_WAIT), &mut ev);
        assert!(
            matches!(ev[..], [TwEvent::FinArrived { mode: Measured::Fentry, at_ns, fin_wait2_ns, .. }] if at_ns == 1_300 * MS && fin_wait2_ns == 300 * MS + 30_000),
            "{ev:?}"
        );
        // A FIN retransmitted into TIME_WAIT restarts the timer: counted only.
        ev.clear();
        tr.on_hook(&hook(&t, TwHookKind::Rescheduled, 1_400 * MS, TcpState::TIME_WAIT), &mut ev);
        assert!(ev.is_empty() && tr.rearmed == 1);
        tr.on_hook(&hook(&t, TwHookKind::Expired, 61_400 * MS, TcpState::TIME_WAIT), &mut ev);
        let TwEvent::Ended { cause, mode, time_wait_ns, .. } = ev[0] else { panic!("{ev:?}") };
        assert_eq!((cause, mode, time_wait_ns), (EndCause::Expired, Measured::Fentry, Some(60_100 * MS)));
        assert!(tr.is_empty());
        // Dumps change nothing in exact mode.
        tr.on_transition(&t);
        assert!(dump(&mut tr, 90_000 * MS, &[]).is_empty());
    }

    #[test]
    fn exact_early_end_is_a_reuse_or_a_kill() {
        let mut tr = Tracker::new(16, EXACT);
        let t = handover(1_000 * MS);
        let mut ev = Vec::new();
        tr.on_hook(&hook(&t, TwHookKind::Scheduled, 1_000 * MS, TcpState::TIME_WAIT), &mut ev);
        assert!(matches!(tr.on_transition(&t), Some(TwEvent::Entered { substate: TcpState::TIME_WAIT, .. })));
        tr.on_hook(&hook(&t, TwHookKind::Descheduled, 2_500 * MS, TcpState::TIME_WAIT), &mut ev);
        assert!(ev.is_empty(), "waits to learn the cause");
        // The new connection's handshake names it a reuse, timed by the hook.
        let mut again = step(9, TcpState::SYN_SENT, TcpState::ESTABLISHED, None);
        (again.ts_ns, again.in_old_state_ns, again.tuple.dport) = (2_501 * MS, Some(MS), t.tuple.dport);
        let reused = tr.on_transition(&again).unwrap();
        assert!(
            matches!(reused, TwEvent::Ended { cause: EndCause::Reused, mode: Measured::Fentry, at_ns, .. } if at_ns == 2_500 * MS),
            "{reused:?}"
        );
        // Nothing claims this one: a kill, once the grace period has passed.
        tr.on_hook(&hook(&t, TwHookKind::Scheduled, 5_000 * MS, TcpState::TIME_WAIT), &mut ev);
        tr.on_transition(&handover(5_000 * MS));
        tr.on_hook(&hook(&t, TwHookKind::Descheduled, 6_000 * MS, TcpState::TIME_WAIT), &mut ev);
        tr.settle(8_900 * MS, &mut ev);
        assert!(ev.is_empty());
        tr.settle(9_000 * MS, &mut ev);
        assert!(
            matches!(ev[..], [TwEvent::Ended { cause: EndCause::Killed, at_ns, .. }] if at_ns == 6_000 * MS),
            "{ev:?}"
        );
        // A handover without a timewait socket (tcp_max_tw_buckets): unobserved at once.
        let none = tr.on_transition(&handover(9_000 * MS)).unwrap();
        assert!(
            matches!(none, TwEvent::Ended { cause: EndCause::Unobserved, substate: None, .. }),
            "{none:?}"
        );
    }

    #[test]
    fn exact_substates_with_polled_ends() {
        let sources = Sources { substates: Measured::Fentry, ends: Measured::SockDiag };
        assert!(sources.needs_polling());
        assert_eq!(sources.describe(), "substates by fentry, ends by sock_diag");
        let mut tr = Tracker::new(16, sources);
        let t = handover(1_000 * MS);
        let mut ev = Vec::new();
        tr.on_hook(&hook(&t, TwHookKind::Scheduled, 1_000 * MS, TcpState::FIN_WAIT2), &mut ev);
        tr.on_transition(&t).unwrap();
        // The dump does not report the substate again, and the end hook is ignored.
        assert!(dump(&mut tr, 1_100 * MS, &[sock(&t, TcpState::FIN_WAIT2, 1_900)]).is_empty());
        tr.on_hook(&hook(&t, TwHookKind::Expired, 3_000 * MS, TcpState::FIN_WAIT2), &mut ev);
        assert!(ev.is_empty());
        let ev = dump(&mut tr, 3_050 * MS, &[]);
        assert!(
            matches!(ev[..], [TwEvent::Ended { cause: EndCause::Expired, mode: Measured::SockDiag, .. }]),
            "{ev:?}"
        );
    }
}
