//! `spare results`: writes each verified output to `DIR/<index>` and says why tasks have no
//! verified result, grouped by reason.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use futures::StreamExt;
use spare_sdk::{Failures, Reason};

/// Options of `spare results`.
#[derive(Args, Debug)]
pub struct ResultsArgs {
    /// The peer to ask.
    #[arg(long, default_value = super::DEFAULT_PEER, env = "SPARE_PEER")]
    peer: String,
    /// The job id, or a unique start of it (as `spare` prints it short).
    job: String,
    /// Directory to write one file per task into, named by the task's index (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Take what is verified now instead of waiting for the job to end.
    #[arg(long)]
    no_wait: bool,
    /// Write into --out even if it already holds files (files named like a task's index are
    /// replaced).
    #[arg(long)]
    force: bool,
}

/// Makes `dir` (if missing) and refuses one that holds anything, unless `force`.
fn out_dir(dir: &std::path::Path, force: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create --out {}: {e}", dir.display()))?;
    let mut entries = std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("cannot read --out {}: {e}", dir.display()))?;
    if !force && entries.next().is_some() {
        anyhow::bail!(
            "--out {} is not empty, and results would overwrite files named by task index there; give an empty or new directory, or add --force",
            dir.display()
        );
    }
    Ok(())
}

/// Most unfinished tasks named one by one; the rest are counted.
const NAMED: usize = 20;
/// Most failure reasons listed one by one; the rest are counted on one line.
const REASONS_SHOWN: usize = 10;

pub async fn run(a: ResultsArgs) -> anyhow::Result<ExitCode> {
    let client = super::connect(&a.peer).await?;
    let id = super::job_id(&client, &a.job).await?;
    let err = |e| super::sdk_error(e, &a.peer);
    let status = client.status(&id).await.map_err(err)?;
    let total = status.tasks.total;
    out_dir(&a.out, a.force)?;
    let bar = super::progress::bar(u64::from(total), false);
    bar.set_message("· results");
    let mut results = if a.no_wait {
        client.results_now(&id).await.map(StreamExt::boxed)
    } else {
        client.results(&id).await.map(StreamExt::boxed)
    }
    .map_err(err)?;
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
        if r.is_verified() {
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
