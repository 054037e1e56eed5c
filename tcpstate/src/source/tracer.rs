//! Loads the eBPF program, applies the filters, attaches it, and reads the
//! ring buffer and the kernel-side counters.

use std::{
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, RawFd},
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use aya_log::EbpfLogger;
use tcpstate_ebpf as abi;

use super::{
    hooks::{self, Hooks},
    preflight,
    start_owners::StartOwners,
    tracefs,
};
use crate::model::{
    counters::{KernelCounters, KernelSummary, StateHistogram},
    filter::Filters,
    state::TcpState,
    timewait::TwHook,
    transition::{Comm, Family, Transition},
};

/// The eBPF object, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpstate-ebpf"));

#[derive(Clone, Debug)]
pub struct TracerOptions {
    pub filters: Filters,
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub ring_bytes: u32,
    /// Capacity of the kernel's socket table (an LRU hash); `None` sizes it
    /// from the sockets the host holds at start.
    pub max_sockets: Option<u32>,
    /// Try the exact timewait hooks (fentry), where the kernel allows them.
    pub timewait_hooks: bool,
    /// Empty streams every transition; summary
    /// mode aggregates in the kernel and streams closes only.
    pub stream: abi::StreamSet,
}

impl TracerOptions {
    /// The socket table's smallest default size, and its largest.
    pub const MIN_DEFAULT_SOCKETS: u32 = 65536;
    pub const MAX_SOCKETS: u32 = 16 << 20;

    /// Room for twice the full sockets the host holds now (a full LRU table
    /// evicts live sockets), as a power of two, at least
    /// [`Self::MIN_DEFAULT_SOCKETS`]: 64k entries take about 6 MiB.
    pub fn default_max_sockets(sockets_now: Option<u64>) -> u32 {
        let wanted = sockets_now.unwrap_or(0).saturating_mul(2).min(u64::from(Self::MAX_SOCKETS)) as u32;
        wanted.next_power_of_two().clamp(Self::MIN_DEFAULT_SOCKETS, Self::MAX_SOCKETS)
    }

    /// The reader is woken once a quarter of the ring is waiting; otherwise
    /// it drains every `POLL_INTERVAL`.
    fn wakeup_bytes(&self) -> u64 {
        u64::from(self.ring_bytes / 4)
    }
}

impl Default for TracerOptions {
    fn default() -> Self {
        Self {
            filters: Filters::default(),
            ring_bytes: abi::DEFAULT_RING_BYTES,
            max_sockets: None,
            timewait_hooks: false,
            stream: abi::StreamSet::empty(),
        }
    }
}

/// How often the reader drains the ring buffer without being woken.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// One ring-buffer record, decoded.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Transition(Transition),
    /// An exact timewait hook fired.
    Timewait(TwHook),
}

pub struct Tracer {
    // Field order is drop order: the ring and logger go before the Ebpf,
    // whose drop detaches the programs.
    ring: RingBuf<MapData>,
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
    ebpf: Ebpf,
    hooks: Hooks,
    /// Whether the kernel aggregates (summary mode).
    summary: bool,
    /// The socket table's capacity.
    max_sockets: u32,
    received: u64,
    malformed: u64,
}

