//! The `spare` binary: run a peer, submit jobs, check status, fetch results, run the demo.

/// mimalloc rather than the system's: see worker/Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    spare_peer::cli::main()
}
