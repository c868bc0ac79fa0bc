//! Healing a split, as the protocol's heal rules (`spare_protocol::peer::heal`) decide it: this
//! file carries out their decisions (hand-overs, merges, announcing again).

use std::time::Duration;

use spare_protocol::peer::handover::{HandOver, HandOverStep};
use spare_protocol::peer::heal::{self, Adoption, FollowAd, Held, REANNOUNCE_AFTER_MS, Settle};
use spare_protocol::records::JobAd;
use spare_protocol::{JobId, PeerId};

use super::Node;
use crate::store::Op;

impl Node {
    /// What the heal rules need of a held job, and its result.
    fn with_held<R>(&self, job: &JobId, f: impl FnOnce(Option<Held<'_>>) -> R) -> R {
        let me = self.peer_id();
        let core = self.core();
        let leads = core.leads(job, &me);
        let held = core.jobs.get(job).map(|m| Held {
            job: *job,
            origin: m.spec.origin,
            leads,
            coordinators: &m.coordinators,
            named: &m.named,
        });
        f(held)
    }

    /// A rival ad of a job: step down if its leader outranks this peer, else announce again.
    pub(crate) fn on_rival_ad(&self, ad: JobAd) {
        let me = self.peer_id();
        let settle = self.with_held(&ad.job, |held| heal::rival_ad(&me, held, &ad));
        self.carry_out(ad.job, settle, ad.coordinators.first().copied().unwrap_or(ad.announcer));
    }

    fn carry_out(&self, job: JobId, settle: Settle, other: PeerId) {
        match settle {
            Settle::HandOver(theirs) => {
                tracing::info!(job = %job.short(), to = %other.short(), "another peer leads the job and outranks this one; handing it over");
                let node = self.clone();
                tokio::spawn(async move { node.hand_over(job, theirs).await });
            }
            Settle::Announce => {
                if other != self.peer_id() {
                    tracing::info!(job = %job.short(), other = %other.short(), "this peer outranks the other leader of the job; announcing it again");
                }
                // A rival that has stepped down already names this peer first, and its side now
                // takes this peer's ad; one that has not (a restarted coordinator leading again
                // beside its replacement) hears of this peer and steps down.
                self.publish_job(job, self.is_finished(&job));
            }
            Settle::Ignore(why) => tracing::debug!(job = %job.short(), other = %other.short(), "{why}"),
        }
    }

    /// An adoption of a job held here came from `sender`, naming `theirs` as coordinators: a
    /// hand-over to merge, a catch-up, or a second leader to settle with.
    pub(crate) fn adopted_from(&self, job: JobId, sender: PeerId, theirs: Vec<PeerId>) {
        let me = self.peer_id();
        let Some(decision) = self.with_held(&job, |held| held.map(|h| heal::adoption(&me, h, sender, &theirs))) else { return };
        match decision {
            Adoption::Merged { unname } => self.merged_from(job, sender, unname),
            Adoption::Settle(settle) => {
                tracing::info!(job = %job.short(), other = %sender.short(), "another peer leads the job too");
                self.carry_out(job, settle, sender);
            }
            Adoption::Nothing => {}
        }
    }

    /// Another coordinator announced a newer ad of a job held here.
    pub(crate) fn follow_job_ad(&self, ad: &JobAd) {
        let me = self.peer_id();
        let Some(decision) = self.with_held(&ad.job, |held| held.map(|h| heal::newer_ad(&me, h, ad))) else { return };
        match decision {
            FollowAd::Same => {}
            FollowAd::Announce => self.publish_job(ad.job, self.is_finished(&ad.job)),
            FollowAd::HandOver(theirs) => {
                let node = self.clone();
                let job = ad.job;
                tokio::spawn(async move { node.hand_over(job, theirs).await });
            }
            FollowAd::Follow => {
                let mut core = self.core();
                let Some(meta) = core.jobs.get_mut(&ad.job) else { return };
                meta.set_coordinators(ad.coordinators.clone());
                let Ok(Some(mut stored)) = self.store().job(&ad.job) else { return };
                stored.coordinators = ad.coordinators.clone();
                // Queued with the core lock held, so it lands in order; nobody waits for it.
                drop(self.announce(vec![Op::PutJob(ad.job, stored)], Vec::new()));
            }
        }
    }

    /// Steps down as `job`'s active coordinator in favour of the first of `theirs`: sends it
    /// everything recorded here, then announces an ad naming it first. Takes the job back (and
    /// announces it again, so the two leaders meet once more) if the hand-over fails.
    pub(crate) async fn hand_over(&self, job: JobId, theirs: Vec<PeerId>) {
        let me = self.peer_id();
        let _one_at_a_time = self.0.roles.lock().await;
        if !self.core().leads(&job, &me) {
            tracing::info!(job = %job.short(), "no longer leads the job: nothing to hand over");
            return;
        }
        let old = self.core().jobs.get(&job).map(|m| m.coordinators.clone()).unwrap_or_default();
        // This peer is not named: the winner never saw its attestations without outputs, and
        // requests about the job that reach it are forwarded to the winner.
        let Some((mut ho, list)) = HandOver::start(&me, old, &theirs) else { return };
        if self.set_list(job, list.clone(), true).await.is_none() {
            return;
        }
        loop {
            let result = async {
                let mut req = self.adopt_request_of(&job, true).await?;
                req.coordinators = HandOver::adoption_list(&me, &list).iter().map(|p| p.to_hex()).collect();
                self.adopt_to(ho.to, req).await
            };
            let result = result.await;
            if let Err(e) = &result {
                tracing::warn!(job = %job.short(), to = %ho.to.short(), "handing the job over failed: {e:#}");
            }
            match ho.handle_answer(result.is_ok()) {
                HandOverStep::Done => break,
                HandOverStep::Again { after_ms } => tokio::time::sleep(Duration::from_millis(after_ms)).await,
                HandOverStep::TakeBack(old) => {
                    self.set_list(job, old, false).await;
                    tracing::warn!(job = %job.short(), "kept the job: the coordinator of the other side did not take it");
                    // The peers that followed the winner's ad follow this one's again; the
                    // winner hears it as a rival and announces, and this peer meets it again.
                    self.publish_job(job, self.is_finished(&job));
                    self.0.work.notify_one();
                    return;
                }
            }
        }
        tracing::info!(job = %job.short(), to = %ho.to.short(), "handed the job over");
        self.publish_job_ad(job, list, self.is_finished(&job));
        self.0.work.notify_one();
    }

    /// Stores a new list of coordinators of `job` and whether this peer is in standby for it;
    /// returns the old list once the new one is durable.
    async fn set_list(&self, job: JobId, list: Vec<PeerId>, standby: bool) -> Option<Vec<PeerId>> {
        let mut stored = self.store().job(&job).ok()??;
        let (old, durable) = {
            let mut core = self.core();
            core.coord.set_standby(&job, standby);
            let meta = core.jobs.get_mut(&job)?;
            let old = std::mem::take(&mut meta.coordinators);
            meta.set_coordinators(list.clone());
            stored.coordinators = list;
            (old, self.announce(vec![Op::PutJob(job, stored)], Vec::new()))
        };
        // Durable in order: once this is, every attestation recorded before it is stored too.
        let _ = durable.await;
        Some(old)
    }

    /// The rival `from` handed `job` over and its records are merged: drop it from the list if
    /// it is named (`unname`), announce the job again once the rival's hand-over ad has had time
    /// to spread, and bring the backups up to date (a backup that followed the other side's ad
    /// for a while refused this peer's replication meanwhile).
    fn merged_from(&self, job: JobId, from: PeerId, unname: bool) {
        tracing::info!(job = %job.short(), from = %from.short(), "merged the records of the other side of a healed split");
        let node = self.clone();
        tokio::spawn(async move {
            if unname {
                let list: Vec<PeerId> = node.core().jobs.get(&job).map(|m| m.coordinators.iter().copied().filter(|c| *c != from).collect()).unwrap_or_default();
                if node.set_list(job, list, false).await.is_none() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(REANNOUNCE_AFTER_MS)).await;
            node.publish_job(job, node.is_finished(&job));
            node.catch_up_backups(job);
        });
    }
}
