//! `spare demo`: starts an embedded peer on loopback with a temporary data directory, submits a
//! `primes` job through the SDK as any client would, follows it with a progress bar, checks
//! every verified output against the same kernel run natively, and prints a summary.

use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use futures::StreamExt;
use spare_sdk::{Client, Job, JobState, TaskState};

use crate::node::{Node, NodeConfig};

/// The primes guest, built for wasm32-wasip1 and committed, so the demo needs no toolchain.
const PRIMES_WASM: &[u8] = include_bytes!("../../../examples/wasm/primes.wasm");

/// Options of `spare demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Count the primes below this number.
    #[arg(long, default_value_t = 50_000_000)]
    upto: u64,
    /// Split the range into this many tasks.
    #[arg(long, default_value_t = 100)]
    tasks: u64,
    /// Task slots of the embedded peer (default: every CPU).
    #[arg(long)]
    cpus: Option<usize>,
}

pub async fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(a.tasks >= 1 && a.upto >= a.tasks, "--upto must be at least --tasks, and --tasks at least 1");
    let dir = tempfile::Builder::new().prefix("spare-demo-").tempdir()?;
    let mut config = NodeConfig::new("127.0.0.1:0".parse()?, dir.path().join("peer-0"));
    if let Some(cpus) = a.cpus {
        config.cpus = cpus.max(1);
    }
    let slots = config.cpus;
    let started = Instant::now();
    let handle = Node::start(config).await?;
    let client = Client::connect(handle.addr.to_string()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let peer_up = started.elapsed();
    eprintln!("embedded peer {} on {} with {slots} slots", handle.node.peer_id().short(), handle.addr);

    let chunk = a.upto.div_ceil(a.tasks);
    // One peer can only verify with a quorum of one; the mesh demo needs more peers.
    let job = Job::builder()
        .module_bytes(PRIMES_WASM.to_vec())
        .range(0..a.upto, chunk)
        .quorum(1)
        .label(format!("primes below {}", a.upto))
        .build()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let inputs: Vec<Vec<u8>> = job.tasks().map(<[u8]>::to_vec).collect();
    let submitted = Instant::now();
    let id = client.submit(&job).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let accepted = submitted.elapsed();
    eprintln!("submitted job {} ({} tasks of {chunk} numbers)", id.short(), inputs.len());
    let bar = super::progress::bar(inputs.len() as u64, false);
    let status = super::progress::follow(&client, &id, &bar).await?;
    let ran = submitted.elapsed();
    anyhow::ensure!(status.state() == JobState::Completed, "the job ended {:?}: {}", status.state(), status.message);

    let mut results = client.results(&id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut total = 0u64;
    let mut verified = 0usize;
    let mut native = std::time::Duration::ZERO;
    let mut verifiers = std::collections::BTreeSet::new();
    while let Some(r) = results.next().await {
        let r = r.map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(r.state() == TaskState::Verified, "task {} is not verified", r.index);
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
        verifiers.extend(r.verified_by);
    }
    anyhow::ensure!(verified == inputs.len(), "{verified} of {} results arrived", inputs.len());
    handle.shutdown().await;

    println!("primes below {}: {total}", a.upto);
    println!(
        "{verified}/{} tasks verified (quorum 1, by {} peer), every output equal to the native kernel's",
        inputs.len(),
        verifiers.len()
    );
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    println!(
        "timings: peer up {:.0} ms; submit (upload, validate, compile) {:.0} ms; submit to all verified {:.0} ms \
         ({:.0} tasks/s); the native kernel alone {:.0} ms",
        ms(peer_up),
        ms(accepted),
        ms(ran),
        inputs.len() as f64 / (ran - accepted).as_secs_f64(),
        ms(native)
    );
    Ok(ExitCode::SUCCESS)
}
