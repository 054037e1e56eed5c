//! Follows every TCP socket through its transitions in a socket table,
//! attributes each to the process that owns it, and streams the transitions
//! that pass the filters to userspace. See docs/ARCHITECTURE.md.

use aya_ebpf::{
    EbpfContext as _, Global,
    bindings::{
        BPF_ANY, BPF_F_NO_COMMON_LRU, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
    },
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
    },
    macros::{fentry, map, tracepoint},
    maps::{Array, CgroupArray, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{FEntryContext, TracePointContext},
};
use aya_log_ebpf::warn;
use tcpstate_ebpf::*;

#[unsafe(no_mangle)]
static CONFIG: Global<Config> = Global::new(Config::zeroed());

// Sizes here are defaults; userspace resizes EVENTS, SOCKETS and
// OWNERS_AT_START at load.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map]
static SOCKETS: LruHashMap<u64, SockRecord> = LruHashMap::with_max_entries(65536, BPF_F_NO_COMMON_LRU);
/// Listening socket (namespace, port, address) → owner, so that accepted
/// children get an owner before they reach a process-context transition.
/// Userspace seeds it with the listeners that existed at start.
#[map]
static LISTENERS: LruHashMap<ListenerKey, Owner> = LruHashMap::with_max_entries(MAX_LISTENERS, 0);
/// Socket cookie → owner, for the sockets that existed at start, written
/// by userspace before attach (which sizes it to them); looked up once per
/// such socket.
#[map]
static OWNERS_AT_START: HashMap<u64, Owner> = HashMap::with_max_entries(1, 0);
#[map]
static TRANSITIONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TRANSITION_SLOTS, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);
/// Per-CPU copy of the tracepoint record: one probe read per event instead
/// of one per field.
#[map]
static RECORD: PerCpuArray<[u8; RECORD_SCRATCH_LEN]> = PerCpuArray::with_max_entries(1, 0);
/// The socket's record while the program works on it: here, not on the
/// 512-byte stack, which 6.1's verifier finds too deep otherwise.
#[map]
static SCRATCH: PerCpuArray<SockRecord> = PerCpuArray::with_max_entries(1, 0);
/// Port → its `PortRoles`: an array, one byte per port, so that a range of
/// ports is as cheap as one.
#[map]
static PORTS: Array<u8> = Array::with_max_entries(PORT_SLOTS, 0);
/// `--netns`: the namespaces (inodes) to report.
#[map]
static NAMESPACES: HashMap<u32, u8> = HashMap::with_max_entries(MAX_NAMESPACES, 0);
#[map]
static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);
#[map]
static COMMS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(64, 0);
/// `--cgroup`: the cgroups an owner must be under (userspace writes their
/// directories' fds); the first `Config::cgroups` slots are in use.
#[map]
static CGROUPS: CgroupArray = CgroupArray::with_max_entries(MAX_CGROUPS, 0);
/// Summary mode: time spent in each state, by the state left.
#[map]
static STATE_TIME: PerCpuArray<StateTime> = PerCpuArray::with_max_entries(TCP_STATE_COUNT as u32, 0);
/// Summary mode: sockets in each state now, as per-CPU deltas (wrapping;
/// userspace sums them).
#[map]
static GAUGES: PerCpuArray<u64> = PerCpuArray::with_max_entries(TCP_STATE_COUNT as u32, 0);

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    if handle(&ctx).is_err() {
        bump(&COUNTERS, COUNTER_READ_FAILED);
    }
    0
}

/// Does nothing: the benchmark's floor, the cost of any program on this
/// tracepoint.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn noop(_ctx: TracePointContext) -> u32 {
    0
}

/// The record, copied once into the per-CPU scratch buffer.
struct Record(*const u8);

impl Record {
    #[inline(always)]
    fn copy(ctx: &TracePointContext, len: u16) -> Result<Self, i32> {
        let buf = RECORD.get_ptr_mut(0).ok_or(-1)?;
        // SAFETY: a valid per-CPU map value of RECORD_SCRATCH_LEN bytes; the
        // length is masked below that, and the helper faults safely.
        unsafe {
            let dst = &mut *buf;
            let len = (len & RECORD_OFFSET_MASK) as usize;
            bpf_probe_read_kernel_buf(ctx.as_ptr() as *const u8, &mut dst[..len])?;
            Ok(Self(dst.as_ptr()))
        }
    }

