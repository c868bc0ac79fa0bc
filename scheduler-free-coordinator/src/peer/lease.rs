//! `MeshService.Lease` at a coordinator: how many replicas one request may take, which leases
//! go to the job's backups, and what an empty answer says to the worker. The peer's service and
//! the simulator both answer through [`grant`].

use crate::pull::MAX_BATCH;
use crate::{Coordinator, JobId, Lease, Millis, PeerId};

/// What an empty answer says when the worker is banned.
pub const BANNED_NOTE: &str = "this peer gets no leases: too many of its results disagreed with verdicts";
/// What an empty answer says otherwise.
pub const NO_TASK_NOTE: &str = "no task wants another replica from this peer now";

/// The answer to one lease request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Granted {
    /// The replicas leased, at most [`MAX_BATCH`].
    pub leases: Vec<Lease>,
    /// Why none were, for the worker's log (`None` when some were).
    pub note: Option<&'static str>,
}

impl Granted {
    /// The leases the job's backups must hold too, so a worker's report follows a takeover:
    /// every one but those of the coordinator's own peer `me`, whose replicas end with it.
    pub fn to_stream(&self, me: PeerId) -> impl Iterator<Item = &Lease> {
        self.leases.iter().filter(move |l| l.peer != me)
    }
}

/// Leases `worker` up to `max` (at most [`MAX_BATCH`]) replicas of `job`.
pub fn grant(coord: &mut Coordinator, job: &JobId, worker: PeerId, max: u32, now: Millis) -> Granted {
    let leases = coord.lease_job(job, worker, max.min(MAX_BATCH) as usize, now);
    let note = match (leases.is_empty(), coord.reputation().is_banned(&worker)) {
        (false, _) => None,
        (true, true) => Some(BANNED_NOTE),
        (true, false) => Some(NO_TASK_NOTE),
    };
    Granted { leases, note }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;

    #[test]
    fn a_request_takes_at_most_a_batch_and_an_empty_answer_says_why() {
        let (mut coord, job) = super::super::test_coordinator(300, Policy { quorum: 1, max_replicas: 1, ..Policy::default() });
        let (me, worker) = (PeerId([9; 32]), PeerId([2; 32]));
        let g = grant(&mut coord, &job, worker, 1_000, 0);
        assert_eq!((g.leases.len(), g.note), (MAX_BATCH as usize, None));
        assert_eq!(g.to_stream(me).count(), MAX_BATCH as usize);
        assert_eq!(g.to_stream(worker).count(), 0, "a coordinator's own replicas are not streamed");
        assert!(grant(&mut coord, &job, worker, 1_000, 0).leases.is_empty(), "a fresh key holds one batch at most");
        // A peer with a record takes every other replica, a batch at a time, then nothing is
        // left to lease.
        coord.set_standing(me, crate::Standing { agreed: 100, ..crate::Standing::default() });
        let mut rest = 0;
        while let g = grant(&mut coord, &job, me, 1_000, 0)
            && !g.leases.is_empty()
        {
            assert!(g.leases.len() <= MAX_BATCH as usize);
            rest += g.leases.len();
        }
        assert_eq!(rest, 300 - MAX_BATCH as usize);
        assert_eq!(grant(&mut coord, &job, worker, 8, 0).note, Some(NO_TASK_NOTE));
    }
}
