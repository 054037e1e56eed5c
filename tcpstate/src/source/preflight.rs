//! Checks that fail early with one clear line, before aya says something obscure.

use std::fs;

use anyhow::bail;
use aya::util::KernelVersion;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The oldest kernel with the BPF ring buffer.
pub const MIN_KERNEL: (u8, u8) = (5, 8);

pub fn check_kernel() -> anyhow::Result<KernelVersion> {
    let current = KernelVersion::current().map_err(|e| anyhow::anyhow!("{e}"))?;
    let (major, minor) = MIN_KERNEL;
    if current < KernelVersion::new(major, minor, 0) {
        bail!("Linux {current} is too old: tcpstate needs {major}.{minor} or later for the BPF ring buffer");
    }
    Ok(current)
}

/// The effective capability set of this process.
fn effective_caps() -> anyhow::Result<u64> {
    let status = fs::read_to_string("/proc/self/status")?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:")).map(str::trim).unwrap_or("0");
    Ok(u64::from_str_radix(hex, 16)?)
}

/// Names the capabilities that loading and attaching the program needs and
/// this process lacks.
pub fn missing_capabilities(effective: u64) -> Vec<&'static str> {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|&(cap, _)| !has(cap))
        .map(|(_, name)| name)
        .collect()
}

pub fn check_capabilities() -> anyhow::Result<()> {
    let missing = missing_capabilities(effective_caps()?);
    if !missing.is_empty() {
        bail!(
            "missing {}: run tcpstate as root, or grant them with `setcap cap_bpf,cap_perfmon+ep $(which tcpstate)`",
            missing.join(" and ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_sets() {
        assert!(missing_capabilities(1 << CAP_SYS_ADMIN).is_empty());
        assert!(missing_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
        assert_eq!(missing_capabilities(0), ["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(missing_capabilities(1 << CAP_BPF), ["CAP_PERFMON"]);
    }
}
