//! Attestations: a peer's signed claim of what one replica of a task produced, and the canonical
//! bytes that it signs. Signing and checking happen at the edge (the worker holds the keys);
//! the coordinator only ever sees attestations whose signature was already checked.

use serde::{Deserialize, Serialize};

use crate::{Outcome, PeerId, ResultKey, TaskId};

/// `{job, task, output hash, outcome, fuel used, peer}`, signed by `peer`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    /// The task the replica ran.
    pub task: TaskId,
    /// The peer that ran it and signed this.
    pub peer: PeerId,
    /// What it produced.
    pub result: ResultKey,
    /// Fuel the run consumed (informative; fuel is deterministic, so honest peers agree on it).
    pub fuel_used: u64,
    /// ed25519 signature of [`Attestation::signing_bytes`] by `peer` (64 bytes), or of the
    /// report batch it came in, with its path (`attestation_batch`).
    pub signature: Vec<u8>,
}

const DOMAIN: &[u8] = b"spare.v1.attestation\0";

impl Attestation {
    /// The canonical encoding that is signed: fixed-width fields behind a domain tag, so no two
    /// distinct attestations share signing bytes.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(DOMAIN.len() + 32 * 3 + 4 + 1 + 4 + 8);
        b.extend_from_slice(DOMAIN);
        b.extend_from_slice(self.task.job.as_bytes());
        b.extend_from_slice(&self.task.index.to_le_bytes());
        b.extend_from_slice(self.peer.as_bytes());
        let (tag, code) = match self.result.outcome {
            Outcome::Exited(c) => (0u8, c),
            Outcome::Trapped => (1, 0),
            Outcome::OutOfFuel => (2, 0),
            Outcome::MemoryLimit => (3, 0),
            Outcome::OutputTooLarge => (4, 0),
        };
        b.push(tag);
        b.extend_from_slice(&code.to_le_bytes());
        b.extend_from_slice(self.result.output_hash.as_bytes());
        b.extend_from_slice(&self.fuel_used.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlobId, JobId};

    #[test]
    fn signing_bytes_differ_per_field() {
        let a = Attestation {
            task: TaskId { job: JobId([1; 32]), index: 7 },
            peer: PeerId([2; 32]),
            result: ResultKey { outcome: Outcome::Exited(0), output_hash: BlobId([3; 32]) },
            fuel_used: 9,
            signature: vec![],
        };
        let mut b = a.clone();
        b.result.outcome = Outcome::Exited(1);
        let mut c = a.clone();
        c.task.index = 8;
        assert_ne!(a.signing_bytes(), b.signing_bytes());
        assert_ne!(a.signing_bytes(), c.signing_bytes());
        let mut d = a.clone();
        d.signature = vec![1, 2, 3];
        assert_eq!(a.signing_bytes(), d.signing_bytes(), "the signature is not signed");
    }
}
