//! Mesh throughput, printed (`cargo bench -p spare-peer --bench mesh`): an in-process mesh of
//! three peers on loopback runs tiny tasks (the `empty` guest) with quorum 2, and the bench
//! prints verified tasks per second and the median time from submit to the first verified result,
//! once with the peers running tasks in slot processes (as `spare peer` does) and once on their
//! slot threads.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use spare_sdk::{Client, Job, JobState};
use spare_peer::sandbox::Isolation;
use spare_peer::{Node, NodeConfig, NodeHandle};

const PEERS: usize = 3;
const QUORUM: u32 = 2;
const THROUGHPUT_TASKS: usize = 20_000;
const LATENCY_SAMPLES: usize = 30;

fn empty_guest() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/wasm/empty.wasm");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

async fn mesh(root: &Path, isolation: &Isolation) -> Vec<NodeHandle> {
    let mut peers: Vec<NodeHandle> = Vec::new();
    for i in 0..PEERS {
        let mut c = NodeConfig::new("127.0.0.1:0".parse().expect("address"), root.join(format!("peer-{i}")));
        c.cpus = 1;
        c.isolation = isolation.clone();
        if let Some(first) = peers.first() {
            c.bootstrap = vec![first.addr.to_string()];
        }
        peers.push(Node::start(c).await.expect("peer starts"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !peers.iter().all(|p| p.node.live_peers() == PEERS) {
        assert!(Instant::now() < deadline, "peers did not find each other");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    peers
}

async fn run(isolation: Isolation) {
    let dir = tempfile::tempdir().expect("temp dir");
    let peers = mesh(dir.path(), &isolation).await;
    let client = Client::connect(peers[0].addr.to_string()).await.expect("client");
    let wasm = empty_guest();

    // Warm-up: every peer compiles the module once.
    let warm = Job::builder().module_bytes(wasm.clone()).tasks((0..50).map(|_| Vec::new())).quorum(QUORUM).build().expect("job");
    let id = client.submit(&warm).await.expect("submit");
    assert_eq!(client.wait(&id).await.expect("wait").state, JobState::Completed);

    // Latency: submit one task, wait for its verified result.
    let mut latencies = Vec::new();
    for _ in 0..LATENCY_SAMPLES {
        let job = Job::builder().module_bytes(wasm.clone()).task(Vec::new()).quorum(QUORUM).build().expect("job");
        let t = Instant::now();
        let id = client.submit(&job).await.expect("submit");
        let mut results = client.results(&id).await.expect("results");
        let first = results.next().await.expect("a result").expect("result");
        latencies.push(t.elapsed());
        assert_eq!(first.verified_by.len(), QUORUM as usize);
    }
    latencies.sort();

    // Throughput: many tiny tasks.
    let job = Job::builder()
        .module_bytes(wasm)
        .tasks((0..THROUGHPUT_TASKS).map(|_| Vec::new()))
        .quorum(QUORUM)
        .build()
        .expect("job");
    let t = Instant::now();
    let id = client.submit(&job).await.expect("submit");
    let submitted = t.elapsed();
    let status = client.wait(&id).await.expect("wait");
    let total = t.elapsed();
    assert_eq!(status.state, JobState::Completed);
    let counts = status.tasks;
    assert_eq!(counts.verified as usize, THROUGHPUT_TASKS);
    let ran = total - submitted;

    println!();
    let on = match isolation {
        Isolation::Processes(_) => "tasks in slot processes",
        _ => "tasks on slot threads",
    };
    println!("mesh benchmark: {PEERS} in-process peers on loopback, 1 slot each, quorum {QUORUM}, `empty` guest, {on}");
    println!("| figure | value |");
    println!("| --- | ---: |");
    println!("| tasks verified | {THROUGHPUT_TASKS} ({} replicas) |", THROUGHPUT_TASKS * QUORUM as usize);
    println!("| submit ({THROUGHPUT_TASKS} inputs) | {:.0} ms |", submitted.as_secs_f64() * 1e3);
    println!("| submit accepted to all verified | {:.0} ms |", ran.as_secs_f64() * 1e3);
    println!("| verified tasks per second | {:.0} |", THROUGHPUT_TASKS as f64 / ran.as_secs_f64());
    println!(
        "| submit to first verified result, median of {LATENCY_SAMPLES} (p90) | {:.1} ms ({:.1} ms) |",
        latencies[latencies.len() / 2].as_secs_f64() * 1e3,
        latencies[latencies.len() * 9 / 10].as_secs_f64() * 1e3
    );
    for p in peers {
        p.shutdown().await;
    }
}

fn main() {
    // `cargo test --benches` runs bench targets without `--bench`: keep that a quick no-op.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(run(Isolation::Processes(env!("CARGO_BIN_EXE_spare").into())));
    rt.block_on(run(Isolation::Threads));
}
