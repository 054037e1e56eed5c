//! One line per transition, in the manner of BCC tcpstates: no time column
//! unless asked (`-T`), address columns as wide as the addresses printed
//! (IPv4 width until a longer one comes; `-w` starts at IPv6 width), so a
//! default line fits 120 columns.

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

/// Address column widths: IPv4, and any IPv6 address.
const IPV4_WIDTH: usize = 15;
const IPV6_WIDTH: usize = 39;

/// What the `-T` column shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timestamp {
    /// `HH:MM:SS.ffffff`, UTC.
    TimeOfDay,
    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    DateTime,
    /// Seconds since the tracer attached.
    SinceStart,
}

/// How `trace`'s text lines are laid out, from the flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TextOptions {
    pub timestamp: Option<Timestamp>,
    /// Address columns at IPv6 width from the start (`-w`).
    pub wide: bool,
    /// A last column with the owner's container or cgroup (`--container`).
    pub container: bool,
}

/// The columns of one line, as they stand: the address width grows (once)
/// when an address does not fit.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub options: TextOptions,
    pub addr_width: usize,
    pub clock: Clock,
    /// The monotonic time `SinceStart` counts from.
    pub start_ns: u64,
    /// The first network namespace seen, and whether another has been:
    /// lines then end with their namespace.
    first_netns: Option<u32>,
    many_netns: bool,
}

impl Layout {
    pub fn new(options: TextOptions, clock: Clock, start_ns: u64) -> Self {
        let addr_width = if options.wide { IPV6_WIDTH } else { IPV4_WIDTH };
        Self { options, addr_width, clock, start_ns, first_netns: None, many_netns: false }
    }

    fn header(&self, out: &mut impl std::fmt::Write) -> std::fmt::Result {
        let w = self.addr_width;
        match self.options.timestamp {
            Some(Timestamp::TimeOfDay) => write!(out, "{:<15} ", "TIME(UTC)")?,
            Some(Timestamp::DateTime) => write!(out, "{:<27} ", "DATE-TIME(UTC)")?,
            Some(Timestamp::SinceStart) => write!(out, "{:>10} ", "SECONDS")?,
            None => {}
        }
        write!(
            out,
            "{:>7} {:<15} {:<w$} {:>5} {:<w$} {:>5} {:<12}    {:<12} {:>9} CLOSE",
            "PID", "COMM", "LADDR", "LPORT", "RADDR", "RPORT", "OLDSTATE", "NEWSTATE", "MS",
        )?;
        if self.options.container {
            write!(out, "        CONTAINER")?;
        }
        writeln!(out)
    }

    fn timestamp(&self, out: &mut impl std::fmt::Write, ts_ns: u64) -> std::fmt::Result {
        match self.options.timestamp {
            Some(Timestamp::TimeOfDay) => {
                let (h, m, s, us) = self.clock.time_of_day(ts_ns);
                write!(out, "{h:02}:{m:02}:{s:02}.{us:06} ")
            }
            Some(Timestamp::DateTime) => write!(out, "{:<27} ", self.clock.rfc3339(ts_ns)),
            Some(Timestamp::SinceStart) => {
                write!(out, "{:>10.6} ", ts_ns.saturating_sub(self.start_ns) as f64 / 1e9)
            }
            None => Ok(()),
        }
    }

    /// Widens the address columns if `addrs` need it. Returns whether they
    /// grew, so the caller can say so.
    fn fit(&mut self, addrs: [&std::net::IpAddr; 2]) -> bool {
        // Once wide, every address fits: no formatting per line after that.
        if self.addr_width == IPV6_WIDTH {
            return false;
        }
        let too_wide = |a: &&std::net::IpAddr| !a.is_ipv4() && a.to_string().len() > self.addr_width;
        if addrs.iter().any(too_wide) {
            self.addr_width = IPV6_WIDTH;
            return true;
        }
        false
    }

    /// Notes the namespace; true when it is the second one seen.
    fn see_netns(&mut self, netns: u32) -> bool {
        match self.first_netns {
            None => {
                self.first_netns = Some(netns);
                false
            }
            Some(first) if first != netns && !self.many_netns => {
                self.many_netns = true;
                true
            }
            _ => false,
        }
    }
}

