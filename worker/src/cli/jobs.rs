//! `spare jobs`: the jobs a peer holds, newest first, with state and progress; and `spare
//! cancel`, which stops one (its owner only); `spare whoami`, the client key that owns jobs.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use serde_json::json;
use spare_sdk::{JobState, JobStatus, state_name};

use super::progress::done;
use super::units::show_duration;

/// Options of `spare jobs`.
#[derive(Args, Debug)]
pub struct JobsArgs {
    /// The peer to ask (it lists the jobs it holds: submitted to it, or coordinated by it).
    #[arg(long, default_value = super::DEFAULT_PEER, env = "SPARE_PEER")]
    peer: String,
    /// Most jobs to list (the peer lists at most 1,000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// How long ago a Unix-millisecond time was: `3m 12s ago`.
fn ago(ms: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    format!("{} ago", show_duration(Duration::from_millis(now.saturating_sub(ms))))
}

/// A job as one JSON object of `spare jobs --json`.
fn job_json(j: &JobStatus) -> serde_json::Value {
    let c = j.tasks;
    json!({
        "job_id": j.job_id,
        "state": state_name(j.state),
        "label": j.label,
        "submitted_at_ms": j.submitted_at_ms,
        "message": j.message,
        "tasks": {
            "total": c.total, "done": done(&c), "pending": c.pending, "running": c.running,
            "verified": c.verified, "inconclusive": c.inconclusive, "failed": c.failed,
        },
    })
}

pub async fn run(a: JobsArgs) -> anyhow::Result<ExitCode> {
    let client = super::connect(&a.peer).await?;
    let jobs = client.list(a.limit).await.map_err(|e| super::sdk_error(e, &a.peer))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&jobs.iter().map(job_json).collect::<Vec<_>>())?);
        return Ok(ExitCode::SUCCESS);
    }
    if jobs.is_empty() {
        eprintln!("{} holds no jobs; submit one with `spare submit MODULE --input FILE`", a.peer);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<12}  {:<9}  {:>15}  {:>6}  {:<14}  label", "job", "state", "done", "failed", "submitted");
    for j in &jobs {
        let c = j.tasks;
        let pct = if c.total == 0 { 0.0 } else { done(&c) as f64 * 100.0 / f64::from(c.total) };
        println!(
            "{:<12}  {:<9}  {:>15}  {:>6}  {:<14}  {}",
            j.job_id.as_str().get(..12).unwrap_or(j.job_id.as_str()),
            state_name(j.state),
            format!("{}/{} {pct:>3.0}%", done(&c), c.total),
            c.failed + c.inconclusive,
            ago(j.submitted_at_ms),
            j.label
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Options of `spare cancel`.
#[derive(Args, Debug)]
pub struct CancelArgs {
    /// The peer to ask (any peer passes it to the job's coordinators).
    #[arg(long, default_value = super::DEFAULT_PEER, env = "SPARE_PEER")]
    peer: String,
    /// The job id, or a unique start of it (as `spare` prints it short).
    job: String,
}

pub async fn cancel(a: CancelArgs) -> anyhow::Result<ExitCode> {
    let client = super::connect(&a.peer).await?;
    let id = super::job_id(&client, &a.job).await?;
    let status = client.cancel(&id).await.map_err(|e| super::sdk_error(e, &a.peer))?;
    let c = status.tasks;
    match status.state {
        JobState::Cancelled => {
            println!("cancelled job {id}: {} of {} tasks had ended; no more will run", done(&c), c.total);
            Ok(ExitCode::SUCCESS)
        }
        state => {
            eprintln!("job {id} had already ended ({}); there was nothing to cancel", state_name(state));
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Options of `spare whoami`.
#[derive(Args, Debug)]
pub struct WhoamiArgs {
    /// One JSON object: `{"key": HEX, "path": FILE}`.
    #[arg(long)]
    json: bool,
}

/// Prints the client key (made now if there is none yet) and where it is kept.
pub fn whoami(a: WhoamiArgs) -> anyhow::Result<ExitCode> {
    let id = super::identity()?;
    let path = id.path().map(|p| p.display().to_string()).unwrap_or_default();
    if a.json {
        println!("{}", json!({ "key": id.public_hex(), "path": path }));
    } else {
        println!("{}", id.public_hex());
        eprintln!("(client key {path}: jobs submitted with it are yours, and only it can cancel them)");
    }
    Ok(ExitCode::SUCCESS)
}
