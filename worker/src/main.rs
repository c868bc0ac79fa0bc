//! The `spare` binary: run a peer, submit jobs, check status, fetch results, run the demo.

/// mimalloc rather than the system's: see worker/Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (libmimalloc-sys 0.1.49, pinned in the workspace's
/// Cargo.toml; the same index in mimalloc v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// A long-running peer keeps its memory lean. mimalloc asks for transparent huge pages on its
/// arenas, so each first touch made 2 MiB resident (an idle peer held 16 MiB more than with
/// glibc's malloc): they are turned off for this process, as `MIMALLOC_ALLOW_THP=0` would (an
/// environment variable is read before `main`, too early to set here). And freed pages go back
/// to the system at once rather than 10 ms later, which an idle thread never gets to. `spare sim`
/// keeps both, which it is fastest with.
fn lean_memory() {
    // SAFETY: prctl with these arguments only sets a flag of this process; setting a mimalloc
    // option is always allowed and takes effect for later frees.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
}

fn main() -> std::process::ExitCode {
    if std::env::args_os().nth(1).is_none_or(|a| a != "sim") {
        lean_memory();
    }
    spare_peer::cli::main()
}