impl Tracer {
    /// Checks the system, loads the program with the record layout of the
    /// running kernel, and attaches it.
    pub fn start(opts: &TracerOptions) -> anyhow::Result<Self> {
        preflight::check_kernel()?;
        preflight::check_capabilities()?;
        let tracefs = tracefs::tracefs_root()?;
        let offsets = tracefs::read_offsets(&tracefs)?;
        // Each socket's network namespace, for following timewait sockets
        // in the right one; without BTF, sockets count as this namespace's.
        let kernel = super::btf::kernel().map_err(|e| log::info!("socket namespaces unknown: {e:#}")).ok();
        let config = abi::Config {
            wakeup_bytes: opts.wakeup_bytes(),
            sock: kernel.map(|k| k.sock).unwrap_or_default(),
            tw: kernel.and_then(|k| k.tw.clone().ok()).unwrap_or_default(),
            stream: opts.stream.bits(),
            cgroups: opts.filters.cgroups.len() as u8,
            _pad: [0; 2],
            offsets,
            family: match opts.filters.family {
                None => abi::FAMILY_ANY,
                Some(Family::Ipv4) => abi::FAMILY_IPV4,
                Some(Family::Ipv6) => abi::FAMILY_IPV6,
            },
            filters: opts.filters.set().bits(),
        };
        let max_sockets = opts.max_sockets.unwrap_or_else(|| {
            let now = super::procnet::tcp_sockets_allocated();
            let chosen = TracerOptions::default_max_sockets(now);
            let now = now.map_or("unknown".into(), |n| n.to_string());
            log::info!("socket table: {chosen} entries (TCP sockets on the host at start: {now})");
            chosen
        });
        // Before load, so that the table of owners found at start is sized
        // to them (a preallocated hash: 65536 entries would cost ~7 MiB).
        let owners_at_start = super::start_owners::scan(&opts.filters.cgroups);
        let owner_slots = (owners_at_start.sockets.len() as u32).clamp(1, abi::MAX_OWNERS_AT_START);
        let mut ebpf = EbpfLoader::new()
            // A plain tracepoint needs no kernel BTF; don't parse it.
            .btf(None)
            .override_global(abi::GLOBAL_CONFIG, &config, true)
            .map_max_entries(abi::MAP_EVENTS, opts.ring_bytes)
            .map_max_entries(abi::MAP_SOCKETS, max_sockets)
            .map_max_entries(abi::MAP_OWNERS_AT_START, owner_slots)
            .load(EBPF_OBJECT)
            .context("loading the eBPF object")?;
        let logger = match EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                log::warn!("eBPF-side logging is off: {e}");
                None
            }
        };
        program(&mut ebpf)?.load().context("loading the eBPF program")?;
        // After load (which needs the maps' fds) and before attach, so that
        // no event is seen unfiltered.
        fill_filter_maps(&mut ebpf, &opts.filters)?;
        // Also before attach: a socket from before the start is looked up
        // once, when the program first sees it.
        seed_owners(&mut ebpf, &owners_at_start)?;
        // The hooks first: a handover must never reach userspace before
        // the hook that made its timewait socket.
        let hooks = if opts.timewait_hooks { hooks::attach(&mut ebpf, kernel) } else { Hooks::default() };
        for failure in hooks.failures() {
            // aya's message repeats the errno after the (empty) verifier log.
            let failure = failure.split(". Verifier output").next().unwrap_or_default();
            log::info!("exact timewait hook not attached: {failure}");
        }
        program(&mut ebpf)?
            .attach(tracefs::TRACEPOINT_CATEGORY, tracefs::TRACEPOINT_NAME)
            .context("attaching to sock:inet_sock_set_state")?;
        let ring = RingBuf::try_from(
            ebpf.take_map(abi::MAP_EVENTS).ok_or_else(|| anyhow!("map {} missing", abi::MAP_EVENTS))?,
        )?;
        Ok(Self {
            ring,
            logger,
            ebpf,
            hooks,
            summary: opts.stream.contains(abi::StreamSet::SUMMARY),
            max_sockets,
            received: 0,
            malformed: 0,
        })
    }

    /// The exact timewait hooks, as attached at start.
    pub fn hooks(&self) -> &Hooks {
        &self.hooks
    }

    /// The ring buffer's fd, to wait on for readiness.
    pub fn ring_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// Hands every waiting record to `on`, in the kernel's order, stopping
    /// at its first error.
    pub fn drain<E>(&mut self, mut on: impl FnMut(Record) -> Result<(), E>) -> Result<u64, E> {
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            let decoded = decode(&self.hooks, &item);
            drop(item);
            n += 1;
            self.received += 1;
            match decoded {
                Some(record) => on(record)?,
                None => self.malformed += 1,
            }
        }
        Ok(n)
    }

    /// Like [`Tracer::drain`], for the transitions only.
    #[cfg(feature = "test-support")]
    pub fn drain_transitions<E>(
        &mut self,
        mut on: impl FnMut(Transition) -> Result<(), E>,
    ) -> Result<u64, E> {
        self.drain(|r| match r {
            Record::Transition(t) => on(t),
            Record::Timewait(_) => Ok(()),
        })
    }

    /// Sockets in the kernel's socket table now.
    fn sockets_in_kernel(&self) -> anyhow::Result<usize> {
        let map =
            self.ebpf.map(abi::MAP_SOCKETS).ok_or_else(|| anyhow!("map {} missing", abi::MAP_SOCKETS))?;
        let table: HashMap<_, u64, abi::SockRecord> = HashMap::try_from(map)?;
        Ok(table.keys().filter(Result::is_ok).count())
    }

    /// Overwrites the state the socket table last saw for `skaddr`, so that
    /// the table disagrees with the kernel as after a skipped hit.
    #[cfg(feature = "test-support")]
    pub fn forget_transition(&mut self, skaddr: u64, seen: TcpState) -> anyhow::Result<()> {
        let map =
            self.ebpf.map_mut(abi::MAP_SOCKETS).ok_or_else(|| anyhow!("map {} missing", abi::MAP_SOCKETS))?;
        let mut table: HashMap<_, u64, abi::SockRecord> = HashMap::try_from(map)?;
        let mut record = table.get(&skaddr, 0)?;
        record.state = seen.0;
        table.insert(skaddr, record, 0)?;
        Ok(())
    }

    /// Summary mode's histograms and gauges, summed over the CPUs.
    fn kernel_summary(&self) -> anyhow::Result<KernelSummary> {
        let map = |name: &str| self.ebpf.map(name).ok_or_else(|| anyhow!("map {name} missing"));
        let times: PerCpuArray<_, abi::StateTime> = PerCpuArray::try_from(map(abi::MAP_STATE_TIME)?)?;
        let gauges: PerCpuArray<_, u64> = PerCpuArray::try_from(map(abi::MAP_GAUGES)?)?;
        let mut summary = KernelSummary {
            state_time: vec![StateHistogram::default(); abi::TCP_STATE_COUNT],
            gauges: [0; abi::TCP_STATE_COUNT],
        };
        for state in 0..abi::TCP_STATE_COUNT {
            let out = &mut summary.state_time[state];
            for cpu in times.get(&(state as u32), 0)?.iter() {
                for (sum, n) in out.buckets.iter_mut().zip(cpu.buckets) {
                    *sum += n;
                }
                if cpu.min_ns != 0 && (out.min_ns == 0 || cpu.min_ns < out.min_ns) {
                    out.min_ns = cpu.min_ns;
                }
                out.max_ns = out.max_ns.max(cpu.max_ns);
                out.sum_ns = out.sum_ns.wrapping_add(cpu.sum_ns);
            }
            // Per-CPU deltas: a socket may enter a state on one CPU and leave it on another.
            let level = gauges.get(&(state as u32), 0)?.iter().fold(0u64, |acc, d| acc.wrapping_add(*d));
            summary.gauges[state] = level as i64;
        }
        Ok(summary)
    }

    pub fn counters(&self) -> anyhow::Result<KernelCounters> {
        let map = |name: &str| self.ebpf.map(name).ok_or_else(|| anyhow!("map {name} missing"));
        let transitions: PerCpuArray<_, u64> = PerCpuArray::try_from(map(abi::MAP_TRANSITIONS)?)?;
        let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(map(abi::MAP_COUNTERS)?)?;
        let sum = |array: &PerCpuArray<&MapData, u64>, index: u32| -> anyhow::Result<u64> {
            Ok(array.get(&index, 0)?.iter().sum())
        };
        let mut out = KernelCounters::default();
        for old in 0..abi::TRANSITION_STRIDE as u8 {
            for new in 0..abi::TRANSITION_STRIDE as u8 {
                let n = sum(&transitions, abi::transition_index(old, new))?;
                if n > 0 {
                    out.transitions.insert((TcpState(old), TcpState(new)), n);
                }
            }
        }
        out.ringbuf_full = sum(&counters, abi::COUNTER_RINGBUF_FULL)?;
        out.socket_insert_failed = sum(&counters, abi::COUNTER_SOCKET_INSERT_FAILED)?;
        out.read_failed = sum(&counters, abi::COUNTER_READ_FAILED)?;
        out.sockets_with_gaps = sum(&counters, abi::COUNTER_SOCKETS_WITH_GAPS)?;
        // In this order, sockets added or removed while the table is counted
        // can only make the eviction count low, never invent one.
        let inserted = sum(&counters, abi::COUNTER_SOCKETS_INSERTED)?;
        out.sockets_in_table = self.sockets_in_kernel()? as u64;
        let removed = sum(&counters, abi::COUNTER_SOCKETS_REMOVED)?;
        out.sockets_evicted = inserted.saturating_sub(removed).saturating_sub(out.sockets_in_table);
        out.socket_table_capacity = u64::from(self.max_sockets);
        out.received = self.received;
        out.malformed = self.malformed;
        if self.summary {
            out.summary = Some(self.kernel_summary()?);
        }
        let program: &TracePoint =
            self.ebpf.program(abi::PROGRAM_NAME).ok_or_else(|| anyhow!("program missing"))?.try_into()?;
        out.recursion_misses = recursion_misses(program.fd()?.as_fd()).ok();
        Ok(out)
    }
}

