//! `tcpstate top` and `tcpstate stats`: the aggregate, live or at the end.

use super::Output;
use crate::{
    cli::{StatsArgs, TopArgs},
    model::aggregate::{Aggregator, DEFAULT_SOCKET_CAP, DEFAULT_TABLE_CAP},
    model::timewait::Sources,
    session::{self, EndReason},
    sink::{Aggregating, dashboard::Dashboard, is_closed_pipe, periodic::Reporter},
    source::{timewait::Follower, tracer::Tracer},
};

fn aggregator(follows_timewait: Option<Sources>) -> Aggregator {
    Aggregator::new(DEFAULT_TABLE_CAP, DEFAULT_SOCKET_CAP)
        .following_timewait(follows_timewait)
        .summarized_in_kernel(true)
}

pub async fn stats(args: StatsArgs, out: Output<'_>) -> anyhow::Result<()> {
    let signals = session::Signals::listen()?;
    let filters = args.filters.to_filters();
    let mut tracer = Tracer::start(&args.session.summary_tracer_options(filters.clone()))?;
    let mut follower = args.session.follower(&filters, tracer.hooks());
    let mut sink = Aggregating {
        aggregator: aggregator(follower.as_ref().map(|f| f.tracker.sources())),
        view: Reporter::new(out.writer, args.report.json, args.report.top.into(), None),
    };
    (out.on_ready)(&format!(
        "Collecting TCP state transitions{}. Hit Ctrl-C to end and report.",
        super::following(follower.as_ref())
    ));
    final_report(&mut tracer, &mut sink, args.session.duration, follower.as_mut(), signals).await
}

pub async fn top(top: TopArgs, out: Output<'_>) -> anyhow::Result<()> {
    let signals = session::Signals::listen()?;
    let (args, interval) = (top.stats, top.interval);
    let filters = args.filters.to_filters();
    let mut tracer = Tracer::start(&args.session.summary_tracer_options(filters.clone()))?;
    let mut follower = args.session.follower(&filters, tracer.hooks());
    let agg = aggregator(follower.as_ref().map(|f| f.tracker.sources()));
    if out.is_terminal && !args.report.json {
        (out.on_ready)("");
        let mut dashboard =
            Aggregating { aggregator: agg, view: Dashboard::new(interval, args.report.top.into())? };
        session::run(&mut tracer, &mut dashboard, args.session.duration, follower.as_mut(), signals).await?;
        return Ok(());
    }
    let mut sink = Aggregating {
        aggregator: agg,
        view: Reporter::new(out.writer, args.report.json, args.report.top.into(), Some(interval)),
    };
    (out.on_ready)(&format!(
        "Tracing TCP state transitions{}. Hit Ctrl-C to end.",
        super::following(follower.as_ref())
    ));
    final_report(&mut tracer, &mut sink, args.session.duration, follower.as_mut(), signals).await
}

/// Runs the session, then reports what it saw unless stdout went away.
async fn final_report<W: std::io::Write>(
    tracer: &mut Tracer,
    sink: &mut Aggregating<Reporter<W>>,
    duration: Option<std::time::Duration>,
    mut follower: Option<&mut Follower>,
    signals: session::Signals,
) -> anyhow::Result<()> {
    let reason = session::run(tracer, sink, duration, follower.as_deref_mut(), signals).await?;
    if let Some(f) = follower {
        super::to_stderr(format_args!("{}\n", super::follower_summary(f)));
    }
    if reason == EndReason::OutputClosed {
        return Ok(());
    }
    match sink.view.emit(&sink.aggregator, &tracer.counters()?) {
        Err(e) if is_closed_pipe(&e) => Ok(()),
        other => other.map_err(|e| session::naming_stdout(e).into()),
    }
}
