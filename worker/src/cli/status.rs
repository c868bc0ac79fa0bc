//! `spare status`: a job's state and task counts, optionally every task, as text or JSON.

use std::process::ExitCode;

use clap::Args;
use serde_json::{Value, json};
use spare_sdk::{JobStatus, Outcome, state_name, task_state_name};

use super::units::{show_duration, show_size};

/// Options of `spare status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The peer to ask.
    #[arg(long, default_value = super::DEFAULT_PEER, env = "SPARE_PEER")]
    peer: String,
    /// The job id, or a unique start of it (as `spare` prints it short).
    job: String,
    /// Also list every task: its state, output hash, the peers that verified it, its error.
    #[arg(long)]
    tasks: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Follow the job live until it ends (rate and ETA; a line every few seconds when stderr is
    /// not a terminal), then show its status; exits non-zero unless it completed.
    #[arg(long)]
    watch: bool,
}

pub async fn run(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = super::connect(&a.peer).await?;
    let id = super::job_id(&client, &a.job).await?;
    let err = |e| super::sdk_error(e, &a.peer);
    let get = async |tasks: bool| if tasks { client.status_with_tasks(&id).await } else { client.status(&id).await };
    let mut status = get(a.tasks).await.map_err(err)?;
    let mut code = ExitCode::SUCCESS;
    if a.watch {
        let bar = super::progress::bar(u64::from(status.tasks.total), false);
        super::progress::follow(&client, &id, &bar, true).await?;
        status = get(a.tasks).await.map_err(err)?;
        if status.state != spare_sdk::JobState::Completed {
            code = ExitCode::FAILURE;
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&status_json(&status, a.tasks))?);
    } else {
        if !a.tasks && status.has_failures() {
            // The reasons are in the task list.
            status = client.status_with_tasks(&id).await.map_err(err)?;
        }
        print!("{}", status_text(&status, a.tasks));
    }
    Ok(code)
}

/// Most reasons listed one by one in text; the rest are counted on one line.
const REASONS_SHOWN: usize = 10;

/// The job's failed tasks grouped by reason, one line each (empty without a task list).
pub fn failure_lines(s: &JobStatus) -> Vec<String> {
    s.failures().lines(REASONS_SHOWN)
}

/// The kind of an outcome as a word (`exited`, `trapped`, `out_of_fuel`…) and its exit code.
pub fn outcome_kind(o: Outcome) -> (&'static str, i32) {
    match o {
        Outcome::Exited(code) => ("exited", code),
        Outcome::Trapped => ("trapped", 0),
        Outcome::OutOfFuel => ("out_of_fuel", 0),
        Outcome::MemoryLimit => ("memory_limit", 0),
        Outcome::OutputTooLarge => ("output_too_large", 0),
        Outcome::Deadline => ("deadline", 0),
        Outcome::InvalidModule => ("invalid_module", 0),
        _ => ("unspecified", 0),
    }
}

fn outcome_json(o: Outcome, message: &str) -> Value {
    let (kind, exit_code) = outcome_kind(o);
    json!({ "kind": kind, "exit_code": exit_code, "message": message })
}

/// The name of a job's network diversity (`unspecified` for a job stored before jobs asked for
/// one: its coordinator's default applies).
fn diversity_name(d: spare_sdk::Diversity) -> &'static str {
    match d {
        spare_sdk::Diversity::Unspecified => "unspecified",
        spare_sdk::Diversity::Prefix => "prefix",
        spare_sdk::Diversity::Wide => "wide",
        spare_sdk::Diversity::Off => "off",
    }
}

/// A job's status as the JSON object `spare status --json` prints.
pub fn status_json(s: &JobStatus, with_tasks: bool) -> Value {
    let c = s.tasks;
    let p = &s.policy;
    let l = p.limits.unwrap_or_default();
    let mut v = json!({
        "job_id": s.job_id,
        "state": state_name(s.state),
        "label": s.label,
        "message": s.message,
        "module_id": s.module_id,
        "origin": s.origin,
        "owner": s.owner,
        "submitted_at_ms": s.submitted_at_ms,
        // The peers that coordinate it as the answering peer knows them, the active one first.
        "coordinators": s.coordinators,
        "policy": {
            "quorum": p.quorum, "max_replicas": p.max_replicas, "priority": p.priority,
            "memory_bytes": l.memory_bytes, "fuel": l.fuel, "timeout_ms": l.timeout_ms, "output_bytes": l.output_bytes,
            "diversity": diversity_name(p.diversity()),
        },
        "tasks": {
            "total": c.total, "pending": c.pending, "running": c.running,
            "verified": c.verified, "inconclusive": c.inconclusive, "failed": c.failed,
        },
    });
    if with_tasks {
        let list: Vec<Value> = s
            .task_list
            .iter()
            .map(|t| {
                json!({
                    "index": t.index,
                    "state": task_state_name(t.state),
                    "output_hash": t.output_hash,
                    "verified_by": t.verified_by,
                    "error": t.error,
                    "stderr_line": t.stderr_line,
                    "outcome": t.outcome.map(|o| outcome_json(o, &t.message)),
                    "attestations": t.attestations,
                })
            })
            .collect();
        v["task_list"] = Value::Array(list);
    }
    v
}

/// A job's status as text.
pub fn status_text(s: &JobStatus, with_tasks: bool) -> String {
    use std::fmt::Write;
    let c = s.tasks;
    let mut out = String::new();
    let label = if s.label.is_empty() { String::new() } else { format!("  ({})", s.label) };
    let _ = writeln!(out, "job    {}{label}", s.job_id);
    let _ = writeln!(out, "state  {}", state_name(s.state));
    if !s.message.is_empty() {
        let _ = writeln!(out, "note   {}", s.message);
    }
    {
        let p = &s.policy;
        let l = p.limits.unwrap_or_default();
        let _ = writeln!(
            out,
            "policy quorum {}, at most {} replicas, diversity {}; per task: fuel {}, memory {}, timeout {}, output {}",
            p.quorum,
            p.max_replicas,
            diversity_name(p.diversity()),
            if l.fuel >= spare_protocol::Limits::NO_FUEL_BUDGET { "none".to_string() } else { l.fuel.to_string() },
            show_size(l.memory_bytes),
            show_duration(std::time::Duration::from_millis(l.timeout_ms)),
            show_size(l.output_bytes)
        );
    }
    let _ = writeln!(
        out,
        "tasks  {} total: {} verified, {} running, {} pending, {} failed, {} inconclusive",
        c.total, c.verified, c.running, c.pending, c.failed, c.inconclusive
    );
    for line in failure_lines(s) {
        let _ = writeln!(out, "why    {line}");
    }
    if s.has_failures() {
        let _ = writeln!(out, "       (`spare logs {} TASK` shows a task's stderr)", s.job_id);
    }
    if with_tasks {
        let _ = writeln!(out, "{:>7}  {:<12}  {:<16}  {:<20}  error", "index", "state", "output", "verified by");
        for t in &s.task_list {
            let hash = t.output_hash.get(..16).unwrap_or(&t.output_hash);
            let by: Vec<&str> = t.verified_by.iter().map(|p| p.get(..8).unwrap_or(p)).collect();
            let error = t.reason().map_or_else(|| t.error.clone(), |why| why.to_string());
            let _ = writeln!(
                out,
                "{:>7}  {:<12}  {:<16}  {:<20}  {}",
                t.index,
                task_state_name(t.state),
                hash,
                by.join(","),
                error
            );
        }
    }
    out
}
