//! `spare peer`: runs a peer until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::node::{Node, NodeConfig};

/// Options of `spare peer`.
#[derive(Args, Debug)]
pub struct PeerArgs {
    /// Address to serve gRPC on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = super::DEFAULT_PEER, env = "SPARE_LISTEN", value_parser = super::units::listen_addr)]
    listen: SocketAddr,
    /// Directory for the store, blobs, compiled modules and the peer's key (created if missing).
    #[arg(long, env = "SPARE_DATA_DIR")]
    data_dir: PathBuf,
    /// Tasks to run at once (default: every CPU).
    #[arg(long)]
    cpus: Option<usize>,
    /// A peer to join the mesh through (repeatable).
    #[arg(long, value_name = "ADDR")]
    bootstrap: Vec<String>,
    /// Largest module this peer accepts, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    max_module_bytes: usize,
    /// Largest blob (module or input) this peer accepts in one upload, in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    max_blob_bytes: u64,
    /// Most memory one task may ask for, in bytes.
    #[arg(long, default_value_t = 4 << 30)]
    max_task_memory: u64,
    /// Submissions checked at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = crate::node::limits::Bounds::default().max_pending_submits)]
    max_pending_submits: usize,
    /// Jobs one submitter (by address) may have running here at once.
    #[arg(long, default_value_t = crate::node::limits::Bounds::default().max_jobs_per_submitter)]
    max_jobs_per_submitter: usize,
    /// Tasks of running jobs this peer holds at most (as origin or backup coordinator).
    #[arg(long, default_value_t = crate::node::limits::Bounds::default().max_held_tasks)]
    max_held_tasks: u64,
    /// Live leases one peer may hold from this peer's coordinator.
    #[arg(long, default_value_t = crate::node::limits::Bounds::default().max_leases_per_peer)]
    max_leases_per_peer: usize,
    /// Requests per second one peer may make on average (gossip, leases, reports, replication).
    #[arg(long, default_value_t = crate::node::limits::Bounds::default().peer_rate)]
    peer_rate: f64,
    /// The address other peers should dial, when it is not the listening one (e.g. listening on 0.0.0.0).
    #[arg(long, value_name = "ADDR")]
    advertise: Option<String>,
    /// Misbehave, to test the mesh: lie (wrong outputs), forge (bad signatures), silent (never report).
    #[cfg(feature = "chaos")]
    #[arg(long, value_enum, value_name = "MODE")]
    chaos: Option<crate::node::Chaos>,
}

pub async fn run(a: PeerArgs) -> anyhow::Result<ExitCode> {
    let mut config = NodeConfig::new(a.listen, a.data_dir.clone());
    if let Some(cpus) = a.cpus {
        anyhow::ensure!(cpus >= 1, "--cpus must be at least 1");
        config.cpus = cpus;
    }
    config.bootstrap = a.bootstrap;
    config.max_module_bytes = a.max_module_bytes;
    config.max_blob_bytes = a.max_blob_bytes;
    config.caps.limits.memory_bytes = a.max_task_memory;
    if a.listen.ip().is_unspecified() && a.advertise.is_none() {
        anyhow::bail!("listening on {} needs --advertise HOST:PORT so other peers know where to dial", a.listen);
    }
    config.advertise = a.advertise;
    config.bounds = crate::node::limits::Bounds {
        max_pending_submits: a.max_pending_submits,
        max_jobs_per_submitter: a.max_jobs_per_submitter,
        max_held_tasks: a.max_held_tasks,
        max_leases_per_peer: a.max_leases_per_peer,
        peer_rate: a.peer_rate,
        peer_burst: (a.peer_rate * 4.0).max(1.0),
    };
    #[cfg(feature = "chaos")]
    {
        config.chaos = a.chaos;
    }
    let mut handle = Node::start(config.clone()).await?;
    println!(
        "spare peer {} listening on {} ({} slots, data in {})",
        handle.node.peer_id(),
        handle.addr,
        config.cpus,
        a.data_dir.display()
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