/// Decodes a ring record by its kind byte.
fn decode(hooks: &Hooks, bytes: &[u8]) -> Option<Record> {
    match abi::Record::decode(bytes)? {
        abi::Record::Transition(raw) => Some(Record::Transition(Transition::from_raw(&raw))),
        abi::Record::TimewaitHook(raw) => {
            TwHook::from_raw(&raw, hooks.jiffies_ns(raw.timeo)).map(Record::Timewait)
        }
    }
}

/// Attaches only the empty program: what any program on this tracepoint
/// costs. For the benchmark; detached when the returned object drops.
#[cfg(feature = "test-support")]
pub fn attach_noop() -> anyhow::Result<Ebpf> {
    let tracefs = tracefs::tracefs_root()?;
    let config = abi::Config { offsets: tracefs::read_offsets(&tracefs)?, ..abi::Config::zeroed() };
    let mut ebpf = EbpfLoader::new()
        .btf(None)
        .override_global(abi::GLOBAL_CONFIG, &config, true)
        .map_max_entries(abi::MAP_EVENTS, 4096)
        .load(EBPF_OBJECT)?;
    let noop: &mut TracePoint = ebpf
        .program_mut(abi::NOOP_PROGRAM_NAME)
        .ok_or_else(|| anyhow!("program {} missing", abi::NOOP_PROGRAM_NAME))?
        .try_into()?;
    noop.load()?;
    noop.attach(tracefs::TRACEPOINT_CATEGORY, tracefs::TRACEPOINT_NAME)?;
    Ok(ebpf)
}

