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

use crate::peer::handover::{HandOver, HandOverStep};
use crate::peer::heal::{self, Adoption, FollowAd, Held, REANNOUNCE_AFTER_MS, Settle};
use crate::records::JobAd;
use crate::{Millis, PeerId};

use super::{AdoptKind, Host, Notice, Shared};

impl Host {
    /// A newer ad of the job from another announcer arrived.
    pub(super) fn handle_ad(&mut self, cx: &mut Shared, ad: &JobAd) {
        if ad.job != self.job {
            return;
        }
        let me = self.me;
        match heal::newer_ad(&me, self.held(cx), ad) {
            FollowAd::Same => {}
            FollowAd::Follow => {
                self.restarted = false;
                self.set_coordinators(ad.coordinators.clone());
            }
            FollowAd::Announce => self.announce(cx),
            FollowAd::HandOver(theirs) => self.hand_over(cx, theirs),
        }
    }

    /// A rival ad of the job arrived (signed by an announcer the known ad does not name). Each
    /// (announcer, sequence number) counts once, however many times it is heard.
    pub(super) fn handle_rival(&mut self, cx: &mut Shared, ad: &JobAd) {
        if ad.job != self.job || !self.rivals.insert((ad.announcer, ad.seq)) {
            return;
        }
        let me = self.me;
        let settle = heal::rival_ad(&me, Some(self.held(cx)), ad);
        self.carry_out(cx, settle);
    }

    /// The job as the heal rules see it.
    fn held(&self, cx: &Shared) -> Held<'_> {
        Held {
            job: self.job,
            origin: self.origin,
            leads: self.leads(cx),
            coordinators: &self.coordinators,
            named: &self.named,
            restarted: self.restarted,
        }
    }

    fn carry_out(&mut self, cx: &mut Shared, settle: Settle) {
        match settle {
            Settle::HandOver(theirs) => self.hand_over(cx, theirs),
            Settle::Announce => self.announce(cx),
            Settle::Ignore(_) => {}
        }
    }

    /// An adoption of the job held here came from `sender`, naming `theirs`: a hand-over to
    /// merge, a catch-up, or a second leader to settle with.
    pub(super) fn adopted_from(&mut self, cx: &mut Shared, sender: PeerId, theirs: &[PeerId], now: Millis) {
        let me = self.me;
        match heal::adoption(&me, self.held(cx), sender, theirs) {
            Adoption::Merged { unname } => {
                if unname {
                    let list = self.coordinators.iter().copied().filter(|c| *c != sender).collect();
                    self.set_coordinators(list);
                }
                // By then the loser's hand-over ad, which names this peer, has spread.
                let at = now + REANNOUNCE_AFTER_MS;
                self.announce_at = Some(self.announce_at.map_or(at, |a| a.min(at)));
            }
            Adoption::Settle(settle) => self.carry_out(cx, settle),
            Adoption::Nothing => {}
        }
    }

    /// Steps down in favour of the first of `theirs` ([`HandOver`]): stands by, names their
    /// list without this peer, and sends the winner everything recorded.
    fn hand_over(&mut self, cx: &mut Shared, theirs: Vec<PeerId>) {
        if !self.leads(cx) {
            return;
        }
        let Some((ho, list)) = HandOver::start(&self.me, self.coordinators.clone(), &theirs) else { return };
        let to = ho.to;
        // Stepping down ends a round of adoptions: the list is the winner's now.
        self.adopting = None;
        self.handing_over = Some(ho);
        cx.coord.set_standby(&self.job, true);
        self.set_coordinators(list);
        self.send_hand_over(to);
    }

    /// Sends the hand-over adoption: this peer's list, which names the winner first, and this
    /// peer itself.
    pub(super) fn send_hand_over(&mut self, to: PeerId) {
        let list = HandOver::adoption_list(&self.me, &self.coordinators);
        self.send_adopt(to, list, AdoptKind::HandOver);
    }

    /// The hand-over adoption came back: announce the winner, try again, or take the job back.
    pub(super) fn on_handed_over(&mut self, cx: &mut Shared, ok: bool, now: Millis) {
        let Some(ho) = self.handing_over.as_mut() else { return };
        let to = ho.to;
        match ho.handle_answer(ok) {
            HandOverStep::Done => {
                self.handing_over = None;
                self.notices.push_back(Notice::HandedOver { to });
                self.announce(cx);
                self.notices.push_back(Notice::Wake);
            }
            HandOverStep::Again { after_ms } => self.hand_over_at = Some(now + after_ms),
            HandOverStep::TakeBack(old) => {
                self.handing_over = None;
                cx.coord.set_standby(&self.job, false);
                self.set_coordinators(old);
                // The winner hears it as a rival and announces; the two meet again.
                self.announce(cx);
                self.notices.push_back(Notice::Wake);
            }
        }
    }
}
