//! `tcpstate generate`: shell completions and man pages, from the same clap
//! definitions that parse the command line (`cargo xtask package` ships them).

use clap::CommandFactory as _;

use super::Output;
use crate::{
    cli::{Cli, Generated},
    config::Generate,
    sink::is_closed_pipe,
};

pub fn run(config: &Generate, out: Output<'_>) -> anyhow::Result<()> {
    let mut cli = Cli::command();
    // Generated whole first: a closed stdout then ends quietly, as
    // everywhere else, instead of failing inside the generator.
    let mut text = Vec::new();
    let shell = match config.kind {
        Generated::Man => {
            man(cli, config.command.as_deref(), &mut text)?;
            return write(out, &text);
        }
        Generated::CompleteBash => clap_complete::Shell::Bash,
        Generated::CompleteZsh => clap_complete::Shell::Zsh,
        Generated::CompleteFish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cli, "tcpstate", &mut text);
    write(out, &text)
}

fn write(out: Output<'_>, text: &[u8]) -> anyhow::Result<()> {
    match out.writer.write_all(text).and_then(|()| out.writer.flush()) {
        Err(e) if is_closed_pipe(&e) => Ok(()),
        other => Ok(other?),
    }
}

/// The page of tcpstate, or of one of its subcommands (`tcpstate-trace`).
fn man(cli: clap::Command, subcommand: Option<&str>, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let page = match subcommand {
        None => cli,
        Some(name) => {
            let sub = cli
                .find_subcommand(name)
                .filter(|s| !s.is_hide_set())
                .ok_or_else(|| crate::UsageError(format!("no subcommand {name}")))?;
            sub.clone()
                .display_name(format!("tcpstate-{name}"))
                .bin_name(format!("tcpstate {name}"))
                .version(env!("CARGO_PKG_VERSION"))
        }
    };
    clap_mangen::Man::new(page).section("8").render(out)?;
    Ok(())
}
