//! Follows timewait sockets: hands the exact hooks' events to the tracker,
//! and polls sock_diag, in every network namespace they live in, for what
//! the hooks do not measure.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use netlink_packet_sock_diag::inet::StateFlags;

use super::sockdiag::{Netns, SockDiag};
use crate::model::{
    clock::Clock,
    filter::PortRange,
    timewait::{FollowerStats, Sources, Tracker, TwEvent, TwHook},
    transition::{Family, Transition},
};

/// How to follow connections into their timewait sockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowerOptions {
    /// Try the exact (fentry) hooks; sock_diag polling covers what they miss.
    pub exact_hooks: bool,
    pub poll: Duration,
    /// The sockets a dump keeps: the filters' ports in any role (all if none).
    pub ports: Vec<PortRange>,
    /// Timewait sockets followed at once.
    pub capacity: usize,
}

/// Polls wait at least this many times as long as the last one took, so
/// that following a large timewait population costs at most ~2 % of a CPU.
const BACKOFF: u32 = 50;

/// What polling has cost so far.
#[derive(Clone, Copy, Debug, Default)]
struct PollCost {
    polls: u64,
    sockets_read: u64,
    time: Duration,
    /// Connections given up because their namespace could not be entered.
    unreachable: u64,
}

pub struct Follower {
    tracker: Tracker,
    diags: HashMap<u32, Option<SockDiag>>,
    own_netns: u32,
    interval: Duration,
    next_poll: Instant,
    /// The user's port filters: dumps keep only sockets with these ports.
    ports: Vec<PortRange>,
    cost: PollCost,
}

/// The sock_diag socket for namespace `netns`, opened on first use; `None`
/// (remembered) if the namespace cannot be entered.
fn open_diag(
    diags: &mut HashMap<u32, Option<SockDiag>>,
    own_netns: u32,
    netns: u32,
) -> Option<&mut SockDiag> {
    diags
        .entry(netns)
        .or_insert_with(|| {
            // 0: the program could not tell (no BTF); assume ours.
            let ns = Netns::of_inode(netns, own_netns);
            let diag =
                ns.and_then(|ns| SockDiag::open(&ns).map_err(|e| log::warn!("netns {netns}: {e:#}")).ok());
            if diag.is_none() {
                log::warn!("cannot enter network namespace {netns}: its timewait sockets are not followed");
            }
            diag
        })
        .as_mut()
}

impl Follower {
    /// `sources`: what the exact hooks that attached measure.
    pub fn new(following: &FollowerOptions, sources: Sources) -> Self {
        Self {
            tracker: Tracker::new(following.capacity, sources),
            diags: HashMap::new(),
            own_netns: Netns::own_inode(),
            interval: following.poll,
            next_poll: Instant::now(),
            ports: following.ports.clone(),
            cost: PollCost::default(),
        }
    }

    pub fn sources(&self) -> Sources {
        self.tracker.sources()
    }

    /// What following has seen and cost so far, for the summary.
    pub fn stats(&self) -> FollowerStats {
        FollowerStats {
            sources: self.tracker.sources(),
            followed: self.tracker.len(),
            polls: self.cost.polls,
            sockets_read: self.cost.sockets_read,
            poll_time: self.cost.time,
            unreachable: self.cost.unreachable,
            over_capacity: self.tracker.over_capacity,
            rearmed: self.tracker.rearmed,
        }
    }

    pub fn on_transition(&mut self, t: &Transition) -> Option<TwEvent> {
        self.tracker.on_transition(t)
    }

    pub fn on_hook(&mut self, hook: &TwHook, events: &mut Vec<TwEvent>) {
        self.tracker.on_hook(hook, events);
    }

    /// Settles early ends, and dumps the namespaces with followed
    /// connections if the hooks leave anything to polling and a poll is due.
    pub fn poll_if_due(&mut self, events: &mut Vec<TwEvent>) -> anyhow::Result<()> {
        self.poll(events, false)
    }

    /// The last look before the session ends: a poll whether due or not, so
    /// that what the sockets show at the end is in the final report.
    pub fn poll_now(&mut self, events: &mut Vec<TwEvent>) -> anyhow::Result<()> {
        self.poll(events, true)
    }

    fn poll(&mut self, events: &mut Vec<TwEvent>, now: bool) -> anyhow::Result<()> {
        self.tracker.settle(Clock::monotonic_now_ns(), events);
        let polling = self.tracker.sources().needs_polling();
        let due = now || Instant::now() >= self.next_poll;
        if !polling || !due || self.tracker.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        for netns in self.tracker.namespaces() {
            let Some(diag) = open_diag(&mut self.diags, self.own_netns, netns) else {
                self.cost.unreachable += self.tracker.abandon(netns) as u64;
                continue;
            };
            let before = Clock::monotonic_now_ns();
            let states = StateFlags::TIME_WAIT | StateFlags::FIN_WAIT2;
            let socks = diag.dump(&[Family::Ipv4, Family::Ipv6], states, &self.ports)?;
            // The kernel read its timers between these two instants.
            let at = before + (Clock::monotonic_now_ns() - before) / 2;
            self.cost.sockets_read += socks.len() as u64;
            self.tracker.on_dump(netns, at, &socks, events);
        }
        let took = started.elapsed();
        self.cost.polls += 1;
        self.cost.time += took;
        self.next_poll = Instant::now() + self.interval.max(took * BACKOFF);
        Ok(())
    }
}
