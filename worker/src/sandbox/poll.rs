//! A virtual `poll_oneoff` that replaces wasmtime-wasi's. The stock one sleeps in real time on
//! tokio timers (a relative timeout of years, or "never", would hold a sandbox thread forever:
//! epoch interruption cannot reach a host call) and its wake-ups depend on the host's speed. This
//! one never blocks: stdio subscriptions are always ready (stdin and the output pipes are in
//! memory), and when only clocks are subscribed the run's virtual time jumps to the earliest
//! deadline, which is then reported. So `sleep` works, costs nothing, and is deterministic.

use std::sync::Arc;

use wasmtime::{Caller, Extern, Linker};

use super::determinism::{VirtualTime, WALL_CLOCK_SECS};
use super::run::StoreData;

const MODULE: &str = "wasi_snapshot_preview1";

// WASI preview 1 constants.
const ERRNO_SUCCESS: u16 = 0;
const ERRNO_BADF: u16 = 8;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
const EVENTTYPE_CLOCK: u8 = 0;
const EVENTTYPE_FD_READ: u8 = 1;
const EVENTTYPE_FD_WRITE: u8 = 2;
const CLOCK_REALTIME: u32 = 0;
const CLOCK_MONOTONIC: u32 = 1;
const SUBCLOCK_ABSTIME: u16 = 1;
const EVENT_FD_HANGUP: u16 = 1;
/// `subscription` is 48 bytes, `event` 32 (both 8-aligned) in the preview 1 ABI.
const SUBSCRIPTION_SIZE: usize = 48;
const EVENT_SIZE: usize = 32;
/// Most subscriptions one call may pass: bounds the host work of one call (a wall deadline
/// cannot interrupt a host call). More is `EINVAL`, on every peer.
const MAX_SUBSCRIPTIONS: u32 = 4096;
/// `nbytes` reported for a writable stdout/stderr.
const WRITE_PERMIT: u64 = 4096;

/// Installs the virtual `poll_oneoff` over the one `add_to_linker_sync` defined.
pub(crate) fn add_to_linker(linker: &mut Linker<StoreData>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap(MODULE, "poll_oneoff", poll_oneoff)?;
    linker.allow_shadowing(false);
    Ok(())
}

struct Event {
    userdata: u64,
    error: u16,
    kind: u8,
    nbytes: u64,
    flags: u16,
}

