//! `MeshService.Report` at a coordinator, one attestation at a time: an attestation must be the
//! sender's own, signed, and hash the output it came with, which is no longer than the job's
//! `output_bytes` (an honest sandbox cuts a run there), or it is dropped and held against the
//! sender (the batch's signature authenticates the sender, so someone is to blame); a good one
//! is recorded, and the answer says what the driver stores and streams with it. The peer's
//! service and the simulator both take reports through [`take`], and a coordinator's own
//! replicas through [`record`].

use std::sync::Arc;

use crate::{Attestation, BlobId, Coordinator, PeerId, ReportError, Reported};

/// What became of one reported attestation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Taken {
    /// Recorded: store it with its `lone` mark (the store keeps a job's attestations in the
    /// order they were recorded), and stream it to the backups (with the output when it
    /// `decided` the task).
    Recorded {
        /// Taken alone (adaptive replication): the backups replay it so.
        lone: bool,
        /// It made the task's verdict.
        decided: bool,
    },
    /// The verdict was in before it: it counted for the worker's standing only. The worker is
    /// told it was taken; nothing is stored.
    Late,
    /// Not the sender's own, badly signed, its output longer than the job allows or not hashing
    /// to what it attests: the sender was penalised.
    Invalid,
    /// Well formed but not recordable (no lease, unknown task, already attested).
    Refused(ReportError),
}

impl Taken {
    /// Whether the worker is told it was accepted.
    pub fn accepted(&self) -> bool {
        matches!(self, Taken::Recorded { .. } | Taken::Late)
    }
}

/// Takes `att` as reported by `sender` with `output`, and whether its signature verified
/// (`signed`: checked by the driver, in batches, behind its verifier).
pub fn take(coord: &mut Coordinator, sender: PeerId, att: impl Into<Arc<Attestation>>, signed: bool, output: &[u8]) -> Taken {
    let att = att.into();
    if att.peer != sender || !signed || too_long(coord, &att, output) || BlobId::of(output) != att.result.output_hash {
        coord.penalize(sender);
        return Taken::Invalid;
    }
    record(coord, att)
}

/// Whether `output` is longer than `att`'s job lets a run write: no honest sandbox sends that,
/// whether it comes in a report or from another coordinator.
pub fn too_long(coord: &Coordinator, att: &Attestation, output: &[u8]) -> bool {
    coord.limits(&att.task.job).is_some_and(|l| output.len() as u64 > l.output_bytes)
}

/// Records an attestation known to be good: a checked report, or one of this coordinator's own
/// replicas.
pub fn record(coord: &mut Coordinator, att: Arc<Attestation>) -> Taken {
    let task = att.task;
    let decided = match coord.report(att) {
        Ok(Reported::Recorded) => false,
        Ok(Reported::Decided) => true,
        Ok(Reported::Late) => return Taken::Late,
        Err(e) => return Taken::Refused(e),
    };
    let lone = coord.task(&task).is_some_and(|t| t.lone && t.attestations == 1);
    Taken::Recorded { lone, decided }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::lease::grant;
    use crate::{Limits, Outcome, Policy, ResultKey, TaskId};

    fn att(task: TaskId, peer: PeerId, output: &[u8]) -> Attestation {
        let result = ResultKey { outcome: Outcome::Exited(0), output_hash: BlobId::of(output) };
        Attestation { task, peer, result, fuel_used: 0, signature: vec![1] }
    }

    #[test]
    fn a_report_is_recorded_only_when_it_is_the_senders_own_signed_and_its_output_matches() {
        let limits = Limits { output_bytes: 4, ..Limits::default() };
        let (mut coord, job) = super::super::test_coordinator(1, Policy { quorum: 2, max_replicas: 3, limits, ..Policy::default() });
        let (a, b, c) = (PeerId([1; 32]), PeerId([2; 32]), PeerId([3; 32]));
        for p in [a, b] {
            assert_eq!(grant(&mut coord, &job, p, 1, 0).leases.len(), 1);
        }
        let task = TaskId { job, index: 0 };
        let good = att(task, a, b"42");
        // Someone else's attestation, an unsigned one, and one whose output is not what it says.
        assert_eq!(take(&mut coord, b, good.clone(), true, b"42"), Taken::Invalid);
        assert_eq!(take(&mut coord, a, good.clone(), false, b"42"), Taken::Invalid);
        assert_eq!(take(&mut coord, a, good.clone(), true, b"41"), Taken::Invalid);
        // Longer than the job's output_bytes (4): no honest sandbox sends that.
        assert_eq!(take(&mut coord, a, att(task, a, b"12345"), true, b"12345"), Taken::Invalid);
        assert_eq!(coord.task(&task).map(|t| t.attestations), Some(0), "nothing recorded");
        let first = take(&mut coord, a, good.clone(), true, b"42");
        assert_eq!(first, Taken::Recorded { lone: false, decided: false });
        assert!(matches!(take(&mut coord, a, good, true, b"42"), Taken::Refused(_)), "one per peer");
        let second = take(&mut coord, b, att(task, b, b"42"), true, b"42");
        assert_eq!(second, Taken::Recorded { lone: false, decided: true });
        // c holds no lease: refused, unjudged.
        let after = take(&mut coord, c, att(task, c, b"42"), true, b"42");
        assert_eq!(after, Taken::Refused(ReportError::NoLease { task, peer: c }));
        assert!(second.accepted() && Taken::Late.accepted() && !after.accepted() && !Taken::Invalid.accepted());
    }
}
