//! `tcpstate top` and `tcpstate stats`: the aggregate, live or at the end.

use super::Output;
use crate::{
    cli::{StatsArgs, TopArgs},
    model::aggregate::{Aggregator, DEFAULT_SOCKET_CAP, DEFAULT_TABLE_CAP},
    session::{self, EndReason},
    sink::{dashboard::Dashboard, is_closed_pipe, periodic::ReportSink},
    source::tracer::Tracer,
};

fn aggregator() -> Aggregator {
    Aggregator::new(DEFAULT_TABLE_CAP, DEFAULT_SOCKET_CAP)
}

pub async fn stats(args: StatsArgs, out: Output<'_>) -> anyhow::Result<()> {
    let mut tracer = Tracer::start(&args.session.tracer_options(args.filters.to_filters()))?;
    let mut sink = ReportSink::new(out.writer, aggregator(), args.report.json, args.report.top.into(), None);
    (out.on_ready)("Collecting TCP state transitions. Hit Ctrl-C to end and report.");
    final_report(&mut tracer, &mut sink, args.session.duration).await
}

pub async fn top(args: TopArgs, out: Output<'_>) -> anyhow::Result<()> {
    let mut tracer = Tracer::start(&args.session.tracer_options(args.filters.to_filters()))?;
    if out.is_terminal && !args.report.json {
        (out.on_ready)("");
        let mut dashboard = Dashboard::new(aggregator(), args.interval, args.report.top.into())?;
        session::run(&mut tracer, &mut dashboard, args.session.duration).await?;
        return Ok(());
    }
    let mut sink = ReportSink::new(
        out.writer,
        aggregator(),
        args.report.json,
        args.report.top.into(),
        Some(args.interval),
    );
    (out.on_ready)("Tracing TCP state transitions. Hit Ctrl-C to end.");
    final_report(&mut tracer, &mut sink, args.session.duration).await
}

/// Runs the session, then reports what it saw unless stdout went away.
async fn final_report<W: std::io::Write>(
    tracer: &mut Tracer,
    sink: &mut ReportSink<W>,
    duration: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    if session::run(tracer, sink, duration).await? == EndReason::OutputClosed {
        return Ok(());
    }
    match sink.emit(&tracer.counters()?) {
        Err(e) if is_closed_pipe(&e) => Ok(()),
        other => other.map_err(Into::into),
    }
}