    /// The field at `offset` (from the format file). The mask keeps the
    /// read inside the scratch buffer, which the verifier checks.
    #[inline(always)]
    fn get<T: Copy>(&self, offset: u16) -> T {
        let offset = (offset & RECORD_OFFSET_MASK) as usize;
        // SAFETY: offset + size_of::<T>() <= 127 + 16 < RECORD_SCRATCH_LEN.
        unsafe { core::ptr::read_unaligned(self.0.add(offset).cast::<T>()) }
    }
}

#[inline(always)]
fn bump(array: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = array.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; the program cannot nest on one CPU.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff
}

/// The `-4`/`-6` filter; a v4-mapped IPv6 socket counts as IPv4.
#[inline(always)]
fn family_selected(wanted: u8, family: u16, daddr: &[u8; 16]) -> bool {
    if wanted == FAMILY_ANY {
        return true;
    }
    let is_v4 = family == AF_INET || is_v4_mapped(daddr);
    (wanted == FAMILY_IPV4) == is_v4
}

#[inline(always)]
fn handle(ctx: &TracePointContext) -> Result<(), i32> {
    let cfg = CONFIG.load();
    let off = cfg.offsets;
    let record = Record::copy(ctx, off.record_len)?;
    let protocol = if off.protocol_size == 1 {
        record.get::<u8>(off.protocol) as u16
    } else {
        record.get::<u16>(off.protocol)
    };
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let family = record.get::<u16>(off.family);
    let daddr = record.get::<[u8; 16]>(off.daddr_v6);
    if !family_selected(cfg.family, family, &daddr) {
        return Ok(());
    }
    let skaddr = record.get::<u64>(off.skaddr);
    let old = record.get::<i32>(off.oldstate) as u8;
    let new = record.get::<i32>(off.newstate) as u8;
    let sport = record.get::<u16>(off.sport);
    let dport = record.get::<u16>(off.dport);
    // Why a socket closed: a reset or a timeout leaves its errno.
    let error = if new == TCP_CLOSE { error_of(skaddr, cfg.sock) } else { 0 };
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };

    let new_life = starts_new_socket(old, new);
    // Updated in place: a map update per event costs more than the rest of
    // the program. Events for one socket are serialised by its lock.
    let slot = if new_life { None } else { SOCKETS.get_ptr_mut(skaddr) };
    // One copy of the record on the stack, not two: the 512-byte stack is
    // nearly full, and 6.1's verifier counts it strictly.
    let known = slot.is_some();
    // SAFETY: a valid map value pointer, read once.
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else { return Ok(()) };
    // SAFETY: this CPU's slot; the program does not nest on one CPU.
    let rec = unsafe { &mut *scratch };
    *rec = match slot {
        // SAFETY: a valid map value pointer, read once.
        Some(p) => unsafe { *p },
        None => SockRecord {
            first_seen_ns: now,
            last_change_ns: now,
            comm: [0; 16],
            cgroup_id: 0,
            pid: 0,
            netns: netns_of(skaddr, cfg.sock),
            close: CLOSE_UNKNOWN,
            flags: match (new_life, old, new) {
                (true, TCP_CLOSE, TCP_SYN_SENT) => FLAG_FROM_START | FLAG_CONNECTED,
                (true, ..) => FLAG_FROM_START,
                _ => 0,
            },
            state: old,
            _pad: 0,
            sport,
            dport,
        },
    };
    if !known && !new_life {
        // A socket from before the program: its owner, if the scan at
        // start found it.
        // SAFETY: read-only copy of a small value.
        if let Some(owner) = unsafe { OWNERS_AT_START.get(cookie_of(skaddr, cfg.sock)) } {
            lend_owner(rec, owner);
        }
    }
    // The kernel skips tracepoint hits under load (docs/ARCHITECTURE.md,
    // "Lost transitions"): a socket leaving a state other than the one the
    // table saw it enter has missed transitions, so its time in `old` is
    // unknown.
    let gap = known && missed_transitions(rec.state, old);
    let in_old_state_ns =
        if known && !gap { now.saturating_sub(rec.last_change_ns) } else { DURATION_UNKNOWN };
    let last_state = rec.state;
    let first_gap = gap && rec.flags & FLAG_HAD_GAP == 0;
    if gap {
        rec.flags |= FLAG_HAD_GAP;
    }

    // BPF subprograms take at most five arguments: pairs go packed.
    attribute_owner(
        rec,
        u16::from_be_bytes([old, new]),
        sport,
        &record.get::<[u8; 16]>(off.saddr_v6),
        u16::from_be_bytes([cfg.filters, cfg.cgroups]),
    );
    rec.close = close_side_after(rec.close, old, new);
    rec.last_change_ns = now;
    rec.state = new;
    (rec.sport, rec.dport) = (sport, dport);

    match slot {
        Some(_) if new == TCP_CLOSE => {
            if SOCKETS.remove(skaddr).is_ok() {
                bump(&COUNTERS, COUNTER_SOCKETS_REMOVED);
            }
        }
        // SAFETY: the same valid map value pointer.
        Some(p) => unsafe { *p = *rec },
        None if new == TCP_CLOSE => {}
        None => remember(ctx, cfg.filters, skaddr, rec, new_life),
    }

    if cfg.filters != 0 && !selected(cfg.filters, sport, dport, rec) {
        return Ok(());
    }
    if first_gap {
        bump(&COUNTERS, COUNTER_SOCKETS_WITH_GAPS);
    }
    bump(&TRANSITIONS, transition_index(old, new));
    if cfg.stream & STREAM_SUMMARY != 0 {
        let left = known.then_some(last_state);
        summarize(cfg.stream, u16::from_be_bytes([old, new]), left, in_old_state_ns, rec.close, error);
        if !streamed(cfg.stream, old, new) {
            return Ok(());
        }
    }

    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        bump(&COUNTERS, COUNTER_RINGBUF_FULL);
        return Ok(());
    };
    // Written field by field into the ring's memory: a whole `Event` built
    // first would take 112 bytes of the 512-byte stack, which 6.1's
    // verifier then finds too deep.
    let e = entry.as_mut_ptr();
    // SAFETY: `e` is the reserved record, exclusively ours until submit;
    // every field is written (plain integers, no drop) before it is.
    unsafe {
        (*e).kind = RECORD_TRANSITION;
        (*e).oldstate = old;
        (*e).newstate = new;
        (*e).close = rec.close;
        (*e).flags = if gap { rec.flags | FLAG_GAP } else { rec.flags };
        (*e).last_state = last_state;
        (*e).family = family;
        (*e).ts_ns = now;
        (*e).skaddr = skaddr;
        (*e).in_old_state_ns = in_old_state_ns;
        (*e).first_seen_ns = rec.first_seen_ns;
        (*e).saddr = record.get::<[u8; 16]>(off.saddr_v6);
        (*e).daddr = daddr;
        (*e).comm = rec.comm;
        (*e).cgroup_id = rec.cgroup_id;
        (*e).pid = rec.pid;
        (*e).netns = rec.netns;
        (*e).sport = sport;
        (*e).dport = dport;
        (*e).error = error;
        (*e)._pad = [0; 3];
    }
    // Waking the reader costs more than the rest of the program, so wake it
    // only once a batch is waiting; it also drains on a timer.
    let wakeup = match cfg.wakeup_bytes {
        0 => 0,
        threshold if EVENTS.query(BPF_RB_AVAIL_DATA.into()) >= threshold => BPF_RB_FORCE_WAKEUP.into(),
        _ => BPF_RB_NO_WAKEUP.into(),
    };
    entry.submit(wakeup);
    Ok(())
}

