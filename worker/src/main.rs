//! The `spare` binary: run a peer, submit jobs, check status, fetch results, run the demo.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

/// The allocator, chosen per run at the first allocation: mimalloc for `spare sim` (many small,
/// short-lived buffers, where glibc's malloc spent a third of the simulator's time), the
/// system's for everything else (a long-running peer is idle most of the time, and glibc's
/// malloc holds less memory then: 31.7 MB against 38.5 MB after a job, measured while peers still
/// compiled modules themselves; and the peer gives its freed heap back when it goes idle,
/// `node::upkeep`).
#[global_allocator]
static ALLOCATOR: Chosen = Chosen;

static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// 0 until the first allocation decides; then [`SYSTEM`] or [`MIMALLOC_CHOSEN`] for the rest of
/// the process, so every block is freed by the allocator that gave it.
static CHOICE: AtomicU8 = AtomicU8::new(0);
const SYSTEM: u8 = 1;
const MIMALLOC_CHOSEN: u8 = 2;

struct Chosen;

impl Chosen {
    #[inline]
    fn mimalloc(&self) -> bool {
        match CHOICE.load(Ordering::Relaxed) {
            SYSTEM => false,
            MIMALLOC_CHOSEN => true,
            _ => decide(),
        }
    }
}

/// Decides from the command line, read without allocating (two threads deciding at once
/// decide alike).
#[cold]
fn decide() -> bool {
    let sim = invoked_as_sim();
    CHOICE.store(if sim { MIMALLOC_CHOSEN } else { SYSTEM }, Ordering::Relaxed);
    sim
}

/// Whether the first argument is `sim`, from `/proc/self/cmdline` (no allocation may happen
/// here: this runs inside the first one).
fn invoked_as_sim() -> bool {
    let mut buf = [0u8; 256];
    // SAFETY: a NUL-terminated path; the buffer outlives the read; the descriptor is closed.
    let n = unsafe {
        let fd = libc::open(c"/proc/self/cmdline".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    let Ok(n) = usize::try_from(n) else { return false };
    let mut args = buf[..n].split(|&b| b == 0);
    args.next();
    args.next() == Some(b"sim".as_slice())
}

// SAFETY: every call goes to the one allocator chosen before the first block was given out.
unsafe impl GlobalAlloc for Chosen {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { if self.mimalloc() { MIMALLOC.alloc(layout) } else { System.alloc(layout) } }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { if self.mimalloc() { MIMALLOC.alloc_zeroed(layout) } else { System.alloc_zeroed(layout) } }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from the same allocator, the only one this process uses.
        unsafe { if self.mimalloc() { MIMALLOC.dealloc(ptr, layout) } else { System.dealloc(ptr, layout) } }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`.
        unsafe { if self.mimalloc() { MIMALLOC.realloc(ptr, layout, new_size) } else { System.realloc(ptr, layout, new_size) } }
    }
}

/// A long-running peer keeps its memory lean: transparent huge pages off (each first touch of
/// a huge page made 2 MiB resident), and glibc's malloc held to two arenas (one per CPU by
/// default, each keeping its own freed memory).
fn lean_memory() {
    // SAFETY: prctl with these arguments only sets a flag of this process; mallopt sets a
    // malloc parameter.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> std::process::ExitCode {
    // The allocator was chosen from the command line at the first allocation (or is now).
    if !ALLOCATOR.mimalloc() {
        lean_memory();
    }
    spare_peer::cli::main()
}
