//! `tcpstate trace`: one line or JSON object per transition.

use super::Output;
use crate::{
    config::Trace,
    model::clock::Clock,
    session::{self, EndReason},
    sink::{
        Format, Sink,
        csv::CsvSink,
        is_closed_pipe,
        json::JsonSink,
        notices,
        text::{Layout, TextSink},
    },
};

pub async fn run(config: Trace, out: Output<'_>) -> anyhow::Result<()> {
    let mut session = session::start(&config.session)?;
    let clock = Clock::new();
    // Text and CSV start with a header, which may find stdout closed.
    let started: std::io::Result<Box<dyn Sink + '_>> = match config.format {
        Format::Json => {
            let mut sink = JsonSink::new(out.writer, clock);
            sink.header(&session.info()).map(|()| Box::new(sink) as Box<dyn Sink>)
        }
        Format::Csv => CsvSink::new(out.writer, clock).map(|s| Box::new(s) as Box<dyn Sink>),
        Format::Text => {
            let layout = Layout::new(config.text, clock, Clock::monotonic_now_ns());
            TextSink::new(out.writer, layout).map(|s| Box::new(s) as Box<dyn Sink>)
        }
    };
    let mut sink = match started {
        Ok(sink) => sink,
        Err(e) if is_closed_pipe(&e) => {
            (out.notices)(&notices::kernel_counters(&session.counters()?));
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    (out.notices)(&notices::start_line(
        "Tracing TCP state transitions",
        session.following(),
        "Hit Ctrl-C to end.",
    ));
    let reason = session.run(sink.as_mut()).await?;
    log::info!("trace ended: {reason:?}");
    let counters = session.counters()?;
    if reason != EndReason::OutputClosed {
        match sink.summary(&counters) {
            Err(e) if is_closed_pipe(&e) => {}
            other => other.map_err(session::naming_stdout)?,
        }
    }
    (out.notices)(&format!("\n{}", notices::kernel_counters(&counters)));
    if let Some(stats) = session.follower_stats() {
        (out.notices)(&notices::follower(&stats));
    }
    Ok(())
}
