//! `spare logs`: what a job's tasks wrote to stderr (the tail the peer keeps of the run that
//! decided each task), to see why a task failed.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use futures::StreamExt;
use spare_sdk::task_state_name;

/// Options of `spare logs`.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The peer to ask.
    #[arg(long, default_value = super::DEFAULT_PEER, env = "SPARE_PEER")]
    peer: String,
    /// The job id, or a unique start of it (as `spare` prints it short).
    job: String,
    /// Only this task (its index); its stderr goes to stdout as it is.
    task: Option<u32>,
    /// Verified tasks too (by default only tasks without a verified result are shown).
    #[arg(long)]
    all: bool,
}

/// `verified`, or `failed, exited 2: `bad input``.
fn describe(r: &spare_sdk::TaskResult) -> String {
    match r.reason() {
        None => "verified".to_string(),
        Some(why) => format!("{}, {why}", task_state_name(r.state)),
    }
}

pub async fn run(a: LogsArgs) -> anyhow::Result<ExitCode> {
    let client = super::connect(&a.peer).await?;
    let id = super::job_id(&client, &a.job).await?;
    let err = |e| super::sdk_error(e, &a.peer);
    let from = a.task.unwrap_or(0);
    if let Some(task) = a.task {
        let total = client.status(&id).await.map_err(err)?.tasks.total;
        anyhow::ensure!(task < total, "job {id} has {total} tasks (0 to {}); there is no task {task}", total.saturating_sub(1));
    }
    let mut results = client.results_now_from(&id, from).await.map_err(err)?;
    let mut stdout = std::io::stdout().lock();
    let mut shown = 0u64;
    while let Some(r) = results.next().await {
        let r = r.map_err(err)?;
        if let Some(task) = a.task {
            if r.index != task {
                break;
            }
            eprintln!("task {task}: {}", describe(&r));
            if r.stderr.is_empty() {
                eprintln!("task {task} wrote nothing to stderr");
            }
            stdout.write_all(r.stderr.as_bytes())?;
            return Ok(ExitCode::SUCCESS);
        }
        if r.stderr.is_empty() || (r.is_verified() && !a.all) {
            continue;
        }
        writeln!(stdout, "── task {}: {}", r.index, describe(&r))?;
        stdout.write_all(r.stderr.as_bytes())?;
        if !r.stderr.ends_with('\n') {
            writeln!(stdout)?;
        }
        shown += 1;
    }
    if let Some(task) = a.task {
        anyhow::bail!("task {task} of job {id} has no result yet; `spare status {id}` shows where it is");
    }
    if shown == 0 {
        let which = if a.all { "" } else { " without a verified result (--all shows verified ones too)" };
        eprintln!("no task{which} wrote to stderr");
    }
    Ok(ExitCode::SUCCESS)
}
