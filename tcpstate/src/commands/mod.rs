//! One module per subcommand.

pub mod trace;

use crate::cli::{Cli, Command};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Trace(args) => trace::run(args).await,
    }
}
