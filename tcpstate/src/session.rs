//! A tracing session: [`start`] builds the tracer, the timewait follower
//! and the aggregator's mode from the resolved configuration, in one place
//! for every command; [`Running::run`] is the event loop: drain the ring
//! buffer when woken or on a timer, until Ctrl-C, SIGTERM, SIGHUP,
//! `--duration` (counted from attach), or a closed stdout.

use std::{io, time::Duration};

use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior},
};

use crate::{
    config,
    model::{
        aggregate::{Aggregator, DEFAULT_SOCKET_CAP, DEFAULT_TABLE_CAP},
        counters::{KernelCounters, Readings},
        report::SessionInfo,
        timewait::{FollowerStats, Sources},
    },
    sink::{Flow, Sink, is_closed_pipe},
    source::{
        cgroup::CgroupResolver,
        follower::Follower,
        procnet,
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

/// A sink's write failed: say it was the output (stdout), keeping the
/// error's kind so that a closed pipe still ends quietly.
pub fn naming_stdout(e: io::Error) -> io::Error {
    if is_closed_pipe(&e) { e } else { io::Error::new(e.kind(), format!("writing to stdout: {e}")) }
}

/// The sources of a session, between the ring buffer and the sink.
struct Pipeline {
    tracer: Tracer,
    follower: Option<Follower>,
    cgroups: CgroupResolver,
    /// TcpExt counters of the namespaces traced: reports show how they moved.
    tcpext: procnet::TcpExtWatch,
}

impl Pipeline {
    /// Hands the waiting transitions to the sink, each with its owner's
    /// cgroup resolved, and to the timewait follower, whose events go to the
    /// sink too. At the end (`last`), the follower polls whether due or not.
    fn drain(&mut self, sink: &mut dyn Sink, last: bool) -> io::Result<()> {
        let Self { tracer, follower, cgroups, tcpext } = self;
        let mut events = Vec::new();
        tracer.drain(|record| {
            match record {
                Record::Transition(mut t) => {
                    t.cgroup = t.owner.and_then(|o| cgroups.resolve(o.cgroup_id));
                    tcpext.see(t.netns);
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

    fn deliver(&mut self, sink: &mut dyn Sink) -> io::Result<Flow> {
        self.drain(sink, false)?;
        sink.tick(&|| self.readings().map_err(io::Error::other))
    }

    fn readings(&self) -> anyhow::Result<Readings> {
        Ok(Readings {
            counters: self.tracer.counters()?,
            tcpext: self.tcpext.readings(),
            process: procnet::self_usage(),
        })
    }
}

/// The signals that end a session, listened to from before the start-up
/// line: one sent as soon as it appears must not kill the process unreported.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }
}

/// A session attached and collecting.
pub struct Running {
    pipeline: Pipeline,
    /// What reports say they came from.
    info: SessionInfo,
    /// Taken by the event loop.
    signals: Option<Signals>,
    duration: Option<Duration>,
    summary: bool,
}

/// Listens for the ending signals, loads and attaches the program, and
/// starts following timewait sockets, as `session` says.
pub fn start(session: &config::Session) -> anyhow::Result<Running> {
    let signals = Signals::listen()?;
    let tcpext = procnet::TcpExtWatch::start();
    let tracer = Tracer::start(&session.tracer_options())?;
    let follower = session.following.as_ref().map(|f| Follower::new(f, tracer.hooks().sources()));
    let pipeline = Pipeline { tracer, follower, cgroups: CgroupResolver::new(), tcpext };
    let (host, kernel) = procnet::host();
    let info = SessionInfo {
        tool: env!("CARGO_PKG_NAME").into(),
        version: env!("CARGO_PKG_VERSION").into(),
        host,
        kernel,
        started: humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
        ended: String::new(),
        filters: session.filters.describe(),
        timewait: pipeline.follower.as_ref().map(|f| f.sources().describe()),
        ephemeral_ports: procnet::ephemeral_ports().map(|r| r.to_string()),
    };
    Ok(Running {
        pipeline,
        info,
        signals: Some(signals),
        duration: session.duration,
        summary: session.summary,
    })
}

impl Running {
    /// How timewait sockets are followed, if they are.
    pub fn following(&self) -> Option<Sources> {
        self.pipeline.follower.as_ref().map(Follower::sources)
    }

    /// An empty aggregate in the mode this session streams: in summary
    /// mode the kernel keeps the histograms, and with a follower a
    /// handover's FIN_WAIT2 time is recorded whole when its timewait socket
    /// ends, as the stream bits chose.
    pub fn aggregator(&self) -> Aggregator {
        Aggregator::new(DEFAULT_TABLE_CAP, DEFAULT_SOCKET_CAP)
            .following_timewait(self.following())
            .summarized_in_kernel(self.summary)
            .ephemeral_ports(procnet::ephemeral_ports())
    }

    pub fn counters(&self) -> anyhow::Result<KernelCounters> {
        self.pipeline.tracer.counters()
    }

    /// The tool, host, start time and filters, for reports.
    pub fn info(&self) -> SessionInfo {
        self.info.clone()
    }

    /// The counters, and the TcpExt counters' change since start.
    pub fn readings(&self) -> anyhow::Result<Readings> {
        self.pipeline.readings()
    }

    pub fn follower_stats(&self) -> Option<FollowerStats> {
        self.pipeline.follower.as_ref().map(Follower::stats)
    }

    /// Runs the event loop once; what arrived before the end still reaches
    /// the sink.
    pub async fn run(&mut self, sink: &mut dyn Sink) -> anyhow::Result<EndReason> {
        let signals = self.signals.take().ok_or_else(|| anyhow::anyhow!("the session already ran"))?;
        event_loop(&mut self.pipeline, sink, self.duration, signals).await
    }
}

async fn event_loop(
    pipeline: &mut Pipeline,
    sink: &mut dyn Sink,
    duration: Option<Duration>,
    signals: Signals,
) -> anyhow::Result<EndReason> {
    let Signals { mut interrupt, mut terminate, mut hangup } = signals;
    // SAFETY: the tracer owns the fd and outlives `ready`, which is dropped
    // (and deregistered) at the end of this function.
    let ready = unsafe { AsyncFd::register_with_interest(pipeline.tracer.ring_fd(), Interest::READABLE) }?;
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
        match pipeline.deliver(sink) {
            Ok(Flow::Continue) => {}
            Ok(Flow::Stop) => break EndReason::Quit,
            Err(e) if is_closed_pipe(&e) => return Ok(EndReason::OutputClosed),
            Err(e) => return Err(e.into()),
        }
    };
    // What arrived before the end still counts.
    match pipeline.drain(sink, true) {
        Err(e) if is_closed_pipe(&e) => Ok(EndReason::OutputClosed),
        other => other.map(|()| reason).map_err(Into::into),
    }
}
