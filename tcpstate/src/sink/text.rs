//! One line per transition, in the manner of BCC tcpstates.

use std::{
    fmt::Write as _,
    io::{self, Write},
};

use super::{BatchWriter, Sink};
use crate::model::{
    clock::Clock,
    state::TcpState,
    timewait::TwEvent,
    transition::{Owner, Transition},
};

/// Width of an address column: IPv4 only, or wide enough for any IPv6.
pub fn address_width(ipv4_only: bool) -> usize {
    if ipv4_only { 15 } else { 39 }
}

pub struct TextSink<W: Write> {
    out: BatchWriter<W>,
    clock: Clock,
    addr_width: usize,
    /// A last column with the owner's container or cgroup (`--container`).
    container: bool,
}

impl<W: Write> TextSink<W> {
    pub fn new(out: W, clock: Clock, addr_width: usize, container: bool) -> io::Result<Self> {
        let mut sink = Self { out: BatchWriter::new(out), clock, addr_width, container };
        sink.header();
        sink.flush()?;
        Ok(sink)
    }

    fn header(&mut self) {
        let w = self.addr_width;
        let _ = writeln!(
            self.out.buf(),
            "{:<15} {:>7} {:<15} {:<w$} {:>5} {:<w$} {:>5} {:<12}    {:<12} {:>10} {}",
            "TIME(UTC)",
            "PID",
            "COMM",
            "LADDR",
            "LPORT",
            "RADDR",
            "RPORT",
            "OLDSTATE",
            "NEWSTATE",
            "MS",
            if self.container { "CLOSE        CONTAINER" } else { "CLOSE" },
        );
    }

    pub fn into_inner(self) -> W {
        self.out.into_inner()
    }
}

/// One transition; with `container`, a last column with the owner's
/// container (short id or unit), else its cgroup path, else `-`.
pub fn format_line(
    out: &mut impl std::fmt::Write,
    t: &Transition,
    clock: &Clock,
    w: usize,
    container: bool,
) -> std::fmt::Result {
    let (h, m, s, us) = clock.time_of_day(t.ts_ns);
    write!(out, "{h:02}:{m:02}:{s:02}.{us:06} ")?;
    owner(out, t.owner.as_ref())?;
    write!(
        out,
        " {:<w$} {:>5} {:<w$} {:>5} {:<12} -> {:<12} ",
        t.tuple.saddr, t.tuple.sport, t.tuple.daddr, t.tuple.dport, t.old, t.new,
    )?;
    duration(out, t.in_old_state_ns)?;
    let close = t.close.map_or("-", |c| c.name());
    if container {
        write!(out, " {close:<12} {}", t.cgroup.as_ref().map_or("-", |c| &*c.label))?;
    } else {
        write!(out, " {close}")?;
    }
    end_of_line(out, t)
}

fn end_of_line(out: &mut impl std::fmt::Write, t: &Transition) -> std::fmt::Result {
    if let Some(error) = t.error {
        // Closed by a reset or a timeout, not by the FIN exchange.
        write!(out, " [{error}]")?;
    }
    match t.gap {
        // The kernel skipped transitions between these two states.
        Some(seen) => writeln!(out, " [missed transitions after {seen}]"),
        None => writeln!(out),
    }
}

/// The PID and COMM columns.
fn owner(out: &mut impl std::fmt::Write, owner: Option<&Owner>) -> std::fmt::Result {
    let (pid, comm) = super::owner_columns(owner.map(|o| o.pid), owner.map(|o| &o.comm));
    write!(out, "{pid:>7} {comm:<15}")
}

fn duration(out: &mut impl std::fmt::Write, ns: Option<u64>) -> std::fmt::Result {
    match ns {
        Some(ns) => write!(out, "{:>10.3}", ns as f64 / 1e6),
        None => write!(out, "{:>10}", "-"),
    }
}

/// A timewait socket's event, its states marked `tw:`: found after the
/// handover, the peer's FIN arriving, or its end and why.
pub fn format_timewait_line(
    out: &mut impl std::fmt::Write,
    e: &TwEvent,
    clock: &Clock,
    w: usize,
) -> std::fmt::Result {
    let (h, m, s, us) = clock.time_of_day(e.at_ns());
    write!(out, "{h:02}:{m:02}:{s:02}.{us:06} ")?;
    owner(out, e.owner())?;
    let k = e.key();
    let tw = |state: Option<TcpState>| format!("tw:{}", state.map_or("?", TcpState::name));
    let (old, new, ns) = match e {
        TwEvent::Entered { substate, .. } => ("(handover)".to_string(), tw(Some(*substate)), None),
        TwEvent::FinArrived { fin_wait2_ns, .. } => {
            (tw(Some(TcpState::FIN_WAIT2)), tw(Some(TcpState::TIME_WAIT)), Some(*fin_wait2_ns))
        }
        TwEvent::Ended { cause, substate, fin_wait2_ns, time_wait_ns, .. } => {
            (tw(*substate), format!("({})", cause.name()), time_wait_ns.or(*fin_wait2_ns))
        }
    };
    write!(
        out,
        " {:<w$} {:>5} {:<w$} {:>5} {old:<12} -> {new:<12} ",
        k.tuple.saddr, k.tuple.sport, k.tuple.daddr, k.tuple.dport
    )?;
    duration(out, ns)?;
    writeln!(out, " timewait")
}

