//! Roles: for every job it holds, a coordinator decides whether it is the job's *active*
//! coordinator (the first live one in its list: it leases and decides) or a *standby* (it
//! replays what the active one streams). The first live coordinator that finds the ones before
//! it dead takes the job over: it leads with itself first and the dead dropped, tops the list up
//! with replacements, catches up the backups it kept and announces the job again. The active
//! coordinator also re-announces unfinished jobs now and then (gossip sends a record only a few
//! times, and the two leaders of a healed split must hear of each other), and offers jobs with
//! a short list to more peers as they join.
//!
//! Roles are looked at every [`ROLES_EVERY_MS`] and at once when membership declares a peer
//! dead, after a grace at start for membership to learn who is alive.

use crate::membership::MemberState;
use crate::rendezvous::DEFAULT_COORDINATORS;
use crate::{JobId, Millis, PeerId};

/// Roles are looked at again this often.
pub const ROLES_EVERY_MS: Millis = 1_000;
/// After a start, roles wait this long for membership to learn who is alive (unless a member
/// is active already, or there was nobody to join through).
pub const ROLES_GRACE_MS: Millis = 6_000;
/// For how long after a start a coordinator unknown to membership counts as alive (past it, a
/// peer nobody has heard of is taken for dead): taking a job over from a leader that is merely
/// not known yet makes two leaders.
pub const UNKNOWN_IS_ALIVE_MS: Millis = 30_000;
/// How often a job led here with fewer than [`DEFAULT_COORDINATORS`] coordinators is offered
/// to more live peers (each try hands the whole job over).
pub const TOP_UP_EVERY_MS: Millis = 30_000;
/// How often the active coordinator of an unfinished job announces it again: a last resort,
/// since a peer that missed the ad gets it from the digests that members exchange (see
/// [`crate::membership`]); each re-announcement is news to the whole mesh.
pub const REANNOUNCE_EVERY_MS: Millis = 300_000;

/// Whether a peer that started at `started` may look at roles yet: see [`Roles::ready`].
pub fn ready(started: Millis, now: Millis, joins_through_others: bool, active_members: usize) -> bool {
    !joins_through_others || active_members > 0 || now >= started + ROLES_GRACE_MS
}

/// A job as the role rules see it.
#[derive(Clone, Copy, Debug)]
pub struct RoleView<'a> {
    /// The job.
    pub job: JobId,
    /// Its coordinators as this peer holds them, the active one first.
    pub coordinators: &'a [PeerId],
    /// Whether this peer is in standby for it.
    pub standby: bool,
}

/// What the role rules decided for one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoleChange {
    /// Stand by: this peer is no longer among the job's coordinators, or another live one
    /// comes first.
    StandBy(JobId),
    /// Lead the job, with `list` as its coordinators (this peer first, the dead dropped; add
    /// replacements). The backups kept (`list[1..]`) heard the dead leader's stream separately:
    /// catch each up.
    TakeOver {
        /// The job.
        job: JobId,
        /// The new list, this peer first.
        list: Vec<PeerId>,
    },
    /// Offer the job to more live peers: its list is short.
    TopUp(JobId),
    /// Announce the job again.
    Reannounce(JobId),
}

/// When roles were and will be looked at.
#[derive(Clone, Debug)]
pub struct Roles {
    started: Millis,
    next_at: Millis,
    top_up_at: Option<Millis>,
    reannounce_at: Option<Millis>,
}

impl Roles {
    /// Roles of a peer that started at `started`.
    pub fn new(started: Millis) -> Roles {
        Roles { started, next_at: started, top_up_at: None, reannounce_at: None }
    }

    /// Whether membership has had time to learn who is alive: the grace is over, a member is
    /// active, or there was nobody to join through.
    pub fn ready(&self, now: Millis, joins_through_others: bool, active_members: usize) -> bool {
        ready(self.started, now, joins_through_others, active_members)
    }

    /// A member came up: a list short of coordinators is topped up at the next look rather than
    /// the next [`TOP_UP_EVERY_MS`]: a job submitted while its origin was alone.
    pub fn top_up_soon(&mut self) {
        self.top_up_at = None;
    }

    /// Whether the periodic look is due.
    pub fn due(&self, now: Millis) -> bool {
        now >= self.next_at
    }

    /// When the periodic look is next due.
    pub fn poll_timeout(&self) -> Millis {
        self.next_at
    }

    /// Whether a coordinator whose membership state is `state` counts as live: not dead, and
    /// unknown only soon after this peer started.
    pub fn counts_as_live(&self, state: Option<MemberState>, now: Millis) -> bool {
        match state {
            Some(s) => s != MemberState::Dead,
            None => now < self.started + UNKNOWN_IS_ALIVE_MS,
        }
    }

