//! The submitter's client for Spare, a volunteer-computing mesh: build a job of WebAssembly
//! tasks, submit it to any peer, watch it, and collect the results a quorum of peers verified.
//!
//! A **job** is a WASI preview 1 command module, one stdin input per **task**, and a policy
//! (how many distinct peers must agree, sandbox limits, priority). Build one with
//! [`Job::builder`], connect a [`Client`] to any peer, and [`submit`](Client::submit) it: the SDK
//! uploads the module (skipped when the peer already has it), sends small inputs inline and
//! large ones as blobs, and returns the [`JobId`]. Then [`watch`](Client::watch) its progress,
//! [`wait`](Client::wait) for the end, and stream [`results`](Client::results) in task order.
//!
//! ```no_run
//! use futures::StreamExt;
//! use spare_sdk::{Client, Event, Job, state_name};
//!
//! # async fn run() -> Result<(), spare_sdk::Error> {
//! let client = Client::connect("127.0.0.1:7070").await?;
//!
//! // 100 tasks; task i reads "LO HI\n" on stdin, for the chunk LO..HI of 0..10_000_000.
//! let job = Job::builder()
//!     .module_file("examples/wasm/primes.wasm")
//!     .range(0..10_000_000, 100_000)
//!     .quorum(2)
//!     .fuel(50_000_000_000)
//!     .label("primes below ten million")
//!     .build()?;
//! let id = client.submit(&job).await?;
//! println!("submitted {id}");
//!
//! // Progress: a snapshot first, one event per finished task, then `finished`; each with the
//! // tasks done so far, every task counted once.
//! let mut events = client.watch_progress(&id).await?;
//! while let Some(event) = events.next().await {
//!     let (event, p) = event?;
//!     match event {
//!         Event::Snapshot(status) => println!("{}", state_name(status.state)),
//!         Event::TaskDone(task) => println!("task {} done ({}/{})", task.index, p.done, p.total),
//!         Event::Finished(status) => println!("job {}", state_name(status.state)),
//!     }
//! }
//!
//! // Verified outputs in task order.
//! let mut results = client.results(&id).await?;
//! let mut total = 0u64;
//! while let Some(result) = results.next().await {
//!     let result = result?;
//!     match result.reason() {
//!         None => total += result.output_text().trim().parse::<u64>().unwrap_or(0),
//!         Some(why) => println!("task {} failed: {why}", result.index),
//!     }
//! }
//! println!("{total} primes");
//! # Ok(())
//! # }
//! ```
//!
//! Statuses, events and results are typed ([`JobStatus`], [`TaskStatus`], [`Event`],
//! [`TaskResult`], [`Outcome`]); the wire types of [`spare_proto`] are re-exported as [`proto`],
//! and any gRPC client in any language can do what this crate does from the `.proto` files.

#![warn(missing_docs)]

mod client;
mod error;
mod failover;
mod failures;
mod id;
pub mod identity;
pub mod known_peers;
pub mod tls;
mod job;
mod plan;
mod progress;
mod result;
mod split;
mod status;
mod submit;

#[cfg(test)]
mod fake_peer_tests;

pub use spare_proto as proto;

pub use client::{Client, MAX_MESSAGE_BYTES};
pub use error::{Error, Result, code_name};
pub use failures::{Failures, Reason, STDERR_LINE_BYTES, stderr_line};
pub use id::{ID_HEX_LEN, JobId};
pub use identity::ClientIdentity;
pub use job::{Job, JobBuilder};
pub use progress::{Progress, ProgressCounter, tasks_done};
pub use result::{Outcome, TaskResult};
pub use status::{Event, JobStatus, TaskCounts, TaskStatus};
pub use submit::{BLOB_CHUNK_BYTES, blob_id};

pub use proto::{Diversity, JobState, Limits, OutcomeKind, PeerInfo, Policy, TaskState};

/// The name the CLI shows for a job state: `queued`, `running`, `completed`, `failed` or
/// `cancelled` (`unspecified` for a state the peer did not set).
pub fn state_name(state: JobState) -> &'static str {
    match state {
        JobState::Unspecified => "unspecified",
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Completed => "completed",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

/// The name the CLI shows for a task state: `pending`, `running`, `verified`, `inconclusive` or
/// `failed` (`unspecified` for a state the peer did not set).
pub fn task_state_name(state: TaskState) -> &'static str {
    match state {
        TaskState::Unspecified => "unspecified",
        TaskState::Pending => "pending",
        TaskState::Running => "running",
        TaskState::Verified => "verified",
        TaskState::Inconclusive => "inconclusive",
        TaskState::Failed => "failed",
    }
}

/// True for the states a job never leaves: completed, failed, cancelled.
pub fn is_final(state: JobState) -> bool {
    matches!(
        state,
        JobState::Completed | JobState::Failed | JobState::Cancelled
    )
}

/// True for the states a task never leaves: verified, inconclusive, failed.
pub fn is_task_final(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Verified | TaskState::Inconclusive | TaskState::Failed
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names() {
        let names: Vec<_> = [
            JobState::Queued,
            JobState::Running,
            JobState::Completed,
            JobState::Failed,
            JobState::Cancelled,
        ]
        .into_iter()
        .map(state_name)
        .collect();
        assert_eq!(
            names,
            ["queued", "running", "completed", "failed", "cancelled"]
        );
        let names: Vec<_> = [
            TaskState::Pending,
            TaskState::Running,
            TaskState::Verified,
            TaskState::Inconclusive,
            TaskState::Failed,
        ]
        .into_iter()
        .map(task_state_name)
        .collect();
        assert_eq!(
            names,
            ["pending", "running", "verified", "inconclusive", "failed"]
        );
    }

    #[test]
    fn final_states() {
        assert!(!is_final(JobState::Running) && is_final(JobState::Cancelled));
        assert!(!is_task_final(TaskState::Pending) && is_task_final(TaskState::Inconclusive));
    }
}
