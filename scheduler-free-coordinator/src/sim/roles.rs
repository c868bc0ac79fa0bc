//! Roles: each coordinator of the job decides, by [`crate::peer::roles`], whether it leads or
//! stands by, and the simulator carries out what [`Roles::evaluate`](crate::peer::roles::Roles)
//! returns: standing by, taking the job over (this peer first, the dead dropped, the backups
//! kept caught up, replacements adopted from the peers it sees live, the new list announced),
//! topping a short list up, and announcing the job again. Roles are looked at once membership
//! has had time to learn who is alive, then every second and at once when a view declares a
//! peer dead; not while an adoption round or a hand-over of this peer's is in progress.
//!
//! **The grace is waited out in full.** A peer may look at roles as soon as one member is
//! active, but a simulated mesh forms at the same moment as its job, when one active member
//! says nothing about who else is alive; and a first look re-announces the job, whose gossip,
//! in the second when the whole mesh is joining, crowds out the join's membership updates
//! (at 10,000 peers membership then took 21 gossip rounds to converge instead of 11). So the
//! simulator asks [`Roles::ready`](crate::peer::roles::Roles::ready) with no member active.
//!
//! **Liveness is simplified** (the `is_live` the role rules are given). A coordinator bridges
//! every cell, so it has one view per cell; it takes a peer for dead when any of its views
//! holds it dead (the first cell to declare a peer dead stands for a real mesh's one SWIM
//! cluster, whose first detection spreads to everyone), and for live otherwise, also when no
//! view knows it. [`Roles::counts_as_live`](crate::peer::roles::Roles::counts_as_live) takes a
//! peer nobody has heard of for live only for a while after a start; here that case is only a
//! peer not heard of yet (a dead member is remembered for ten minutes, as long as a run may
//! last), as when a replacement's new views of the other cells are still joining.

use crate::Millis;
use crate::membership::MemberState;
use crate::peer::roles::{ROLES_EVERY_MS, RoleChange, RoleView};
use crate::peer::takeover::Sync;

use super::coord::job_final;
use super::engine::Sim;
use super::keys;
use super::peer::{AdoptKind, Logged, NEVER};
use super::queue::Event;

impl Sim {
    /// Whether peer `p` takes `who` for live: none of its membership views holds it dead (see
    /// the module docs).
    pub(super) fn sees_live(&self, p: u32, who: u32) -> bool {
        if p == who {
            return true;
        }
        let id = self.peers[who as usize].id;
        let peer = &self.peers[p as usize];
        peer.alive && !peer.views.iter().any(|v| v.mesh.membership.state_of(&id).is_some_and(|(_, s)| s == MemberState::Dead))
    }

    /// The live peers `p`'s views know, other than `p`, in index order.
    fn live_set(&self, p: u32) -> Vec<u32> {
        let mut seen: Vec<u32> = Vec::new();
        for v in &self.peers[p as usize].views {
            for (m, s) in v.mesh.membership.members() {
                if s != MemberState::Dead {
                    seen.push(keys::index_of(&m.peer));
                }
            }
        }
        seen.sort_unstable();
        seen.dedup();
        seen.retain(|&i| i != p && self.sees_live(p, i));
        seen
    }

    /// Active members over all of `p`'s views (a bridge counts a member of several cells once
    /// per cell, which only matters against the handful of coordinators a list holds).
    fn active_members(&self, p: u32) -> usize {
        self.peers[p as usize].views.iter().map(|v| v.mesh.membership.active()).sum()
    }

    /// Schedules `p`'s look at its roles at `at` (sooner wins).
    pub(super) fn schedule_roles(&mut self, p: u32, at: Millis) {
        let Some(h) = self.peers[p as usize].host.as_mut() else { return };
        self.queue.arm(&mut h.roles_at, at, Event::Roles { peer: p });
    }

    pub(super) fn on_roles(&mut self, p: u32) {
        let (now, job) = (self.now, self.job);
        let peer = &mut self.peers[p as usize];
        let alive = peer.alive;
        let Some(h) = peer.host.as_mut() else { return };
        if h.roles_at != now || !alive {
            return;
        }
        h.roles_at = NEVER;
        if job_final(&h.coord, &job) {
            return;
        }
        // Every simulated peer joins through its cell's bootstrap peers; no member counts as
        // active (see the module docs).
        if !h.roles.ready(now, true, 0) || h.adopting.is_some() || h.handing_over.is_some() {
            self.schedule_roles(p, now + ROLES_EVERY_MS);
            return;
        }
        self.evaluate_roles(p);
        let next = self.peers[p as usize].host.as_ref().map_or(NEVER, |h| h.roles.poll_timeout());
        self.schedule_roles(p, next);
    }

