//! What a simulation run is asked to do ([`SimConfig`]), its defaults, and why a configuration
//! is refused ([`SimError`]).

use crate::{Adaptive, Diversity, Limits, Millis, Policy, PolicyCaps};

/// One simulation run: the mesh, the job, the adversaries and the network.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Peers at the start, the job's origin included.
    pub peers: u32,
    /// Every peer starts at once and joins through its cell's bootstrap peers, the job with
    /// them; otherwise (the default) the job comes to a mesh that formed before: each peer
    /// holds its cell's members and their adverts, as gossip had left them.
    pub cold_start: bool,
    /// Tasks of the one job (default 10 × peers).
    pub tasks: u32,
    /// Distinct agreeing peers needed to verify a task.
    pub quorum: u32,
    /// Most replicas a task gets before it is inconclusive.
    pub max_replicas: u32,
    /// Fraction of the workers that lie (the origin never does).
    pub liars: f64,
    /// Liars agree on one wrong answer per task instead of each giving its own.
    pub collude: bool,
    /// Liars answer honestly for their first this many replicas, then lie ("sleepers"): a peer
    /// that always lies never earns the trust adaptive replication gives. 0: they always lie.
    pub liars_honest_for: u32,
    /// The liars ask for leases from this many /24 networks between them (many keys, few
    /// networks); `None`: each from its own, as every honest peer does.
    pub liar_networks: Option<u32>,
    /// How far apart the coordinators keep the replicas of one task ([`Diversity`]).
    pub diversity: Diversity,
    /// Agreements every initial worker (liars included) already has in the origin's reputation
    /// when the job starts, as if earned on earlier jobs: a coordinator hands out every task's
    /// first replica before any second one (fewest replicas first), so on a fresh coordinator no
    /// verdict, and so no trust, comes before the job's tasks have all been started once. Joiners
    /// start with none. Default 0.
    pub history: u32,
    /// Adaptive replication: the job's `min_agreed` (`None`: off, the default).
    pub adaptive: Option<u32>,
    /// Adaptive replication's spot-check rate, per mille of a trusted peer's lone tasks.
    pub spot_check_per_mille: u32,
    /// Probability that any one message is lost.
    pub loss: f64,
    /// Fraction of the peers that crash per virtual minute while the job runs; as many fresh
    /// peers join. The job's coordinators are spared unless `churn_coordinators`.
    pub churn: f64,
    /// Churn may crash the job's coordinators too (the origin, its backups, their replacements).
    pub churn_coordinators: bool,
    /// Crash the origin this long after the job starts (virtual milliseconds), if it still runs.
    pub crash_origin_at_ms: Option<Millis>,
    /// Restart the crashed origin at this virtual time (after `crash_origin_at_ms`), on what
    /// it had recorded: its job comes back in standby, as a real peer's store brings it back.
    pub restart_origin_at_ms: Option<Millis>,
    /// Split the network in two this long after the job starts (virtual milliseconds): from
    /// then every message between the two sides is lost (see [`super::net`] for who is on
    /// which side). `None`: never.
    pub partition_at_ms: Option<Millis>,
    /// Heal the partition at this virtual time (after `partition_at_ms`); `None`: it lasts to
    /// the end of the run.
    pub heal_at_ms: Option<Millis>,
    /// Seed of every random choice.
    pub seed: u64,
    /// Most peers in one membership cell, the origin included (see the module docs): a mesh of
    /// at most this many peers is simulated as one SWIM cluster, a larger one as several.
    pub cell_size: u32,
    /// Bootstrap peers per cell, greeted by every peer of the cell at start.
    pub bootstrap_peers: u32,
    /// Sandbox slots per peer.
    pub slots: u32,
    /// A replica runs for a uniform random time in this range, in milliseconds.
    pub run_ms: (u64, u64),
    /// Each message takes a uniform random time in this range, in milliseconds.
    pub delay_ms: (u64, u64),
    /// The job's wall deadline per replica (`limits.timeout_ms`); a lease lasts this plus the
    /// coordinator's 5 s grace.
    pub task_timeout_ms: u64,
    /// Size of the job's module, fetched once by every worker from the coordinator.
    pub module_bytes: u64,
    /// Size of each task's input (sent inline in lease replies).
    pub input_bytes: u64,
    /// Size of each task's output (sent in reports).
    pub output_bytes: u64,
    /// An RPC whose request or reply is lost fails at the caller this long after it was sent.
    pub rpc_fail_ms: u64,
    /// The run stops at this virtual time even if the job is not finished.
    pub max_virtual_ms: u64,
}

