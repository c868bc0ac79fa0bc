//! Adoptions (`MeshService.Adopt`: the whole job with the sender's list and every attestation
//! it recorded) and roles. A round of adoptions ([`AdoptRound`]) brings the list up to
//! strength; the role rules ([`crate::peer::roles`]) decide, once membership has had time to
//! learn who is alive and then every second (at once when a peer is declared dead), whether
//! this peer leads or stands by. Taking over: this peer first in its list at once (workers
//! follow it there and report to it), streaming to the backups kept once it leads; those heard
//! the dead leader's stream separately, so each gets the whole job and answers with what it
//! recorded that this peer lacks ([`Sync`]); the peer leads once they answered (or the sync
//! timed out), catches them up if one brought something, one did not answer, or it recorded
//! something while it waited, and replaces the dead.

use crate::peer::adoption::{AdoptRound, Settled};
use crate::peer::roles::{ROLES_EVERY_MS, RoleChange, RoleView};
use crate::peer::takeover::{self, Sync};
use crate::reachability::coordinators_in_role;
use crate::{Millis, PeerId, TaskId};

use super::{Adopt, AdoptKind, Host, Logged, Members, Notice, Recorded, Shared, Transmit};

impl Host {
    /// Offers the job to the highest-ranked of `candidates` to fill the list up (keeping this
    /// peer's list); the list settles, and the job is announced, once every one asked answered.
    pub(super) fn offer(&mut self, cx: &Shared, candidates: &[PeerId]) {
        let keep = self.coordinators.clone();
        self.add_coordinators(cx, keep, candidates);
    }

    /// `MeshService.Adopt` of this host's job: every attestation sent is recorded, the tasks
    /// failed by deadline misses too, a cancellation by one of this peer's coordinators is
    /// taken, and what the adoption means is settled (a hand-over merged, two leaders). The
    /// answer: for a [`AdoptKind::Sync`] from one of this peer's coordinators, what is recorded
    /// here that the sender lacks, in this peer's order. `fresh` says the host was just made
    /// for this adoption.
    pub(super) fn handle_adopt(&mut self, cx: &mut Shared, a: Adopt, fresh: bool, now: Millis) -> Vec<Logged> {
        self.clock = now;
        // Only to a coordinator this peer names: the job is its to lead (anyone can sign an
        // adoption naming itself).
        let named = self.coordinators.contains(&a.from);
        let missing = if !fresh && a.kind == AdoptKind::Sync && named {
            let carried = takeover::Carried::of(a.log.iter().map(|r| (r.logged.att.task.index, r.logged.att.peer)));
            takeover::missing(self.log.iter().map(|l| &*l.att), &carried).into_iter().map(|i| self.log[i].clone()).collect()
        } else {
            Vec::new()
        };
        self.record_replicated(cx, &a.log, now);
        if !a.timed_out.is_empty() {
            let total = cx.coord.job(&self.job).map_or(0, |j| j.spec.task_count);
            for &(index, misses) in a.timed_out.iter().filter(|(i, _)| *i < total) {
                cx.coord.restore_timed_out(TaskId { job: self.job, index }, misses);
            }
            self.drain(cx, &[]);
        }
        if a.cancelled && named {
            self.cancel(cx, now);
        }
        if fresh {
            self.look_at_roles(now + ROLES_EVERY_MS);
        } else {
            self.adopted_from(cx, a.from, &a.coordinators, now);
        }
        missing
    }

    /// The answer to an `Adopt` this host sent to `to` (`None`: it failed); a sync's answer
    /// carries what `to` recorded that this peer lacked.
    pub(super) fn handle_adopted(&mut self, cx: &mut Shared, to: PeerId, answer: Option<Vec<Recorded>>, kind: AdoptKind, now: Millis, members: &dyn Members) {
        self.clock = now;
        let ok = answer.is_some();
        match kind {
            AdoptKind::CatchUp => {}
            AdoptKind::HandOver => self.on_handed_over(cx, ok, now),
            AdoptKind::Sync => self.on_synced(cx, to, answer, now, members),
            AdoptKind::Join => {
                if let Some(settled) = self.adopting.as_mut().and_then(|r| r.handle_answer(to, ok)) {
                    self.settle_coordinators(cx, settled);
                }
            }
        }
    }

    /// Sends `to` the whole job with `list` as its coordinators.
    pub(super) fn send_adopt(&mut self, to: PeerId, list: Vec<PeerId>, kind: AdoptKind) {
        let log = self.log.clone();
        self.transmits.push_back(Transmit::Adopt { to, job: self.job, coordinators: list, log, kind, shed: self.shed });
    }

    /// Brings the list up to strength by an [`AdoptRound`]: `keep` (this peer first), then an
    /// `Adopt` to the highest-ranked of `candidates`.
    fn add_coordinators(&mut self, cx: &Shared, keep: Vec<PeerId>, candidates: &[PeerId]) {
        let round = AdoptRound::new(self.job, keep, candidates);
        let asks: Vec<(PeerId, Vec<PeerId>)> = round.asked().iter().map(|n| (*n, round.list_for(*n))).collect();
        let now = round.settle_now();
        self.adopting = Some(round);
        if let Some(settled) = now {
            self.settle_coordinators(cx, settled);
            return;
        }
        for (n, list) in asks {
            self.send_adopt(n, list, AdoptKind::Join);
        }
    }