fn program(ebpf: &mut Ebpf) -> anyhow::Result<&mut TracePoint> {
    let p = ebpf
        .program_mut(abi::PROGRAM_NAME)
        .ok_or_else(|| anyhow!("program {} missing from the object", abi::PROGRAM_NAME))?;
    Ok(p.try_into()?)
}

fn fill_filter_maps(ebpf: &mut Ebpf, filters: &Filters) -> anyhow::Result<()> {
    // Borrowed, not taken: the timewait hooks load later and need the maps'
    // fds still open.
    fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
        ebpf.map_mut(name).ok_or_else(|| anyhow!("map {name} missing"))
    }
    let mut ports: aya::maps::Array<_, u8> = aya::maps::Array::try_from(map(ebpf, abi::MAP_PORTS)?)?;
    for (port, roles) in filters.port_roles() {
        ports.set(u32::from(port), roles.bits(), 0)?;
    }
    let mut namespaces: HashMap<_, u32, u8> = HashMap::try_from(map(ebpf, abi::MAP_NAMESPACES)?)?;
    for &netns in &filters.namespaces {
        namespaces.insert(netns, 1, 0)?;
    }
    let mut pids: HashMap<_, u32, u8> = HashMap::try_from(map(ebpf, abi::MAP_PIDS)?)?;
    for &pid in &filters.pids {
        pids.insert(pid, 1, 0)?;
    }
    let mut comms: HashMap<_, [u8; 16], u8> = HashMap::try_from(map(ebpf, abi::MAP_COMMS)?)?;
    for comm in &filters.comms {
        comms.insert(Comm::from(comm.as_str()).raw(), 1, 0)?;
    }
    let aya::maps::Map::CgroupArray(cgroups) = map(ebpf, abi::MAP_CGROUPS)? else {
        return Err(anyhow!("map {} is not a cgroup array", abi::MAP_CGROUPS));
    };
    for (slot, dir) in filters.cgroups.iter().enumerate() {
        let dir = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        set_cgroup(cgroups.fd().as_fd(), slot as u32, dir.as_fd())
            .with_context(|| format!("selecting cgroup {}", filters.cgroups[slot].display()))?;
    }
    Ok(())
}

