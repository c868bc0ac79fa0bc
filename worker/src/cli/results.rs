//! `spare results`: writes each verified output to `DIR/<index>` and says why tasks have no
//! verified result, grouped by reason.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use futures::StreamExt;
use spare_sdk::{Failures, JobId, Reason, TaskState};

/// Options of `spare results`.
#[derive(Args, Debug)]
pub struct ResultsArgs {
    /// The peer to ask.
    #[arg(long, default_value = super::DEFAULT_PEER, env = "SPARE_PEER")]
    peer: String,
    /// The job id.
    job: String,
    /// Directory to write one file per task into, named by the task's index (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Take what is verified now instead of waiting for the job to end.
    #[arg(long)]
    no_wait: bool,
}

/// Most unfinished tasks named one by one; the rest are counted.
const NAMED: usize = 20;
/// Most failure reasons listed one by one; the rest are counted on one line.
const REASONS_SHOWN: usize = 10;

pub async fn run(a: ResultsArgs) -> anyhow::Result<ExitCode> {
    let id: JobId = a.job.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let err = |e: spare_sdk::Error| anyhow::anyhow!("{e}");
    let client = super::connect(&a.peer).await?;
    let status = client.status(&id, false).await.map_err(err)?;
    let total = status.tasks.unwrap_or_default().total;
    tokio::fs::create_dir_all(&a.out).await.map_err(|e| anyhow::anyhow!("{}: {e}", a.out.display()))?;
    let bar = super::progress::bar(u64::from(total), false);
    bar.set_message("· results");
    let mut results = client.results_from(&id, 0, !a.no_wait).await.map_err(err)?;
    let mut got = vec![false; total as usize];
    let mut failures = Failures::default();
    let mut written = 0u64;
    while let Some(r) = results.next().await {
        let r = r.map_err(err)?;
        bar.inc(1);
        let Some(seen) = got.get_mut(r.index as usize) else {
            anyhow::bail!("the peer sent a result for task {} of a {total}-task job", r.index);
        };
        *seen = true;
        if r.state() == TaskState::Verified {
            let path = a.out.join(r.index.to_string());
            tokio::fs::write(&path, &r.output).await.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            written += 1;
        } else {
            failures.add(Reason::of_result(&r), r.index);
        }
    }
    bar.finish_and_clear();
    let missing: Vec<u32> = (0..total).filter(|i| !got[*i as usize]).collect();
    eprintln!("wrote {written} of {total} verified outputs to {}", a.out.display());
    if failures.is_empty() && missing.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    if !failures.is_empty() {
        eprintln!("tasks without a verified result: {}", failures.total());
        for line in failures.lines(REASONS_SHOWN) {
            eprintln!("  {line}");
        }
        eprintln!("`spare logs {id} TASK` shows a task's stderr");
    }
    if !missing.is_empty() {
        let more = missing.len().saturating_sub(NAMED);
        let named = missing.iter().take(NAMED).map(u32::to_string).collect::<Vec<_>>().join(", ");
        eprintln!(
            "tasks not finished yet: {named}{}",
            if more > 0 { format!(" and {more} more") } else { String::new() }
        );
    }
    Ok(ExitCode::FAILURE)
}