enum Sub {
    /// A clock subscription, as time left from now (virtual), in nanoseconds.
    Clock { userdata: u64, remaining: u64 },
    /// An fd subscription: its event is known at once.
    Fd(Event),
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Parses one 48-byte subscription; `Err(errno)` for what the whole call must refuse.
fn parse(b: &[u8], now: u64, stdin_empty: bool) -> Result<Sub, i32> {
    let userdata = u64_at(b, 0);
    match b[8] {
        0 => {
            let id = u32_at(b, 16);
            let timeout = u64_at(b, 24);
            let absolute = u16_at(b, 40) & SUBCLOCK_ABSTIME != 0;
            let remaining = match (id, absolute) {
                (CLOCK_REALTIME | CLOCK_MONOTONIC, false) => timeout,
                (CLOCK_MONOTONIC, true) => timeout.saturating_sub(now),
                (CLOCK_REALTIME, true) => timeout.saturating_sub(WALL_CLOCK_SECS * 1_000_000_000),
                _ => return Err(ERRNO_INVAL),
            };
            Ok(Sub::Clock { userdata, remaining })
        }
        1 => {
            let fd = u32_at(b, 16);
            Ok(Sub::Fd(match fd {
                0 => Event {
                    userdata,
                    error: ERRNO_SUCCESS,
                    kind: EVENTTYPE_FD_READ,
                    nbytes: u64::from(!stdin_empty),
                    flags: if stdin_empty { EVENT_FD_HANGUP } else { 0 },
                },
                _ => Event { userdata, error: ERRNO_BADF, kind: EVENTTYPE_FD_READ, nbytes: 0, flags: 0 },
            }))
        }
        2 => {
            let fd = u32_at(b, 16);
            Ok(Sub::Fd(match fd {
                1 | 2 => Event {
                    userdata,
                    error: ERRNO_SUCCESS,
                    kind: EVENTTYPE_FD_WRITE,
                    nbytes: WRITE_PERMIT,
                    flags: 0,
                },
                _ => Event { userdata, error: ERRNO_BADF, kind: EVENTTYPE_FD_WRITE, nbytes: 0, flags: 0 },
            }))
        }
        _ => Err(ERRNO_INVAL),
    }
}

/// Decides which events fire, advancing virtual time if only clocks were subscribed.
fn fire(subs: Vec<Sub>, time: &VirtualTime) -> Vec<Event> {
    let mut ready = Vec::new();
    let mut clocks = Vec::new();
    for s in subs {
        match s {
            Sub::Fd(e) => ready.push(e),
            Sub::Clock { userdata, remaining } => clocks.push((userdata, remaining)),
        }
    }
    if !ready.is_empty() {
        return ready;
    }
    let Some(earliest) = clocks.iter().map(|c| c.1).min() else {
        return ready;
    };
    time.advance(earliest);
    clocks
        .into_iter()
        .filter(|c| c.1 == earliest)
        .map(|(userdata, _)| Event {
            userdata,
            error: ERRNO_SUCCESS,
            kind: EVENTTYPE_CLOCK,
            nbytes: 0,
            flags: 0,
        })
        .collect()
}

fn range(ptr: i32, len: usize) -> Option<std::ops::Range<usize>> {
    let start = ptr as u32 as usize;
    Some(start..start.checked_add(len)?)
}

fn poll_oneoff(
    mut caller: Caller<'_, StoreData>,
    subs_ptr: i32,
    events_ptr: i32,
    nsubs: i32,
    nevents_ptr: i32,
) -> wasmtime::Result<i32> {
    let n = nsubs as u32;
    if n == 0 || n > MAX_SUBSCRIPTIONS {
        return Ok(ERRNO_INVAL);
    }
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        wasmtime::bail!("missing required memory export");
    };
    let time: Arc<VirtualTime> = caller.data().time.clone();
    let stdin_empty = caller.data().stdin.is_empty();
    let now = time.peek();

    let subs = {
        let data = memory.data(&caller);
        let Some(bytes) = range(subs_ptr, n as usize * SUBSCRIPTION_SIZE).and_then(|r| data.get(r)) else {
            return Ok(ERRNO_FAULT);
        };
        let mut subs = Vec::with_capacity(n as usize);
        for chunk in bytes.chunks_exact(SUBSCRIPTION_SIZE) {
            match parse(chunk, now, stdin_empty) {
                Ok(s) => subs.push(s),
                Err(errno) => return Ok(errno),
            }
        }
        subs
    };

    // Check the output areas before firing (firing may advance time).
    let data = memory.data_mut(&mut caller);
    let (Some(ev_range), Some(count_range)) =
        (range(events_ptr, subs.len() * EVENT_SIZE), range(nevents_ptr, 4))
    else {
        return Ok(ERRNO_FAULT);
    };
    if ev_range.end > data.len() || count_range.end > data.len() {
        return Ok(ERRNO_FAULT);
    }
    let events = fire(subs, &time);
    for (i, e) in events.iter().enumerate() {
        let at = ev_range.start + i * EVENT_SIZE;
        let out = &mut data[at..at + EVENT_SIZE];
        out.fill(0);
        out[0..8].copy_from_slice(&e.userdata.to_le_bytes());
        out[8..10].copy_from_slice(&e.error.to_le_bytes());
        out[10] = e.kind;
        out[16..24].copy_from_slice(&e.nbytes.to_le_bytes());
        out[24..26].copy_from_slice(&e.flags.to_le_bytes());
    }
    let count = events.len() as u32;
    data[count_range].copy_from_slice(&count.to_le_bytes());
    Ok(i32::from(ERRNO_SUCCESS))
}
