//! A `trace --json` recording read back: its session line, transitions,
//! timewait events and closing summary, as the model holds them, so that
//! `stats --from FILE` reports a recorded session as `stats` would have
//! live. The lines are the ones README.md documents; a line this reader does
//! not know is an error naming the file and line.

use std::{collections::BTreeMap, io::BufRead, net::IpAddr};

use anyhow::{Context as _, anyhow, bail};
use serde::Deserialize;

use crate::model::{
    cgroup::Cgroup,
    counters::KernelCounters,
    report::SessionInfo,
    socket::FourTuple,
    state::{CloseSide, SockError, TcpState},
    timewait::{EndCause, Measured, TwEvent, TwKey},
    transition::{Comm, Family, Owner, Transition},
};

/// One line of a recording.
#[derive(Debug)]
pub enum Recorded {
    Session(SessionInfo),
    Transition(Transition),
    Timewait(TwEvent),
    /// The kernel's counts over the run, and when it ended.
    Summary(KernelCounters, String),
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Line {
    Session(SessionInfo),
    Transition(TransitionLine),
    Timewait(TimewaitLine),
    Summary(SummaryLine),
}

#[derive(Deserialize)]
struct TransitionLine {
    ts_ns: u64,
    skaddr: String,
    netns: u32,
    family: String,
    saddr: IpAddr,
    sport: u16,
    daddr: IpAddr,
    dport: u16,
    old_state: String,
    new_state: String,
    in_old_state_ns: Option<u64>,
    first_seen_ns: u64,
    seen_from_start: bool,
    connected: bool,
    pid: Option<u32>,
    comm: Option<String>,
    cgroup: Option<String>,
    owner_from_listener: Option<bool>,
    owner_at_start: Option<bool>,
    close: Option<String>,
    error: Option<String>,
    last_seen_state: Option<String>,
}

#[derive(Deserialize)]
struct TimewaitLine {
    event: String,
    mode: String,
    ts_ns: u64,
    netns: u32,
    saddr: IpAddr,
    sport: u16,
    daddr: IpAddr,
    dport: u16,
    substate: Option<String>,
    cause: Option<String>,
    fin_wait2_ns: Option<u64>,
    time_wait_ns: Option<u64>,
    expires_at_ns: Option<u64>,
    pid: Option<u32>,
    comm: Option<String>,
}

#[derive(Deserialize)]
struct SummaryLine {
    ended: String,
    transitions: Vec<CountLine>,
    losses: LossesLine,
}

#[derive(Deserialize)]
struct CountLine {
    old: String,
    new: String,
    count: u64,
}

#[derive(Deserialize)]
struct LossesLine {
    events_received: u64,
    events_dropped: u64,
    socket_insert_failed: u64,
    unreadable_records: u64,
    tracepoint_hits_skipped: Option<u64>,
    sockets_with_missed_transitions: u64,
    sockets_evicted: u64,
}

fn state(name: &str) -> anyhow::Result<TcpState> {
    TcpState::from_name(name).ok_or_else(|| anyhow!("unknown state {name:?}"))
}

fn owner(pid: Option<u32>, comm: Option<&str>, from_listener: bool, at_start: bool) -> Option<Owner> {
    Some(Owner { pid: pid?, comm: Comm::from(comm.unwrap_or("")), from_listener, at_start, cgroup_id: 0 })
}

impl TransitionLine {
    fn into_model(self) -> anyhow::Result<Transition> {
        let hex = self.skaddr.trim_start_matches("0x");
        let close = match self.close.as_deref() {
            None => None,
            Some(name) => Some(
                CloseSide::ALL
                    .into_iter()
                    .find(|c| c.name() == name)
                    .ok_or_else(|| anyhow!("unknown close {name:?}"))?,
            ),
        };
        Ok(Transition {
            ts_ns: self.ts_ns,
            skaddr: u64::from_str_radix(hex, 16).with_context(|| format!("skaddr {:?}", self.skaddr))?,
            family: if self.family == "ipv4" { Family::Ipv4 } else { Family::Ipv6 },
            tuple: FourTuple { saddr: self.saddr, sport: self.sport, daddr: self.daddr, dport: self.dport },
            old: state(&self.old_state)?,
            new: state(&self.new_state)?,
            in_old_state_ns: self.in_old_state_ns,
            first_seen_ns: self.first_seen_ns,
            seen_from_start: self.seen_from_start,
            connected: self.connected,
            owner: owner(
                self.pid,
                self.comm.as_deref(),
                self.owner_from_listener.unwrap_or(false),
                self.owner_at_start.unwrap_or(false),
            ),
            close,
            error: match self.error.as_deref() {
                None => None,
                Some(name) => {
                    Some(SockError::from_name(name).ok_or_else(|| anyhow!("unknown error {name:?}"))?)
                }
            },
            netns: self.netns,
            gap: self.last_seen_state.as_deref().map(state).transpose()?,
            cgroup: self.cgroup.as_deref().map(Cgroup::of_path),
        })
    }
}

impl TimewaitLine {
    fn into_model(self) -> anyhow::Result<TwEvent> {
        let key = TwKey {
            netns: self.netns,
            tuple: FourTuple { saddr: self.saddr, sport: self.sport, daddr: self.daddr, dport: self.dport },
        };
        let mode = match self.mode.as_str() {
            "fentry" => Measured::Fentry,
            "sock_diag" => Measured::SockDiag,
            other => bail!("unknown mode {other:?}"),
        };
        let owner = owner(self.pid, self.comm.as_deref(), false, false);
        let substate = self.substate.as_deref().map(state).transpose()?;
        let at_ns = self.ts_ns;
        Ok(match self.event.as_str() {
            "entered" => TwEvent::Entered {
                key,
                owner,
                mode,
                at_ns,
                substate: substate.ok_or_else(|| anyhow!("entered without a substate"))?,
                expires_at_ns: self.expires_at_ns,
                fin_wait2_ns: self.fin_wait2_ns,
            },
            "fin_arrived" => TwEvent::FinArrived {
                key,
                owner,
                mode,
                at_ns,
                fin_wait2_ns: self.fin_wait2_ns.ok_or_else(|| anyhow!("fin_arrived without fin_wait2_ns"))?,
            },
            "ended" => {
                let cause = self.cause.ok_or_else(|| anyhow!("ended without a cause"))?;
                let cause = EndCause::ALL
                    .into_iter()
                    .find(|c| c.name() == cause)
                    .ok_or_else(|| anyhow!("unknown cause {cause:?}"))?;
                TwEvent::Ended {
                    key,
                    owner,
                    mode,
                    at_ns,
                    cause,
                    substate,
                    fin_wait2_ns: self.fin_wait2_ns,
                    time_wait_ns: self.time_wait_ns,
                }
            }
            other => bail!("unknown timewait event {other:?}"),
        })
    }
}

impl SummaryLine {
    fn into_model(self) -> anyhow::Result<(KernelCounters, String)> {
        let mut transitions = BTreeMap::new();
        for c in self.transitions {
            transitions.insert((state(&c.old)?, state(&c.new)?), c.count);
        }
        let l = self.losses;
        let counters = KernelCounters {
            transitions,
            received: l.events_received,
            ringbuf_full: l.events_dropped,
            socket_insert_failed: l.socket_insert_failed,
            read_failed: l.unreadable_records,
            recursion_misses: l.tracepoint_hits_skipped,
            sockets_with_gaps: l.sockets_with_missed_transitions,
            sockets_evicted: l.sockets_evicted,
            ..KernelCounters::default()
        };
        Ok((counters, self.ended))
    }
}

/// Parses one line of a recording.
pub fn parse(line: &str) -> anyhow::Result<Recorded> {
    Ok(match serde_json::from_str::<Line>(line)? {
        Line::Session(info) => Recorded::Session(info),
        Line::Transition(t) => Recorded::Transition(t.into_model()?),
        Line::Timewait(e) => Recorded::Timewait(e.into_model()?),
        Line::Summary(s) => {
            let (counters, ended) = s.into_model()?;
            Recorded::Summary(counters, ended)
        }
    })
}

/// Reads a recording line by line, handing each record to `on`; an error
/// names the line.
pub fn read(
    input: impl BufRead,
    name: &str,
    mut on: impl FnMut(Recorded) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for (n, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("reading {name}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let record =
            parse(&line).with_context(|| format!("{name}:{}: not a line of tcpstate trace --json", n + 1))?;
        on(record)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{clock::Clock, transition::tests::raw_event},
        sink::{Sink, json::JsonSink},
    };

    /// What `trace --json` writes, read back, is what was written: every
    /// field the report needs survives the round trip.
    #[test]
    fn reads_back_what_trace_json_writes() {
        let mut t = Transition::from_raw(&raw_event());
        t.cgroup = Some(Cgroup::of_path("/system.slice/docker-0123456789abcdef0123456789abcdef.scope"));
        t.error = Some(SockError(libc::ECONNRESET as u8));
        t.connected = true;
        t.gap = Some(TcpState::SYN_SENT);
        if let Some(owner) = &mut t.owner {
            // Not recorded: the cgroup's path is.
            owner.cgroup_id = 0;
        }
        let key = TwKey { netns: t.netns, tuple: t.tuple };
        let ended = TwEvent::Ended {
            key,
            owner: t.owner.map(|o| Owner { from_listener: false, at_start: false, ..o }),
            mode: Measured::SockDiag,
            at_ns: 70_000_000_000,
            cause: EndCause::Reused,
            substate: Some(TcpState::TIME_WAIT),
            fin_wait2_ns: Some(1_000),
            time_wait_ns: Some(2_000_000),
        };
        let entered = TwEvent::Entered {
            key,
            owner: None,
            mode: Measured::Fentry,
            at_ns: 10,
            substate: TcpState::TIME_WAIT,
            expires_at_ns: Some(60_000_000_010),
            fin_wait2_ns: Some(5_000),
        };
        let counters = KernelCounters {
            transitions: BTreeMap::from([((TcpState::ESTABLISHED, TcpState::FIN_WAIT1), 3)]),
            received: 9,
            ringbuf_full: 1,
            recursion_misses: Some(2),
            ..Default::default()
        };
        let info = SessionInfo {
            tool: "tcpstate".into(),
            started: "2026-12-03T00:00:00Z".into(),
            ..Default::default()
        };
        let mut sink = JsonSink::new(Vec::new(), Clock::with_offset(0));
        sink.header(&info).unwrap();
        sink.transition(&t).unwrap();
        sink.timewait(&entered).unwrap();
        sink.timewait(&ended).unwrap();
        sink.summary(&counters).unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        let mut records = Vec::new();
        read(text.as_bytes(), "test", |r| {
            records.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(records.len(), 5);
        assert!(matches!(&records[0], Recorded::Session(i) if *i == info));
        assert!(matches!(&records[1], Recorded::Transition(back) if *back == t), "{:?}\n{t:?}", records[1]);
        assert!(matches!(&records[2], Recorded::Timewait(back) if *back == entered), "{:?}", records[2]);
        assert!(matches!(&records[3], Recorded::Timewait(back) if *back == ended), "{:?}", records[3]);
        let Recorded::Summary(back, ended_at) = &records[4] else { panic!("{:?}", records[4]) };
        assert_eq!((&back.transitions, back.received, back.ringbuf_full), (&counters.transitions, 9, 1));
        assert_eq!(back.recursion_misses, Some(2));
        assert!(humantime::parse_rfc3339(ended_at).is_ok());
    }

    #[test]
    fn a_bad_line_is_named() {
        let text = "{\"kind\":\"session\",\"tool\":\"tcpstate\",\"version\":\"0\",\"host\":\"h\",\"kernel\":\"k\",\
                    \"started\":\"2026-12-03T00:00:00Z\",\"filters\":{},\"timewait\":null,\"ephemeral_ports\":null}\n\
                    not json\n";
        let err = read(text.as_bytes(), "rec.jsonl", |_| Ok(())).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("rec.jsonl:2: not a line of tcpstate trace --json"),
            "{err:#}"
        );
    }
}
