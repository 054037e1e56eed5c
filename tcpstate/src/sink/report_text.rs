//! Text rendering of a [`Report`]: the answers first, then the detail.

use std::fmt::{self, Write};

use crate::model::{
    aggregate::Sides,
    report::{Distribution, Ranked, Report},
    transition::Comm,
};

fn owner(pid: Option<u32>, comm: &Option<Comm>) -> (String, String) {
    super::owner_columns(pid, comm.as_ref())
}

fn container(label: &Option<std::sync::Arc<str>>) -> String {
    label.as_deref().unwrap_or("-").to_string()
}

/// "1 connection", "2 connections".
fn connections(n: u64) -> String {
    if n == 1 { "1 connection".into() } else { format!("{n} connections") }
}

fn ms(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e6)
}

/// A one-count table: key columns already formatted, then the count.
fn count_table<R>(
    out: &mut impl Write,
    header: &str,
    table: &Ranked<R, u64>,
    row: impl Fn(&R) -> (String, u64),
) -> fmt::Result {
    writeln!(out, "  {header:<46} {:>10}", "TIME_WAIT")?;
    for r in &table.rows {
        let (key, n) = row(r);
        writeln!(out, "  {key:<46} {n:>10}")?;
    }
    if table.other > 0 {
        writeln!(out, "  {:<46} {:>10}", "(other)", table.other)?;
    }
    Ok(())
}

fn sides_row(out: &mut impl Write, key: &str, s: &Sides) -> fmt::Result {
    writeln!(out, "  {key:<38} {:>9} {:>9} {:>9} {:>9}", s.active, s.passive, s.simultaneous, s.reset)
}

fn sides_header(out: &mut impl Write, header: &str) -> fmt::Result {
    writeln!(out, "  {header:<38} {:>9} {:>9} {:>9} {:>9}", "ACTIVE", "PASSIVE", "SIMULT", "RESET")
}

fn sides_table<R>(
    out: &mut impl Write,
    header: &str,
    table: &Ranked<R, Sides>,
    row: impl Fn(&R) -> (String, Sides),
) -> fmt::Result {
    sides_header(out, header)?;
    for r in &table.rows {
        let (key, sides) = row(r);
        sides_row(out, &key, &sides)?;
    }
    if table.other.total() > 0 {
        sides_row(out, "(other)", &table.other)?;
    }
    Ok(())
}

fn distribution_row(out: &mut impl Write, name: &str, d: &Distribution) -> fmt::Result {
    writeln!(
        out,
        "  {name:<12} {:>9} {:>11} {:>11} {:>11} {:>11} {:>11}",
        d.count,
        ms(d.min_ns),
        ms(d.p50_ns),
        ms(d.p90_ns),
        ms(d.p99_ns),
        ms(d.max_ns)
    )
}

