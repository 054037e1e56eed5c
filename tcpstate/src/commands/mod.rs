//! One module per subcommand.

pub mod census;
pub mod report;
pub mod sysctl;
pub mod trace;

use std::io::Write;

use crate::{
    cli::{Cli, Command},
    source::timewait::Follower,
};

/// Where a command's results go: stdout, or a buffer in tests.
pub struct Output<'a> {
    pub writer: &'a mut dyn Write,
    /// Whether the writer is a terminal (`top` then draws its dashboard).
    pub is_terminal: bool,
    /// Told once the command is under way (the program attached, or the
    /// socket open), with a line for the user.
    pub on_ready: &'a mut dyn FnMut(&str),
}

pub async fn run(cli: Cli, out: Output<'_>) -> anyhow::Result<()> {
    match cli.command {
        Command::Trace(args) => trace::run(args, out).await,
        Command::Top(args) => report::top(args, out).await,
        Command::Stats(args) => report::stats(args, out).await,
        Command::Census(args) => census::run(args, out).await,
        Command::Sysctl(args) => sysctl::run(args, out),
    }
}

/// Writes to stderr, ignoring failure: a closed or full stderr must neither
/// end the run nor cost the report on stdout.
pub fn to_stderr(text: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().write_fmt(text);
}

/// Says how timewait sockets are followed, for the start-up line. Why the
/// exact hooks did not attach is normal on many kernels: `-v` says it.
pub fn following(follower: Option<&Follower>) -> String {
    let Some(f) = follower else { return String::new() };
    format!(", following timewait sockets by {}", f.tracker.sources().describe())
}

/// What following timewait sockets cost, for the summary.
pub fn follower_summary(f: &Follower) -> String {
    let c = f.cost;
    format!(
        "timewait sockets ({}): {} still followed, {} polls read {} sockets in {:.1} ms, {} in unreachable namespaces, {} over capacity, {} TIME_WAIT timers restarted",
        f.tracker.sources().describe(),
        f.tracker.len(),
        c.polls,
        c.sockets_read,
        c.time.as_secs_f64() * 1e3,
        c.unreachable,
        f.tracker.over_capacity,
        f.tracker.rearmed
    )
}