impl SimConfig {
    /// The defaults for `peers` peers: 10 tasks per peer, quorum 2, max_replicas 5, no liars,
    /// no loss, no churn, seed 1.
    pub fn new(peers: u32) -> SimConfig {
        SimConfig {
            peers,
            cold_start: false,
            tasks: peers.saturating_mul(10),
            quorum: 2,
            max_replicas: 5,
            liars: 0.0,
            collude: false,
            liars_honest_for: 0,
            liar_networks: None,
            diversity: Diversity::Prefix,
            history: 0,
            adaptive: None,
            spot_check_per_mille: Adaptive::DEFAULT_SPOT_CHECK_PER_MILLE,
            loss: 0.0,
            churn: 0.0,
            churn_coordinators: false,
            crash_origin_at_ms: None,
            restart_origin_at_ms: None,
            partition_at_ms: None,
            heal_at_ms: None,
            seed: 1,
            cell_size: 100,
            bootstrap_peers: 3,
            slots: 1,
            run_ms: (50, 200),
            delay_ms: (1, 20),
            task_timeout_ms: 10_000,
            // The size of examples/wasm/primes.wasm.
            module_bytes: 58_232,
            input_bytes: 16,
            output_bytes: 32,
            rpc_fail_ms: 1_000,
            max_virtual_ms: 600_000,
        }
    }

    /// Whether the origin may crash in this run (it is the job's first coordinator).
    pub fn origin_may_crash(&self) -> bool {
        self.crash_origin_at_ms.is_some() || (self.churn_coordinators && self.churn > 0.0)
    }

    /// The job's policy: its quorum, replicas, deadline and adaptive replication as asked, with
    /// the coordinators' own diversity.
    pub fn policy(&self) -> Policy {
        Policy {
            quorum: self.quorum,
            max_replicas: self.max_replicas,
            limits: Limits { timeout_ms: self.task_timeout_ms, ..Limits::default() },
            priority: 0,
            adaptive: self.adaptive.map(|min_agreed| Adaptive { min_agreed, spot_check_per_mille: self.spot_check_per_mille }),
            diversity: None,
        }
    }

    /// Checks that the run makes sense.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |what: &str| Err(SimError::Config(what.to_string()));
        if self.liar_networks.is_some_and(|n| n == 0 || n > 1 << 16) {
            return bad("--liar-networks must be between 1 and 65536");
        }
        if self.peers < 2 {
            return bad("--peers must be at least 2");
        }
        if self.peers > 1_000_000 {
            return bad("--peers must be at most 1,000,000");
        }
        // The job's policy and size, as any peer checks a submission.
        PolicyCaps::default().check(&self.policy(), u64::from(self.tasks)).map_err(|e| SimError::Config(e.to_string()))?;
        if !(0.0..1.0).contains(&self.liars) {
            return bad("--liars must be a fraction in [0, 1)");
        }
        // Also with adaptive replication off (the policy check passes it then): the report shows it.
        if self.spot_check_per_mille > 1_000 {
            return bad("--spot-check must be a fraction in [0, 1]");
        }
        if !(0.0..1.0).contains(&self.loss) {
            return bad("--loss must be a probability in [0, 1)");
        }
        if !(0.0..=1.0).contains(&self.churn) {
            return bad("--churn must be a fraction per minute in [0, 1]");
        }
        match (self.crash_origin_at_ms, self.restart_origin_at_ms) {
            (None, Some(_)) => return bad("--restart-origin-at needs --crash-origin-at"),
            // What was in flight to or from the crashed origin is over before it comes back.
            (Some(crash), Some(restart)) if restart <= crash + self.rpc_fail_ms + self.run_ms.1 + self.delay_ms.1 => {
                return bad("--restart-origin-at must come at least 2 seconds after --crash-origin-at");
            }
            _ => {}
        }
        match (self.partition_at_ms, self.heal_at_ms) {
            (None, Some(_)) => return bad("--heal-at needs --partition-at"),
            (Some(cut), Some(heal)) if heal <= cut => return bad("--heal-at must come after --partition-at"),
            (Some(_), _) if self.peers < 4 => return bad("a partition needs at least 4 peers"),
            _ => {}
        }
        if self.cell_size < 4 || self.bootstrap_peers == 0 || self.slots == 0 {
            return bad("cell size must be at least 4, bootstrap peers and slots at least 1");
        }
        if self.run_ms.0 == 0 || self.run_ms.0 > self.run_ms.1 || self.delay_ms.0 > self.delay_ms.1 {
            return bad("time ranges must be non-empty (and runs take at least 1 ms)");
        }
        if self.task_timeout_ms <= self.run_ms.1 {
            return bad("the task timeout must exceed the longest run");
        }
        Ok(())
    }
}

/// Why a simulation could not run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// The configuration makes no sense.
    #[error("invalid simulation: {0}")]
    Config(String),
    /// The origin's coordinator refused the job.
    #[error("the coordinator refused the job: {0}")]
    Submit(String),
}