pub fn render(out: &mut impl Write, r: &Report) -> fmt::Result {
    let tw = &r.time_wait;
    writeln!(
        out,
        "TIME_WAIT producers: {} handed to a timewait socket by their active closer (TIME_WAIT, or FIN_WAIT2 until the peer's FIN)",
        connections(tw.total)
    )?;
    count_table(out, "PID      COMM", &tw.by_process, |p| {
        let (pid, comm) = owner(p.pid, &p.comm);
        (format!("{pid:<8} {comm}"), p.count)
    })?;
    count_table(out, "LPORT", &tw.by_local_port, |p| (super::local_port_label(p.port), p.count))?;
    count_table(out, "REMOTE", &tw.by_remote, |e| (super::remote_label(e.addr, e.port), e.count))?;
    // Only where some owner's cgroup is known (not on cgroup v1-only hosts).
    if tw.by_container.rows.iter().any(|r| r.container.is_some()) {
        count_table(out, "CONTAINER / CGROUP", &tw.by_container, |r| (container(&r.container), r.count))?;
    }

    if let Some(ends) = &r.timewait_ends {
        let t = &ends.total;
        writeln!(
            out,
            "\nTimewait sockets followed ({}): now {} in FIN_WAIT2, {} in TIME_WAIT",
            ends.mode, ends.in_fin_wait2_now, ends.in_time_wait_now
        )?;
        writeln!(
            out,
            "  ended after reaching TIME_WAIT {}, in FIN_WAIT2 (the peer's FIN never came) {}, \
             never seen {} (gone before a poll found it, or not made: tcp_max_tw_buckets)",
            ends.ended_in.time_wait, ends.ended_in.fin_wait2, t.unobserved
        )?;
        writeln!(
            out,
            "  ended by: expiry {}, reuse of the 4-tuple {}, kill (RST) {}, unobserved {}",
            t.expired, t.reused, t.killed, t.unobserved
        )?;
        if !ends.by_process.rows.is_empty() {
            writeln!(
                out,
                "  {:<38} {:>9} {:>9} {:>9} {:>10}",
                "PID      COMM", "EXPIRED", "REUSED", "KILLED", "UNOBSERVED"
            )?;
            for p in &ends.by_process.rows {
                let (pid, comm) = owner(p.pid, &p.comm);
                let e = &p.ends;
                writeln!(
                    out,
                    "  {:<38} {:>9} {:>9} {:>9} {:>10}",
                    format!("{pid:<8} {comm}"),
                    e.expired,
                    e.reused,
                    e.killed,
                    e.unobserved
                )?;
            }
        }
    }

    let c = &r.closes;
    writeln!(
        out,
        "\nCloses by side: {} ({} without a side: failed connects)",
        connections(c.total.total() + c.unknown),
        c.unknown
    )?;
    sides_header(out, "")?;
    sides_row(out, "all", &c.total)?;
    sides_table(out, "PID      COMM", &c.by_process, |p| {
        let (pid, comm) = owner(p.pid, &p.comm);
        (format!("{pid:<8} {comm}"), p.sides)
    })?;
    sides_table(out, "COMM", &c.by_comm, |p| (owner(None, &p.comm).1, p.sides))?;
    sides_table(out, "LPORT", &c.by_local_port, |p| (super::local_port_label(p.port), p.sides))?;
    if let Some(range) = &r.ephemeral_ports {
        writeln!(out, "  (LPORT ephem: connected sockets' ports in the ephemeral range {range})")?;
    }

    let f = &r.failed_connects;
    if f.total > 0 {
        writeln!(out, "\nFailed connects (SYN_SENT -> CLOSE): {}", f.total)?;
        writeln!(out, "  {:<24} {:<30} {:<14} {:>9}", "PID      COMM", "REMOTE", "ERROR", "COUNT")?;
        for row in &f.rows.rows {
            let (pid, comm) = owner(row.pid, &row.comm);
            let remote = std::net::SocketAddr::new(row.addr, row.port).to_string();
            let error = row.error.as_deref().unwrap_or("-");
            writeln!(out, "  {:<24} {remote:<30} {error:<14} {:>9}", format!("{pid:<8} {comm}"), row.count)?;
        }
        if f.rows.other > 0 {
            writeln!(out, "  {:<24} {:<30} {:<14} {:>9}", "(other)", "", "", f.rows.other)?;
        }
    }
    sides_table(out, "RADDR", &c.by_remote_addr, |p| (p.addr.to_string(), p.sides))?;
    if c.by_container.rows.iter().any(|r| r.container.is_some()) {
        sides_table(out, "CONTAINER / CGROUP", &c.by_container, |r| (container(&r.container), r.sides))?;
    }

    writeln!(out, "\nTime in state (ms)")?;
    writeln!(
        out,
        "  {:<12} {:>9} {:>11} {:>11} {:>11} {:>11} {:>11}",
        "STATE", "COUNT", "MIN", "P50", "P90", "P99", "MAX"
    )?;
    for d in &r.time_in_state {
        distribution_row(out, d.state, &d.distribution)?;
    }
    if let Some(life) = &r.lifetime {
        distribution_row(out, "(lifetime)", life)?;
    }

    let s = &r.sockets;
    write!(out, "\nSockets followed now: {}", s.followed)?;
    for c in &s.by_state {
        write!(out, "  {} {}", c.state, c.count)?;
    }
    if s.untracked > 0 {
        write!(out, "  (not followed, table full: {})", s.untracked)?;
    }
    writeln!(out)?;
    writeln!(out, "Socket table (every TCP socket): {} of {} entries", s.table_entries, s.table_capacity)?;

    writeln!(out, "\nTransitions (kernel counters)")?;
    for t in &r.transitions {
        writeln!(out, "  {:<11} -> {:<11} {:>12}", t.old, t.new, t.count)?;
    }

    let l = &r.losses;
    let skipped = l.tracepoint_hits_skipped.map_or("n/a".into(), |n| n.to_string());
    let warn = if l.events_dropped > 0 { "  ** EVENTS DROPPED: raise --ring-size **" } else { "" };
    writeln!(
        out,
        "\nEvents: received {}, dropped {}, socket-table insert failures {}, unreadable {}, tracepoint hits skipped {}{warn}",
        l.events_received, l.events_dropped, l.socket_insert_failed, l.unreadable_records, skipped
    )?;
    let warn = if l.sockets_evicted > 0 { "  ** raise --max-sockets **" } else { "" };
    writeln!(
        out,
        "Sockets with missed transitions {}, live sockets evicted from the socket table {}{warn}",
        l.sockets_with_missed_transitions, l.sockets_evicted
    )?;
    if !r.tcpext.is_empty() {
        writeln!(
            out,
            "Kernel TcpExt counters over the session, per network namespace \
             (TW, TWKilled: timewait sockets made with a timer over 4 s, and of 4 s or less):"
        )?;
        for ns in &r.tcpext {
            let whose = match (ns.own, ns.since_start) {
                (true, _) => " (tcpstate's)",
                (false, true) => "",
                (false, false) => " (since its first traced transition)",
            };
            write!(out, "  {:<30}", format!("net:[{}]{whose}", ns.netns))?;
            for (k, v) in &ns.counters {
                write!(out, " {k} +{v}")?;
            }
            writeln!(out)?;
        }
    }
    let s = &r.session;
    write!(out, "Covers {:.1} s", r.elapsed_s)?;
    if !s.started.is_empty() {
        write!(
            out,
            " ({} to {}), {} {} on {} (Linux {})",
            s.started, s.ended, s.tool, s.version, s.host, s.kernel
        )?;
    }
    let filters: Vec<String> = s.filters.iter().map(|(k, v)| format!("--{k} {}", v.join(","))).collect();
    if !filters.is_empty() {
        write!(out, "; filters: {}", filters.join(" "))?;
    }
    writeln!(out, ".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        aggregate::{Aggregator, tests::server_closes_first},
        counters::KernelCounters,
    };

    #[test]
    fn renders_answers_first() {
        let mut agg = Aggregator::new(16, 64);
        for sk in 0..3 {
            server_closes_first(&mut agg, sk);
        }
        let counters = KernelCounters { received: 15, ringbuf_full: 2, ..Default::default() };
        let mut text = String::new();
        render(&mut text, &Report::build(&agg, &counters, 10, 1.0)).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(
            lines[0],
            "TIME_WAIT producers: 3 connections handed to a timewait socket by their active closer \
             (TIME_WAIT, or FIN_WAIT2 until the peer's FIN)"
        );
        assert!(lines[2].starts_with("  7        nginx") && lines[2].ends_with(" 3"), "{}", lines[2]);
        let fields = |prefix: &str| -> Vec<&str> {
            let line = lines.iter().find(|l| l.trim_start().starts_with(prefix)).expect(prefix);
            line.split_whitespace().collect()
        };
        assert_eq!(fields("all"), ["all", "3", "0", "0", "0"]);
        let all = lines.iter().position(|l| l.trim_start().starts_with("all")).unwrap();
        assert!(
            lines[all - 1].trim_start().starts_with("ACTIVE"),
            "its header is above it: {}",
            lines[all - 1]
        );
        assert!(text.contains("Closes by side: 3 connections"), "{text}");
        let fin1 = fields("FIN_WAIT1");
        assert_eq!(fin1[1], "3");
        assert!(fin1[3].starts_with("2.0"), "{fin1:?}");
        assert!(text.contains("EVENTS DROPPED"));
    }
}
