//! `tcpstate trace`: one line or JSON object per transition.

use super::Output;
use crate::{
    config::Trace,
    model::clock::Clock,
    session::{self, EndReason},
    sink::{
        Format, Sink, is_closed_pipe,
        json::JsonSink,
        notices,
        text::{TextSink, address_width},
    },
};

pub async fn run(config: Trace, out: Output<'_>) -> anyhow::Result<()> {
    let mut session = session::start(&config.session)?;
    let clock = Clock::new();
    let mut sink: Box<dyn Sink + '_> = match config.format {
        Format::Json => Box::new(JsonSink::new(out.writer, clock)),
        Format::Text => {
            match TextSink::new(out.writer, clock, address_width(config.ipv4_only), config.container_column) {
                Ok(sink) => Box::new(sink),
                Err(e) if is_closed_pipe(&e) => {
                    (out.notices)(&notices::kernel_counters(&session.counters()?));
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
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
