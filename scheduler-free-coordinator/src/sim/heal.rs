//! Two leaders. Under message loss membership may declare a live coordinator dead, and a backup
//! then takes the job over while the one it replaced still leads. The coordinators settle it by
//! [`crate::peer::heal`], when one hears a newer ad of the job from another announcer, a rival
//! ad (from an announcer its known ad does not name), or an adoption from a peer that leads the
//! job too: the one [`outranks`](crate::peer::heal::outranks) puts second (the origin always
//! wins, otherwise the higher rendezvous weight) steps down to standby, hands what it recorded
//! to the winner by an adoption, and announces an ad naming the winner first; the winner merges
//! it, drops the loser from its list, and announces the job again a moment later, catching up
//! its backups. A hand-over the winner does not take is tried again, then the loser takes the
//! job back.

use std::collections::BTreeSet;

use crate::peer::handover::{HandOver, HandOverStep};
use crate::peer::heal::{self, Adoption, FollowAd, Held, REANNOUNCE_AFTER_MS, Settle};
use crate::records::JobAd;
use crate::PeerId;

use super::coord::job_final;
use super::engine::Sim;
use super::keys;
use super::peer::AdoptKind;
use super::queue::Event;

impl Sim {
    /// `f` of the job as `p` holds it, as the heal rules see it (`None`: not held).
    fn with_held<R>(&self, p: u32, f: impl FnOnce(Option<Held<'_>>) -> R) -> R {
        let leads = self.leads(p);
        let Some(h) = self.peers[p as usize].host.as_ref().filter(|h| h.jobs.contains(&self.job)) else { return f(None) };
        let coordinators = self.ids(&h.coordinators);
        let named: &BTreeSet<PeerId> = &h.named;
        f(Some(Held { job: self.job, origin: self.spec.origin, leads, coordinators: &coordinators, named }))
    }

    fn is_done(&self, p: u32) -> bool {
        self.peers[p as usize].host.as_ref().is_none_or(|h| job_final(&h.coord, &self.job))
    }

    /// A newer ad of the job from another announcer reached coordinator `p`.
    pub(super) fn follow_ad(&mut self, p: u32, ad: &JobAd) {
        let me = self.peers[p as usize].id;
        match self.with_held(p, |held| held.map(|h| heal::newer_ad(&me, h, ad))) {
            None | Some(FollowAd::Same) => {}
            Some(FollowAd::Follow) => self.set_coordinators(p, ad.coordinators.iter().map(keys::index_of).collect()),
            Some(FollowAd::Announce) => self.publish_job(p, self.is_done(p)),
            Some(FollowAd::HandOver(theirs)) => self.hand_over(p, theirs),
        }
    }

    /// A rival ad of the job reached `p`. A bridge hears it once per cell, where a real peer's
    /// one membership reports it once: only the first report counts.
    pub(super) fn on_rival(&mut self, p: u32, ad: JobAd) {
        let Some(h) = self.peers[p as usize].host.as_mut().filter(|_| ad.job == self.job) else { return };
        if !h.rivals.insert((ad.announcer, ad.seq)) {
            return;
        }
        let me = self.peers[p as usize].id;
        let settle = self.with_held(p, |held| heal::rival_ad(&me, held, &ad));
        self.carry_out(p, settle);
    }

    fn carry_out(&mut self, p: u32, settle: Settle) {
        match settle {
            Settle::HandOver(theirs) => self.hand_over(p, theirs),
            Settle::Announce => self.publish_job(p, self.is_done(p)),
            Settle::Ignore(_) => {}
        }
    }

    /// An adoption of the job `r` held already came from `sender`, naming `theirs`: a hand-over
    /// to merge, a catch-up, or a second leader to settle with.
    pub(super) fn adopted_from(&mut self, r: u32, sender: u32, theirs: &[u32]) {
        let (me, from, theirs) = (self.peers[r as usize].id, self.peers[sender as usize].id, self.ids(theirs));
        let Some(decision) = self.with_held(r, |held| held.map(|h| heal::adoption(&me, h, from, &theirs))) else { return };
        match decision {
            Adoption::Merged { unname } => {
                if unname {
                    let list = self.peers[r as usize].host.as_ref().map(|h| h.coordinators.clone()).unwrap_or_default();
                    self.set_coordinators(r, list.into_iter().filter(|&c| c != sender).collect());
                }
                // By then the loser's hand-over ad, which names this peer, has spread.
                self.queue.push(self.now + REANNOUNCE_AFTER_MS, Event::Announce { peer: r });
            }
            Adoption::Settle(settle) => self.carry_out(r, settle),
            Adoption::Nothing => {}
        }
    }

    /// A while after merging a hand-over: announce the job again and catch the backups up.
    pub(super) fn on_announce(&mut self, p: u32) {
        if !self.peers[p as usize].alive || !self.peers[p as usize].holds(&self.job) {
            return;
        }
        self.publish_job(p, self.is_done(p));
        self.catch_up_backups(p);
    }

    /// `p` steps down in favour of the first of `theirs` ([`HandOver`]): it stands by, names
    /// their list without itself, and sends the winner everything it recorded.
    fn hand_over(&mut self, p: u32, theirs: Vec<PeerId>) {
        if !self.leads(p) {
            return;
        }
        let (me, job) = (self.peers[p as usize].id, self.job);
        let old = self.peers[p as usize].host.as_ref().map(|h| self.ids(&h.coordinators)).unwrap_or_default();
        let Some((ho, list)) = HandOver::start(&me, old, &theirs) else { return };
        let to = keys::index_of(&ho.to);
        let Some(h) = self.peers[p as usize].host.as_mut() else { return };
        // Stepping down ends a round of adoptions: the list is the winner's now.
        h.adopting = None;
        h.handing_over = Some(ho);
        h.coord.set_standby(&job, true);
        self.set_coordinators(p, list.iter().map(keys::index_of).collect());
        self.send_hand_over(p, to);
    }

    /// Sends the hand-over adoption: `p`'s list, which names the winner first, and `p` itself.
    fn send_hand_over(&mut self, p: u32, to: u32) {
        let me = self.peers[p as usize].id;
        let Some(list) = self.peers[p as usize].host.as_ref().map(|h| self.ids(&h.coordinators)) else { return };
        let list = HandOver::adoption_list(&me, &list).iter().map(keys::index_of).collect();
        self.send_adopt(p, to, list, AdoptKind::HandOver);
    }

    /// The hand-over adoption came back: announce the winner, try again, or take the job back.
    pub(super) fn on_handed_over(&mut self, p: u32, ok: bool) {
        let job = self.job;
        let Some(h) = self.peers[p as usize].host.as_mut() else { return };
        let Some(ho) = h.handing_over.as_mut() else { return };
        let to = keys::index_of(&ho.to);
        match ho.handle_answer(ok) {
            HandOverStep::Done => {
                h.handing_over = None;
                if self.active == Some(p) {
                    self.active = Some(to);
                }
                self.publish_job(p, self.is_done(p));
                self.wake(p);
            }
            HandOverStep::Again { after_ms } => self.queue.push(self.now + after_ms, Event::HandOverAgain { peer: p }),
            HandOverStep::TakeBack(old) => {
                h.handing_over = None;
                h.coord.set_standby(&job, false);
                self.set_coordinators(p, old.iter().map(keys::index_of).collect());
                // The winner hears it as a rival and announces; the two meet again.
                self.publish_job(p, self.is_done(p));
                self.wake(p);
            }
        }
    }

    /// The pause after a failed hand-over adoption ended: send it again, if `p` still hands
    /// the job over.
    pub(super) fn hand_over_again(&mut self, p: u32) {
        let peer = &self.peers[p as usize];
        let Some(to) = peer.host.as_ref().filter(|_| peer.alive).and_then(|h| h.handing_over.as_ref()).map(|ho| keys::index_of(&ho.to)) else { return };
        self.send_hand_over(p, to);
    }
}