// ---------------------------------------------------------------------------
// Exact timewait hooks. Loaded only where the kernel allows fentry; each
// reports the timewait socket's 4-tuple, which userspace matches with the
// full socket's handover on the tracepoint.
// ---------------------------------------------------------------------------

/// `__inet_twsk_schedule(tw, timeo, rearm)`: made, or its timer restarted.
#[fentry(function = "__inet_twsk_schedule")]
pub fn tw_schedule(ctx: FEntryContext) -> u32 {
    let tw: u64 = ctx.arg(0);
    let timeo: i32 = ctx.arg(1);
    let rearm: u8 = ctx.arg(2);
    let hook = if rearm != 0 { TW_HOOK_RESCHEDULE } else { TW_HOOK_SCHEDULE };
    report_timewait(tw, hook, timeo as u32);
    0
}

/// `tw_timer_handler(timer)`: the timer, inside the timewait socket, fired.
#[fentry(function = "tw_timer_handler")]
pub fn tw_expire(ctx: FEntryContext) -> u32 {
    let timer: u64 = ctx.arg(0);
    report_timewait(timer - u64::from(CONFIG.load().tw.timer), TW_HOOK_EXPIRE, 0);
    0
}

/// `inet_twsk_deschedule_put(tw)`: ended before its timer.
#[fentry(function = "inet_twsk_deschedule_put")]
pub fn tw_deschedule(ctx: FEntryContext) -> u32 {
    let tw: u64 = ctx.arg(0);
    report_timewait(tw, TW_HOOK_DESCHEDULE, 0);
    0
}

