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

    #[test]
    fn fresh_keys_of_one_network_share_one_batch() {
        let (mut coord, job) = super::super::test_coordinator(1_000, Policy { quorum: 1, max_replicas: 1, ..Policy::default() });
        let net = |a: u8, b: u8| crate::prefix::NetPrefix::of(std::net::IpAddr::from([198, 51, a, b]));
        let batch = MAX_BATCH as usize;
        // Ten fresh keys in one /24: the first takes the network's batch, the rest nothing.
        let mut taken = 0;
        for k in 0..10u8 {
            let key = PeerId([100 + k; 32]);
            coord.note_prefix(key, net(1, k));
            taken += grant(&mut coord, &job, key, 1_000, 0).leases.len();
        }
        assert_eq!(taken, batch, "ten fresh keys in one network hold what one does");
        // A fresh key in another network has its own batch; so has one with no prefix (a
        // private network: its own).
        let (other, private) = (PeerId([50; 32]), PeerId([51; 32]));
        coord.note_prefix(other, net(2, 1));
        coord.note_prefix(private, None);
        assert_eq!(grant(&mut coord, &job, other, 1_000, 0).leases.len(), batch);
        assert_eq!(grant(&mut coord, &job, private, 1_000, 0).leases.len(), batch);
        // A key of that network with an agreeing result is judged on its own record.
        let proven = PeerId([60; 32]);
        coord.note_prefix(proven, net(1, 200));
        coord.set_standing(proven, crate::Standing { agreed: 1, ..crate::Standing::default() });
        assert_eq!(grant(&mut coord, &job, proven, 1_000, 0).leases.len(), coord.lease_quota(&proven).min(batch));
    }

    #[test]
    fn a_banned_key_s_network_cools_off() {
        let (mut coord, job) = super::super::test_coordinator(1_000, Policy { quorum: 1, max_replicas: 1, ..Policy::default() });
        let net = |b: u8| crate::prefix::NetPrefix::of(std::net::IpAddr::from([203, 0, 113, b]));
        let (banned, next, elsewhere) = (PeerId([70; 32]), PeerId([71; 32]), PeerId([72; 32]));
        coord.set_standing(banned, crate::Standing { disagreed: 3, ..crate::Standing::default() });
        coord.note_prefix(banned, net(1));
        assert_eq!(grant(&mut coord, &job, banned, 8, 1_000).note, Some(BANNED_NOTE));
        // Its next key, from the same /24, gets nothing for a while; a key elsewhere is not hurt.
        coord.note_prefix(next, net(2));
        assert!(grant(&mut coord, &job, next, 8, 2_000).leases.is_empty(), "the banned key's next key");
        coord.note_prefix(elsewhere, crate::prefix::NetPrefix::of(std::net::IpAddr::from([203, 0, 114, 1])));
        assert_eq!(grant(&mut coord, &job, elsewhere, 8, 2_000).leases.len(), 8);
        let later = 1_000 + crate::Coordinator::BAN_COOL_OFF_MS;
        assert_eq!(grant(&mut coord, &job, next, 8, later).leases.len(), 8, "once the network cooled off");
    }
}