/// Writes the owners found at start into the listener table (without
/// replacing one the program wrote) and the table of sockets by cookie.
fn seed_owners(ebpf: &mut Ebpf, found: &StartOwners) -> anyhow::Result<()> {
    fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
        ebpf.map_mut(name).ok_or_else(|| anyhow!("map {name} missing"))
    }
    let mut listeners: HashMap<_, abi::ListenerKey, abi::Owner> =
        HashMap::try_from(map(ebpf, abi::MAP_LISTENERS)?)?;
    for (key, owner) in found.listeners.iter().take(abi::MAX_LISTENERS as usize) {
        // Two processes sharing a listener (a forking server): the first.
        let _ = listeners.insert(key, owner, u64::from(aya_obj::generated::BPF_NOEXIST));
    }
    let mut sockets: HashMap<_, u64, abi::Owner> = HashMap::try_from(map(ebpf, abi::MAP_OWNERS_AT_START)?)?;
    for (cookie, owner) in found.sockets.iter().take(abi::MAX_OWNERS_AT_START as usize) {
        // Full: the rest stay unowned, as without the scan.
        let _ = sockets.insert(cookie, owner, 0);
    }
    Ok(())
}

/// Puts a cgroup directory's fd in a cgroup array's slot. aya 0.14 has no
/// typed cgroup array for userspace, so this is the map update itself.
fn set_cgroup(map: BorrowedFd<'_>, slot: u32, dir: BorrowedFd<'_>) -> std::io::Result<()> {
    /// The `BPF_MAP_*_ELEM` member of `union bpf_attr`.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    let fd = dir.as_raw_fd() as u32;
    let attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(&slot) as u64,
        value: std::ptr::from_ref(&fd) as u64,
        flags: 0,
    };
    // SAFETY: attr points at a valid key and value that outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_ELEM, &attr, size_of::<ElemAttr>()) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Tracepoint hits the kernel skipped because another BPF program was
/// running on the same CPU (`bpf_prog_info.recursion_misses`, Linux 5.12+).
/// aya 0.14's ProgramInfo does not expose it, so ask the kernel directly.
fn recursion_misses(fd: BorrowedFd<'_>) -> std::io::Result<u64> {
    /// The `info` member of `union bpf_attr`, for BPF_OBJ_GET_INFO_BY_FD.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: bpf_prog_info is plain integers; zero is a valid value.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of_val(&info) as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: attr and info outlive the call; sizes are passed exactly.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            aya_obj::generated::bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &raw mut attr,
            size_of::<InfoAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.recursion_misses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_table_default_grows_with_the_host() {
        let size = TracerOptions::default_max_sockets;
        assert_eq!(size(None), 65536);
        assert_eq!(size(Some(100)), 65536);
        assert_eq!(size(Some(40_000)), 131_072);
        assert_eq!(size(Some(u64::MAX)), 16 << 20);
    }
}
