//! What a run reports: [`Report`] (serialized as one JSON object by `spare sim --json`; `spare
//! sim` prints it as a table). Nothing in it depends on the wall clock, so one seed gives the
//! same report, byte for byte.

use serde::Serialize;

use crate::Diversity;

/// Bytes per peer per second.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Rate {
    /// All bytes sent by all peers over all the peer-seconds they were alive.
    pub mean: f64,
    /// The highest rate of one peer (its bytes over its own lifetime, at least 1 s).
    pub max: f64,
}

/// The outcome of one simulation run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// Peers at the start, the origin included.
    pub peers: u32,
    /// Whether every peer started at once and joined with the job (`--cold-start`), rather
    /// than the job coming to a mesh formed before.
    pub cold_start: bool,
    /// Tasks of the job.
    pub tasks: u32,
    /// The job's quorum.
    pub quorum: u32,
    /// The job's max_replicas.
    pub max_replicas: u32,
    /// Lying peers, joiners included.
    pub liars: u32,
    /// Whether liars colluded on one wrong answer per task.
    pub collude: bool,
    /// Liars answered honestly for their first this many replicas (sleepers).
    pub liars_honest_for: u32,
    /// The /24 networks the liars asked from between them (`null`: each its own).
    pub liar_networks: Option<u32>,
    /// How far apart coordinators kept a task's replicas.
    pub diversity: Diversity,
    /// Agreements each initial worker had at the origin when the job started.
    pub history: u32,
    /// Adaptive replication's `min_agreed` (`null`: off).
    pub adaptive: Option<u32>,
    /// Adaptive replication's spot-check rate, per mille.
    pub spot_check_per_mille: u32,
    /// Message loss probability.
    pub loss: f64,
    /// Churn, fraction of peers per virtual minute.
    pub churn: f64,
    /// The seed.
    pub seed: u64,
    /// Every task reached a final verdict (verified, inconclusive or failed) in time.
    pub completed: bool,
    /// The job's state: `completed` (every task verified), `failed` (some inconclusive or
    /// failed) or `running` (stopped at the time limit).
    pub job_state: String,
    /// Virtual time simulated.
    pub virtual_seconds: f64,
    /// Virtual time from submission to the job's end.
    pub job_seconds: Option<f64>,
    /// Probe periods (1 s) until membership converged (see `sim::metrics`); `null` if it did not.
    pub gossip_rounds_to_converge: Option<u64>,
    /// Bytes sent per peer per second: gossip, RPCs, module downloads.
    pub bytes_per_peer_per_second: Rate,
    /// The part of those that was gossip (membership, adverts, job ads): what a peer pays
    /// to be in the mesh, whatever work it does.
    pub gossip_bytes_per_peer_per_second: Rate,
    /// Gossip bytes per live peer per second once the job is done and membership converged
    /// (the last `STEADY_MS` of the run): what a settled mesh costs each member; `null` if the
    /// run stopped first.
    pub steady_gossip_bytes_per_peer_per_second: Option<f64>,
    /// The origin's own rate over its life (it serves every lease, report and module download
    /// while it leads).
    pub origin_bytes_per_second: f64,
    /// Live peers that had not heard the job's ad by the time the job finished (the origin
    /// sends its records straight to a newcomer once, and gossip retransmits a record only a few
    /// times, so a peer that misses both never hears of the job while it runs).
    pub never_heard_job: u32,
    /// Replicas run to the end per task (by peers alive when the run ended).
    pub replicas_per_task: f64,
    /// Tasks verified.
    pub verified: u32,
    /// Tasks verified with a wrong output.
    pub wrong_verified: u32,
    /// Tasks verified by one trusted peer alone (adaptive replication).
    pub lone_verified: u32,
    /// Of those, verified with a wrong output.
    pub wrong_lone: u32,
    /// Liars the coordinator still trusted at the end (adaptive replication).
    pub trusted_liars: u32,
    /// Tasks inconclusive.
    pub inconclusive: u32,
    /// Tasks failed.
    pub failed: u32,
    /// Leases that lapsed (expired, or their peer was declared down).
    pub lease_lapses: u64,
    /// Report batches given up: refused, or not delivered before their first lease lapsed.
    pub reports_dropped: u64,
    /// Liars the coordinator banned by the end.
    pub banned_liars: u32,
    /// Honest peers the coordinator banned by the end.
    pub banned_honest: u32,
    /// Peers that crashed.
    pub crashes: u32,
    /// Peers that joined during the run.
    pub joins: u32,
    /// Crashed peers started again on what they had recorded (`--restart-origin-at`).
    pub restarts: u32,
    /// Messages sent (gossip, RPC requests and replies).
    pub messages: u64,
    /// Messages lost.
    pub messages_lost: u64,
    /// Events simulated.
    pub events: u64,
    /// Most peers in one membership cell, the origin included.
    pub membership_cell_size: u32,
    /// Membership cells (1: the whole mesh is one SWIM cluster).
    pub membership_cells: u32,
    /// The origin was kept from crashing (neither `--crash-origin-at` nor
    /// `--churn-coordinators`).
    pub origin_protected: bool,
    /// Times a backup coordinator took the job over after the one leading died.
    pub coordinator_takeovers: u32,
    /// The longest time, in virtual ms, from the leading coordinator's crash (or from the cut,
    /// for a takeover across a partition) to the first lease its successor gave (`null`: no
    /// takeover).
    pub takeover_ms: Option<u64>,
    /// Live coordinators leading the job when the run ended (one, unless two leaders never
    /// met or the job lost every coordinator).
    pub leaders_at_end: u32,
    /// Tasks a coordinator that took over decided again, with another verdict than the one
    /// counted first (its predecessor's verdict had not reached it).
    pub verdicts_overturned: u32,
    /// Tasks that two live coordinators hold final with different verdicts at the end (0: every
    /// coordinator answers alike).
    pub verdicts_differing: u32,
    /// Tasks that one live coordinator holds final and another that names itself in its list
    /// does not, at the end (0: every verdict reached every coordinator).
    pub verdicts_missing: u32,
    /// Replication batches to a backup given up after their tries (the backup then got the whole
    /// job instead).
    pub replication_dropped: u64,
}
