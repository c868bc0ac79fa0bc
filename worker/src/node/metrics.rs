//! What the peer counts, for its log summary and for Prometheus (`spare peer --metrics ADDR`):
//! counters and histograms move as things happen; gauges of the peer's state (tasks running,
//! leases held, peers alive, paused) are read when scraped. Names follow Prometheus
//! conventions: `spare_…_total` for counters, base units (`_seconds`, `_bytes`).

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use spare_protocol::{Outcome, TaskState};

use super::Node;
use crate::sandbox::RunOutcome;

/// Every `outcome` label of `spare_tasks_run_total`.
const OUTCOMES: [&str; 8] =
    ["success", "exit_nonzero", "trap", "out_of_fuel", "memory_limit", "output_too_large", "deadline", "invalid_module"];

/// One label, `outcome` or `verdict`.
type Label = [(&'static str, &'static str); 1];

/// The peer's metrics.
pub struct Metrics {
    registry: Registry,
    /// Replicas run in this peer's sandbox, by outcome.
    pub tasks_run: Family<Label, Counter>,
    /// Time spent running replicas.
    pub sandbox_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    /// Tasks this peer (as coordinator) decided, by verdict.
    pub tasks_decided: Family<Label, Counter>,
    /// Jobs accepted here as origin.
    pub jobs_accepted: Counter,
    /// Store writes and how long each took to become durable.
    pub store_writes: Counter,
    pub store_write_seconds: Histogram,
    /// Gossip datagram bytes.
    pub gossip_in_bytes: Counter,
    pub gossip_out_bytes: Counter,
    /// Gossip messages one peer sent through this one to a peer attached here.
    pub gossip_relayed: Counter,
    /// Modules compiled, by process (`compiler` or `peer`): brought up to the sandbox's own
    /// counts when scraped.
    modules_compiled: Family<[(&'static str, &'static str); 1], Counter>,
    /// Slot processes started (at a slot's first run, after one was killed at a deadline…).
    slot_processes_started: Counter,
    slot_processes: Gauge,
    // Read at scrape time.
    tasks_running: Gauge,
    leases_held: Gauge,
    jobs_coordinated: Gauge,
    peers_alive: Gauge,
    paused: Gauge,
    task_memory_bytes: Gauge,
    unreachable: Gauge,
    peers_attached: Gauge,
    store_rolled_back: Gauge,
    /// Serialises scrapes (the gauges are set, then the registry encoded).
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("spare"),
            tasks_run: Family::default(),
            sandbox_seconds: Counter::default(),
            tasks_decided: Family::default(),
            jobs_accepted: Counter::default(),
            store_writes: Counter::default(),
            // 100 µs to ~3 s.
            store_write_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            gossip_in_bytes: Counter::default(),
            gossip_out_bytes: Counter::default(),
            gossip_relayed: Counter::default(),
            modules_compiled: Family::default(),
            slot_processes_started: Counter::default(),
            slot_processes: Gauge::default(),
            tasks_running: Gauge::default(),
            leases_held: Gauge::default(),
            jobs_coordinated: Gauge::default(),
            peers_alive: Gauge::default(),
            paused: Gauge::default(),
            task_memory_bytes: Gauge::default(),
            unreachable: Gauge::default(),
            peers_attached: Gauge::default(),
            store_rolled_back: Gauge::default(),
            scrape: Mutex::new(()),
        };
        let r = &mut m.registry;
        r.register("tasks_run", "Replicas run in this peer's sandbox, by outcome", m.tasks_run.clone());
        r.register_with_unit("sandbox", "Time this peer's sandbox spent running replicas", Unit::Seconds, m.sandbox_seconds.clone());
        r.register("tasks_decided", "Tasks this peer decided as coordinator, by verdict", m.tasks_decided.clone());
        r.register("jobs_accepted", "Jobs accepted here as their origin", m.jobs_accepted.clone());
        r.register("store_writes", "Store writes made durable", m.store_writes.clone());
        r.register_with_unit("store_write", "Time from queueing a store write to its commit", Unit::Seconds, m.store_write_seconds.clone());
        r.register_with_unit("gossip_received", "Gossip bytes received", Unit::Bytes, m.gossip_in_bytes.clone());
        r.register_with_unit("gossip_sent", "Gossip bytes sent", Unit::Bytes, m.gossip_out_bytes.clone());
        r.register("gossip_relayed", "Gossip messages other peers passed through this one to a peer behind NAT attached here", m.gossip_relayed.clone());
        r.register(
            "modules_compiled",
            "Modules compiled, by process: a compiler process (compiler) or, when that failed, the peer's own (peer)",
            m.modules_compiled.clone(),
        );
        r.register(
            "slot_processes_started",
            "Slot processes started: one per slot at its first run or after 30 s idle, one after each killed at a task's deadline or dead",
            m.slot_processes_started.clone(),
        );
        r.register("slot_processes", "Slot processes running now", m.slot_processes.clone());
        r.register("tasks_running", "Replicas leased to this peer's slots now", m.tasks_running.clone());
        r.register("tasks_leased", "Tasks this peer coordinates that are out on lease now", m.leases_held.clone());
        r.register("jobs_coordinated", "Unfinished jobs this peer coordinates (active or backup)", m.jobs_coordinated.clone());
        r.register("peers_alive", "Other peers this peer sees alive", m.peers_alive.clone());
        r.register("paused", "1 while the volunteer's controls pause taking new work", m.paused.clone());
        r.register_with_unit("task_memory", "Memory limits of the tasks running now, summed", Unit::Bytes, m.task_memory_bytes.clone());
        r.register("unreachable", "1 once no peer could dial this one back (behind NAT: it works through relays)", m.unreachable.clone());
        r.register("peers_attached", "Peers behind NAT attached to this peer as their relay", m.peers_attached.clone());
        r.register(
            "store_rolled_back_commits",
            "Commits the store lost at start: redb fell back to an older commit (damage) or an older file was put back",
            m.store_rolled_back.clone(),
        );
        m
    }
}

