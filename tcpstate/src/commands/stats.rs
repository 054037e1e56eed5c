//! `tcpstate stats`: collect, then print one report.

use anyhow::{Context as _, anyhow, bail};

use super::Output;
use crate::{
    config::Report,
    model::{
        aggregate::{Aggregator, DEFAULT_SOCKET_CAP, DEFAULT_TABLE_CAP},
        counters::{KernelCounters, Readings},
        filter::PortRange,
        report::SessionInfo,
        timewait::Sources,
    },
    session::{self, EndReason, Running},
    sink::{
        Aggregating, is_closed_pipe, notices,
        reporter::{Reporter, Reports},
    },
    source::recording::{self, Recorded},
};

pub async fn run(config: Report, out: Output<'_>) -> anyhow::Result<()> {
    if let Some(path) = &config.from {
        return replay(&config, path, out);
    }
    let session = session::start(&config.session)?;
    let reporter = Reporter::new(out.writer, config.format, config.rows, Reports::AtEnd, session.info());
    (out.notices)(&notices::start_line(
        "Collecting TCP state transitions",
        session.following(),
        "Hit Ctrl-C to end and report.",
    ));
    report_at_end(session, reporter, out.notices).await
}

/// `stats --from`: the report of a `trace --json` recording, through the
/// same aggregate and report as a live session (the durations recorded per
/// transition in place of the kernel's histograms).
fn replay(config: &Report, path: &std::path::Path, out: Output<'_>) -> anyhow::Result<()> {
    let name = path.display().to_string();
    let input: Box<dyn std::io::BufRead> = if name == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(path).with_context(|| format!("opening {name}"))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut info: Option<SessionInfo> = None;
    let mut aggregator: Option<Aggregator> = None;
    let mut summary: Option<(KernelCounters, String)> = None;
    // Counted from the transitions, for a recording cut short.
    let mut seen = KernelCounters::default();
    recording::read(input, &name, |record| {
        if let Recorded::Session(header) = &record {
            let following = header.timewait.as_deref().and_then(Sources::from_description);
            let ephemeral = header.ephemeral_ports.as_deref().and_then(|r| PortRange::parse(r).ok());
            aggregator = Some(
                Aggregator::new(DEFAULT_TABLE_CAP, DEFAULT_SOCKET_CAP)
                    .following_timewait(following)
                    .ephemeral_ports(ephemeral),
            );
            info = Some(header.clone());
            return Ok(());
        }
        let agg = aggregator
            .as_mut()
            .ok_or_else(|| anyhow!("{name}: no session line first: not a tcpstate recording"))?;
        match record {
            Recorded::Transition(t) => {
                *seen.transitions.entry((t.old, t.new)).or_default() += 1;
                agg.observe(&t);
            }
            Recorded::Timewait(e) => agg.observe_timewait(&e),
            Recorded::Summary(counters, ended) => summary = Some((counters, ended)),
            Recorded::Session(_) => {}
        }
        Ok(())
    })?;
    let (Some(mut info), Some(aggregator)) = (info, aggregator) else {
        bail!("{name}: empty: not a tcpstate recording");
    };
    let counters = match summary {
        Some((counters, ended)) => {
            info.ended = ended;
            counters
        }
        None => {
            (out.notices)(&format!(
                "{name} has no summary line (cut short?): transitions as recorded, losses unknown"
            ));
            seen
        }
    };
    // The recording's span, from its session line to its summary.
    let (started, ended) = (humantime::parse_rfc3339(&info.started), humantime::parse_rfc3339(&info.ended));
    let elapsed = match (started, ended) {
        (Ok(started), Ok(ended)) => ended.duration_since(started).map_or(0.0, |d| d.as_secs_f64()),
        _ => 0.0,
    };
    let mut reporter =
        Reporter::new(out.writer, config.format, config.rows, Reports::AtEnd, info).covering(elapsed);
    let readings = Readings { counters, ..Readings::default() };
    match reporter.emit(&aggregator, &readings) {
        Err(e) if is_closed_pipe(&e) => Ok(()),
        other => other.map_err(|e| session::naming_stdout(e).into()),
    }
}

/// Runs the session, then writes the final report unless stdout went away.
/// `stats`, and `top` off a terminal.
pub async fn report_at_end<W: std::io::Write>(
    mut session: Running,
    reporter: Reporter<W>,
    notices: &mut dyn FnMut(&str),
) -> anyhow::Result<()> {
    let mut sink = Aggregating { aggregator: session.aggregator(), view: reporter };
    let reason = session.run(&mut sink).await?;
    if let Some(stats) = session.follower_stats() {
        notices(&notices::follower(&stats));
    }
    if reason == EndReason::OutputClosed {
        return Ok(());
    }
    match sink.view.emit(&sink.aggregator, &session.readings()?) {
        Err(e) if is_closed_pipe(&e) => Ok(()),
        other => other.map_err(|e| session::naming_stdout(e).into()),
    }
}
