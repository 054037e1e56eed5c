//! One module per subcommand. Each reads its part of the resolved
//! [`Config`], starts a session (or opens sock_diag) and hands the results
//! to its sinks.

pub mod census;
pub mod export;
pub mod generate;
pub mod stats;
pub mod sysctl;
pub mod top;
pub mod trace;

use std::io::Write;

use crate::config::Config;

/// Where a command's results go: stdout, or a buffer in tests.
pub struct Output<'a> {
    pub writer: &'a mut dyn Write,
    /// Lines for the user beside the results (stderr): the start-up line,
    /// once the command is under way, and the end-of-run summaries.
    pub notices: &'a mut dyn FnMut(&str),
}

pub async fn run(config: Config, out: Output<'_>) -> anyhow::Result<()> {
    match config {
        Config::Trace(c) => trace::run(c, out).await,
        Config::Report(c) if c.view == crate::config::View::Final => stats::run(c, out).await,
        Config::Report(c) => top::run(c, out).await,
        Config::Census(c) => census::run(c, out).await,
        Config::Export(c) => export::run(c, out).await,
        Config::Sysctl(c) => sysctl::run(c, out),
        Config::Generate(c) => generate::run(&c, out),
    }
}

/// Writes to stderr, ignoring failure: a closed or full stderr must neither
/// end the run nor cost the report on stdout.
pub fn to_stderr(text: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().write_fmt(text);
}