pub struct TextSink<W: Write> {
    out: BatchWriter<W>,
    layout: Layout,
}

impl<W: Write> TextSink<W> {
    pub fn new(out: W, layout: Layout) -> io::Result<Self> {
        let mut sink = Self { out: BatchWriter::new(out), layout };
        let _ = sink.layout.header(sink.out.buf());
        sink.flush()?;
        Ok(sink)
    }

    pub fn into_inner(self) -> W {
        self.out.into_inner()
    }

    /// Before a line: a new header if the addresses widen the columns, a
    /// note once a second namespace appears.
    fn prepare(&mut self, netns: u32, addrs: [&std::net::IpAddr; 2]) -> std::fmt::Result {
        if self.layout.fit(addrs) {
            self.layout.header(self.out.buf())?;
        }
        if self.layout.see_netns(netns) {
            writeln!(
                self.out.buf(),
                "(more than one network namespace: lines end with theirs from here on)"
            )?;
        }
        Ok(())
    }
}

/// One transition; with `container`, a last column with the owner's
/// container (short id or unit), else its cgroup path, else `-`.
pub fn format_line(out: &mut impl std::fmt::Write, t: &Transition, layout: &Layout) -> std::fmt::Result {
    let w = layout.addr_width;
    layout.timestamp(out, t.ts_ns)?;
    owner(out, t.owner.as_ref())?;
    write!(
        out,
        " {:<w$} {:>5} {:<w$} {:>5} {:<12} -> {:<12} ",
        t.tuple.saddr, t.tuple.sport, t.tuple.daddr, t.tuple.dport, t.old, t.new,
    )?;
    duration(out, t.in_old_state_ns)?;
    let close = t.close.map_or("-", |c| c.name());
    if layout.options.container {
        write!(out, " {close:<12} {}", t.cgroup.as_ref().map_or("-", |c| &*c.label))?;
    } else {
        write!(out, " {close}")?;
    }
    end_of_line(out, t, layout)
}

fn end_of_line(out: &mut impl std::fmt::Write, t: &Transition, layout: &Layout) -> std::fmt::Result {
    if let Some(error) = t.error {
        // Closed by a reset or a timeout, not by the FIN exchange.
        write!(out, " [{error}]")?;
    }
    if let Some(seen) = t.gap {
        // The kernel skipped transitions between these two states.
        write!(out, " [missed transitions after {seen}]")?;
    }
    netns_mark(out, t.netns, layout)
}

fn netns_mark(out: &mut impl std::fmt::Write, netns: u32, layout: &Layout) -> std::fmt::Result {
    if layout.many_netns {
        write!(out, " net:[{netns}]")?;
    }
    writeln!(out)
}

/// The PID and COMM columns.
fn owner(out: &mut impl std::fmt::Write, owner: Option<&Owner>) -> std::fmt::Result {
    let (pid, comm) = super::owner_columns(owner.map(|o| o.pid), owner.map(|o| &o.comm));
    write!(out, "{pid:>7} {comm:<15}")
}

fn duration(out: &mut impl std::fmt::Write, ns: Option<u64>) -> std::fmt::Result {
    match ns {
        Some(ns) => write!(out, "{:>9.3}", ns as f64 / 1e6),
        None => write!(out, "{:>9}", "-"),
    }
}

/// A timewait event as the old and new state columns show it (states
/// marked `tw:`, the handover and the end in parentheses), and the time in
/// the phase it ends: for the text lines and the CSV rows.
pub fn timewait_columns(e: &TwEvent) -> (String, String, Option<u64>) {
    let tw = |state: Option<TcpState>| format!("tw:{}", state.map_or("?", TcpState::name));
    match e {
        TwEvent::Entered { substate, .. } => ("(handover)".to_string(), tw(Some(*substate)), None),
        TwEvent::FinArrived { fin_wait2_ns, .. } => {
            (tw(Some(TcpState::FIN_WAIT2)), tw(Some(TcpState::TIME_WAIT)), Some(*fin_wait2_ns))
        }
        TwEvent::Ended { cause, substate, fin_wait2_ns, time_wait_ns, .. } => {
            (tw(*substate), format!("({})", cause.name()), time_wait_ns.or(*fin_wait2_ns))
        }
    }
}

