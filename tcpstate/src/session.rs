//! The event loop shared by the commands: drain the ring buffer when woken
//! or on a timer, until Ctrl-C, SIGTERM, SIGHUP, `--duration` (counted from
//! here, once attached), or a closed stdout.

use std::{io, time::Duration};

use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior},
};

use crate::{
    sink::{Flow, Sink, is_closed_pipe},
    source::{
        timewait::Follower,
        tracer::{POLL_INTERVAL, Record, Tracer},
    },
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The sink asked to stop (a key in the dashboard).
    Quit,
    Interrupted,
    Terminated,
    /// The terminal or ssh session went away: end as on SIGTERM.
    HungUp,
    DurationElapsed,
    OutputClosed,
}

/// Hands the waiting transitions to the sink, and to the timewait follower,
/// whose events go to the sink too.
/// At the end (`last`), the follower polls whether due or not.
fn drain(
    tracer: &mut Tracer,
    sink: &mut dyn Sink,
    follower: &mut Option<&mut Follower>,
    last: bool,
) -> io::Result<()> {
    let mut events = Vec::new();
    tracer.drain(|record| {
        match record {
            Record::Transition(t) => {
                sink.transition(&t).map_err(naming_stdout)?;
                events.extend(follower.as_mut().and_then(|f| f.on_transition(&t)));
            }
            Record::Timewait(hook) => {
                if let Some(f) = follower.as_mut() {
                    f.on_hook(&hook, &mut events);
                }
            }
        }
        // In the kernel's order, interleaved with the transitions.
        events.drain(..).try_for_each(|e| sink.timewait(&e).map_err(naming_stdout))
    })?;
    if let Some(f) = follower {
        let polled = if last { f.poll_now(&mut events) } else { f.poll_if_due(&mut events) };
        polled.map_err(io::Error::other)?;
        for e in &events {
            sink.timewait(e).map_err(naming_stdout)?;
        }
    }
    sink.flush().map_err(naming_stdout)
}

/// A sink's write failed: say it was the output (stdout), keeping the
/// error's kind so that a closed pipe still ends quietly.
pub fn naming_stdout(e: io::Error) -> io::Error {
    if is_closed_pipe(&e) { e } else { io::Error::new(e.kind(), format!("writing to stdout: {e}")) }
}

fn deliver(
    tracer: &mut Tracer,
    sink: &mut dyn Sink,
    follower: &mut Option<&mut Follower>,
) -> io::Result<Flow> {
    drain(tracer, sink, follower, false)?;
    sink.tick(&|| tracer.counters().map_err(io::Error::other))
}

/// The signals that end a session, listened to from before the start-up
/// line: one sent as soon as it appears must not kill the process unreported.
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn listen() -> io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }
}

pub async fn run(
    tracer: &mut Tracer,
    sink: &mut dyn Sink,
    duration: Option<Duration>,
    mut follower: Option<&mut Follower>,
    signals: Signals,
) -> anyhow::Result<EndReason> {
    let Signals { mut interrupt, mut terminate, mut hangup } = signals;
    // SAFETY: the tracer owns the fd and outlives `ready`, which is dropped
    // (and deregistered) at the end of this function.
    let ready = unsafe { AsyncFd::register_with_interest(tracer.ring_fd(), Interest::READABLE) }?;
    let deadline = async {
        match duration {
            Some(d) => tokio::time::sleep_until(Instant::now() + d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut timer = tokio::time::interval(POLL_INTERVAL);
    timer.set_missed_tick_behavior(MissedTickBehavior::Skip);

    let reason = loop {
        tokio::select! {
            _ = interrupt.recv() => break EndReason::Interrupted,
            _ = terminate.recv() => break EndReason::Terminated,
            _ = hangup.recv() => break EndReason::HungUp,
            () = &mut deadline => break EndReason::DurationElapsed,
            guard = ready.readable() => guard?.clear_ready(),
            _ = timer.tick() => {}
        }
        match deliver(tracer, sink, &mut follower) {
            Ok(Flow::Continue) => {}
            Ok(Flow::Stop) => break EndReason::Quit,
            Err(e) if is_closed_pipe(&e) => return Ok(EndReason::OutputClosed),
            Err(e) => return Err(e.into()),
        }
    };
    // What arrived before the end still counts.
    match drain(tracer, sink, &mut follower, true) {
        Err(e) if is_closed_pipe(&e) => Ok(EndReason::OutputClosed),
        other => other.map(|()| reason).map_err(Into::into),
    }
}