    /// Decides every job's role. `is_live` says whether a peer counts as live (see
    /// [`Roles::counts_as_live`]; this peer always is); `live_peers` counts live peers, this one
    /// included. Unfinished jobs only.
    pub fn evaluate<'a>(
        &mut self,
        me: PeerId,
        jobs: impl IntoIterator<Item = RoleView<'a>>,
        is_live: impl Fn(&PeerId) -> bool,
        live_peers: usize,
        now: Millis,
    ) -> Vec<RoleChange> {
        let live = |p: &PeerId| *p == me || is_live(p);
        let top_up_due = self.top_up_at.is_none_or(|t| now >= t + TOP_UP_EVERY_MS);
        let reannounce_due = self.reannounce_at.is_none_or(|t| now >= t + REANNOUNCE_EVERY_MS);
        if top_up_due {
            self.top_up_at = Some(now);
        }
        if reannounce_due {
            self.reannounce_at = Some(now);
        }
        self.next_at = now + ROLES_EVERY_MS;
        let mut out = Vec::new();
        for v in jobs {
            if !v.coordinators.contains(&me) {
                if !v.standby {
                    out.push(RoleChange::StandBy(v.job));
                }
                continue;
            }
            let active = v.coordinators.iter().find(|c| live(c)) == Some(&me);
            if active && (v.standby || v.coordinators.iter().any(|c| !live(c))) {
                let mut list = vec![me];
                list.extend(v.coordinators.iter().copied().filter(|c| *c != me && live(c)));
                out.push(RoleChange::TakeOver { job: v.job, list });
            } else if !active && !v.standby {
                out.push(RoleChange::StandBy(v.job));
            } else if active {
                if top_up_due && v.coordinators.len() < DEFAULT_COORDINATORS && live_peers > v.coordinators.len() {
                    out.push(RoleChange::TopUp(v.job));
                }
                if reannounce_due {
                    out.push(RoleChange::Reannounce(v.job));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u8) -> PeerId {
        PeerId([n; 32])
    }

    const JOB: JobId = JobId([9; 32]);

    #[test]
    fn the_next_live_coordinator_takes_over_when_the_leader_dies() {
        let mut roles = Roles::new(0);
        let list = [p(1), p(2), p(3)];
        let view = RoleView { job: JOB, coordinators: &list, standby: true };
        // Everyone alive: peer 2 stands by (it already does: nothing to change).
        let all = roles.evaluate(p(2), [view], |_| true, 3, 40_000);
        assert!(all.is_empty(), "{all:?}");
        // Peer 1 died: peer 2 leads with itself first and peer 3 kept.
        let changes = roles.evaluate(p(2), [view], |q| *q != p(1), 2, 41_000);
        assert_eq!(changes, vec![RoleChange::TakeOver { job: JOB, list: vec![p(2), p(3)] }]);
        // Peer 3 waits for peer 2.
        let changes = roles.evaluate(p(3), [view], |q| *q != p(1), 2, 41_000);
        assert!(changes.is_empty());
    }

    #[test]
    fn a_leader_that_sees_an_earlier_coordinator_alive_stands_by() {
        let mut roles = Roles::new(0);
        let list = [p(1), p(2)];
        let view = RoleView { job: JOB, coordinators: &list, standby: false };
        assert_eq!(roles.evaluate(p(2), [view], |_| true, 2, 40_000), vec![RoleChange::StandBy(JOB)]);
        let not_named = RoleView { job: JOB, coordinators: &[p(1)], standby: false };
        assert_eq!(roles.evaluate(p(2), [not_named], |_| true, 2, 40_000), vec![RoleChange::StandBy(JOB)]);
    }

    #[test]
    fn an_active_coordinator_reannounces_and_tops_up_on_their_own_clocks() {
        let mut roles = Roles::new(0);
        let list = [p(1), p(2)];
        let view = RoleView { job: JOB, coordinators: &list, standby: false };
        let first = roles.evaluate(p(1), [view], |_| true, 5, 1_000);
        assert_eq!(first, vec![RoleChange::TopUp(JOB), RoleChange::Reannounce(JOB)]);
        assert!(roles.evaluate(p(1), [view], |_| true, 5, 2_000).is_empty());
        assert_eq!(roles.evaluate(p(1), [view], |_| true, 5, 1_000 + TOP_UP_EVERY_MS), vec![RoleChange::TopUp(JOB)]);
        assert_eq!(
            roles.evaluate(p(1), [view], |_| true, 5, 1_000 + REANNOUNCE_EVERY_MS),
            vec![RoleChange::TopUp(JOB), RoleChange::Reannounce(JOB)]
        );
        // No top-up when no more peers are live than it has coordinators.
        let mut r2 = Roles::new(0);
        assert_eq!(r2.evaluate(p(1), [view], |_| true, 2, 1_000), vec![RoleChange::Reannounce(JOB)]);
    }

    #[test]
    fn unknown_coordinators_count_as_live_only_soon_after_a_start() {
        let roles = Roles::new(5_000);
        assert!(roles.counts_as_live(None, 5_000 + UNKNOWN_IS_ALIVE_MS - 1));
        assert!(!roles.counts_as_live(None, 5_000 + UNKNOWN_IS_ALIVE_MS));
        assert!(roles.counts_as_live(Some(MemberState::Suspect), 1_000_000));
        assert!(!roles.counts_as_live(Some(MemberState::Dead), 0));
    }

    #[test]
    fn roles_wait_for_membership_after_a_start() {
        let roles = Roles::new(1_000);
        assert!(!roles.ready(2_000, true, 0));
        assert!(roles.ready(2_000, true, 1), "a member is active");
        assert!(roles.ready(2_000, false, 0), "nobody to join through");
        assert!(roles.ready(1_000 + ROLES_GRACE_MS, true, 0));
    }
}
