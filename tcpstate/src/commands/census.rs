//! `tcpstate census`: current TCP sockets per state, through sock_diag.

use std::time::Duration;

use netlink_packet_sock_diag::inet::StateFlags;
use tokio::signal::unix::{SignalKind, signal};

use super::Output;
use crate::{
    config::Census as CensusConfig,
    model::{
        census::{Census, GroupBy, Grouping},
        clock::Clock,
    },
    sink::{census::render, is_closed_pipe},
    source::{
        procnet::{self, socket_owners},
        sockdiag::SockDiag,
    },
};

pub async fn run(config: CensusConfig, out: Output<'_>) -> anyhow::Result<()> {
    let mut diag = SockDiag::open(&config.netns)?;
    // The namespace's own range: its connect()s take their ports from it.
    let ephemeral = config.netns.run(|| Ok(procnet::ephemeral_ports()))?;
    let grouping = Grouping { by: config.by, top: config.top, ephemeral };
    let clock = Clock::new();
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    loop {
        let entries = diag.dump(&config.families, StateFlags::all(), &config.ports)?;
        let by_owner = matches!(config.by, Some(GroupBy::Process | GroupBy::Cgroup));
        let owners = if by_owner { socket_owners() } else { Default::default() };
        let census = Census::build(
            &entries,
            grouping,
            &owners,
            config.netns_name.clone(),
            clock.rfc3339(Clock::monotonic_now_ns()),
        );
        let text = render(&census, config.format, config.watch.is_some())?;
        match out.writer.write_all(text.as_bytes()).and_then(|()| out.writer.flush()) {
            Err(e) if is_closed_pipe(&e) => return Ok(()),
            other => other?,
        }
        let Some(every) = config.watch else { return Ok(()) };
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            () = tokio::time::sleep(every.max(Duration::from_millis(10))) => {}
        }
    }
}
