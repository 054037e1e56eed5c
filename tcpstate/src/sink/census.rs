//! A [`Census`], as text or one JSON line.

use std::fmt::{self, Write};

use super::Format;
use crate::model::{census::Census, state::TcpState};

/// One census in `format`; `repeated` (`--watch`) separates text censuses
/// with a blank line.
pub fn render(c: &Census, format: Format, repeated: bool) -> anyhow::Result<String> {
    let mut text = String::new();
    match format {
        Format::Json => {
            text = serde_json::to_string(c)?;
            text.push('\n');
        }
        Format::Text | Format::Csv => {
            render_text(&mut text, c)?;
            if repeated {
                text.push('\n');
            }
        }
    }
    Ok(text)
}

fn secs(ms: u64) -> String {
    format!("{:.1}", ms as f64 / 1000.0)
}

fn render_text(out: &mut impl Write, c: &Census) -> fmt::Result {
    writeln!(out, "TCP sockets in {} at {}: {}", c.netns, c.time, c.total)?;
    writeln!(out, "  {:<12} {:>9}", "STATE", "SOCKETS")?;
    let present: Vec<&'static str> =
        TcpState::LIFECYCLE.iter().map(|s| s.name()).filter(|n| c.states.contains_key(n)).collect();
    for name in &present {
        write!(out, "  {name:<12} {:>9}", c.states[name])?;
        if let Some(tw) = c.timewait.iter().find(|t| t.substate == *name) {
            write!(out, "   {} timewait", tw.count)?;
            if let Some(r) = &tw.remaining {
                write!(
                    out,
                    ", timer left (s): min {} p50 {} p90 {} max {}",
                    secs(r.min_ms),
                    secs(r.p50_ms),
                    secs(r.p90_ms),
                    secs(r.max_ms)
                )?;
            }
        }
        writeln!(out)?;
    }
    if let Some(by) = c.by {
        write!(out, "\n  {:<40} {:>7}", format!("BY {}", by.to_uppercase()), "TOTAL")?;
        for name in &present {
            write!(out, " {name:>11}")?;
        }
        writeln!(out)?;
        for g in &c.groups {
            write!(out, "  {:<40} {:>7}", g.key, g.total)?;
            for name in &present {
                write!(out, " {:>11}", g.states.get(name).copied().unwrap_or(0))?;
            }
            writeln!(out)?;
        }
        if matches!(by, "process" | "cgroup") && c.timewait.iter().any(|t| t.count > 0) {
            writeln!(out, "  (timewait sockets belong to no process: the kernel keeps no owner for them)")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        model::census::{GroupBy, Grouping, Owners},
        model::socket::{FourTuple, SockEntry},
    };

    #[test]
    fn renders_states_timers_and_groups() {
        let tw = SockEntry {
            state: TcpState::TIME_WAIT,
            tuple: FourTuple {
                saddr: "127.0.0.1".parse().unwrap(),
                sport: 5000,
                daddr: "127.0.0.1".parse().unwrap(),
                dport: 80,
            },
            timewait: true,
            expires: Some(Duration::from_millis(59_500)),
            inode: 0,
            cookie: 0,
        };
        let est = SockEntry {
            state: TcpState::ESTABLISHED,
            timewait: false,
            expires: None,
            inode: 7,
            cookie: 0,
            ..tw.clone()
        };
        let c = Census::build(
            &[tw, est],
            Grouping { by: Some(GroupBy::Lport), ..Default::default() },
            &Owners::new(),
            "ns1".into(),
            "T".into(),
        );
        let text = render(&c, Format::Text, false).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines[0], "TCP sockets in ns1 at T: 2");
        assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>(), ["ESTABLISHED", "1"]);
        assert!(lines[3].contains("1 timewait, timer left (s): min 59.5"), "{}", lines[3]);
        assert!(text.contains("BY LPORT"), "{text}");
        assert_eq!(lines.last().unwrap().split_whitespace().collect::<Vec<_>>(), ["5000", "2", "1", "1"]);
        let json: serde_json::Value = serde_json::from_str(&render(&c, Format::Json, true).unwrap()).unwrap();
        assert_eq!(json["total"], 2);
    }
}
