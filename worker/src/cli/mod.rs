//! The `spare` command line: `peer` runs a peer; `submit`, `status` and `results` talk to one
//! over gRPC through the SDK; `demo` runs a whole job on an embedded mesh.

mod demo;
mod peer;
mod peers;
mod progress;
mod results;
mod sim;
mod status;
mod submit;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The peer the client commands talk to unless `--peer` or `SPARE_PEER` says otherwise.
pub const DEFAULT_PEER: &str = "127.0.0.1:7070";

/// Spare: volunteer computing with WebAssembly tasks, verified by redundant execution.
#[derive(Parser, Debug)]
#[command(name = "spare", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a peer: serve the gRPC API, run tasks in local slots, keep jobs in a data directory.
    Peer(peer::PeerArgs),
    /// Submit a job: one task per input, all running the same WebAssembly module.
    Submit(submit::SubmitArgs),
    /// Show a job's status.
    Status(status::StatusArgs),
    /// List the peers of the mesh as a peer sees them.
    Peers(peers::PeersArgs),
    /// Write a job's verified outputs to a directory, one file per task.
    Results(results::ResultsArgs),
    /// Run an example job on an embedded mesh, check it against a native run, and time it.
    Demo(demo::DemoArgs),
    /// Simulate a mesh of virtual peers running one job, with liars, loss and churn.
    Sim(sim::SimArgs),
}

/// Runs the command line and returns the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = if matches!(cli.command, Command::Peer(_)) { "info" } else { "warn" };
    let spec = log_filter(std::env::var("SPARE_LOG").ok().as_deref(), default);
    let filter = tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("warning: SPARE_LOG={spec:?} is not a log filter ({e}); using {default}");
        tracing_subscriber::EnvFilter::new(log_filter(None, default))
    });
    // Colour codes only for a person at a terminal, and never when NO_COLOR is set.
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Peer(a) => peer::run(a).await,
            Command::Submit(a) => submit::run(a).await,
            Command::Status(a) => status::run(a).await,
            Command::Peers(a) => peers::run(a).await,
            Command::Results(a) => results::run(a).await,
            Command::Demo(a) => demo::run(a).await,
            Command::Sim(a) => sim::run(a),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Spare's own crates, whose lines a bare level in `SPARE_LOG` selects.
const OWN_CRATES: [&str; 4] = ["spare", "spare_peer", "spare_protocol", "spare_sdk"];

/// The log filter for `SPARE_LOG` (or `default` when unset): a bare level (`debug`) applies to
/// Spare's own crates only, the libraries staying at `warn`, so `debug` shows Spare's lines and
/// not every HTTP/2 frame; `trace`, or a full filter (`h2=debug,spare_peer=info`), is taken as
/// written.
fn log_filter(spare_log: Option<&str>, default: &str) -> String {
    let spec = spare_log.map(str::trim).filter(|s| !s.is_empty()).unwrap_or(default);
    let level = spec.to_ascii_lowercase();
    match level.as_str() {
        "trace" => level,
        "error" | "off" => level,
        "warn" | "info" | "debug" => {
            let own: Vec<String> = OWN_CRATES.iter().map(|c| format!("{c}={level}")).collect();
            format!("warn,{}", own.join(","))
        }
        _ => spec.to_string(),
    }
}

/// Connects the SDK to a peer, with the address in the error.
async fn connect(peer: &str) -> anyhow::Result<spare_sdk::Client> {
    spare_sdk::Client::connect(peer.to_string()).await.map_err(|e| anyhow::anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn a_bare_level_selects_spares_own_lines() {
        assert_eq!(log_filter(Some("debug"), "warn"), "warn,spare=debug,spare_peer=debug,spare_protocol=debug,spare_sdk=debug");
        assert_eq!(log_filter(None, "info"), "warn,spare=info,spare_peer=info,spare_protocol=info,spare_sdk=info");
        assert_eq!(log_filter(Some("trace"), "info"), "trace", "trace shows everything");
        assert_eq!(log_filter(Some("h2=debug,spare_peer=info"), "info"), "h2=debug,spare_peer=info", "a named filter as written");
        assert_eq!(log_filter(Some(""), "warn"), log_filter(None, "warn"));
    }
}
