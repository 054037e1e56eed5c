//! Follows every TCP socket through its transitions in a socket table,
//! attributes each to the process that owns it, and streams the transitions
//! that pass the filters to userspace. See `../shared/docs/kernel-notes.md`.

use aya_ebpf::{
    Global,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use tcpstate_ebpf::*;

#[unsafe(no_mangle)]
static CONFIG: Global<Config> = Global::new(Config::zeroed());

// Sizes here are defaults; userspace resizes EVENTS and SOCKETS at load.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);
#[map]
static SOCKETS: LruHashMap<u64, SockRecord> = LruHashMap::with_max_entries(65536, 0);
/// Listening port → owner, so that accepted children get an owner before
/// they reach a process-context transition.
#[map]
static LISTENERS: LruHashMap<u16, Owner> = LruHashMap::with_max_entries(4096, 0);
#[map]
static TRANSITIONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TRANSITION_SLOTS, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);
#[map]
static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);
#[map]
static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);
#[map]
static COMMS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(64, 0);

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    if handle(&ctx).is_err() {
        bump(&COUNTERS, COUNTER_READ_FAILED);
    }
    0
}

#[inline(always)]
fn read<T>(ctx: &TracePointContext, offset: u16) -> Result<T, i32> {
    // SAFETY: the offsets come from the tracepoint's own format file and
    // bpf_probe_read_kernel faults safely on a bad address.
    unsafe { ctx.read_at::<T>(offset as usize) }
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

#[inline(always)]
fn handle(ctx: &TracePointContext) -> Result<(), i32> {
    let cfg = CONFIG.load();
    let off = cfg.offsets;
    let protocol = if off.protocol_size == 1 {
        read::<u8>(ctx, off.protocol)? as u16
    } else {
        read::<u16>(ctx, off.protocol)?
    };
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let family = read::<u16>(ctx, off.family)?;
    let daddr = read::<[u8; 16]>(ctx, off.daddr_v6)?;
    if cfg.family != FAMILY_ANY {
        let is_v4 = family == AF_INET || is_v4_mapped(&daddr);
        if (cfg.family == FAMILY_IPV4) != is_v4 {
            return Ok(());
        }
    }
    let skaddr = read::<u64>(ctx, off.skaddr)?;
    let old = read::<i32>(ctx, off.oldstate)? as u8;
    let new = read::<i32>(ctx, off.newstate)? as u8;
    let sport = read::<u16>(ctx, off.sport)?;
    let dport = read::<u16>(ctx, off.dport)?;
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };

    let new_life = starts_new_socket(old, new);
    let known = if new_life {
        None
    } else {
        // SAFETY: events for one socket are serialised by its lock, so no
        // other CPU rewrites this entry while we copy it.
        unsafe { SOCKETS.get(skaddr) }.copied()
    };
    let in_old_state_ns = match known {
        Some(rec) => now.saturating_sub(rec.last_change_ns),
        None => DURATION_UNKNOWN,
    };
    let mut rec = known.unwrap_or(SockRecord {
        first_seen_ns: now,
        last_change_ns: now,
        comm: [0; 16],
        pid: 0,
        close: CLOSE_UNKNOWN,
        flags: if new_life { FLAG_FROM_START } else { 0 },
        _pad: [0; 2],
    });

    if owner_is_current(old, new) {
        rec.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
        rec.comm = bpf_get_current_comm().unwrap_or([0; 16]);
        rec.flags = (rec.flags | FLAG_OWNER_KNOWN) & !FLAG_OWNER_FROM_LISTENER;
    } else if is_accepted_child(old, new) {
        // SAFETY: read-only copy of a small value.
        if let Some(owner) = unsafe { LISTENERS.get(sport) } {
            rec.pid = owner.pid;
            rec.comm = owner.comm;
            rec.flags |= FLAG_OWNER_KNOWN | FLAG_OWNER_FROM_LISTENER;
        }
    }
    if old == TCP_CLOSE && new == TCP_LISTEN {
        let owner = Owner { comm: rec.comm, pid: rec.pid, _pad: 0 };
        let _ = LISTENERS.insert(sport, owner, 0);
    } else if old == TCP_LISTEN && new == TCP_CLOSE {
        let _ = LISTENERS.remove(sport);
    }
    rec.close = close_side_after(rec.close, old, new);
    rec.last_change_ns = now;

    if new == TCP_CLOSE {
        let _ = SOCKETS.remove(skaddr);
    } else if SOCKETS.insert(skaddr, rec, 0).is_err() {
        bump(&COUNTERS, COUNTER_SOCKET_INSERT_FAILED);
        warn!(ctx, "socket table insert failed for skaddr {:x}", skaddr);
    }

    if cfg.filters != 0 && !selected(cfg.filters, sport, dport, &rec) {
        return Ok(());
    }
    bump(&TRANSITIONS, transition_index(old, new));

    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        bump(&COUNTERS, COUNTER_RINGBUF_FULL);
        return Ok(());
    };
    entry.write(Event {
        ts_ns: now,
        skaddr,
        in_old_state_ns,
        first_seen_ns: rec.first_seen_ns,
        saddr: read::<[u8; 16]>(ctx, off.saddr_v6).unwrap_or([0; 16]),
        daddr,
        comm: rec.comm,
        pid: rec.pid,
        sport,
        dport,
        family,
        oldstate: old,
        newstate: new,
        close: rec.close,
        flags: rec.flags,
        _pad: [0; 2],
    });
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

/// The filters, all of which must hold. The owner filters look at the
/// attributed owner, never at the task that happens to be current.
#[inline(always)]
fn selected(filters: u8, sport: u16, dport: u16, rec: &SockRecord) -> bool {
    if filters & (FILTER_LPORT | FILTER_RPORT | FILTER_PORT) != 0 {
        // SAFETY: read-only lookups of u8 values.
        let local = unsafe { PORTS.get(sport) }.copied().unwrap_or(0);
        let remote = unsafe { PORTS.get(dport) }.copied().unwrap_or(0);
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
    let owner_known = rec.flags & FLAG_OWNER_KNOWN != 0;
    // SAFETY: read-only lookups.
    if filters & FILTER_PID != 0 && !(owner_known && unsafe { PIDS.get(rec.pid) }.is_some()) {
        return false;
    }
    if filters & FILTER_COMM != 0 && !(owner_known && unsafe { COMMS.get(rec.comm) }.is_some()) {
        return false;
    }
    true
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