    /// Looks at `p`'s role in the job and carries out what the role rules decide.
    fn evaluate_roles(&mut self, p: u32) {
        let (now, job) = (self.now, self.job);
        let live_peers = 1 + self.active_members(p);
        let peer = &self.peers[p as usize];
        let Some(h) = peer.host.as_ref() else { return };
        let list = self.ids(&h.coordinators);
        let standby = h.coord.is_standby(&job);
        let mut roles = h.roles.clone();
        let view = RoleView { job, coordinators: &list, standby };
        let changes = roles.evaluate(peer.id, [view], |c| self.sees_live(p, keys::index_of(c)), live_peers, now);
        let Some(h) = self.peers[p as usize].host.as_mut() else { return };
        h.roles = roles;
        for change in changes {
            match change {
                RoleChange::StandBy(_) => {
                    if let Some(h) = self.peers[p as usize].host.as_mut() {
                        h.coord.set_standby(&job, true);
                    }
                }
                RoleChange::TakeOver { list, .. } => self.take_over(p, list.iter().map(keys::index_of).collect(), standby),
                RoleChange::TopUp(_) => {
                    let list = self.peers[p as usize].host.as_ref().map(|h| h.coordinators.clone()).unwrap_or_default();
                    let candidates: Vec<u32> = self.live_set(p).into_iter().filter(|i| !list.contains(i)).collect();
                    if !candidates.is_empty() {
                        self.add_coordinators(p, list, &candidates);
                    }
                }
                RoleChange::Reannounce(_) => self.publish_job(p, false),
            }
        }
    }

    /// `p` takes the job over with `keep` (itself first, the dead dropped): first in its list at
    /// once, so what it records from now on streams to the backups kept; those heard the dead
    /// leader's stream separately, so each gets the whole job and answers with what it recorded
    /// that `p` lacks ([`Sync`]). `p` leads once they answered.
    fn take_over(&mut self, p: u32, keep: Vec<u32>, was_standby: bool) {
        if self.peers[p as usize].host.as_ref().is_none_or(|h| h.syncing.is_some()) {
            return;
        }
        self.set_coordinators(p, keep.clone());
        if was_standby {
            self.m.takeovers += 1;
            self.active = Some(p);
            // Across a cut no leader crashed: the far side was leaderless from the cut.
            if self.partitioned() && self.m.leaderless_since.is_none() {
                self.m.leaderless_since = self.cfg.partition_at_ms;
            }
        }
        let Some(sync) = Sync::start(&self.ids(&keep), self.now) else { return self.lead(p, false) };
        let asked: Vec<u32> = sync.asked().iter().map(keys::index_of).collect();
        if let Some(h) = self.peers[p as usize].host.as_mut() {
            h.syncing = Some(sync);
        }
        for b in asked {
            self.send_adopt(p, b, keep.clone(), AdoptKind::Sync);
        }
    }

    /// A backup answered `p`'s sync (with what it recorded that `p` lacked) or failed to.
    pub(super) fn on_synced(&mut self, p: u32, from: u32, answer: Option<Vec<Logged>>) {
        let pulled = answer.map(|missing| self.record_replicated(p, missing) as usize);
        let from = self.peers[from as usize].id;
        let Some(sync) = self.peers[p as usize].host.as_mut().and_then(|h| h.syncing.as_mut()) else { return };
        if sync.handle_answer(from, pulled) {
            let catch_up = sync.needs_catch_up();
            if let Some(h) = self.peers[p as usize].host.as_mut() {
                h.syncing = None;
            }
            self.lead(p, catch_up);
        }
    }

    /// `p` leads the job it took over: out of standby, the backups kept caught up again if the
    /// sync brought what one may lack, the dead replaced.
    fn lead(&mut self, p: u32, catch_up: bool) {
        let job = self.job;
        let Some(h) = self.peers[p as usize].host.as_mut() else { return };
        if h.coordinators.first() != Some(&p) {
            return;
        }
        h.coord.set_standby(&job, false);
        let keep = h.coordinators.clone();
        if catch_up {
            for &b in &keep[1..] {
                self.request_catch_up(p, job, b);
            }
        }
        let candidates: Vec<u32> = self.live_set(p).into_iter().filter(|i| !keep.contains(i)).collect();
        self.add_coordinators(p, keep, &candidates);
        self.wake(p);
    }
}
