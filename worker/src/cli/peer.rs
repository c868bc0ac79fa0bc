//! `spare peer`: runs a peer until Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use crate::config::{DiversityName, HostPort, Size, Span, layers};
use crate::node::Node;
use crate::node::donation::{Hours, Net, TaskPriority};

/// Where `--web` alone serves the status page: loopback, so only this machine sees it.
const DEFAULT_WEB: &str = "127.0.0.1:7080";

/// Options of `spare peer`. Every setting can also come from the config file (`--config`) or a
/// `SPARE_<KEY>` environment variable; a flag wins over both. Sizes take units (`512 MiB`),
/// durations too (`3days`).
#[derive(Args, Debug, Default, Serialize)]
pub struct PeerArgs {
    /// A TOML file of settings (keys as the flags, with `_`: `max_disk = "20 GiB"`).
    #[arg(long, value_name = "FILE", env = "SPARE_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Print the effective configuration, and where each value came from, then exit.
    #[arg(long)]
    #[serde(skip)]
    print_config: bool,
    /// Address to serve gRPC on, a host name or an address (port 0 picks a free port; the chosen address is printed) [default: 127.0.0.1:7070].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<HostPort>,
    /// Directory for the store, blobs, compiled modules and the peer's key (created if missing).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// Tasks to run at once [default: every CPU].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    cpus: Option<usize>,
    /// A peer to join the mesh through (repeatable); ADDR@PEERID pins its identity (checked
    /// by TLS), otherwise whichever peer answers there is taken.
    #[arg(long, value_name = "ADDR[@PEERID]")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    bootstrap: Vec<String>,
    /// The address other peers should dial, when it is not the listening one (e.g. listening on 0.0.0.0).
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise: Option<String>,
    /// Most memory one task may ask for [default: 4 GiB].
    #[arg(long, value_name = "SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_task_memory: Option<Size>,
    /// Most memory all running tasks may hold together [default: cpus × max-task-memory].
    #[arg(long, value_name = "SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_total_memory: Option<Size>,
    /// Most disk the data directory may use; past it no work is taken and old jobs go [default: no cap].
    #[arg(long, value_name = "SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_disk: Option<Size>,
    /// Finished jobs, their results and blobs are removed after this long [default: 3days].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    retention: Option<Span>,
    /// Scheduling priority of task threads: idle (only spare CPU) or normal [default: idle].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    task_priority: Option<TaskPriority>,
    /// Pause taking work while other programs use more than this share of the CPUs, 0 to 1 [default: never].
    #[arg(long, value_name = "SHARE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_other_load: Option<f64>,
    /// Take work only in these local hours, HH:MM-HH:MM (e.g. 22:00-07:00) [default: all day].
    #[arg(long, value_name = "HOURS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    hours: Option<Hours>,
    /// Accept jobs only from these submitter addresses or networks (repeatable, or comma-separated) [default: everyone].
    #[arg(long, value_name = "NET", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allow_submitters: Vec<Net>,
    /// Accept and run only tasks of these modules, by hex id (repeatable, or comma-separated) [default: every module].
    #[arg(long, value_name = "ID", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allow_modules: Vec<String>,
    /// Serve only jobs whose quorum is at least this [default: 1].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    min_quorum: Option<u32>,
    /// Network diversity of the jobs submitted here that do not ask for one (`spare submit
    /// --diversity`): no two replicas of a task from one /24 or /48 (prefix), /16 or /32 (wide),
    /// or distinct keys only (off) [default: prefix].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    diversity: Option<DiversityName>,
    /// Largest module this peer accepts [default: 64 MiB].
    #[arg(long, value_name = "SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_module_bytes: Option<Size>,
    /// Largest blob (module or input) this peer accepts in one upload [default: 1 GiB].
    #[arg(long, value_name = "SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_blob_bytes: Option<Size>,
    /// Submissions checked at once; more are refused with RESOURCE_EXHAUSTED [default: 16].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_pending_submits: Option<usize>,
    /// Jobs one submitter (by address) may have running here at once [default: 256].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_jobs_per_submitter: Option<usize>,
    /// Bytes of inputs (inline and blob) of one submitter key's unfinished jobs held here at most [default: 2 GiB].
    #[arg(long, value_name = "SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_input_bytes_per_submitter: Option<Size>,
    /// Unfinished jobs this peer coordinates at most (as origin or backup); ended jobs do not count [default: 10000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_unfinished_jobs: Option<usize>,
    /// Tasks of running jobs this peer holds at most (as origin or backup coordinator) [default: 20000000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_held_tasks: Option<u64>,
    /// Live leases one peer may hold from this peer's coordinator [default: 4096].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_leases_per_peer: Option<usize>,
    /// Requests per second one peer may make on average (gossip, leases, reports, replication) [default: 1000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_rate: Option<f64>,
    /// Serve Prometheus metrics at http://ADDR/metrics, ADDR an address or a host name with a port [default: off].
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<HostPort>,
    /// Serve the status page at http://ADDR/ (just --web: 127.0.0.1:7080) [default: off].
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = DEFAULT_WEB)]
    #[serde(skip_serializing_if = "Option::is_none")]
    web: Option<HostPort>,
    /// Misbehave, to test the mesh: lie (wrong outputs), forge (bad signatures), silent (never report).
    #[cfg(feature = "chaos")]
    #[arg(long, value_enum, value_name = "MODE")]
    #[serde(skip)]
    chaos: Option<crate::node::Chaos>,
}

pub async fn run(a: PeerArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &a.config {
        std::fs::metadata(path).with_context(|| format!("config file {}", path.display()))?;
    }
    let figment = layers::figment(a.config.as_deref(), &a);
    let settings = layers::load(&figment)?;
    if a.print_config {
        print!("{}", layers::render::<PeerArgs>(&settings, &figment));
        return Ok(ExitCode::SUCCESS);
    }
    let mut config = settings.node_config().map_err(layers::LoadError::from)?;
    #[cfg(feature = "chaos")]
    {
        config.chaos = a.chaos;
    }
    // Modules compile in a compiler process of this same binary, so that the compiler's code
    // and heap never stay resident in the long-running peer (docs/architecture.md, "Idle
    // memory"), and tasks run in slot processes of it, killed at their deadlines, so that
    // their code needs no deadline checks ("The sandbox"). Without a path to it, both happen
    // in the peer, as they always could.
    match super::own_executable() {
        Ok(exe) => config = config.with_helpers_from(exe),
        Err(e) => tracing::warn!("cannot find this executable ({e}); modules will compile and run in the peer's process"),
    }
    let data_dir = config.data_dir.clone();
    let mut handle = Node::start(config.clone()).await?;
    println!(
        "spare peer {} listening on {} ({} slots, data in {})",
        handle.node.peer_id(),
        handle.addr,
        config.cpus,
        data_dir.display()
    );
    tokio::select! {
        r = shutdown_signal() => r?,
        r = handle.stopped() => return r.map(|_| ExitCode::FAILURE),
    }
    eprintln!("stopping");
    handle.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        Ok(())
    }
}
