//! Counts the primes below ten million on a Spare mesh.
//!
//! Splits `0..10_000_000` into 100 tasks for `examples/wasm/primes.wasm` (each reads `"LO HI\n"`
//! and prints how many primes lie in `LO..HI`, in decimal, followed by `"\n"`), submits them with
//! quorum 1 to the peer at `$SPARE_PEER` (default `127.0.0.1:7070`), prints progress from
//! `watch_progress` (each task counted once), then adds up the verified counts from `results`.
//!
//! Run with `cargo run -p spare-sdk --example primes` while a peer is running.

use anyhow::{Context, bail};
use futures::StreamExt;
use spare_sdk::{Client, Event, Job, state_name, task_state_name};

const MODULE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/wasm/primes.wasm");
const LIMIT: u64 = 10_000_000;
const TASKS: u64 = 100;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::var("SPARE_PEER").unwrap_or_else(|_| "127.0.0.1:7070".to_string());
    let client = Client::connect(addr).await?;

    let job = Job::builder()
        .module_file(MODULE)
        .range(0..LIMIT, LIMIT / TASKS)
        .quorum(1)
        .label("primes below 10 000 000")
        .build()?;
    let id = client.submit(&job).await?;
    println!("submitted job {id} ({} tasks)", job.task_count());

    let mut events = client.watch_progress(&id).await?;
    while let Some(event) = events.next().await {
        let (event, progress) = event?;
        let (done, total) = (progress.done, progress.total);
        match event {
            Event::Snapshot(status) => {
                println!("{}: {done}/{total} tasks done", state_name(status.state));
            }
            Event::TaskDone(task) => {
                println!(
                    "task {:3} {:12} ({done}/{total})",
                    task.index,
                    task_state_name(task.state)
                );
            }
            Event::Finished(status) => {
                println!("job {}", state_name(status.state));
                if !status.message.is_empty() {
                    println!("  {}", status.message);
                }
            }
        }
    }

    let mut results = client.results(&id).await?;
    let mut total = 0u64;
    let mut verified = 0u64;
    while let Some(result) = results.next().await {
        let result = result?;
        if let Some(why) = result.reason() {
            bail!("task {} is {}: {why}", result.index, task_state_name(result.state));
        }
        let text = String::from_utf8_lossy(&result.output);
        let count: u64 = text
            .trim()
            .parse()
            .with_context(|| format!("task {} printed {text:?}", result.index))?;
        total += count;
        verified += 1;
    }
    if verified != TASKS {
        bail!("only {verified} of {TASKS} tasks have results");
    }
    println!("{total} primes below {LIMIT}");
    Ok(())
}
