//! Verdicts: the decision about one task, a pure function of its attestations in arrival order
//! and the policy. A final verdict never changes.

use std::borrow::Borrow;

use serde::{Deserialize, Serialize};

use crate::{Attestation, PeerId, Policy, ResultKey};

/// Where a task stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// No quorum yet.
    Pending,
    /// `quorum` distinct peers agreed on a successful run (exit 0); the key names the canonical output.
    Verified(ResultKey),
    /// The task cannot succeed.
    Failed(Failure),
    /// `max_replicas` attestations and still no quorum.
    Inconclusive,
}

/// Why a task failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    /// A quorum agreed on a failing outcome (non-zero exit, trap, a limit).
    Agreed(ResultKey),
    /// This many replicas missed their wall deadline.
    TimedOut(u32),
}

impl Verdict {
    /// Whether the verdict is final.
    pub fn is_final(&self) -> bool {
        !matches!(self, Verdict::Pending)
    }

    /// The result a quorum agreed on, success or failure.
    pub fn agreed(&self) -> Option<&ResultKey> {
        match self {
            Verdict::Verified(k) | Verdict::Failed(Failure::Agreed(k)) => Some(k),
            _ => None,
        }
    }
}

/// The largest group of attestations that agree, as (result, count). Ties go to the group that
/// reached its size first, so the answer depends only on arrival order.
pub(crate) fn best_group<A: Borrow<Attestation>>(attestations: &[A]) -> Option<(ResultKey, u32)> {
    let mut best: Option<(ResultKey, u32)> = None;
    for a in attestations.iter().map(Borrow::borrow) {
        let n = attestations.iter().filter(|b| result_of(*b) == a.result).count() as u32;
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((a.result, n));
        }
    }
    best
}

/// The verdict these attestations (distinct peers, arrival order) give under `policy`.
pub(crate) fn decide<A: Borrow<Attestation>>(attestations: &[A], policy: &Policy) -> Verdict {
    // Walk in arrival order so the first key to reach quorum wins, whatever arrives later.
    for end in 1..=attestations.len() {
        let seen = &attestations[..end];
        let key = result_of(&seen[end - 1]);
        let n = seen.iter().filter(|a| result_of(*a) == key).count() as u32;
        if n >= policy.quorum {
            return if key.outcome.is_success() {
                Verdict::Verified(key)
            } else {
                Verdict::Failed(Failure::Agreed(key))
            };
        }
    }
    if attestations.len() as u32 >= policy.max_replicas {
        Verdict::Inconclusive
    } else {
        Verdict::Pending
    }
}

/// What an attestation, held by value or shared, says was produced.
fn result_of<A: Borrow<Attestation>>(a: &A) -> ResultKey {
    a.borrow().result
}

/// Peers whose attestations carry `key`, in arrival order.
pub(crate) fn agreeing_peers<A: Borrow<Attestation>>(attestations: &[A], key: &ResultKey) -> Vec<PeerId> {
    attestations.iter().map(Borrow::borrow).filter(|a| &a.result == key).map(|a| a.peer).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlobId, JobId, Outcome, TaskId};

    fn att(peer: u8, out: u8, outcome: Outcome) -> Attestation {
        Attestation {
            task: TaskId { job: JobId([0; 32]), index: 0 },
            peer: PeerId([peer; 32]),
            result: ResultKey { outcome, output_hash: BlobId([out; 32]) },
            fuel_used: 0,
            signature: vec![],
        }
    }

    #[test]
    fn quorum_of_agreeing_peers_verifies() {
        let p = Policy { quorum: 2, max_replicas: 3, ..Policy::default() };
        let ok = Outcome::Exited(0);
        assert_eq!(decide(&[att(1, 1, ok)], &p), Verdict::Pending);
        assert_eq!(decide(&[att(1, 1, ok), att(2, 2, ok)], &p), Verdict::Pending);
        let v = decide(&[att(1, 1, ok), att(2, 2, ok), att(3, 1, ok)], &p);
        assert_eq!(v.agreed().map(|k| k.output_hash), Some(BlobId([1; 32])));
        assert!(matches!(v, Verdict::Verified(_)));
        assert_eq!(decide(&[att(1, 1, ok), att(2, 2, ok), att(3, 3, ok)], &p), Verdict::Inconclusive);
    }

    #[test]
    fn agreed_failure_is_failed_and_exit_code_matters() {
        let p = Policy { quorum: 2, ..Policy::default() };
        let v = decide(&[att(1, 1, Outcome::OutOfFuel), att(2, 1, Outcome::OutOfFuel)], &p);
        assert!(matches!(v, Verdict::Failed(Failure::Agreed(_))));
        let v = decide(&[att(1, 1, Outcome::Exited(0)), att(2, 1, Outcome::Exited(1))], &p);
        assert_eq!(v, Verdict::Pending);
    }
}
