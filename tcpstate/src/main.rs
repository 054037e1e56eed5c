use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use tcpstate::cli::Cli;

/// Exit status for a usage error, as clap and most tools use.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    // tcpstate's own diagnostics at -v and -vv; aya's (relocations, feature
    // probes: a hundred lines) only from -vvv.
    let (ours, aya) = match cli.verbose {
        0 => (log::LevelFilter::Warn, log::LevelFilter::Warn),
        1 => (log::LevelFilter::Info, log::LevelFilter::Warn),
        2 => (log::LevelFilter::Debug, log::LevelFilter::Warn),
        _ => (log::LevelFilter::Debug, log::LevelFilter::Debug),
    };
    env_logger::Builder::new().filter_level(aya).filter_module("tcpstate", ours).parse_default_env().init();

    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::from(e)),
    };
    let stdout = std::io::stdout();
    if tcpstate::sink::known_full(std::os::fd::AsFd::as_fd(&stdout)) {
        return fail(&anyhow::anyhow!("writing to stdout: no space left on the device it goes to"));
    }
    let config = match tcpstate::config::Config::resolve(cli, stdout.is_terminal()) {
        Ok(config) => config,
        Err(e) => return error_exit(e),
    };
    let mut writer = stdout.lock();
    let mut notices = |line: &str| tcpstate::commands::to_stderr(format_args!("{line}\n"));
    let out = tcpstate::commands::Output { writer: &mut writer, notices: &mut notices };
    match runtime.block_on(tcpstate::commands::run(config, out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => error_exit(e),
    }
}

/// A usage error (exit 2) or a failure (exit 1), in one line.
fn error_exit(e: anyhow::Error) -> ExitCode {
    match e.downcast_ref::<tcpstate::UsageError>() {
        Some(usage) => {
            tcpstate::commands::to_stderr(format_args!("tcpstate: {usage} (see --help)\n"));
            ExitCode::from(EXIT_USAGE)
        }
        None => fail(&e),
    }
}

/// One line on stderr; details that span lines (a verifier log) go to the
/// debug log.
fn fail(e: &anyhow::Error) -> ExitCode {
    let text = format!("{e:#}");
    let mut lines = text.lines();
    tcpstate::commands::to_stderr(format_args!("tcpstate: {}\n", lines.next().unwrap_or("unknown error")));
    let rest: Vec<_> = lines.collect();
    if !rest.is_empty() {
        log::debug!("{}", rest.join("\n"));
    }
    ExitCode::FAILURE
}

fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(EXIT_USAGE)
        } else {
            ExitCode::SUCCESS
        };
    }
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    tcpstate::commands::to_stderr(format_args!("tcpstate: {first} (see --help)\n"));
    ExitCode::from(EXIT_USAGE)
}
