//! Healing a split. While the mesh is partitioned, each side that holds a coordinator of a job
//! makes one of them active, and both go on leasing and deciding. When the sides meet again they
//! learn of each other through the job's ad: a correctly signed ad from an announcer the known
//! ad does not name (a *rival*), a newer ad that puts another peer first, or an adoption from a
//! peer that leads the job too. The two active coordinators settle it the same way on both
//! sides ([`outranks`]): the job's origin wins, and otherwise the higher rendezvous weight. The
//! other *hands over*: it steps down (leases nothing more), sends what it decided to the winner
//! as an adoption, which merges it (attestations are a set and a verdict is a function of
//! them), then announces an ad that names the winner first, so the peers that followed it
//! follow the winner from then on.
//!
//! A rival is settled only with the job's origin or a peer once named as one of its
//! coordinators here: a stranger who signs an ad for someone else's job gets nothing.

use std::collections::BTreeSet;

use crate::records::JobAd;
use crate::{JobId, Millis, PeerId, rendezvous};

/// How long after merging a rival's records the winner announces the job again: by then the
/// rival's hand-over ad, which names the winner, has reached the rival's side.
pub const REANNOUNCE_AFTER_MS: Millis = 2_000;

/// Whether `a` should be the job's active coordinator rather than `b`.
pub fn outranks(job: &JobId, origin: &PeerId, a: &PeerId, b: &PeerId) -> bool {
    if a == origin || b == origin {
        return a == origin;
    }
    rendezvous::weight(job, a) > rendezvous::weight(job, b)
}

/// A job this peer holds, as the heal rules see it.
#[derive(Clone, Copy, Debug)]
pub struct Held<'a> {
    /// The job.
    pub job: JobId,
    /// Its origin.
    pub origin: PeerId,
    /// Whether this peer leads it now.
    pub leads: bool,
    /// Its coordinators as held here.
    pub coordinators: &'a [PeerId],
    /// Every peer ever named one of its coordinators here.
    pub named: &'a BTreeSet<PeerId>,
    /// This peer led the job before a restart, and has not led it or followed another since.
    pub restarted: bool,
}

/// How two leaders of one job settle, as seen by one of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Step down: hand the job to the first of this list, then announce it naming that peer.
    HandOver(Vec<PeerId>),
    /// This peer wins (or was never contested): announce the job again, so the other side
    /// hears of it and steps down.
    Announce,
    /// Nothing to settle, and why (for a log line).
    Ignore(&'static str),
}

fn settle(me: &PeerId, held: &Held<'_>, leader: PeerId, theirs: &[PeerId]) -> Settle {
    if leader != *me && outranks(&held.job, &held.origin, &leader, me) {
        Settle::HandOver(theirs.to_vec())
    } else {
        Settle::Announce
    }
}

/// A rival ad of a job (correctly signed by an announcer the known ad does not name).
pub fn rival_ad(me: &PeerId, held: Option<Held<'_>>, ad: &JobAd) -> Settle {
    if ad.announcer == *me {
        return Settle::Ignore("an older ad of this peer's own, still travelling");
    }
    let Some(held) = held.filter(|h| h.leads) else { return Settle::Ignore("a rival ad of a job this peer does not lead") };
    if ad.origin != held.origin || !(held.named.contains(&ad.announcer) || ad.announcer == held.origin) {
        return Settle::Ignore("an ad of the job from a peer never named its coordinator");
    }
    // Who the rival's side follows: the first of its list (a hand-over ad names the winner first,
    // signed by the loser).
    let leader = ad.coordinators.first().copied().unwrap_or(ad.announcer);
    settle(me, &held, leader, &ad.coordinators)
}

/// What an adoption of a job already held here means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Adoption {
    /// The sender handed the job over (it does not lead the list it sent): once its records are
    /// merged, this leader announces the job again after [`REANNOUNCE_AFTER_MS`] and catches up
    /// its backups; `unname` the sender if it is in the list (its attestations without outputs
    /// could complete a quorum without the output there).
    Merged {
        /// Whether to drop the sender from this peer's list.
        unname: bool,
    },
    /// The sender leads the list it sent, and so does this peer: two leaders.
    Settle(Settle),
    /// Nothing more to do (a backup catching up, or a sender nobody named).
    Nothing,
}