#[inline(always)]
fn read<T>(addr: u64) -> T
where
    T: Default,
{
    // SAFETY: the fault-safe helper; a failed read gives the default.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.unwrap_or_default()
}

#[inline(always)]
fn report_timewait(tw: u64, hook: u8, timeo: u32) {
    let cfg = CONFIG.load();
    let off = cfg.tw;
    let family: u16 = read(tw + u64::from(off.family));
    let (saddr, daddr) = if family == AF_INET {
        (v4_mapped(read(tw + u64::from(off.rcv_saddr))), v4_mapped(read(tw + u64::from(off.daddr))))
    } else {
        (read(tw + u64::from(off.v6_rcv_saddr)), read(tw + u64::from(off.v6_daddr)))
    };
    if !family_selected(cfg.family, family, &daddr) {
        return;
    }
    let sport: u16 = read(tw + u64::from(off.num));
    let dport = u16::from_be(read(tw + u64::from(off.dport)));
    // The owner filters need the full socket, which is gone: userspace
    // drops timewait sockets whose handover it did not see.
    let socket_filters = cfg.filters & (FILTER_LPORT | FILTER_RPORT | FILTER_PORT | FILTER_NETNS);
    let netns = netns_of(tw, cfg.sock);
    if socket_filters != 0 {
        let rec = SockRecord { flags: FLAG_OWNER_KNOWN, netns, ..SockRecord::default() };
        if !selected(socket_filters, sport, dport, &rec) {
            return;
        }
    }
    let Some(mut entry) = EVENTS.reserve::<TwHookEvent>(0) else {
        bump(&COUNTERS, COUNTER_RINGBUF_FULL);
        return;
    };
    entry.write(TwHookEvent {
        kind: RECORD_TIMEWAIT_HOOK,
        // SAFETY: a plain helper call.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        twaddr: tw,
        saddr,
        daddr,
        netns,
        timeo,
        sport,
        dport,
        family,
        hook,
        substate: read(tw + u64::from(off.substate)),
        _pad0: 0,
        _pad: [0; 6],
    });
    // Rare next to transitions: leave the wakeup to the transitions' policy.
    entry.submit(BPF_RB_NO_WAKEUP.into());
}

#[inline(always)]
fn v4_mapped(addr: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3]]
}

/// Adds a socket to the table. A new life normally finds no record at its
/// address; one that does follows a socket whose CLOSE was not seen, and
/// replaces that record. That is a loss, except for a child still in
/// SYN_RECV: the kernel frees a duplicate child without a transition when
/// another CPU completed the same connection request first
/// (docs/ARCHITECTURE.md, "Lost transitions").
#[inline(always)]
fn remember(ctx: &TracePointContext, filters: u8, skaddr: u64, rec: &SockRecord, new_life: bool) {
    let flags = if new_life { BPF_NOEXIST } else { BPF_ANY };
    match SOCKETS.insert(skaddr, rec, flags.into()) {
        Ok(()) => bump(&COUNTERS, COUNTER_SOCKETS_INSERTED),
        Err(EEXIST) if new_life => {
            // SAFETY: read-only copy of a map value.
            let stale = unsafe { SOCKETS.get(skaddr) }.copied();
            if SOCKETS.insert(skaddr, rec, BPF_ANY.into()).is_err() {
                bump(&COUNTERS, COUNTER_SOCKET_INSERT_FAILED);
            }
            if let Some(stale) = stale
                && stale.state != TCP_SYN_RECV
                && (filters == 0 || selected(filters, stale.sport, stale.dport, &stale))
            {
                bump(&COUNTERS, COUNTER_SOCKETS_WITH_GAPS);
            }
        }
        Err(_) => {
            bump(&COUNTERS, COUNTER_SOCKET_INSERT_FAILED);
            warn!(ctx, "socket table insert failed for skaddr {:x}", skaddr);
        }
    }
}

