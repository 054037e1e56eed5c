//! `tcpstate stats`: collect, then print one report.

use super::Output;
use crate::{
    config::Report,
    session::{self, EndReason, Running},
    sink::{
        Aggregating, is_closed_pipe, notices,
        reporter::{Reporter, Reports},
    },
};

pub async fn run(config: Report, out: Output<'_>) -> anyhow::Result<()> {
    let session = session::start(&config.session)?;
    let reporter = Reporter::new(out.writer, config.format, config.rows, Reports::AtEnd, session.info());
    (out.notices)(&notices::start_line(
        "Collecting TCP state transitions",
        session.following(),
        "Hit Ctrl-C to end and report.",
    ));
    report_at_end(session, reporter, out.notices).await
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