/// An adoption of `held` came from `sender`, naming `theirs` as coordinators.
pub fn adoption(me: &PeerId, held: Held<'_>, sender: PeerId, theirs: &[PeerId]) -> Adoption {
    if theirs.first() != Some(&sender) {
        if sender == *me || !held.leads {
            return Adoption::Nothing;
        }
        return Adoption::Merged { unname: held.coordinators.contains(&sender) };
    }
    if !held.leads || sender == *me || !(held.named.contains(&sender) || sender == held.origin) {
        return Adoption::Nothing;
    }
    Adoption::Settle(settle(me, &held, sender, theirs))
}

/// What a newer ad of a held job, from another announcer, means here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FollowAd {
    /// Nothing changes.
    Same,
    /// Take its list of coordinators.
    Follow,
    /// Two leaders and this one wins: announce again.
    Announce,
    /// Two leaders and the ad's first wins: hand the job over to it.
    HandOver(Vec<PeerId>),
}

/// A newer ad of `held` arrived.
pub fn newer_ad(me: &PeerId, held: Held<'_>, ad: &JobAd) -> FollowAd {
    if ad.announcer == *me || held.coordinators == ad.coordinators.as_slice() {
        return FollowAd::Same;
    }
    let Some(&first) = ad.coordinators.first().filter(|c| *c != me) else { return FollowAd::Follow };
    if held.leads {
        return if outranks(&held.job, &held.origin, me, &first) {
            FollowAd::Announce
        } else {
            FollowAd::HandOver(ad.coordinators.clone())
        };
    }
    // A restarted leader, in standby until its roles are looked at, that outranks the ad's
    // leader answers as a leader would, so the other hands the job back, instead of following a
    // list that leaves it out (once known gap 19).
    if held.restarted && held.coordinators.first() == Some(me) && outranks(&held.job, &held.origin, me, &first) {
        return FollowAd::Announce;
    }
    FollowAd::Follow
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlobId, Policy};

    fn p(n: u8) -> PeerId {
        PeerId([n; 32])
    }

    const JOB: JobId = JobId([7; 32]);

    fn ad(announcer: PeerId, coordinators: Vec<PeerId>) -> JobAd {
        JobAd {
            job: JOB,
            origin: p(1),
            announcer,
            seq: 1,
            module: BlobId([0; 32]),
            task_count: 1,
            policy: Policy::default(),
            coordinators,
            submitted_at_ms: 0,
            done: false,
            content_digest: [0; 32],
            nonce: Vec::new(),
            origin_named: Vec::new(),
            origin_signature: Vec::new(),
            signature: Vec::new(),
            chain: Vec::new(),
        }
    }

    fn held<'a>(leads: bool, coordinators: &'a [PeerId], named: &'a BTreeSet<PeerId>) -> Held<'a> {
        Held { job: JOB, origin: p(1), leads, coordinators, named, restarted: false }
    }

    /// Of peers 2 and 3, the one with the higher weight for `JOB`.
    fn ranked() -> (PeerId, PeerId) {
        if outranks(&JOB, &p(1), &p(2), &p(3)) { (p(2), p(3)) } else { (p(3), p(2)) }
    }

    #[test]
    fn the_origin_always_wins_and_otherwise_the_weight() {
        assert!(outranks(&JOB, &p(1), &p(1), &p(2)));
        assert!(!outranks(&JOB, &p(1), &p(2), &p(1)));
        let (hi, lo) = ranked();
        assert!(outranks(&JOB, &p(1), &hi, &lo) && !outranks(&JOB, &p(1), &lo, &hi));
    }

    #[test]
    fn two_leaders_meeting_after_a_split_settle_alike_on_both_sides() {
        let (hi, lo) = ranked();
        let named: BTreeSet<PeerId> = [p(1), hi, lo].into();
        // `lo` leads on its side and hears `hi`'s ad: it hands over; `hi` hears `lo`'s and stays.
        let lo_list = [lo, p(4)];
        let hi_list = [hi, p(5)];
        assert_eq!(rival_ad(&lo, Some(held(true, &lo_list, &named)), &ad(hi, hi_list.to_vec())), Settle::HandOver(hi_list.to_vec()));
        assert_eq!(rival_ad(&hi, Some(held(true, &hi_list, &named)), &ad(lo, lo_list.to_vec())), Settle::Announce);
        // Once `lo` handed over, its ad names `hi` first: `hi` only announces again.
        assert_eq!(rival_ad(&hi, Some(held(true, &hi_list, &named)), &ad(lo, hi_list.to_vec())), Settle::Announce);
        // The origin beats anyone.
        assert_eq!(rival_ad(&hi, Some(held(true, &hi_list, &named)), &ad(p(1), vec![p(1)])), Settle::HandOver(vec![p(1)]));
    }

    #[test]
    fn strangers_and_followers_settle_nothing() {
        let named: BTreeSet<PeerId> = [p(1), p(2)].into();
        let list = [p(2)];
        assert!(matches!(rival_ad(&p(2), Some(held(true, &list, &named)), &ad(p(9), vec![p(9)])), Settle::Ignore(_)), "never named");
        assert!(matches!(rival_ad(&p(2), Some(held(false, &list, &named)), &ad(p(1), vec![p(1)])), Settle::Ignore(_)), "does not lead");
        assert!(matches!(rival_ad(&p(2), Some(held(true, &list, &named)), &ad(p(2), vec![p(2)])), Settle::Ignore(_)), "own ad");
    }

    #[test]
    fn an_adoption_is_a_hand_over_a_catch_up_or_a_second_leader() {
        let (hi, lo) = ranked();
        let named: BTreeSet<PeerId> = [p(1), hi, lo].into();
        let list = [hi, lo];
        // `lo` sent it naming `hi` first: a hand-over, and `lo` is dropped from the list.
        assert_eq!(adoption(&hi, held(true, &list, &named), lo, &[hi, lo]), Adoption::Merged { unname: true });
        // A backup hearing its leader's catch-up: nothing.
        assert_eq!(adoption(&lo, held(false, &list, &named), hi, &[hi, lo]), Adoption::Nothing);
        // Both lead: settled by rank.
        assert_eq!(adoption(&lo, held(true, &[lo], &named), hi, &[hi]), Adoption::Settle(Settle::HandOver(vec![hi])));
        assert_eq!(adoption(&hi, held(true, &[hi], &named), lo, &[lo]), Adoption::Settle(Settle::Announce));
        // Anyone can sign an adoption naming itself first: a stranger settles nothing.
        assert_eq!(adoption(&hi, held(true, &[hi], &named), p(9), &[p(9)]), Adoption::Nothing);
    }

    #[test]
    fn a_newer_ad_is_followed_or_settled() {
        let (hi, lo) = ranked();
        let named: BTreeSet<PeerId> = [p(1), hi, lo].into();
        assert_eq!(newer_ad(&lo, held(false, &[hi, lo], &named), &ad(hi, vec![hi, lo])), FollowAd::Same);
        assert_eq!(newer_ad(&lo, held(false, &[p(1), lo], &named), &ad(hi, vec![hi, lo])), FollowAd::Follow);
        assert_eq!(newer_ad(&lo, held(true, &[lo], &named), &ad(hi, vec![hi, lo])), FollowAd::HandOver(vec![hi, lo]));
        assert_eq!(newer_ad(&hi, held(true, &[hi], &named), &ad(lo, vec![lo, hi])), FollowAd::Announce);
        // A restarted leader, in standby and first in its own list (once known gap 19): it reclaims
        // the job from a peer it outranks, and follows one that outranks it.
        let (hi_first, lo_first) = ([hi, lo], [lo, hi]);
        let restarted = |list| Held { restarted: true, ..held(false, list, &named) };
        assert_eq!(newer_ad(&hi, restarted(&hi_first), &ad(lo, vec![lo])), FollowAd::Announce);
        assert_eq!(newer_ad(&lo, restarted(&lo_first), &ad(hi, vec![hi])), FollowAd::Follow);
        // A leader in standby for another reason (found unreachable) follows.
        assert_eq!(newer_ad(&hi, held(false, &[hi, lo], &named), &ad(lo, vec![lo])), FollowAd::Follow);
    }
}
