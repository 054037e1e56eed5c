//! One line per transition, in the manner of BCC tcpstates.

use std::{
    fmt::Write as _,
    io::{self, Write},
};

use super::{BatchWriter, Sink};
use crate::model::{clock::Clock, transition::Transition};

/// Width of an address column: IPv4 only, or wide enough for any IPv6.
pub fn address_width(ipv4_only: bool) -> usize {
    if ipv4_only { 15 } else { 39 }
}

pub struct TextSink<W: Write> {
    out: BatchWriter<W>,
    clock: Clock,
    addr_width: usize,
}

impl<W: Write> TextSink<W> {
    pub fn new(out: W, clock: Clock, addr_width: usize) -> io::Result<Self> {
        let mut sink = Self { out: BatchWriter::new(out), clock, addr_width };
        sink.header();
        sink.flush()?;
        Ok(sink)
    }

    fn header(&mut self) {
        let w = self.addr_width;
        let _ = writeln!(
            self.out.buf(),
            "{:<15} {:>7} {:<15} {:<w$} {:>5} {:<w$} {:>5} {:<11}    {:<11} {:>10} CLOSE",
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
        );
    }

    pub fn into_inner(self) -> W {
        self.out.into_inner()
    }
}

pub fn format_line(
    out: &mut impl std::fmt::Write,
    t: &Transition,
    clock: &Clock,
    w: usize,
) -> std::fmt::Result {
    let (h, m, s, us) = clock.time_of_day(t.ts_ns);
    write!(out, "{h:02}:{m:02}:{s:02}.{us:06} ")?;
    match &t.owner {
        Some(o) => write!(out, "{:>7} {:<15}", o.pid, o.comm)?,
        None => write!(out, "{:>7} {:<15}", "-", "-")?,
    }
    write!(
        out,
        " {:<w$} {:>5} {:<w$} {:>5} {:<11} -> {:<11} ",
        t.saddr, t.sport, t.daddr, t.dport, t.old, t.new,
    )?;
    match t.in_old_state_ns {
        Some(ns) => write!(out, "{:>10.3}", ns as f64 / 1e6)?,
        None => write!(out, "{:>10}", "-")?,
    }
    writeln!(out, " {}", t.close.map_or("-", |c| c.name()))
}

impl<W: Write> Sink for TextSink<W> {
    fn transition(&mut self, t: &Transition) -> io::Result<()> {
        format_line(self.out.buf(), t, &self.clock, self.addr_width).map_err(io::Error::other)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::transition::{Transition, tests::raw_event};

    #[test]
    fn one_line_per_transition() {
        let clock = Clock::with_offset(1_795_737_600_000_000_000);
        let mut sink = TextSink::new(Vec::new(), clock, address_width(true)).unwrap();
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
            "00:00:01.000000    4242 curl            127.0.0.1       40000 127.0.0.2          80 ESTABLISHED -> FIN_WAIT1        1.500 active"
        );
        assert!(lines[2].contains("      - -               127.0.0.1"), "{}", lines[2]);
        assert!(lines[2].ends_with("         - -"), "{}", lines[2]);
    }

    #[test]
    fn ipv6_fits_its_column() {
        let mut raw = raw_event();
        raw.family = tcpstate_ebpf::AF_INET6;
        raw.saddr = "2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff".parse::<std::net::Ipv6Addr>().unwrap().octets();
        let mut line = String::new();
        format_line(&mut line, &Transition::from_raw(&raw), &Clock::with_offset(0), address_width(false))
            .unwrap();
        let mut v4 = String::new();
        format_line(
            &mut v4,
            &Transition::from_raw(&raw_event()),
            &Clock::with_offset(0),
            address_width(false),
        )
        .unwrap();
        // Same width whatever the address, so the columns line up.
        assert_eq!(line.len(), v4.len());
    }
}
