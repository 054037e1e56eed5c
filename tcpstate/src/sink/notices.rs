//! The summaries written to stderr at the end of a run, and the start-up
//! line: plain text for people, next to the JSON or text on stdout.

use std::fmt::Write as _;

use crate::model::{
    counters::KernelCounters,
    timewait::{FollowerStats, Sources},
};

/// The line that says tracing has begun; `following`: how timewait sockets
/// are followed, if they are. Why the exact hooks did not attach is normal
/// on many kernels: `-v` says it.
pub fn start_line(doing: &str, following: Option<Sources>, then: &str) -> String {
    let following =
        following.map_or(String::new(), |s| format!(", following timewait sockets by {}", s.describe()));
    format!("{doing}{following}. {then}")
}

/// The kernel's counters at the end of `trace`: transitions by pair, and
/// every way an event can be lost.
pub fn kernel_counters(c: &KernelCounters) -> String {
    let mut f = String::new();
    // Writing to a String cannot fail.
    let _ = write_counters(&mut f, c);
    f
}

fn write_counters(f: &mut String, c: &KernelCounters) -> std::fmt::Result {
    writeln!(f, "{:<11}    {:<11} {:>12}", "OLDSTATE", "NEWSTATE", "TRANSITIONS")?;
    for ((old, new), n) in &c.transitions {
        writeln!(f, "{old:<11} -> {new:<11} {n:>12}")?;
    }
    writeln!(f, "{:<26} {:>12}", "total", c.total_transitions())?;
    let skipped = c.recursion_misses.map_or("n/a".to_string(), |n| n.to_string());
    write!(
        f,
        "events received {}, dropped (ring buffer full) {}, socket-table insert failures {}, \
         unreadable records {}, tracepoint hits skipped by the kernel {}, \
         sockets with missed transitions {}, live sockets evicted from the socket table {}",
        c.received,
        c.ringbuf_full,
        c.socket_insert_failed,
        c.read_failed,
        skipped,
        c.sockets_with_gaps,
        c.sockets_evicted
    )?;
    if c.malformed > 0 {
        write!(f, ", malformed records {}", c.malformed)?;
    }
    writeln!(f)
}

/// What following timewait sockets saw and cost.
pub fn follower(s: &FollowerStats) -> String {
    format!(
        "timewait sockets ({}): {} still followed, {} polls read {} sockets in {:.1} ms, {} in unreachable namespaces, {} over capacity, {} TIME_WAIT timers restarted",
        s.sources.describe(),
        s.followed,
        s.polls,
        s.sockets_read,
        s.poll_time.as_secs_f64() * 1e3,
        s.unreachable,
        s.over_capacity,
        s.rearmed
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::TcpState;

    #[test]
    fn summary_lists_pairs_and_losses() {
        let mut c =
            KernelCounters { ringbuf_full: 3, recursion_misses: Some(0), received: 5, ..Default::default() };
        c.transitions.insert((TcpState::ESTABLISHED, TcpState::FIN_WAIT1), 2);
        c.transitions.insert((TcpState::CLOSE, TcpState::SYN_SENT), 6);
        assert_eq!(c.total_transitions(), 8);
        let text = kernel_counters(&c);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines[1], "ESTABLISHED -> FIN_WAIT1              2");
        assert_eq!(lines[2], "CLOSE       -> SYN_SENT               6");
        assert!(lines[3].starts_with("total") && lines[3].ends_with(" 8"));
        assert!(lines[4].contains("dropped (ring buffer full) 3"));
        assert!(lines[4].contains("skipped by the kernel 0"));
        assert!(lines[4].contains("sockets with missed transitions 0"));
    }

    #[test]
    fn start_line_names_the_mode() {
        assert_eq!(start_line("Tracing", None, "Hit Ctrl-C to end."), "Tracing. Hit Ctrl-C to end.");
        let line = start_line("Tracing", Some(Sources::default()), "Hit Ctrl-C to end.");
        assert_eq!(line, "Tracing, following timewait sockets by sock_diag. Hit Ctrl-C to end.");
    }
}
