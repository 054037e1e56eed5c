//! The exact timewait hooks: optional fentry programs on the kernel's
//! timewait functions (docs/ARCHITECTURE.md, "Timewait sockets"). Each is detected and attached on
//! its own, and whatever fails falls back to sock_diag polling:
//! - the schedule hook measures entry substates and FIN arrivals;
//! - the timer and deschedule hooks, together, measure ends.
//!
//! Many kernels forbid fentry (no BPF trampoline, lockdown, or a policy
//! like this development machine's EPERM), so a failure here is expected
//! and only reported.

use std::{fs, io::BufRead as _};

use aya::{Btf, Ebpf, programs::FEntry};
use tcpstate_ebpf::TW_PROGRAMS;

use super::btf::KernelBtf;
use crate::model::timewait::{Measured, Sources};

/// How one hook fared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookStatus {
    pub function: &'static str,
    /// Why it is not attached.
    pub error: Option<String>,
}

/// The hooks attached, and the kernel's HZ to read their timer lengths.
#[derive(Clone, Debug, Default)]
pub struct Hooks {
    pub status: Vec<HookStatus>,
    pub hz: Option<u32>,
}

impl Hooks {
    fn attached(&self, function: &str) -> bool {
        self.status.iter().any(|s| s.function == function && s.error.is_none())
    }

    /// What each part of a timewait socket's life is measured by.
    pub fn sources(&self) -> Sources {
        let by = |exact: bool| if exact { Measured::Fentry } else { Measured::SockDiag };
        let [(_, schedule), (_, expire), (_, deschedule)] = TW_PROGRAMS;
        Sources {
            substates: by(self.attached(schedule)),
            ends: by(self.attached(expire) && self.attached(deschedule)),
        }
    }

    /// One line per hook that failed, for the log.
    pub fn failures(&self) -> impl Iterator<Item = String> + '_ {
        self.status.iter().filter_map(|s| s.error.as_ref().map(|e| format!("{}: {e}", s.function)))
    }

    /// A timer length in jiffies, in nanoseconds.
    pub fn jiffies_ns(&self, jiffies: u32) -> Option<u64> {
        self.hz.map(|hz| u64::from(jiffies) * 1_000_000_000 / u64::from(hz))
    }
}

/// Loads and attaches every hook it can, one at a time.
pub fn attach(ebpf: &mut Ebpf, kernel: Option<&KernelBtf>) -> Hooks {
    // Scanning /proc/kallsyms takes ~50 ms (120k lines): only to explain a
    // failure the kernel did not refuse outright.
    let mut in_kallsyms = None;
    // aya's BTF parser builds every kernel type (tens of MiB, briefly): only
    // when some hook could attach.
    let mut btf = None;
    let status = TW_PROGRAMS
        .iter()
        .enumerate()
        .map(|(i, &(program, function))| {
            let error = match kernel {
                None => Some("no kernel BTF".to_string()),
                Some(k) if k.tw.is_err() => k.tw.clone().err(),
                Some(k) if !k.tw_functions[i] => Some("not in the kernel's BTF".into()),
                Some(_) => load(ebpf, program, function, &mut btf).err().map(|e| {
                    let names = TW_PROGRAMS.map(|(_, f)| f);
                    if !not_permitted(&e) && !in_kallsyms.get_or_insert_with(|| kallsyms_has(&names))[i] {
                        "not in /proc/kallsyms (inlined or renamed)".into()
                    } else {
                        format!("{e:#}")
                    }
                }),
            };
            HookStatus { function, error }
        })
        .collect();
    Hooks { status, hz: kernel_hz() }
}

fn load(ebpf: &mut Ebpf, program: &str, function: &str, btf: &mut Option<Btf>) -> anyhow::Result<()> {
    let btf = match btf {
        Some(btf) => btf,
        None => btf.insert(Btf::from_sys_fs()?),
    };
    let p: &mut FEntry = ebpf
        .program_mut(program)
        .ok_or_else(|| anyhow::anyhow!("program {program} missing from the object"))?
        .try_into()?;
    p.load(function, btf)?;
    p.attach()?;
    Ok(())
}

/// Whether the kernel refused the program outright (EPERM: fentry is not
/// allowed here), which no symbol lookup would explain better.
fn not_permitted(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.raw_os_error() == Some(libc::EPERM))
    }) || format!("{e:#}").contains("(os error 1)")
}

/// Whether each function is a text symbol in /proc/kallsyms (an inlined
/// function has BTF only if some copy stayed out of line).
fn kallsyms_has<const N: usize>(names: &[&str; N]) -> [bool; N] {
    let mut found = [false; N];
    let Ok(file) = fs::File::open("/proc/kallsyms") else { return found };
    for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
        let mut fields = line.split_whitespace();
        let (Some(_), Some(kind), Some(name)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if kind.eq_ignore_ascii_case("t")
            && let Some(i) = names.iter().position(|n| *n == name)
        {
            found[i] = true;
        }
    }
    found
}

/// CONFIG_HZ from the kernel's config file, to convert timer lengths.
fn kernel_hz() -> Option<u32> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let config = fs::read_to_string(format!("/boot/config-{}", release.trim())).ok()?;
    parse_hz(&config)
}

fn parse_hz(config: &str) -> Option<u32> {
    config.lines().find_map(|l| l.strip_prefix("CONFIG_HZ=")).and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks(failed: &[&str]) -> Hooks {
        let status = TW_PROGRAMS
            .iter()
            .map(|(_, f)| HookStatus { function: f, error: failed.contains(f).then(|| "EPERM".to_string()) })
            .collect();
        Hooks { status, hz: Some(250) }
    }

    #[test]
    fn sources_degrade_one_hook_at_a_time() {
        let exact = Sources { substates: Measured::Fentry, ends: Measured::Fentry };
        assert_eq!(hooks(&[]).sources(), exact);
        let no_expire = hooks(&["tw_timer_handler"]);
        assert_eq!(no_expire.sources(), Sources { ends: Measured::SockDiag, ..exact });
        assert_eq!(no_expire.failures().collect::<Vec<_>>(), ["tw_timer_handler: EPERM"]);
        assert_eq!(
            hooks(&["__inet_twsk_schedule"]).sources(),
            Sources { substates: Measured::SockDiag, ..exact }
        );
        assert_eq!(Hooks::default().sources(), Sources::default());
        assert_eq!(hooks(&[]).jiffies_ns(500), Some(2_000_000_000));
    }

    #[test]
    fn reads_hz_and_kallsyms() {
        assert_eq!(parse_hz("# CONFIG_HZ_1000 is not set\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n"), Some(250));
        assert_eq!(parse_hz("CONFIG_X=1\n"), None);
        // Root can read the addresses; the names are there for anyone.
        assert_eq!(kallsyms_has(&["tcp_time_wait", "no_such_function_here"]), [true, false]);
    }
}
