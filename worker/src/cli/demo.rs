//! `spare demo`: starts an embedded mesh of peers on loopback with temporary data directories,
//! submits a `primes` job through the SDK as any client would, follows it with a progress bar,
//! checks every verified output against the same kernel run natively, and prints a summary:
//! how many tasks each peer verified, and that each result was verified by distinct peers.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use spare_sdk::{Client, Job, JobState};

use crate::node::{Node, NodeConfig, NodeHandle};

/// The primes guest, built for wasm32-wasip1 and committed, so the demo needs no toolchain.
const PRIMES_WASM: &[u8] = include_bytes!("../../../examples/wasm/primes.wasm");
/// How long the embedded peers may take to find each other.
const JOIN_DEADLINE: Duration = Duration::from_secs(20);

/// Options of `spare demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Count the primes below this number.
    #[arg(long, default_value_t = 50_000_000)]
    upto: u64,
    /// Split the range into this many tasks.
    #[arg(long, default_value_t = 100)]
    tasks: u64,
    /// Peers in the embedded mesh.
    #[arg(long, default_value_t = 3)]
    peers: usize,
    /// Distinct peers that must agree on each result (at most --peers).
    #[arg(long, default_value_t = 2)]
    quorum: u32,
    /// Task slots of each embedded peer.
    #[arg(long, default_value_t = 1)]
    cpus: usize,
}

fn err(e: spare_sdk::Error) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Starts `n` peers, the others joining through the first, and waits until all see each other.
async fn start_mesh(root: &std::path::Path, n: usize, cpus: usize) -> anyhow::Result<Vec<NodeHandle>> {
    let mut peers: Vec<NodeHandle> = Vec::with_capacity(n);
    for i in 0..n {
        let mut config = NodeConfig::new("127.0.0.1:0".parse()?, root.join(format!("peer-{i}")));
        config.cpus = cpus.max(1);
        // As `spare peer` does: compile in compiler processes, run tasks in slot processes.
        if let Ok(exe) = super::own_executable() {
            config = config.with_helpers_from(exe);
        }
        if let Some(first) = peers.first() {
            config.bootstrap = vec![first.addr.to_string()];
        }
        peers.push(Node::start(config).await?);
    }
    let started = Instant::now();
    while !peers.iter().all(|p| p.node.live_peers() == n) {
        anyhow::ensure!(started.elapsed() < JOIN_DEADLINE, "the embedded peers did not find each other");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(peers)
}

pub async fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(a.tasks >= 1 && a.upto >= a.tasks, "--upto must be at least --tasks, and --tasks at least 1");
    anyhow::ensure!(a.peers >= 1, "--peers must be at least 1");
    anyhow::ensure!(
        a.quorum >= 1 && a.quorum as usize <= a.peers,
        "--quorum must be between 1 and --peers: a quorum needs that many distinct peers"
    );
    let dir = tempfile::Builder::new().prefix("spare-demo-").tempdir()?;
    let started = Instant::now();
    let peers = start_mesh(dir.path(), a.peers, a.cpus).await?;
    let mesh_up = started.elapsed();
    let names: BTreeMap<String, usize> =
        peers.iter().enumerate().map(|(i, p)| (p.node.peer_id().to_hex(), i)).collect();
    for (i, p) in peers.iter().enumerate() {
        eprintln!("peer {i}: {} on {} ({} slot(s))", p.node.peer_id().short(), p.addr, a.cpus);
    }
    // A one-off key: the embedded mesh ends with the demo, so the user's key file is not needed.
    let client = Client::connect(peers[0].addr.to_string())
        .await
        .map_err(err)?
        .with_identity(spare_sdk::ClientIdentity::generate().map_err(err)?);

    let chunk = a.upto.div_ceil(a.tasks);
    let job = Job::builder()
        .module_bytes(PRIMES_WASM.to_vec())
        .range(0..a.upto, chunk)
        .quorum(a.quorum)
        .label(format!("primes below {}", a.upto))
        .build()
        .map_err(err)?;
    let inputs: Vec<Vec<u8>> = job.tasks().map(<[u8]>::to_vec).collect();
    let submitted = Instant::now();
    let id = client.submit(&job).await.map_err(err)?;
    let accepted = submitted.elapsed();
    eprintln!("submitted job {} to peer 0 ({} tasks of {chunk} numbers, quorum {})", id.short(), inputs.len(), a.quorum);
    let bar = super::progress::bar(inputs.len() as u64, false);
    let status = super::progress::follow(&client, &id, &bar, false).await?;
    let ran = submitted.elapsed();
    anyhow::ensure!(status.state == JobState::Completed, "the job ended {:?}: {}", status.state, status.message);

    // Results from the last peer, which forwards to the job's coordinator.
    let reader = Client::connect(peers[peers.len() - 1].addr.to_string()).await.map_err(err)?;
    let mut results = reader.results(&id).await.map_err(err)?;
    let mut total = 0u64;
    let mut verified = 0usize;
    let mut native = Duration::ZERO;
    let mut per_peer = vec![0usize; peers.len()];
    while let Some(r) = results.next().await {
        let r = r.map_err(err)?;
        anyhow::ensure!(r.is_verified(), "task {} is not verified", r.index);
        let by: BTreeSet<&String> = r.verified_by.iter().collect();
        anyhow::ensure!(by.len() >= a.quorum as usize, "task {} verified by {} distinct peers", r.index, by.len());
        for p in by {
            if let Some(&i) = names.get(p) {
                per_peer[i] += 1;
            }
        }
        let input = inputs.get(r.index as usize).ok_or_else(|| anyhow::anyhow!("unexpected task {}", r.index))?;
        let t = Instant::now();
        let expected = spare_example_primes::task(input).map_err(|e| anyhow::anyhow!("native run: {e}"))?;
        native += t.elapsed();
        anyhow::ensure!(
            r.output == expected,
            "task {}: the mesh said {:?}, the native kernel {:?}",
            r.index,
            String::from_utf8_lossy(&r.output),
            String::from_utf8_lossy(&expected)
        );
        total += String::from_utf8_lossy(&r.output).trim().parse::<u64>()?;
        verified += 1;
    }
    anyhow::ensure!(verified == inputs.len(), "{verified} of {} results arrived", inputs.len());
    for p in peers {
        p.shutdown().await;
    }

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("primes below {}: {total}", a.upto);
    println!(
        "{verified}/{} tasks verified, each by {} distinct peers, every output equal to the native kernel's",
        inputs.len(),
        a.quorum
    );
    let shares: Vec<String> = per_peer.iter().enumerate().map(|(i, n)| format!("peer {i}: {n}")).collect();
    println!("verified results each peer took part in: {}", shares.join(", "));
    println!(
        "timings: mesh of {} up {:.0} ms; submit {:.0} ms; submit to all verified {:.0} ms; the native kernel alone {:.0} ms",
        a.peers,
        ms(mesh_up),
        ms(accepted),
        ms(ran),
        ms(native)
    );
    Ok(ExitCode::SUCCESS)
}