/// What a map update returns when `BPF_NOEXIST` finds the key.
const EEXIST: i32 = -17;

/// Summary mode: the time in `old` into its histogram, and the gauges.
/// `left` is the state the table last saw the socket in (`None` for a
/// socket not followed until now): its gauge is the one to take back, even
/// when transitions were missed since.
#[inline(always)]
fn summarize(stream: u8, transition: u16, left: Option<u8>, in_old_state_ns: u64, close: u8, error: u8) {
    let [old, new] = transition.to_be_bytes();
    let known = left.is_some();
    let deferred = stream & STREAM_DEFER_HANDOVER != 0
        && old == TCP_FIN_WAIT2
        && hands_over_to_timewait(old, new, close, error);
    if known
        && in_old_state_ns != DURATION_UNKNOWN
        && !deferred
        && let Some(time) = STATE_TIME.get_ptr_mut(u32::from(old))
    {
        // SAFETY: a per-CPU slot; the program cannot nest on one CPU.
        let time = unsafe { &mut *time };
        if let Some(bucket) = time.buckets.get_mut(hist_bucket(in_old_state_ns)) {
            *bucket += 1;
        }
        let ns = in_old_state_ns.max(1);
        if time.min_ns == 0 || ns < time.min_ns {
            time.min_ns = ns;
        }
        if ns > time.max_ns {
            time.max_ns = ns;
        }
        time.sum_ns = time.sum_ns.wrapping_add(in_old_state_ns);
    }
    if let Some(left) = left
        && let Some(gauge) = GAUGES.get_ptr_mut(u32::from(left))
    {
        // SAFETY: as above.
        unsafe { *gauge = (*gauge).wrapping_sub(1) };
    }
    if new != TCP_CLOSE
        && let Some(gauge) = GAUGES.get_ptr_mut(u32::from(new))
    {
        // SAFETY: as above.
        unsafe { *gauge = (*gauge).wrapping_add(1) };
    }
}

/// The inode of the socket's network namespace, read once per socket
/// through offsets from BTF; 0 when they are unknown or a read fails.
#[inline(always)]
fn netns_of(skaddr: u64, sock: SockOffsets) -> u32 {
    if sock.net == 0 || sock.net_inum == 0 {
        return 0;
    }
    // SAFETY: kernel addresses read through the fault-safe helper.
    unsafe {
        let Ok(net) = bpf_probe_read_kernel((skaddr + u64::from(sock.net)) as *const u64) else { return 0 };
        bpf_probe_read_kernel((net + u64::from(sock.net_inum)) as *const u32).unwrap_or(0)
    }
}

/// The filters, all of which must hold. The owner filters look at the
/// attributed owner, never at the task that happens to be current.
#[inline(always)]
fn selected(filters: u8, sport: u16, dport: u16, rec: &SockRecord) -> bool {
    if filters & (FILTER_LPORT | FILTER_RPORT | FILTER_PORT) != 0 {
        let local = PORTS.get(u32::from(sport)).copied().unwrap_or(0);
        let remote = PORTS.get(u32::from(dport)).copied().unwrap_or(0);
        if filters & FILTER_LPORT != 0 && local & PORT_AS_LOCAL == 0 {
            return false;
        }
        if filters & FILTER_RPORT != 0 && remote & PORT_AS_REMOTE == 0 {
            return false;
        }
        if filters & FILTER_PORT != 0 && (local | remote) & PORT_AS_EITHER == 0 {
            return false;
        }
    }
    // SAFETY: a read-only lookup.
    if filters & FILTER_NETNS != 0 && unsafe { NAMESPACES.get(rec.netns) }.is_none() {
        return false;
    }
    let owner_known = rec.flags & FLAG_OWNER_KNOWN != 0;
    // SAFETY: read-only lookups.
    if filters & FILTER_PID != 0 && !(owner_known && unsafe { PIDS.get(rec.pid) }.is_some()) {
        return false;
    }
    if filters & FILTER_COMM != 0 && !(owner_known && unsafe { COMMS.get(rec.comm) }.is_some()) {
        return false;
    }
    if filters & FILTER_CGROUP != 0 && !(owner_known && rec.flags & FLAG_OWNER_IN_CGROUP != 0) {
        return false;
    }
    true
}