/// A timewait socket's event: found after the handover, the peer's FIN
/// arriving, or its end and why.
pub fn format_timewait_line(
    out: &mut impl std::fmt::Write,
    e: &TwEvent,
    layout: &Layout,
) -> std::fmt::Result {
    let w = layout.addr_width;
    layout.timestamp(out, e.at_ns())?;
    owner(out, e.owner())?;
    let k = e.key();
    let (old, new, ns) = timewait_columns(e);
    write!(
        out,
        " {:<w$} {:>5} {:<w$} {:>5} {old:<12} -> {new:<12} ",
        k.tuple.saddr, k.tuple.sport, k.tuple.daddr, k.tuple.dport
    )?;
    duration(out, ns)?;
    write!(out, " timewait")?;
    netns_mark(out, k.netns, layout)
}

impl<W: Write> Sink for TextSink<W> {
    fn transition(&mut self, t: &Transition) -> io::Result<()> {
        self.prepare(t.netns, [&t.tuple.saddr, &t.tuple.daddr]).map_err(io::Error::other)?;
        format_line(self.out.buf(), t, &self.layout).map_err(io::Error::other)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn timewait(&mut self, e: &TwEvent) -> io::Result<()> {
        let k = e.key();
        self.prepare(k.netns, [&k.tuple.saddr, &k.tuple.daddr]).map_err(io::Error::other)?;
        format_timewait_line(self.out.buf(), e, &self.layout).map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::timewait::Measured;
    use crate::model::transition::{Transition, tests::raw_event};

    fn layout(options: TextOptions) -> Layout {
        Layout::new(options, Clock::with_offset(1_795_737_600_000_000_000), 500_000_000)
    }

    fn line(t: &Transition, options: TextOptions) -> String {
        let mut out = String::new();
        format_line(&mut out, t, &layout(options)).unwrap();
        out
    }

    #[test]
    fn one_line_per_transition_fits_120_columns() {
        let mut sink = TextSink::new(Vec::new(), layout(TextOptions::default())).unwrap();
        let mut raw = raw_event();
        sink.transition(&Transition::from_raw(&raw)).unwrap();
        raw.in_old_state_ns = tcpstate_ebpf::DURATION_UNKNOWN;
        raw.flags = 0;
        raw.close = tcpstate_ebpf::CLOSE_SIMULTANEOUS;
        sink.transition(&Transition::from_raw(&raw)).unwrap();
        sink.flush().unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("    PID COMM"), "{}", lines[0]);
        assert_eq!(
            lines[1],
            "   4242 curl            127.0.0.1       40000 127.0.0.2          80 ESTABLISHED  -> FIN_WAIT1        1.500 active"
        );
        assert!(lines[2].starts_with("      - -               127.0.0.1"), "{}", lines[2]);
        assert!(lines[2].ends_with("        - simultaneous"), "{}", lines[2]);
        assert!(lines.iter().all(|l| l.len() <= 120), "{lines:#?}");
    }

    #[test]
    fn timestamps() {
        let t = Transition::from_raw(&raw_event());
        let with = |timestamp| line(&t, TextOptions { timestamp: Some(timestamp), ..Default::default() });
        assert!(
            with(Timestamp::TimeOfDay).starts_with("00:00:01.000000    4242 curl"),
            "{}",
            with(Timestamp::TimeOfDay)
        );
        assert!(
            with(Timestamp::DateTime).starts_with("2026-11-27T00:00:01.000000Z    "),
            "{}",
            with(Timestamp::DateTime)
        );
        // 1 s of kernel time, half a second after the start.
        assert!(
            with(Timestamp::SinceStart).starts_with("  0.500000    4242"),
            "{}",
            with(Timestamp::SinceStart)
        );
    }

    #[test]
    fn addresses_widen_the_columns_once() {
        let mut sink = TextSink::new(Vec::new(), layout(TextOptions::default())).unwrap();
        let mut raw = raw_event();
        sink.transition(&Transition::from_raw(&raw)).unwrap();
        raw.family = tcpstate_ebpf::AF_INET6;
        raw.saddr = "2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff".parse::<std::net::Ipv6Addr>().unwrap().octets();
        sink.transition(&Transition::from_raw(&raw)).unwrap();
        sink.transition(&Transition::from_raw(&raw_event())).unwrap();
        sink.flush().unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 5, "a second header before the wider line: {lines:#?}");
        assert!(lines[2].starts_with("    PID COMM"));
        assert_eq!(lines[3].len(), lines[4].len(), "same width after, whatever the address");
        assert_eq!(lines[2].find("LPORT"), lines[3].find("40000"));
        // -w: wide from the start.
        let wide =
            line(&Transition::from_raw(&raw_event()), TextOptions { wide: true, ..Default::default() });
        assert_eq!(wide.trim_end().len(), lines[4].len());
    }

