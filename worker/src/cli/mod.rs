//! The `spare` command line: `peer` runs a peer; `submit`, `status` and `results` talk to one
//! over gRPC through the SDK; `demo` runs a whole job on an embedded mesh.

mod check;
mod demo;
mod logs;
mod peer;
mod peers;
mod progress;
mod results;
mod sim;
mod status;
mod submit;
mod units;

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
    /// Show what a job's tasks wrote to stderr: why they failed.
    Logs(logs::LogsArgs),
    /// Run an example job on an embedded mesh, check it against a native run, and time it.
    Demo(demo::DemoArgs),
    /// Simulate a mesh of virtual peers running one job, with liars, loss and churn.
    Sim(sim::SimArgs),
}

/// Runs the command line and returns the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPARE_LOG").unwrap_or_else(|_| {
        let default = if matches!(cli.command, Command::Peer(_)) { "info" } else { "warn" };
        tracing_subscriber::EnvFilter::new(default)
    });
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
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
            Command::Logs(a) => logs::run(a).await,
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

/// Connects the SDK to a peer and checks that a peer answers there; an error keeps its cause
/// and says what to do.
async fn connect(peer: &str) -> anyhow::Result<spare_sdk::Client> {
    let client = spare_sdk::Client::connect(peer.to_string()).await.map_err(|e| sdk_error(e, peer))?;
    match client.info().await {
        Ok(_) => Ok(client),
        // Something took the connection, then failed below gRPC: not a peer's API.
        Err(spare_sdk::Error::Status(s)) if matches!(s.code(), tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled) => {
            anyhow::bail!(
                "{peer} took the connection but did not answer as a Spare peer ({}); is it the address `spare peer --listen` serves?",
                spare_sdk::Error::Status(s)
            )
        }
        Err(e) => Err(sdk_error(e, peer)),
    }
}

/// An SDK error as the client commands show it: with a hint when the peer cannot be reached or
/// is not a peer.
fn sdk_error(e: spare_sdk::Error, peer: &str) -> anyhow::Error {
    use spare_sdk::Error as E;
    match &e {
        E::Connect { .. } => anyhow::anyhow!(
            "{e}; is a peer running there? Start one with `spare peer --data-dir DIR`, or pass --peer HOST:PORT (or set SPARE_PEER)"
        ),
        E::NotAPeer { .. } => anyhow::anyhow!("{peer}: {e}"),
        E::Status(s) if s.code() == tonic::Code::Unavailable => {
            anyhow::anyhow!("{peer} stopped answering: {e}; is the peer still running?")
        }
        _ => anyhow::anyhow!("{e}"),
    }
}

/// The job an id, or a unique prefix of one as `spare` prints them, names at `client`'s peer.
async fn job_id(client: &spare_sdk::Client, id: &str) -> anyhow::Result<spare_sdk::JobId> {
    client.find_job(id).await.map_err(|e| sdk_error(e, client.addr()))
}
