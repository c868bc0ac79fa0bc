//! Builders shared by the coordinator's tests.

#![allow(dead_code)]

use spare_protocol::*;

pub fn peer(n: u8) -> PeerId {
    PeerId([n; 32])
}

pub fn job(n: u8) -> JobId {
    JobId([n; 32])
}

pub fn spec(tasks: u32, quorum: u32, max_replicas: u32) -> JobSpec {
    JobSpec {
        module: BlobId([9; 32]),
        task_count: tasks,
        policy: Policy { quorum, max_replicas, ..Policy::default() },
        origin: peer(0),
        submitted_at_ms: 0,
        label: String::new(),
    }
}

/// The honest output of a task: a function of its index only.
pub fn honest(index: u32) -> ResultKey {
    ResultKey { outcome: Outcome::Exited(0), output_hash: BlobId::of(&index.to_le_bytes()) }
}

pub fn att(task: TaskId, peer: PeerId, result: ResultKey) -> Attestation {
    Attestation { task, peer, result, fuel_used: 1, signature: vec![] }
}
