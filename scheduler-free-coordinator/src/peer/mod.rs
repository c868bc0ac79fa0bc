//! The peer's protocol decisions beyond the job table, each a small sans-IO machine that takes
//! `now` and never touches a socket, a disk or a clock, so that the real peer (`spare-peer`)
//! and the simulator run the very same rules:
//!
//! - [`mesh`]: membership and what this peer publishes (adverts, job ads, greetings);
//!   [`members`]: what its memberships say of who is live, as its coordinators ask;
//! - [`roles`]: active or standby for each job held, takeover, top-ups, re-announcing;
//!   [`takeover`]: a new leader first takes what its backups recorded and it did not;
//! - [`adoption`]: rounds that bring a job's list of coordinators up to strength;
//! - [`host`]: the coordinator side of one peer for every job it coordinates, composing the
//!   others;
//! - [`heal`]: two leaders of one job after a split, and merges; [`handover`]: stepping down;
//! - [`replication`]: the active coordinator's ordered stream to each backup, and
//!   [`replicators`]: those streams for every backup;
//! - [`catchup`]: whole adoptions where the stream cannot repair a backup;
//! - [`outputs`]: the outputs of attestations whose task is not final, so a verdict gets its bytes;
//! - [`lease`]: answering a worker's lease request; [`report`]: taking its attestations;
//! - [`reports`]: a worker's report batches to a coordinator, retried across a short cut;
//! - [`reporters`]: those queues for every coordinator, and reports following a new leader;
//! - [`slots`]: replicas held per slot, which job to ask next, pauses;
//! - [`work`]: the worker side of one peer, composing slots, the puller and the reporters;
//! - [`wire`]: the exact sizes of the messages those machines send.
//!
//! Each machine has one contract: inputs are `push`/`handle_*`/`request` calls with `now`;
//! outputs are drained with `poll_*` until they give nothing, and `poll_timeout` says when
//! polling may give something again.

pub mod adoption;
pub mod catchup;
pub mod handover;
pub mod heal;
pub mod host;
pub mod lease;
pub mod members;
pub mod mesh;
mod outbox;
pub mod outputs;
pub mod replication;
pub mod replicators;
pub mod report;
pub mod reporters;
pub mod reports;
pub mod roles;
pub mod slots;
pub mod takeover;
pub mod wire;
pub mod work;

/// A coordinator holding one job (id `[1; 32]`, origin `[9; 32]`) of `task_count` tasks under
/// `policy`, for the rules' unit tests.
#[cfg(test)]
fn test_coordinator(task_count: u32, policy: crate::Policy) -> (crate::Coordinator, crate::JobId) {
    let mut coord = crate::Coordinator::new(crate::CoordinatorConfig::default());
    let job = crate::JobId([1; 32]);
    let spec = crate::JobSpec {
        module: crate::BlobId([3; 32]),
        task_count,
        policy,
        origin: crate::PeerId([9; 32]),
        submitted_at_ms: 0,
        label: String::new(),
    };
    coord.submit(job, spec).expect("job accepted");
    (coord, job)
}
