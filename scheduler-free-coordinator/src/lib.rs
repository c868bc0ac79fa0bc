//! Spare's coordination protocol as a sans-IO state machine.
//!
//! A [`Coordinator`] holds the task tables of the jobs this peer coordinates. The driver (the
//! peer's event loop in `spare-peer`, or the simulator) feeds it submissions, lease requests,
//! attestations and timer ticks, each with `now`, and drains [`Event`]s. It never touches a
//! socket, a disk or a clock, so the same code runs in a real peer and in a seeded simulation.
//!
//! The rules it enforces:
//! - a task is verified only when `quorum` attestations from distinct peers agree bit for bit on
//!   the outcome and the output hash, and a final verdict never changes;
//! - no peer ever holds two replicas (leases or attestations) of one task, nor do two peers of
//!   one network (a /24 or /48, [`prefix`]) by default;
//! - tasks with the fewest replicas are handed out first, in an order peers cannot predict;
//! - a peer that lets a lease lapse never gets that task again, and the lapse counts against its
//!   reputation (unless membership declared it dead: a crash is not a lie);
//! - a lease lapses after the task's timeout plus a grace period and its replica returns to the
//!   pool; a replica that misses its deadline `max_replicas` times fails the task;
//! - peers whose attestations contradict verdicts lose reputation and, far enough down, work.

mod attestation;
pub mod attestation_batch;
mod coordinator;
mod expiries;
pub mod detail;
mod ids;
mod job;
pub mod membership;
mod outcome;
pub mod peer;
mod policy;
pub mod prefix;
pub mod pull;
pub mod records;
mod reputation;
pub mod sim;
pub mod reachability;
pub mod rendezvous;
pub mod requests;
mod task;
mod verdict;

pub use attestation::Attestation;
pub use coordinator::{
    Coordinator, CoordinatorConfig, Event, JobView, Lease, Millis, Release, ReportError, Reported, SubmitError,
    TaskView,
};
pub use detail::Detail;
pub use ids::{BlobId, JobId, ParseIdError, PeerId, TaskId};
pub use job::{JobSpec, JobState, TaskCounts, derive_job_id};
pub use outcome::{Outcome, ResultKey};
pub use policy::{Adaptive, Limits, Policy, PolicyCaps, PolicyError};
pub use prefix::{Diversity, NetPrefix};
pub use reputation::{Reputation, Standing};
pub use task::TaskState;
pub use verdict::{Failure, Verdict};
