//! `tcpstate sysctl`: the TIME_WAIT-related settings, with what they do.

use std::path::Path;

use super::Output;
use crate::{
    config::Sysctl,
    model::sysctl::{Setting, Settings},
    sink::{is_closed_pipe, sysctl::render},
    source::procnet::{KNOBS, TIME_WAIT_LEN_S, read_knob},
};

pub fn run(config: Sysctl, out: Output<'_>) -> anyhow::Result<()> {
    // /proc/sys/net shows the namespace of the thread that reads it.
    let settings = config.netns.run(|| {
        let root = Path::new("/proc/sys/net/ipv4");
        Ok(KNOBS
            .iter()
            .map(|k| Setting {
                name: format!("net.ipv4.{}", k.name),
                value: read_knob(root, k.name),
                default: k.default,
                meaning: k.meaning,
            })
            .collect::<Vec<_>>())
    })?;
    let doc = Settings { netns: config.netns_name, time_wait_len_s: TIME_WAIT_LEN_S, settings };
    match out.writer.write_all(render(&doc, config.format)?.as_bytes()) {
        Err(e) if is_closed_pipe(&e) => Ok(()),
        other => Ok(other?),
    }
}