    #[test]
    fn a_second_namespace_marks_lines() {
        let mut sink = TextSink::new(Vec::new(), layout(TextOptions::default())).unwrap();
        let mut raw = raw_event();
        sink.transition(&Transition::from_raw(&raw)).unwrap();
        raw.netns += 1;
        sink.transition(&Transition::from_raw(&raw)).unwrap();
        sink.flush().unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert!(lines[1].ends_with("active"), "{}", lines[1]);
        assert!(lines[2].starts_with("(more than one network namespace"), "{}", lines[2]);
        assert!(lines[3].ends_with("active net:[4026531841]"), "{}", lines[3]);
    }

    #[test]
    fn a_gap_is_marked() {
        let mut raw = raw_event();
        raw.last_state = tcpstate_ebpf::TCP_SYN_SENT;
        raw.in_old_state_ns = tcpstate_ebpf::DURATION_UNKNOWN;
        raw.flags |= tcpstate_ebpf::FLAG_GAP;
        let l = line(&Transition::from_raw(&raw), TextOptions::default());
        assert!(
            l.ends_with(
                "ESTABLISHED  -> FIN_WAIT1            - active [missed transitions after SYN_SENT]\n"
            ),
            "{l}"
        );
    }

    #[test]
    fn a_close_by_error_is_named() {
        let mut raw = raw_event();
        (raw.oldstate, raw.newstate, raw.error) =
            (tcpstate_ebpf::TCP_FIN_WAIT1, tcpstate_ebpf::TCP_CLOSE, 104);
        let t = Transition::from_raw(&raw);
        assert!(!t.enters_time_wait(), "a reset after our FIN makes no timewait socket");
        let l = line(&t, TextOptions::default());
        assert!(l.ends_with("FIN_WAIT1    -> CLOSE            1.500 active [ECONNRESET]\n"), "{l}");
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
        format_timewait_line(&mut line, &ended, &layout(TextOptions::default())).unwrap();
        assert!(line.contains("tw:TIME_WAIT -> (expired)    60000.000 timewait"), "{line}");
        let fin = TwEvent::FinArrived {
            key,
            mode: Measured::SockDiag,
            owner: None,
            at_ns: 0,
            fin_wait2_ns: 300_000_000,
        };
        line.clear();
        format_timewait_line(&mut line, &fin, &layout(TextOptions::default())).unwrap();
        assert!(line.starts_with("      - -               "), "{line}");
        assert!(line.contains("tw:FIN_WAIT2 -> tw:TIME_WAIT   300.000"), "{line}");
    }

    #[test]
    fn container_column() {
        let mut t = Transition::from_raw(&raw_event());
        let options = TextOptions { container: true, ..Default::default() };
        assert!(line(&t, options).trim_end().ends_with("active       -"));
        t.cgroup = Some(crate::model::cgroup::Cgroup::of_path("/system.slice/nginx.service"));
        assert!(line(&t, options).trim_end().ends_with("active       nginx.service"));
    }
}