    /// The round settled: the list goes out with the job's ad, and the new coordinators get a
    /// second `Adopt` with what was recorded before they were in the list.
    fn settle_coordinators(&mut self, cx: &Shared, settled: Settled) {
        self.adopting = None;
        self.set_coordinators(settled.coordinators.clone());
        self.announce(cx);
        for n in settled.catch_up {
            self.send_adopt(n, settled.coordinators.clone(), AdoptKind::CatchUp);
        }
        self.notices.push_back(Notice::Wake);
    }

    /// A member came up: a list this peer leads that is short of coordinators is topped up at
    /// once, not at the next periodic top-up. Whether it will be.
    pub(super) fn on_member_up(&mut self, cx: &Shared, now: Millis) -> bool {
        let short = self.coordinators.len() < crate::rendezvous::DEFAULT_COORDINATORS;
        if !short || !self.leads(cx) || self.is_done(cx) || self.adopting.is_some() {
            return false;
        }
        self.roles.top_up_soon();
        self.look_at_roles(now);
        true
    }

    /// The timer for roles ran out: look at them, unless the job is over, membership is not
    /// ready, or an adoption round or a hand-over of this peer's is in progress.
    pub(super) fn on_roles(&mut self, cx: &mut Shared, now: Millis, members: &dyn Members) {
        if self.is_done(cx) {
            return;
        }
        // A restarted leader waits out the whole grace (once known gap 19): the replacement's ad, if
        // there is one, reaches it meanwhile and settles who leads without two leading.
        let heard_from = if self.restarted { 0 } else { members.active_members() };
        if !self.roles.ready(now, true, heard_from) || self.adopting.is_some() || self.handing_over.is_some() {
            self.look_at_roles(now + ROLES_EVERY_MS);
            return;
        }
        self.evaluate_roles(cx, now, members);
        self.look_at_roles(self.roles.poll_timeout());
    }

    fn evaluate_roles(&mut self, cx: &mut Shared, now: Millis, members: &dyn Members) {
        let (job, me) = (self.job, self.me);
        let standby = cx.coord.is_standby(&job);
        let may = |p: &PeerId| members.may_coordinate(p);
        let list = coordinators_in_role(&self.coordinators, may, |c| *c == me || members.is_live(c)).unwrap_or_else(|| self.coordinators.clone());
        let view = RoleView { job, coordinators: &list, standby };
        let changes = self.roles.evaluate(me, [view], |c| members.is_live(c), members.live_peers(), now);
        for change in changes {
            match change {
                RoleChange::StandBy(_) => cx.coord.set_standby(&job, true),
                RoleChange::TakeOver { list, .. } => self.take_over(cx, list, standby, now, members),
                RoleChange::TopUp(_) => {
                    let list = self.coordinators.clone();
                    let candidates = candidates(members, &list);
                    if !candidates.is_empty() {
                        self.add_coordinators(cx, list, &candidates);
                    }
                }
                RoleChange::Reannounce(_) => self.notices.push_back(Notice::Announce { done: false }),
            }
        }
    }

    /// Takes the job over with `keep` (this peer first, the dead dropped).
    fn take_over(&mut self, cx: &mut Shared, keep: Vec<PeerId>, was_standby: bool, now: Millis, members: &dyn Members) {
        if self.syncing.is_some() {
            return;
        }
        self.set_coordinators(keep.clone());
        if was_standby {
            self.notices.push_back(Notice::TookOver);
        }
        let Some(sync) = Sync::start(&keep, self.logged, now) else { return self.lead(cx, false, now, members) };
        let asked = sync.asked().to_vec();
        self.syncing = Some(sync);
        for b in asked {
            self.send_adopt(b, keep.clone(), AdoptKind::Sync);
        }
    }

    /// A backup answered the sync (with what it recorded that this peer lacked) or failed to.
    fn on_synced(&mut self, cx: &mut Shared, from: PeerId, answer: Option<Vec<Recorded>>, now: Millis, members: &dyn Members) {
        let pulled = answer.map(|missing| self.record_replicated(cx, &missing, now) as usize);
        let Some(sync) = self.syncing.as_mut() else { return };
        if sync.handle_answer(from, pulled) {
            let catch_up = sync.needs_catch_up(self.logged);
            self.syncing = None;
            self.lead(cx, catch_up, now, members);
        }
    }

    /// Leads the job taken over: out of standby, the backups caught up again if the sync
    /// brought what one may lack, the dead replaced.
    pub(super) fn lead(&mut self, cx: &mut Shared, catch_up: bool, now: Millis, members: &dyn Members) {
        if self.coordinators.first() != Some(&self.me) {
            return;
        }
        cx.coord.set_standby(&self.job, false);
        self.restarted = false;
        let keep = self.coordinators.clone();
        if catch_up {
            for &b in &keep[1..] {
                self.request_catch_up(self.job, b, now);
            }
        }
        let candidates = candidates(members, &keep);
        self.add_coordinators(cx, keep, &candidates);
        self.notices.push_back(Notice::Wake);
    }
}

/// The live peers not in `list` that may coordinate: who a round of adoptions may ask.
fn candidates(members: &dyn Members, list: &[PeerId]) -> Vec<PeerId> {
    members.live().into_iter().filter(|p| !list.contains(p) && members.may_coordinate(p)).collect()
}
