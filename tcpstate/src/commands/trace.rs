//! `tcpstate trace`: one line or JSON object per transition.

use super::{Output, follower_summary, following};
use crate::{
    cli::TraceArgs,
    model::clock::Clock,
    session,
    sink::{
        Sink, is_closed_pipe,
        json::JsonSink,
        text::{TextSink, address_width},
    },
    source::tracer::Tracer,
};

pub async fn run(args: TraceArgs, out: Output<'_>) -> anyhow::Result<()> {
    let signals = session::Signals::listen()?;
    let filters = args.filters.to_filters();
    let mut tracer = Tracer::start(&args.session.tracer_options(filters.clone()))?;
    let mut follower = args.session.follower(&filters, tracer.hooks());
    let clock = Clock::new();
    let mut sink: Box<dyn Sink + '_> = if args.json {
        Box::new(JsonSink::new(out.writer, clock))
    } else {
        match TextSink::new(out.writer, clock, address_width(args.filters.ipv4)) {
            Ok(sink) => Box::new(sink),
            Err(e) if is_closed_pipe(&e) => return summarize(&tracer),
            Err(e) => return Err(e.into()),
        }
    };
    (out.on_ready)(&format!(
        "Tracing TCP state transitions{}. Hit Ctrl-C to end.",
        following(follower.as_ref())
    ));
    let reason =
        session::run(&mut tracer, sink.as_mut(), args.session.duration, follower.as_mut(), signals).await?;
    log::info!("trace ended: {reason:?}");
    summarize(&tracer)?;
    if let Some(f) = &follower {
        super::to_stderr(format_args!("{}\n", follower_summary(f)));
    }
    Ok(())
}

fn summarize(tracer: &Tracer) -> anyhow::Result<()> {
    super::to_stderr(format_args!("\n{}", tracer.counters()?));
    Ok(())
}
