//! The `spare` binary: run a peer, submit jobs, check status, fetch results, run the demo.

fn main() -> std::process::ExitCode {
    spare_peer::cli::main()
}
