//! `spare submit`: one task per input (per file, per file of a directory, or per line), all
//! running one module; optionally waits for the job with a live progress bar.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use spare_sdk::{Job, JobState};

use crate::config::DiversityName;

/// Options of `spare submit`.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("inputs").required(true).args(["input", "inputs_dir", "stdin_lines"])))]
pub struct SubmitArgs {
    /// The peer to submit to.
    #[arg(long, default_value = super::DEFAULT_PEER, env = "SPARE_PEER")]
    peer: String,
    /// The WebAssembly module (a WASI preview 1 command) every task runs.
    module: PathBuf,
    /// A file whose bytes are one task's stdin (repeatable: one task per file).
    #[arg(long, num_args = 1.., value_name = "FILE")]
    input: Vec<PathBuf>,
    /// A directory: one task per regular file, in file-name order.
    #[arg(long, value_name = "DIR")]
    inputs_dir: Option<PathBuf>,
    /// A text file: one task per non-empty line (the line and its newline are the stdin).
    #[arg(long, value_name = "FILE")]
    stdin_lines: Option<PathBuf>,
    /// Distinct peers that must agree on each task's output (1 trusts a single peer).
    #[arg(long, default_value_t = 2, value_parser = super::units::quorum, allow_negative_numbers = true)]
    quorum: u32,
    /// Most replicas of one task before it is inconclusive (default: 5, or the quorum if larger).
    #[arg(long)]
    max_replicas: Option<u32>,
    /// Instruction budget per task (deterministic; running out is a result), e.g. 50_000_000_000.
    /// Without it only --timeout stops a task, and tasks run faster (no fuel metering).
    #[arg(long, value_parser = super::units::fuel, allow_negative_numbers = true)]
    fuel: Option<u64>,
    /// Memory limit per task, e.g. 256MiB (checked against what the module starts with).
    #[arg(long, value_name = "SIZE", value_parser = super::units::size)]
    memory: Option<u64>,
    /// Wall-clock limit per replica, e.g. 30s or 2m (a plain number is seconds).
    #[arg(long, value_name = "DURATION", value_parser = super::units::duration, allow_negative_numbers = true)]
    timeout: Option<Duration>,
    /// Largest output per task, e.g. 1MiB.
    #[arg(long, value_name = "SIZE", value_parser = super::units::size)]
    output_bytes: Option<u64>,
    /// Adaptive replication: a peer with at least MIN_AGREED results that agreed with quorum
    /// verdicts at the coordinator (and none that disagreed) may run a task alone. Off by
    /// default; at least 10. See docs/trust.md for the trade-off.
    #[arg(long, value_name = "MIN_AGREED")]
    adaptive: Option<u32>,
    /// With --adaptive: the fraction of a trusted peer's lone tasks that still get the full
    /// quorum (spot checks), in [0, 1]; kept to thousandths.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.1, requires = "adaptive")]
    spot_check: f64,
    /// Higher runs first among jobs competing for slots.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Network diversity of each task's replicas: no two from one /24 or /48 (prefix), one /16
    /// or /32 (wide, stricter), or distinct keys only (off). Default: the peer's `diversity`
    /// setting (prefix unless set). See docs/trust.md.
    #[arg(long, value_enum)]
    diversity: Option<DiversityName>,
    /// An argument passed to every task after argv[0] (repeatable).
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    args: Vec<String>,
    /// An environment variable for every task, as KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// A name shown in status and lists.
    #[arg(long, default_value = "")]
    label: String,
    /// Wait for the job to end, showing progress (a line every few seconds when stderr is not a
    /// terminal); exits non-zero unless it completed.
    #[arg(long)]
    wait: bool,
    /// Print JSON on stdout and nothing else: `{"job_id": …}`, or with --wait the final status.
    #[arg(long)]
    json: bool,
}

/// Warns when the mesh, as the peer sees it, has fewer live peers than the quorum: tasks wait
/// until more peers join.
async fn warn_if_short_of_peers(client: &spare_sdk::Client, quorum: u32) {
    let Ok(peers) = client.peers().await else { return };
    let alive = peers.iter().filter(|p| p.state() == spare_sdk::proto::PeerState::Alive).count().max(1);
    if (quorum as usize) > alive {
        eprintln!(
            "warning: quorum {quorum} needs {quorum} distinct peers, and {} sees {alive} alive; tasks wait until more join (or submit with a smaller --quorum)",
            client.addr()
        );
    }
}

pub async fn run(a: SubmitArgs) -> anyhow::Result<ExitCode> {
    let wasm = super::check::module(&a.module, a.memory)?;
    let mut b = Job::builder().module_bytes(wasm).quorum(a.quorum).priority(a.priority).label(&a.label);
    if !a.input.is_empty() {
        b = b.task_files(a.input.iter().cloned());
    }
    if let Some(dir) = &a.inputs_dir {
        b = b.inputs_dir(dir);
    }
    if let Some(file) = &a.stdin_lines {
        b = b.lines_file(file);
    }
    if let Some(n) = a.max_replicas {
        b = b.max_replicas(n);
    }
    if let Some(d) = a.diversity {
        b = b.diversity(d.into());
    }
    if let Some(f) = a.fuel {
        b = b.fuel(f);
    }
    if let Some(m) = a.memory {
        b = b.memory_bytes(m);
    }
    if let Some(t) = a.timeout {
        b = b.timeout(t);
    }
    if let Some(o) = a.output_bytes {
        b = b.output_bytes(o);
    }
    if let Some(min_agreed) = a.adaptive {
        anyhow::ensure!((0.0..=1.0).contains(&a.spot_check), "--spot-check must be a fraction in [0, 1]");
        b = b.adaptive(min_agreed, (a.spot_check * 1_000.0).round() as u32);
    }
    b = b.args(a.args.iter().cloned());
    for kv in &a.env {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow::anyhow!("--env {kv:?} is not KEY=VALUE"))?;
        b = b.env(k, v);
    }
    let job = b.build().map_err(|e| anyhow::anyhow!("{e}"))?;
    let tasks = job.task_count();
    let client = super::connect(&a.peer).await?;
    let id = client.submit(&job).await.map_err(|e| super::sdk_error(e, &a.peer))?;
    warn_if_short_of_peers(&client, a.quorum).await;
    if !a.wait {
        if a.json {
            println!("{}", serde_json::json!({ "job_id": id.as_str() }));
        } else {
            println!("{id}");
            eprintln!("submitted {tasks} tasks; follow with `spare status {id}`");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !a.json {
        eprintln!("submitted job {id} ({tasks} tasks)");
    }
    let bar = super::progress::bar(tasks as u64, false);
    let mut status = super::progress::follow(&client, &id, &bar, true).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&super::status::status_json(&status, false))?);
    } else {
        if status.has_failures() {
            // The reasons are in the task list.
            status = client.status_with_tasks(&id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        print!("{}", super::status::status_text(&status, false));
    }
    Ok(if status.state == JobState::Completed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
