//! One module per subcommand.

pub mod census;
pub mod report;
pub mod sysctl;
pub mod trace;

use std::io::Write;

use crate::cli::{Cli, Command};

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