impl<W: Write> Sink for TextSink<W> {
    fn transition(&mut self, t: &Transition) -> io::Result<()> {
        format_line(self.out.buf(), t, &self.clock, self.addr_width, self.container).map_err(io::Error::other)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn timewait(&mut self, e: &TwEvent) -> io::Result<()> {
        format_timewait_line(self.out.buf(), e, &self.clock, self.addr_width).map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::timewait::Measured;
    use crate::model::transition::{Transition, tests::raw_event};

    #[test]
    fn one_line_per_transition() {
        let clock = Clock::with_offset(1_795_737_600_000_000_000);
        let mut sink = TextSink::new(Vec::new(), clock, address_width(true), false).unwrap();
        let mut raw = raw_event();
        sink.transition(&Transition::from_raw(&raw)).unwrap();
        raw.in_old_state_ns = tcpstate_ebpf::DURATION_UNKNOWN;
        raw.flags = 0;
        raw.close = 0;
        sink.transition(&Transition::from_raw(&raw)).unwrap();
        sink.flush().unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("TIME(UTC)"));
        assert_eq!(
            lines[1],
            "00:00:01.000000    4242 curl            127.0.0.1       40000 127.0.0.2          80 ESTABLISHED  -> FIN_WAIT1         1.500 active"
        );
        assert!(lines[2].contains("      - -               127.0.0.1"), "{}", lines[2]);
        assert!(lines[2].ends_with("         - -"), "{}", lines[2]);
    }

    #[test]
    fn a_gap_is_marked() {
        let mut raw = raw_event();
        raw.last_state = tcpstate_ebpf::TCP_SYN_SENT;
        raw.in_old_state_ns = tcpstate_ebpf::DURATION_UNKNOWN;
        raw.flags |= tcpstate_ebpf::FLAG_GAP;
        let mut line = String::new();
        format_line(
            &mut line,
            &Transition::from_raw(&raw),
            &Clock::with_offset(0),
            address_width(true),
            false,
        )
        .unwrap();
        assert!(
            line.ends_with(
                "ESTABLISHED  -> FIN_WAIT1             - active [missed transitions after SYN_SENT]\n"
            ),
            "{line}"
        );
    }

    #[test]
    fn a_close_by_error_is_named() {
        let mut raw = raw_event();
        (raw.oldstate, raw.newstate, raw.error) =
            (tcpstate_ebpf::TCP_FIN_WAIT1, tcpstate_ebpf::TCP_CLOSE, 104);
        let t = Transition::from_raw(&raw);
        assert!(!t.enters_time_wait(), "a reset after close() makes no timewait socket");
        let mut line = String::new();
        format_line(&mut line, &t, &Clock::with_offset(0), address_width(true), false).unwrap();
        assert!(line.ends_with("FIN_WAIT1    -> CLOSE             1.500 active [ECONNRESET]\n"), "{line}");
    }

    #[test]
    fn timewait_lines_are_marked() {
        use crate::model::timewait::{EndCause, TwKey};
        let t = Transition::from_raw(&raw_event());
        let key = TwKey { netns: 1, tuple: t.tuple };
        let ended = TwEvent::Ended {
            mode: Measured::SockDiag,
            key,
            owner: t.owner,
            at_ns: 61_000_000_000,
            cause: EndCause::Expired,
            substate: Some(TcpState::TIME_WAIT),
            fin_wait2_ns: None,
            time_wait_ns: Some(60_000_000_000),
        };
        let mut line = String::new();
        format_timewait_line(&mut line, &ended, &Clock::with_offset(0), address_width(true)).unwrap();
        assert!(line.contains("tw:TIME_WAIT -> (expired)     60000.000 timewait"), "{line}");
        let fin = TwEvent::FinArrived {
            key,
            mode: Measured::SockDiag,
            owner: None,
            at_ns: 0,
            fin_wait2_ns: 300_000_000,
        };
        line.clear();
        format_timewait_line(&mut line, &fin, &Clock::with_offset(0), address_width(true)).unwrap();
        assert!(line.contains("      - -               "), "{line}");
        assert!(line.contains("tw:FIN_WAIT2 -> tw:TIME_WAIT    300.000"), "{line}");
    }

    #[test]
    fn ipv6_fits_its_column() {
        let mut raw = raw_event();
        raw.family = tcpstate_ebpf::AF_INET6;
        raw.saddr = "2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff".parse::<std::net::Ipv6Addr>().unwrap().octets();
        let mut line = String::new();
        format_line(
            &mut line,
            &Transition::from_raw(&raw),
            &Clock::with_offset(0),
            address_width(false),
            false,
        )
        .unwrap();
        let mut v4 = String::new();
        format_line(
            &mut v4,
            &Transition::from_raw(&raw_event()),
            &Clock::with_offset(0),
            address_width(false),
            false,
        )
        .unwrap();
        // Same width whatever the address, so the columns line up.
        assert_eq!(line.len(), v4.len());
    }

    #[test]
    fn container_column() {
        let mut t = Transition::from_raw(&raw_event());
        let mut line = String::new();
        format_line(&mut line, &t, &Clock::with_offset(0), address_width(true), true).unwrap();
        assert!(line.trim_end().ends_with("active       -"), "{line}");
        t.cgroup = Some(crate::model::cgroup::Cgroup::of_path("/system.slice/nginx.service"));
        line.clear();
        format_line(&mut line, &t, &Clock::with_offset(0), address_width(true), true).unwrap();
        assert!(line.trim_end().ends_with("active       nginx.service"), "{line}");
    }
}
