//! The kernel/userspace boundary of tcpstate, defined once.
//!
//! Everything here is `no_std` and free of aya-ebpf, so the eBPF program and
//! the userspace tool compile the same definitions, by topic:
//! - [`state`]: TCP states and close sides, and the rules over them (who
//!   owns a socket, which side closed it);
//! - [`record`]: the ring buffer's records, each headed by a kind byte, and
//!   the socket table's values;
//! - [`hist`]: the time-in-state histograms;
//! - [`config`]: the load-time configuration, the filter sets, and the
//!   names of the maps and programs.
//!
//! Types are `#[repr(C)]` and `bytemuck::Pod`; states, close sides and kinds
//! are `#[repr(u8)]` enums, flag sets are `bitflags`. The program works on
//! the raw bytes the kernel hands it, so each also has its `u8` constants,
//! derived from the typed definition.
#![no_std]

pub mod config;
pub mod hist;
pub mod record;
pub mod state;

pub use config::*;
pub use hist::*;
pub use record::*;
pub use state::*;

#[cfg(all(feature = "user", not(target_arch = "bpf")))]
mod user {
    // SAFETY: all of these are repr(C), Copy, made only of integers, with
    // explicit padding, so every bit pattern is valid and none is uninit.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::SockRecord {}
    unsafe impl aya::Pod for super::Owner {}
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::StateTime {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names() {
        let names: [Option<&str>; 3] =
            [state_name(TCP_FIN_WAIT1), state_name(TCP_CLOSE_WAIT), state_name(TCP_LISTEN)];
        assert_eq!(names, [Some("FIN_WAIT1"), Some("CLOSE_WAIT"), Some("LISTEN")]);
        assert!((1..TCP_STATE_COUNT as u8).all(|s| state_name(s).is_some()));
        assert_eq!(state_name(0), None);
        assert_eq!(state_name(13), None);
    }

    /// Walk a sequence of transitions and return the final close side.
    fn walk(states: &[u8]) -> u8 {
        states.windows(2).fold(CLOSE_UNKNOWN, |side, w| close_side_after(side, w[0], w[1]))
    }

    #[test]
    fn close_sides_from_full_sequences() {
        use super::{
            TCP_CLOSE as C, TCP_CLOSE_WAIT as CW, TCP_CLOSING as CG, TCP_ESTABLISHED as E,
            TCP_FIN_WAIT1 as F1, TCP_FIN_WAIT2 as F2, TCP_LAST_ACK as LA, TCP_LISTEN as L,
            TCP_SYN_RECV as SR, TCP_SYN_SENT as SS,
        };
        assert_eq!(walk(&[C, SS, E, F1, F2, C]), CLOSE_ACTIVE);
        assert_eq!(walk(&[L, SR, E, CW, LA, C]), CLOSE_PASSIVE);
        assert_eq!(walk(&[C, SS, E, F1, CG, C]), CLOSE_SIMULTANEOUS);
        assert_eq!(walk(&[C, SS, E, C]), CLOSE_RESET);
        assert_eq!(walk(&[L, SR, E, C]), CLOSE_RESET);
        // Abort after the peer's FIN: a reset, not a passive close.
        assert_eq!(walk(&[L, SR, E, CW, C]), CLOSE_RESET);
        // An RST while waiting for the peer's FIN does not undo the active close.
        assert_eq!(walk(&[C, SS, E, F1, C]), CLOSE_ACTIVE);
        // A failed connect is not a close.
        assert_eq!(walk(&[C, SS, C]), CLOSE_UNKNOWN);
        assert_eq!(walk(&[C, L, C]), CLOSE_UNKNOWN);
    }

    #[test]
    fn close_side_inferred_mid_life() {
        assert_eq!(close_side_after(CLOSE_UNKNOWN, TCP_FIN_WAIT2, TCP_CLOSE), CLOSE_ACTIVE);
        assert_eq!(close_side_after(CLOSE_UNKNOWN, TCP_LAST_ACK, TCP_CLOSE), CLOSE_PASSIVE);
        assert_eq!(close_side_after(CLOSE_UNKNOWN, TCP_CLOSE_WAIT, TCP_LAST_ACK), CLOSE_PASSIVE);
        assert_eq!(close_side_after(CLOSE_UNKNOWN, TCP_CLOSING, TCP_CLOSE), CLOSE_SIMULTANEOUS);
        assert_eq!(close_side_after(CLOSE_UNKNOWN, TCP_SYN_SENT, TCP_ESTABLISHED), CLOSE_UNKNOWN);
    }

    #[test]
    fn owner_only_in_process_context() {
        assert!(owner_is_current(TCP_CLOSE, TCP_SYN_SENT));
        assert!(owner_is_current(TCP_ESTABLISHED, TCP_FIN_WAIT1));
        assert!(owner_is_current(TCP_CLOSE_WAIT, TCP_LAST_ACK));
        assert!(!owner_is_current(TCP_SYN_SENT, TCP_ESTABLISHED));
        assert!(!owner_is_current(TCP_ESTABLISHED, TCP_CLOSE_WAIT));
        assert!(!owner_is_current(TCP_FIN_WAIT1, TCP_FIN_WAIT2));
        assert!(!owner_is_current(TCP_LISTEN, TCP_SYN_RECV));
        assert!(!owner_is_current(TCP_ESTABLISHED, TCP_CLOSE));
    }

    #[test]
    fn new_sockets() {
        assert!(starts_new_socket(TCP_CLOSE, TCP_SYN_SENT));
        assert!(starts_new_socket(TCP_LISTEN, TCP_SYN_RECV));
        assert!(!starts_new_socket(TCP_SYN_SENT, TCP_ESTABLISHED));
        assert!(is_accepted_child(TCP_LISTEN, TCP_SYN_RECV));
        assert!(!is_accepted_child(TCP_LISTEN, TCP_CLOSE));
    }

    #[test]
    fn missed_transitions_are_told_by_the_state_left() {
        // Seen entering ESTABLISHED, now leaving it: nothing missed.
        assert!(!missed_transitions(TCP_ESTABLISHED, TCP_ESTABLISHED));
        // Seen entering FIN_WAIT1, now leaving FIN_WAIT2: FIN_WAIT1 ->
        // FIN_WAIT2 was skipped.
        assert!(missed_transitions(TCP_FIN_WAIT1, TCP_FIN_WAIT2));
        // A whole life through a table: with every step seen nothing is
        // flagged; with one step skipped, exactly the next one is.
        let life = [TCP_CLOSE, TCP_SYN_SENT, TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_CLOSE];
        let flagged = |skip: Option<usize>| -> [bool; 5] {
            let mut seen = life[0];
            let mut out = [false; 5];
            for (i, step) in life.windows(2).enumerate() {
                if Some(i) == skip {
                    continue;
                }
                out[i] = missed_transitions(seen, step[0]);
                seen = step[1];
            }
            out
        };
        assert_eq!(flagged(None), [false; 5]);
        assert_eq!(flagged(Some(3)), [false, false, false, false, true]);
    }

    #[test]
    fn histogram_buckets() {
        assert_eq!(HIST_BUCKETS, 264);
        assert_eq!(hist_bucket(0), 0);
        assert_eq!(hist_bucket(1023), 0);
        assert_eq!(hist_bucket(1024), 0);
        assert_eq!(hist_bucket(1024 + 128), 1);
        assert_eq!(hist_bucket(2048), 8);
        assert_eq!(hist_bucket(u64::MAX), HIST_BUCKETS - 1);
        // Every value reads back within 6.25 % of itself, across the range.
        let mut ns = 1500u64;
        while ns < 1 << HIST_MAX_EXP {
            let back = hist_bucket_ns(hist_bucket(ns));
            let err = back.abs_diff(ns) as f64 / ns as f64;
            assert!(err <= 0.0625, "{ns} reads back as {back}");
            ns = ns * 21 / 19;
        }
        // Buckets are in order.
        assert!((1..HIST_BUCKETS).all(|b| hist_bucket_ns(b) > hist_bucket_ns(b - 1)));
        assert_eq!(hist_bucket(hist_bucket_ns(100)), 100);
    }

    #[test]
    fn summary_streams_closes_and_reuse_markers() {
        assert!(streamed(0, TCP_ESTABLISHED, TCP_FIN_WAIT1));
        let summary = STREAM_SUMMARY;
        assert!(!streamed(summary, TCP_ESTABLISHED, TCP_FIN_WAIT1));
        assert!(streamed(summary, TCP_FIN_WAIT2, TCP_CLOSE));
        assert!(!streamed(summary, TCP_SYN_SENT, TCP_ESTABLISHED));
        assert!(streamed(summary | STREAM_REUSE_MARKERS, TCP_SYN_SENT, TCP_ESTABLISHED));
        assert!(streamed(summary | STREAM_REUSE_MARKERS, TCP_LISTEN, TCP_SYN_RECV));
        assert!(hands_over_to_timewait(TCP_FIN_WAIT2, TCP_CLOSE, CLOSE_ACTIVE, 0));
        assert!(hands_over_to_timewait(TCP_CLOSING, TCP_CLOSE, CLOSE_SIMULTANEOUS, 0));
        assert!(!hands_over_to_timewait(TCP_LAST_ACK, TCP_CLOSE, CLOSE_PASSIVE, 0));
        assert!(!hands_over_to_timewait(TCP_FIN_WAIT1, TCP_CLOSE, CLOSE_RESET, 0));
        // ECONNRESET: the peer reset it after our FIN; no timewait socket.
        assert!(!hands_over_to_timewait(TCP_FIN_WAIT1, TCP_CLOSE, CLOSE_ACTIVE, 104));
    }

    #[test]
    fn abi_sizes_are_fixed() {
        assert_eq!(core::mem::size_of::<Event>(), 112);
        assert_eq!(core::mem::size_of::<SockRecord>(), 56);
        assert_eq!(core::mem::size_of::<Owner>(), 32);
        assert_eq!(core::mem::size_of::<RecordOffsets>(), 22);
        assert_eq!(core::mem::size_of::<Config>(), 64);
        assert_eq!(core::mem::size_of::<TwHookEvent>(), 72);
        assert!(transition_index(15, 15) < TRANSITION_SLOTS);
        assert_eq!(transition_index(TCP_ESTABLISHED, TCP_FIN_WAIT1), 16 + 4);
    }

    #[test]
    fn records_are_told_apart_by_their_kind() {
        let event = Event { kind: RECORD_TRANSITION, oldstate: TCP_LISTEN, ..Event::default() };
        let hook = TwHookEvent { kind: RECORD_TIMEWAIT_HOOK, hook: TW_HOOK_EXPIRE, ..TwHookEvent::default() };
        assert_eq!(Record::decode(bytemuck::bytes_of(&event)), Some(Record::Transition(event)));
        assert_eq!(Record::decode(bytemuck::bytes_of(&hook)), Some(Record::TimewaitHook(hook)));
        // The kind leads; a wrong kind, a wrong length or nothing is no record.
        assert_eq!(bytemuck::bytes_of(&event)[0], RecordKind::Transition as u8);
        let mut wrong = event;
        wrong.kind = RECORD_TIMEWAIT_HOOK;
        assert_eq!(Record::decode(bytemuck::bytes_of(&wrong)), None);
        assert_eq!(Record::decode(&bytemuck::bytes_of(&event)[..50]), None);
        assert_eq!(Record::decode(&[]), None);
        assert_eq!(Record::decode(&[9; 72]), None);
    }

    #[test]
    fn typed_definitions_and_raw_constants_agree() {
        assert_eq!(State::try_from(TCP_TIME_WAIT), Ok(State::TimeWait));
        assert_eq!(State::TimeWait.name(), "TIME_WAIT");
        assert_eq!(CloseSide::try_from(CLOSE_RESET).ok(), Some(CloseSide::Reset));
        assert!(CloseSide::try_from(CLOSE_UNKNOWN).is_err());
        assert_eq!(FILTER_COMM, FilterSet::COMM.bits());
        assert_eq!(Config::zeroed(), <Config as bytemuck::Zeroable>::zeroed());
    }
}