impl Metrics {
    /// Counts one replica run.
    pub fn ran(&self, outcome: &RunOutcome, took: Duration) {
        let label = match outcome {
            RunOutcome::Done { outcome: Outcome::Exited(0), .. } => "success",
            RunOutcome::Done { outcome: Outcome::Exited(_), .. } => "exit_nonzero",
            RunOutcome::Done { outcome: Outcome::Trapped, .. } => "trap",
            RunOutcome::Done { outcome: Outcome::OutOfFuel, .. } => "out_of_fuel",
            RunOutcome::Done { outcome: Outcome::MemoryLimit, .. } => "memory_limit",
            RunOutcome::Done { outcome: Outcome::OutputTooLarge, .. } => "output_too_large",
            RunOutcome::Deadline => "deadline",
            RunOutcome::Invalid(_) => "invalid_module",
        };
        self.tasks_run.get_or_create(&[("outcome", label)]).inc();
        self.sandbox_seconds.inc_by(took.as_secs_f64());
    }

    /// Counts a task this peer decided.
    pub fn decided(&self, state: TaskState) {
        let label = match state {
            TaskState::Verified => "verified",
            TaskState::Failed => "failed",
            TaskState::Inconclusive => "inconclusive",
            TaskState::Pending | TaskState::Running => return,
        };
        self.tasks_decided.get_or_create(&[("verdict", label)]).inc();
    }

    /// Replicas run so far, and how many of them did not succeed.
    pub fn runs(&self) -> (u64, u64) {
        let ok = self.tasks_run.get_or_create(&[("outcome", "success")]).get();
        let all: u64 = OUTCOMES
            .iter()
            .map(|o| self.tasks_run.get_or_create(&[("outcome", *o)]).get())
            .sum();
        (all, all - ok)
    }
}

impl Node {
    /// This peer's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// The metrics in the Prometheus text format, with the gauges read now.
    pub fn scrape(&self) -> String {
        let m = self.metrics();
        let _one = m.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let me = self.peer_id();
        let (leases, jobs) = {
            let core = self.core();
            let leases = core.jobs.keys().filter_map(|j| core.coord().job(j)).map(|v| u64::from(v.counts.running)).sum::<u64>();
            let open = core.jobs.keys().filter(|j| !self.is_finished(j)).count();
            (leases, open)
        };
        let alive = self
            .peers()
            .iter()
            .filter(|p| p.peer != me && p.state == spare_protocol::membership::MemberState::Alive)
            .count();
        m.tasks_running.set(self.running() as i64);
        m.leases_held.set(leases as i64);
        m.jobs_coordinated.set(jobs as i64);
        m.peers_alive.set(alive as i64);
        m.paused.set(i64::from(self.paused().is_some()));
        m.task_memory_bytes.set(self.task_memory_held() as i64);
        m.unreachable.set(i64::from(self.reachability() == spare_protocol::reachability::Verdict::Unreachable));
        m.peers_attached.set(self.0.nat.relay.attached.len() as i64);
        let (apart, here) = self.sandbox().compiled();
        for (process, count) in [("compiler", apart), ("peer", here)] {
            // Counters only add: add what the sandbox counted since the last scrape (scrapes
            // are serialised, and the sandbox's counts only grow).
            let c = m.modules_compiled.get_or_create(&[("process", process)]);
            c.inc_by(count.saturating_sub(c.get()));
        }
        let started = self.sandbox().slot_processes_started();
        m.slot_processes_started.inc_by(started.saturating_sub(m.slot_processes_started.get()));
        m.slot_processes.set(self.sandbox().slot_processes().len() as i64);
        m.store_rolled_back.set(self.store().rollback().map_or(0, |r| r.lost()) as i64);
        let mut out = String::new();
        if encode(&mut out, &m.registry).is_err() {
            out.clear();
        }
        out
    }
}
