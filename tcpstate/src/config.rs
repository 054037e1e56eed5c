//! What the command line means, resolved once. [`crate::cli`] parses the
//! flags; [`Config::resolve`] decides what they mean (filters, stream bits,
//! whether and how timewait sockets are followed, the output format and
//! view); the rest of the program reads only this.

use std::time::Duration;

use tcpstate_ebpf::{self as abi, StreamSet};

use crate::{
    UsageError,
    cli::{self, Cli, Command},
    model::{
        census::GroupBy,
        filter::{Filters, PortRange},
        timewait::DEFAULT_CAPACITY,
        transition::Family,
    },
    sink::{
        Format,
        text::{TextOptions, Timestamp},
    },
    source::{cgroup::cgroup_dir, follower::FollowerOptions, sockdiag::Netns, tracer::TracerOptions},
};

/// A tracing session: what the kernel side collects, and for how long.
#[derive(Clone, Debug)]
pub struct Session {
    pub filters: Filters,
    pub ring_bytes: u32,
    pub max_sockets: Option<u32>,
    /// Summary mode (`stats`, `top`): the kernel aggregates time in state and
    /// the state gauges, and streams only what is counted one by one.
    pub summary: bool,
    /// `None` with `--no-timewait`.
    pub following: Option<FollowerOptions>,
    /// Counted from attach.
    pub duration: Option<Duration>,
}

impl Session {
    /// The stream bits: which transitions reach userspace, decided here and
    /// nowhere else, so that the kernel's deferral of a handover's FIN_WAIT2
    /// time and the aggregator's come from the same choice.
    pub fn stream(&self) -> StreamSet {
        if !self.summary {
            return StreamSet::empty();
        }
        let following = if self.following.is_some() {
            StreamSet::REUSE_MARKERS | StreamSet::DEFER_HANDOVER
        } else {
            StreamSet::empty()
        };
        StreamSet::SUMMARY | following
    }

