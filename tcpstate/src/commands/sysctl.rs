//! `tcpstate sysctl`: the TIME_WAIT-related settings, with what they do.

use std::path::Path;

use serde::Serialize;

use super::Output;
use crate::{
    cli::SysctlArgs,
    source::{
        procnet::{KNOBS, TIME_WAIT_LEN_S, read_knob},
        sockdiag::Netns,
    },
};

#[derive(Serialize)]
struct Setting {
    name: String,
    /// `None` where the running kernel has no such setting.
    value: Option<String>,
    meaning: &'static str,
}

#[derive(Serialize)]
struct Settings {
    netns: String,
    time_wait_len_s: u64,
    settings: Vec<Setting>,
}

pub fn run(args: SysctlArgs, out: Output<'_>) -> anyhow::Result<()> {
    (out.on_ready)("");
    let netns = args.netns.as_deref().map(Netns::from_arg).transpose()?.unwrap_or_default();
    // /proc/sys/net shows the namespace of the thread that reads it.
    let settings = netns.run(|| {
        let root = Path::new("/proc/sys/net/ipv4");
        Ok(KNOBS
            .iter()
            .map(|k| Setting {
                name: format!("net.ipv4.{}", k.name),
                value: read_knob(root, k.name),
                meaning: k.meaning,
            })
            .collect::<Vec<_>>())
    })?;
    let doc = Settings {
        netns: args.netns.unwrap_or_else(|| "this network namespace".into()),
        time_wait_len_s: TIME_WAIT_LEN_S,
        settings,
    };
    let mut text = String::new();
    if args.json {
        text = serde_json::to_string(&doc)? + "\n";
    } else {
        use std::fmt::Write as _;
        writeln!(text, "TCP TIME_WAIT settings in {}", doc.netns)?;
        writeln!(
            text,
            "  {:<32} {:<20} fixed in the kernel (TCP_TIMEWAIT_LEN): no sysctl changes it; the timer wheel fires it up to a few seconds late",
            "TIME_WAIT length",
            format!("{TIME_WAIT_LEN_S} s")
        )?;
        for s in &doc.settings {
            let value = s.value.as_deref().unwrap_or("(not in this kernel)");
            writeln!(
                text,
                "  {:<32} {value:<20} {}",
                s.name,
                s.meaning.split_whitespace().collect::<Vec<_>>().join(" ")
            )?;
        }
    }
    match out.writer.write_all(text.as_bytes()) {
        Err(e) if crate::sink::is_closed_pipe(&e) => Ok(()),
        other => Ok(other?),
    }
}
