//! `spare sim`: simulates a whole mesh of virtual peers in this process, driving the real
//! membership, coordinator and pulling code on a seeded virtual network and clock, and reports
//! what happened (see `spare_protocol::sim`): with loss, churn, the origin crashing
//! (`--crash-origin-at`) or a network partition (`--partition-at`, `--heal-at`). The same seed
//! gives the same report; what the run cost this machine (`wall_seconds`, `cpu_seconds`,
//! `peak_memory_bytes`) is added to it and varies.

use std::fmt::Write;
use std::process::ExitCode;

use clap::Args;
use spare_protocol::Diversity;

use crate::config::DiversityName;
use spare_protocol::sim::{self, Report, SimConfig};

/// Options of `spare sim`.
#[derive(Args, Debug)]
pub struct SimArgs {
    /// Virtual peers at the start, the job's origin included.
    #[arg(long, default_value_t = 1000)]
    peers: u32,
    /// Every peer starts at once and joins through its cell's bootstrap peers while the job
    /// starts (the join wave), instead of the job coming to a mesh that formed before.
    #[arg(long)]
    cold_start: bool,
    /// Tasks in the job [default: 10 × peers, at most the 100,000 a job may have].
    #[arg(long)]
    tasks: Option<u32>,
    /// Distinct agreeing peers needed to verify a task.
    #[arg(long, default_value_t = 2)]
    quorum: u32,
    /// Most replicas of one task before it is inconclusive.
    #[arg(long, default_value_t = 5)]
    max_replicas: u32,
    /// Fraction of the peers that lie (each with its own wrong answers).
    #[arg(long, default_value_t = 0.0)]
    liars: f64,
    /// Liars collude: they all give the same wrong answer for a task.
    #[arg(long)]
    collude: bool,
    /// Liars answer honestly for their first N replicas, then lie ("sleepers", who earn the
    /// trust adaptive replication gives before they abuse it).
    #[arg(long, value_name = "N", default_value_t = 0)]
    liars_honest_for: u32,
    /// The liars ask for leases from N /24 networks between them (many keys, few networks)
    /// [default: each from its own, as honest peers do].
    #[arg(long, value_name = "N")]
    liar_networks: Option<u32>,
    /// How far apart coordinators keep the replicas of one task: distinct /24 networks
    /// (`prefix`), distinct /16 (`wide`) or distinct keys only (`off`).
    #[arg(long, value_enum, default_value_t = DiversityName::Prefix)]
    diversity: DiversityName,
    /// Adaptive replication: a peer with at least MIN_AGREED agreeing results (and no
    /// disagreement) at the coordinator may run a task alone. Off by default; at least 10.
    #[arg(long, value_name = "MIN_AGREED")]
    adaptive: Option<u32>,
    /// Agreements every initial peer (liars included) already has at the coordinator, as if
    /// earned on earlier jobs: a fresh coordinator starts every task once before any second
    /// replica, so within one job trust comes late.
    #[arg(long, value_name = "N", default_value_t = 0)]
    history: u32,
    /// With --adaptive: the fraction of a trusted peer's lone tasks that still get the full
    /// quorum (spot checks), in [0, 1]; kept to thousandths.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.1)]
    spot_check: f64,
    /// Probability that any one message is lost.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Fraction of the peers that crash per virtual minute while the job runs (as many fresh
    /// peers join). The job's coordinators are spared unless --churn-coordinators.
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Let --churn crash the job's coordinators too (the origin, its backups, their
    /// replacements).
    #[arg(long)]
    churn_coordinators: bool,
    /// Crash the origin (the job's first coordinator) this many virtual seconds after the job
    /// starts; a backup coordinator has to take the job over.
    #[arg(long, value_name = "SECS")]
    crash_origin_at: Option<f64>,
    /// Restart the crashed origin at this virtual time, in seconds, on what it had recorded
    /// (after --crash-origin-at): it takes its job back from the coordinator that took over.
    #[arg(long, value_name = "SECS", requires = "crash_origin_at")]
    restart_origin_at: Option<f64>,
    /// Split the network in two this many virtual seconds after the job starts: every message
    /// between the sides is lost (the origin, its second backup and the peers of even index on
    /// one side; its first backup and the peers of odd index on the other).
    #[arg(long, value_name = "SECS")]
    partition_at: Option<f64>,
    /// Heal the partition at this virtual time, in seconds (after --partition-at); without it
    /// the partition lasts to the end of the run.
    #[arg(long, value_name = "SECS", requires = "partition_at")]
    heal_at: Option<f64>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Most peers per membership cell: a larger mesh is simulated as cells of this size
    /// bridged by the job's coordinators (full SWIM views of every peer cost N² memory).
    #[arg(long, default_value_t = 100)]
    cell_size: u32,
    /// Sandbox slots per peer.
    #[arg(long, default_value_t = 1)]
    slots: u32,
    /// Stop at this virtual time even if the job has not finished.
    #[arg(long, default_value_t = 600)]
    max_virtual_seconds: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: SimArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = SimConfig::new(a.peers);
    // Ten tasks a peer, within what a coordinator takes in one job (so `--peers 100000` runs).
    let max_tasks = spare_protocol::PolicyCaps::default().max_tasks;
    cfg.tasks = a.tasks.unwrap_or_else(|| a.peers.saturating_mul(10).min(max_tasks));
    cfg.quorum = a.quorum;
    cfg.max_replicas = a.max_replicas;
    cfg.liars = a.liars;
    cfg.collude = a.collude;
    cfg.cold_start = a.cold_start;
    cfg.liars_honest_for = a.liars_honest_for;
    cfg.liar_networks = a.liar_networks;
    cfg.diversity = Diversity::from(a.diversity);
    cfg.adaptive = a.adaptive;
    cfg.history = a.history;
    if !(0.0..=1.0).contains(&a.spot_check) {
        anyhow::bail!("--spot-check must be a fraction in [0, 1]");
    }
    cfg.spot_check_per_mille = (a.spot_check * 1_000.0).round() as u32;
    cfg.loss = a.loss;
    cfg.churn = a.churn;
    cfg.churn_coordinators = a.churn_coordinators;
    if let Some(secs) = a.crash_origin_at {
        if !(0.0..=1e6).contains(&secs) {
            anyhow::bail!("--crash-origin-at must be between 0 and 1,000,000 seconds");
        }
        cfg.crash_origin_at_ms = Some((secs * 1_000.0).round() as u64);
    }
    for (flag, secs, field) in [
        ("--restart-origin-at", a.restart_origin_at, &mut cfg.restart_origin_at_ms),
        ("--partition-at", a.partition_at, &mut cfg.partition_at_ms),
        ("--heal-at", a.heal_at, &mut cfg.heal_at_ms),
    ] {
        if let Some(secs) = secs {
            if !(0.0..=1e6).contains(&secs) {
                anyhow::bail!("{flag} must be between 0 and 1,000,000 seconds");
            }
            *field = Some((secs * 1_000.0).round() as u64);
        }
    }
    cfg.seed = a.seed;
    cfg.cell_size = a.cell_size;
    cfg.slots = a.slots;
    cfg.max_virtual_ms = a.max_virtual_seconds.saturating_mul(1_000);
    let started = std::time::Instant::now();
    let report = sim::run(&cfg)?;
    let cost = Cost::of_this_process(started.elapsed().as_secs_f64());
    if a.json {
        let mut out = serde_json::to_value(&report)?;
        if let Some(fields) = out.as_object_mut() {
            fields.insert("wall_seconds".into(), round3(cost.wall_seconds).into());
            fields.insert("cpu_seconds".into(), round3(cost.cpu_seconds).into());
            fields.insert("peak_memory_bytes".into(), cost.peak_memory_bytes.into());
        }
        println!("{}", serde_json::to_string(&out)?);
    } else {
        print!("{}", table(&report));
        println!(
            "  {:<26} {:.1} s wall, {:.1} s CPU, {:.0} MB peak memory",
            "this run cost",
            cost.wall_seconds,
            cost.cpu_seconds,
            cost.peak_memory_bytes as f64 / 1e6
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The report as a short table for people.
fn table(r: &Report) -> String {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let rows: Vec<(&str, String)> = vec![
        ("peers / tasks", format!("{} / {}{}", r.peers, r.tasks, if r.cold_start { " (cold start)" } else { "" })),
        ("quorum / max replicas", format!("{} / {}", r.quorum, r.max_replicas)),
        (
            "liars",
            format!(
                "{}{}{}",
                r.liars,
                if r.collude { " (colluding)" } else { "" },
                if r.liars_honest_for > 0 { format!(", honest for their first {}", r.liars_honest_for) } else { String::new() }
            ),
        ),
        (
            "replica diversity",
            format!(
                "{:?}{}",
                r.diversity,
                r.liar_networks.map(|n| format!(" (liars in {n} /24 networks)")).unwrap_or_default()
            ),
        ),
        (
            "adaptive replication",
            match r.adaptive {
                Some(m) => format!(
                    "min agreed {m}, spot checks {}‰, history {}",
                    r.spot_check_per_mille, r.history
                ),
                None => "off".into(),
            },
        ),
        ("loss / churn per minute", format!("{} / {}", r.loss, r.churn)),
        ("completed", format!("{} ({})", if r.completed { "yes" } else { "no" }, r.job_state)),
        ("job time", opt(r.job_seconds.map(|s| format!("{s:.1} s")))),
        ("virtual time", format!("{:.1} s", r.virtual_seconds)),
        ("gossip rounds to converge", opt(r.gossip_rounds_to_converge.map(|r| r.to_string()))),
        (
            "bytes/peer/s mean / max",
            format!("{:.0} / {:.0}", r.bytes_per_peer_per_second.mean, r.bytes_per_peer_per_second.max),
        ),
        (
            "gossip bytes/peer/s",
            format!("{:.0} / {:.0}", r.gossip_bytes_per_peer_per_second.mean, r.gossip_bytes_per_peer_per_second.max),
        ),
        ("steady gossip bytes/peer/s", opt(r.steady_gossip_bytes_per_peer_per_second.map(|b| format!("{b:.0}")))),
        ("origin bytes/s", format!("{:.0}", r.origin_bytes_per_second)),
        ("never heard the job", r.never_heard_job.to_string()),
        ("replicas per task", format!("{:.3}", r.replicas_per_task)),
        ("verified / wrong", format!("{} / {}", r.verified, r.wrong_verified)),
        ("lone verdicts / wrong", format!("{} / {}", r.lone_verified, r.wrong_lone)),
        ("inconclusive / failed", format!("{} / {}", r.inconclusive, r.failed)),
        ("lease lapses", r.lease_lapses.to_string()),
        ("banned liars / honest", format!("{} / {}", r.banned_liars, r.banned_honest)),
        ("crashes / joins / restarts", format!("{} / {} / {}", r.crashes, r.joins, r.restarts)),
        ("messages (lost)", format!("{} ({})", r.messages, r.messages_lost)),
        ("membership cells", format!("{} of up to {} peers", r.membership_cells, r.membership_cell_size)),
        ("origin protected", r.origin_protected.to_string()),
        (
            "coordinator takeovers",
            match r.takeover_ms {
                Some(ms) => format!("{} (first lease after {ms} ms at most)", r.coordinator_takeovers),
                None => r.coordinator_takeovers.to_string(),
            },
        ),
        ("leaders at the end", r.leaders_at_end.to_string()),
        ("overturned / repl. dropped", format!("{} / {}", r.verdicts_overturned, r.replication_dropped)),
        ("verdicts differing / missing", format!("{} / {}", r.verdicts_differing, r.verdicts_missing)),
    ];
    let mut out = format!("spare sim, seed {}\n", r.seed);
    for (k, v) in rows {
        let _ = writeln!(out, "  {k:<26} {v}");
    }
    out
}

/// What a run cost this machine (the figures the simulator's speed is judged by).
struct Cost {
    wall_seconds: f64,
    /// User and system CPU time of the whole process.
    cpu_seconds: f64,
    /// Peak resident memory of the whole process.
    peak_memory_bytes: u64,
}

impl Cost {
    fn of_this_process(wall_seconds: f64) -> Cost {
        // SAFETY: getrusage only writes the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0;
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Cost {
            wall_seconds,
            cpu_seconds: if ok { secs(usage.ru_utime) + secs(usage.ru_stime) } else { 0.0 },
            // Linux gives kilobytes.
            peak_memory_bytes: if ok { u64::try_from(usage.ru_maxrss).unwrap_or(0).saturating_mul(1024) } else { 0 },
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1_000.0).round() / 1_000.0
}