    pub fn tracer_options(&self) -> TracerOptions {
        TracerOptions {
            filters: self.filters.clone(),
            ring_bytes: self.ring_bytes,
            max_sockets: self.max_sockets,
            timewait_hooks: self.following.as_ref().is_some_and(|f| f.exact_hooks),
            stream: self.stream(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Trace {
    pub session: Session,
    pub format: Format,
    /// How text lines are laid out.
    pub text: TextOptions,
}

/// How `stats` and `top` present the aggregate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// One report at the end (`stats`).
    Final,
    /// A report every interval, and one at the end (`top` off a terminal).
    Periodic(Duration),
    /// The interactive dashboard (`top` on a terminal, text format).
    Dashboard(Duration),
}

#[derive(Clone, Debug)]
pub struct Report {
    pub session: Session,
    pub format: Format,
    pub view: View,
    /// Rows per ranked table.
    pub rows: usize,
    /// `stats --from`: a recording to report instead of a live session.
    pub from: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug)]
pub struct Census {
    pub netns: Netns,
    /// What the output calls the namespace.
    pub netns_name: String,
    pub families: Vec<Family>,
    pub ports: Vec<PortRange>,
    pub by: Option<GroupBy>,
    pub top: Option<usize>,
    pub format: Format,
    pub watch: Option<Duration>,
}

#[derive(Clone, Debug)]
pub struct Sysctl {
    pub netns: Netns,
    pub netns_name: String,
    pub format: Format,
}

#[derive(Clone, Debug)]
pub struct Export {
    pub session: Session,
    pub listen: std::net::SocketAddr,
    /// Workloads with their own series, per producer metric.
    pub max_series: usize,
}

#[derive(Clone, Debug)]
pub enum Config {
    Export(Export),
    Trace(Trace),
    /// `stats` and `top`.
    Report(Report),
    Census(Census),
    Sysctl(Sysctl),
    Generate(Generate),
}

/// `tcpstate generate`: what to print.
#[derive(Clone, Debug)]
pub struct Generate {
    pub kind: cli::Generated,
    pub command: Option<String>,
}

/// The namespace named by `--netns`, and what to call it.
fn netns(arg: Option<&str>) -> anyhow::Result<(Netns, String)> {
    let netns = arg.map(Netns::from_arg).transpose()?.unwrap_or_default();
    Ok((netns, arg.map_or_else(|| "this network namespace".into(), str::to_string)))
}

fn format(json: bool) -> Format {
    if json { Format::Json } else { Format::Text }
}

fn family(ipv4: bool, ipv6: bool) -> Option<Family> {
    match (ipv4, ipv6) {
        (true, _) => Some(Family::Ipv4),
        (_, true) => Some(Family::Ipv6),
        _ => None,
    }
}

fn filters(args: &cli::FilterArgs) -> anyhow::Result<Filters> {
    if args.cgroup.len() > abi::MAX_CGROUPS as usize {
        return Err(UsageError(format!("at most {} --cgroup", abi::MAX_CGROUPS)).into());
    }
    let cgroups = args.cgroup.iter().map(|p| cgroup_dir(p)).collect::<Result<_, _>>()?;
    if args.netns.len() > abi::MAX_NAMESPACES as usize {
        return Err(UsageError(format!("at most {} --netns", abi::MAX_NAMESPACES)).into());
    }
    let namespaces = args.netns.iter().map(|n| Netns::inode_of_arg(n)).collect::<anyhow::Result<_>>()?;
    Ok(Filters {
        family: family(args.ipv4, args.ipv6),
        lports: args.lport.clone(),
        rports: args.rport.clone(),
        ports: args.port.clone(),
        pids: args.pid.clone(),
        comms: args.comm.clone(),
        cgroups,
        namespaces,
    })
}

fn session(filter_args: &cli::FilterArgs, args: &cli::SessionArgs, summary: bool) -> anyhow::Result<Session> {
    let filters = filters(filter_args)?;
    let following = (!args.no_timewait).then(|| FollowerOptions {
        exact_hooks: args.tw_mode == cli::TimewaitMode::Auto,
        poll: args.tw_poll,
        ports: filters.any_ports(),
        capacity: DEFAULT_CAPACITY,
    });
    Ok(Session {
        filters,
        ring_bytes: args.ring_size.unwrap_or(abi::DEFAULT_RING_BYTES),
        max_sockets: args.max_sockets,
        summary,
        following,
        duration: args.duration,
    })
}

fn report(args: &cli::StatsArgs, view: View) -> anyhow::Result<Report> {
    let session = session(&args.filters, &args.session, true)?;
    if args.from.is_some() && (session.filters != Filters::default() || args.session.duration.is_some()) {
        return Err(UsageError(
            "--from reports the recording as it was made: its filters and duration are the recording's"
                .into(),
        )
        .into());
    }
    Ok(Report {
        session,
        format: format(args.report.json),
        view,
        rows: args.report.top.into(),
        from: args.from.clone(),
    })
}

impl Config {
    /// `stdout_is_terminal` decides `top`'s view: the dashboard needs a
    /// terminal, and JSON is never drawn.
    pub fn resolve(cli: Cli, stdout_is_terminal: bool) -> anyhow::Result<Self> {
        Ok(match cli.command {
            Command::Trace(args) => Self::Trace(Trace {
                session: session(&args.filters, &args.session, false)?,
                format: if args.csv { Format::Csv } else { format(args.json) },
                text: TextOptions {
                    timestamp: args.timestamp.map(|kind| match kind {
                        cli::TimestampKind::Time => Timestamp::TimeOfDay,
                        cli::TimestampKind::Datetime => Timestamp::DateTime,
                        cli::TimestampKind::Elapsed => Timestamp::SinceStart,
                    }),
                    wide: args.wide && !args.filters.ipv4,
                    container: args.container,
                },
            }),
            Command::Stats(args) => Self::Report(report(&args, View::Final)?),
            Command::Top(top) => {
                if top.stats.from.is_some() {
                    return Err(UsageError("--from is for stats: top shows a live session".into()).into());
                }
                let dashboard = stdout_is_terminal && !top.stats.report.json;
                let view =
                    if dashboard { View::Dashboard(top.interval) } else { View::Periodic(top.interval) };
                Self::Report(report(&top.stats, view)?)
            }
            Command::Generate(args) => Self::Generate(Generate { kind: args.kind, command: args.command }),
            Command::Census(args) => {
                let (netns, netns_name) = netns(args.netns.as_deref())?;
                Self::Census(Census {
                    netns,
                    netns_name,
                    families: family(args.ipv4, args.ipv6)
                        .map_or(vec![Family::Ipv4, Family::Ipv6], |f| vec![f]),
                    ports: args.port,
                    by: args.by.map(|by| match by {
                        cli::CensusGroup::Lport => GroupBy::Lport,
                        cli::CensusGroup::Raddr => GroupBy::Raddr,
                        cli::CensusGroup::Process => GroupBy::Process,
                        cli::CensusGroup::Cgroup => GroupBy::Cgroup,
                    }),
                    top: args.top.map(usize::from),
                    format: format(args.json),
                    watch: args.watch,
                })
            }
            Command::Export(args) => Self::Export(Export {
                session: session(&args.filters, &args.session, true)?,
                listen: args.listen,
                max_series: args.max_series as usize,
            }),
            Command::Sysctl(args) => {
                let (netns, netns_name) = netns(args.netns.as_deref())?;
                Self::Sysctl(Sysctl { netns, netns_name, format: format(args.json) })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn resolve(args: &[&str], terminal: bool) -> Config {
        let cli = Cli::try_parse_from(std::iter::once("tcpstate").chain(args.iter().copied())).unwrap();
        Config::resolve(cli, terminal).unwrap()
    }

    #[test]
    fn trace_filters_and_defaults() {
        let Config::Trace(t) = resolve(
            &["trace", "-4", "--port", "80,443", "--lport", "8080", "--port", "22", "--comm", "nginx"],
            false,
        ) else {
            panic!()
        };
        let f = &t.session.filters;
        assert_eq!(f.family, Some(Family::Ipv4));
        assert_eq!(f.ports, [80, 443, 22].map(PortRange::one));
        assert_eq!(f.lports, [PortRange::one(8080)]);
        assert_eq!(f.comms, ["nginx"]);
        assert_eq!(t.session.ring_bytes, abi::DEFAULT_RING_BYTES);
        assert!(t.session.stream().is_empty(), "trace streams every transition");
        let following = t.session.following.as_ref().unwrap();
        assert_eq!(following.ports, [22, 80, 443, 8080].map(PortRange::one));
        assert!(following.exact_hooks);
        assert_eq!(t.text, TextOptions::default(), "no time column, narrow addresses");
        assert_eq!(t.format, Format::Text);
    }

    #[test]
    fn summary_streams_and_follower_agree() {
        let Config::Report(r) = resolve(&["stats", "--json"], false) else { panic!() };
        assert_eq!(r.view, View::Final);
        assert_eq!(r.format, Format::Json);
        assert_eq!(
            r.session.stream(),
            StreamSet::SUMMARY | StreamSet::REUSE_MARKERS | StreamSet::DEFER_HANDOVER
        );
        let Config::Report(r) = resolve(&["stats", "--no-timewait"], false) else { panic!() };
        assert!(r.session.following.is_none());
        assert_eq!(r.session.stream(), StreamSet::SUMMARY, "no deferral without a follower");
        let Config::Report(r) = resolve(&["stats", "--tw-mode", "sock-diag"], false) else { panic!() };
        assert!(!r.session.tracer_options().timewait_hooks);
    }

    #[test]
    fn top_view_follows_the_terminal_and_format() {
        let view = |args: &[&str], terminal| match resolve(args, terminal) {
            Config::Report(r) => r.view,
            _ => panic!(),
        };
        let second = Duration::from_secs(1);
        assert_eq!(view(&["top"], true), View::Dashboard(second));
        assert_eq!(view(&["top"], false), View::Periodic(second));
        assert_eq!(view(&["top", "--json"], true), View::Periodic(second));
    }

    #[test]
    fn census_groups_and_families() {
        let Config::Census(c) = resolve(&["census", "--by", "lport", "-6"], false) else { panic!() };
        assert_eq!(c.by, Some(GroupBy::Lport));
        assert_eq!(c.families, [Family::Ipv6]);
        assert_eq!(c.netns_name, "this network namespace");
    }
}