/// Records the socket's owner where it is known (docs/ARCHITECTURE.md,
/// "Owners"), and keeps the listener table.
#[inline(always)]
fn attribute_owner(rec: &mut SockRecord, transition: u16, sport: u16, saddr: &[u8; 16], selection: u16) {
    let [old, new] = transition.to_be_bytes();
    let [filters, cgroups] = selection.to_be_bytes();
    if owner_is_current(old, new) {
        rec.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
        rec.comm = bpf_get_current_comm().unwrap_or([0; 16]);
        // SAFETY: a plain helper call; the cgroup v2 (default hierarchy) id.
        rec.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        rec.flags = (rec.flags | FLAG_OWNER_KNOWN)
            & !(FLAG_OWNER_FROM_LISTENER | FLAG_OWNER_IN_CGROUP | FLAG_OWNER_AT_START);
        if filters & FILTER_CGROUP != 0 && in_selected_cgroup(cgroups) {
            rec.flags |= FLAG_OWNER_IN_CGROUP;
        }
    }
    let mut key = ListenerKey { netns: rec.netns, port: sport, _pad: 0, addr: *saddr };
    if is_accepted_child(old, new) {
        // The listener bound to the child's address, else the wildcard of
        // its family, else the IPv6 wildcard (which takes IPv4 too).
        // SAFETY: read-only copies of small values.
        let mut owner = unsafe { LISTENERS.get(key) };
        if owner.is_none() && is_v4_mapped(saddr) {
            key.addr = V4_MAPPED_ANY;
            owner = unsafe { LISTENERS.get(key) };
        }
        if owner.is_none() {
            key.addr = [0; 16];
            owner = unsafe { LISTENERS.get(key) };
        }
        if let Some(owner) = owner {
            lend_owner(rec, owner);
            rec.flags |= FLAG_OWNER_FROM_LISTENER;
        }
    } else if old == TCP_CLOSE && new == TCP_LISTEN {
        let _ = LISTENERS.insert(key, owner_of(rec), 0);
    } else if old == TCP_LISTEN && new == TCP_CLOSE {
        let _ = LISTENERS.remove(key);
    }
}

/// The owner a socket lends its children.
#[inline(always)]
fn owner_of(rec: &SockRecord) -> Owner {
    Owner {
        comm: rec.comm,
        cgroup_id: rec.cgroup_id,
        pid: rec.pid,
        flags: rec.flags & (FLAG_OWNER_IN_CGROUP | FLAG_OWNER_AT_START),
        _pad: [0; 3],
    }
}

/// Gives a socket an owner it was not seen with: its listener's, or the
/// one found at start.
#[inline(always)]
fn lend_owner(rec: &mut SockRecord, owner: &Owner) {
    rec.pid = owner.pid;
    rec.comm = owner.comm;
    rec.cgroup_id = owner.cgroup_id;
    rec.flags = (rec.flags & !(FLAG_OWNER_IN_CGROUP | FLAG_OWNER_AT_START | FLAG_OWNER_FROM_LISTENER))
        | FLAG_OWNER_KNOWN
        | owner.flags;
}

/// The socket's `sk_err` (0 when the offset is unknown or the read fails),
/// as a byte: errnos fit.
#[inline(always)]
fn error_of(skaddr: u64, sock: SockOffsets) -> u8 {
    if sock.err == 0 {
        return 0;
    }
    let err: i32 = read(skaddr + u64::from(sock.err));
    err.clamp(0, 255) as u8
}

/// The socket's cookie (0 when the offset is unknown or the read fails):
/// set for every socket that sock_diag dumped at start.
#[inline(always)]
fn cookie_of(skaddr: u64, sock: SockOffsets) -> u64 {
    if sock.cookie == 0 {
        return 0;
    }
    read(skaddr + u64::from(sock.cookie))
}

/// Whether the current task is under one of the first `count` `--cgroup`
/// cgroups (or their descendants). A fixed bound: the verifier unrolls it.
#[inline(always)]
fn in_selected_cgroup(count: u8) -> bool {
    for slot in 0..MAX_CGROUPS {
        if slot >= u32::from(count) {
            break;
        }
        if CGROUPS.current_task_under_cgroup(slot) == Ok(true) {
            return true;
        }
    }
    false
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
