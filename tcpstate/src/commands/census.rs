//! `tcpstate census`: current TCP sockets per state, through sock_diag.

use std::time::Duration;

use netlink_packet_sock_diag::inet::StateFlags;
use tokio::signal::unix::{SignalKind, signal};

use super::Output;
use crate::{
    cli::CensusArgs,
    model::{
        census::{Census, GroupBy, socket_owners},
        clock::Clock,
        transition::Family,
    },
    sink::{census::render, is_closed_pipe},
    source::sockdiag::{Netns, SockDiag},
};

pub async fn run(args: CensusArgs, out: Output<'_>) -> anyhow::Result<()> {
    let netns = args.netns.as_deref().map(Netns::from_arg).transpose()?.unwrap_or_default();
    let netns_name = args.netns.clone().unwrap_or_else(|| "this network namespace".into());
    let mut diag = SockDiag::open(&netns)?;
    let families: &[Family] = match (args.ipv4, args.ipv6) {
        (true, _) => &[Family::Ipv4],
        (_, true) => &[Family::Ipv6],
        _ => &[Family::Ipv4, Family::Ipv6],
    };
    let clock = Clock::new();
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    (out.on_ready)("");
    loop {
        let entries = diag.dump(families, StateFlags::all(), &args.port)?;
        let owners = if args.by == Some(GroupBy::Process) { socket_owners() } else { Default::default() };
        let census = Census::build(
            &entries,
            args.by,
            &owners,
            netns_name.clone(),
            clock.rfc3339(Clock::monotonic_now_ns()),
        );
        let mut text = String::new();
        if args.json {
            text = serde_json::to_string(&census)?;
            text.push('\n');
        } else {
            render(&mut text, &census)?;
            if args.watch.is_some() {
                text.push('\n');
            }
        }
        match out.writer.write_all(text.as_bytes()).and_then(|()| out.writer.flush()) {
            Err(e) if is_closed_pipe(&e) => return Ok(()),
            other => other?,
        }
        let Some(every) = args.watch else { return Ok(()) };
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            () = tokio::time::sleep(every.max(Duration::from_millis(10))) => {}
        }
    }
}
