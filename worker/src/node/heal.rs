//! Healing a split. While the mesh is partitioned, each side that holds a coordinator of a job
//! makes one of them active, and both go on leasing and deciding. When the sides meet again they
//! learn of each other through the job's ad: a correctly signed ad from an announcer the known
//! ad does not name (a *rival*, `MeshEvent::Rival`), or a newer ad that puts another peer first.
//! The two active coordinators settle it the same way on both sides: the job's origin wins, and
//! otherwise the higher rendezvous weight. The other *hands over*: it steps down (leases
//! nothing more), sends everything it recorded to the winner as an adoption, which merges it
//! (attestations are a set and a verdict is a function of them), then announces an ad that
//! names the winner first, so the peers that followed it follow the winner from then on.
//!
//! A rival is settled only with the job's origin or a peer once named as one of its
//! coordinators here: a stranger who signs an ad for someone else's job gets nothing.

use std::time::Duration;

use spare_coordinator::rendezvous;
use spare_coordinator::records::JobAd;
use spare_coordinator::{JobId, PeerId};

use super::Node;
use crate::store::Op;

/// Attempts at handing a job over before this peer takes it back.
const HAND_OVER_TRIES: u32 = 2;
/// How long after merging a rival's records the winner announces the job again: by then the
/// rival's hand-over ad, which names the winner, has reached the rival's side.
const REANNOUNCE_AFTER: Duration = Duration::from_secs(2);

/// Whether `a` should be the job's active coordinator rather than `b`.
pub fn outranks(job: &JobId, origin: &PeerId, a: &PeerId, b: &PeerId) -> bool {
    if a == origin || b == origin {
        return a == origin;
    }
    rendezvous::weight(job, a) > rendezvous::weight(job, b)
}

impl Node {
    /// The job's origin, if this peer is the job's active coordinator.
    fn active_origin(&self, job: &JobId) -> Option<PeerId> {
        let me = self.peer_id();
        let core = self.core();
        core.leads(job, &me).then(|| core.jobs.get(job).map(|m| m.spec.origin)).flatten()
    }

    /// A rival ad of a job: step down if its announcer outranks this peer, else announce again.
    pub(crate) fn on_rival_ad(&self, ad: JobAd) {
        let me = self.peer_id();
        if ad.announcer == me {
            // An older ad of this peer's own, still travelling: nothing to settle.
            return;
        }
        let Some(origin) = self.active_origin(&ad.job) else {
            tracing::debug!(job = %ad.job.short(), announcer = %ad.announcer.short(), "a rival ad of a job this peer does not lead");
            return;
        };
        let known = self.core().jobs.get(&ad.job).is_some_and(|m| m.named.contains(&ad.announcer));
        if ad.origin != origin || !(known || ad.announcer == origin) {
            tracing::warn!(job = %ad.job.short(), announcer = %ad.announcer.short(), "ignored an ad of the job from a peer never named its coordinator");
            return;
        }
        // Who the rival's side follows: the first of its list (a hand-over ad names the winner
        // first, signed by the loser).
        let leader = ad.coordinators.first().copied().unwrap_or(ad.announcer);
        self.settle(ad.job, origin, leader, ad.coordinators);
    }

    /// Two peers lead `job`, this one and `leader` (whose list is `theirs`): hand the job over
    /// if `leader` outranks this peer, else announce again.
    fn settle(&self, job: JobId, origin: PeerId, leader: PeerId, theirs: Vec<PeerId>) {
        let me = self.peer_id();
        if leader != me && outranks(&job, &origin, &leader, &me) {
            tracing::info!(job = %job.short(), to = %leader.short(), "another peer leads the job and outranks this one; handing it over");
            let node = self.clone();
            tokio::spawn(async move { node.hand_over(job, theirs).await });
        } else {
            if leader != me {
                tracing::info!(job = %job.short(), other = %leader.short(), "this peer outranks the other leader of the job; announcing it again");
            }
            // This peer wins. Announce again (once per version of the rival's ad): a rival that
            // has stepped down already names this peer first, and its side now takes this
            // peer's ad; one that has not (a restarted coordinator leading again beside its
            // replacement) hears of this peer and steps down.
            self.publish_job(job, self.is_finished(&job));
        }
    }

    /// An adoption of a job held here came from `sender`, naming `theirs` as coordinators. A
    /// sender that does not lead that list is handing the job over (the other side of a healed
    /// split); one that leads it is catching up its backups, and if this peer leads too there
    /// are two leaders, settled by rank. Only the origin or a peer once named a coordinator
    /// here is settled with (anyone can sign an adoption naming itself first).
    pub(crate) fn adopted_from(&self, job: JobId, sender: PeerId, theirs: Vec<PeerId>) {
        if theirs.first() != Some(&sender) {
            self.merged_from(job, sender);
            return;
        }
        let Some(origin) = self.active_origin(&job) else { return };
        let known = self.core().jobs.get(&job).is_some_and(|m| m.named.contains(&sender));
        if sender != self.peer_id() && (known || sender == origin) {
            tracing::info!(job = %job.short(), other = %sender.short(), "another peer leads the job too");
            self.settle(job, origin, sender, theirs);
        }
    }

    /// Steps down as `job`'s active coordinator in favour of the first of `theirs`: sends it
    /// everything recorded here, then announces an ad naming it first. Takes the job back if
    /// the hand-over fails.
    pub(crate) async fn hand_over(&self, job: JobId, theirs: Vec<PeerId>) {
        let me = self.peer_id();
        let Some(&to) = theirs.first().filter(|t| **t != me) else { return };
        let _one_at_a_time = self.0.roles.lock().await;
        if self.active_origin(&job).is_none() {
            tracing::info!(job = %job.short(), "no longer leads the job: nothing to hand over");
            return;
        }
        // This peer is not named: the winner never saw its attestations without outputs, and
        // requests about the job that reach it are forwarded to the winner.
        let list: Vec<PeerId> = theirs.iter().copied().filter(|p| *p != me).collect();
        let Some(old) = self.set_list(job, list.clone(), true).await else { return };
        let mut sent = false;
        for attempt in 1..=HAND_OVER_TRIES {
            let result = async {
                let mut req = self.adopt_request_of(&job, true).await?;
                // The adoption must name its sender, also when the winner's list is full.
                if !req.coordinators.contains(&me.to_hex()) {
                    req.coordinators.push(me.to_hex());
                }
                self.adopt_to(to, req).await
            };
            match result.await {
                Ok(()) => {
                    sent = true;
                    break;
                }
                Err(e) => tracing::warn!(job = %job.short(), to = %to.short(), attempt, "handing the job over failed: {e:#}"),
            }
        }
        if !sent {
            self.set_list(job, old, false).await;
            tracing::warn!(job = %job.short(), "kept the job: the coordinator of the other side did not take it");
            return;
        }
        tracing::info!(job = %job.short(), to = %to.short(), "handed the job over");
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

    /// The rival `from` handed `job` over and its records are merged: announce the job again,
    /// once the rival's hand-over ad has had time to spread, and bring the backups up to date.
    /// The rival is not (or no longer) named a coordinator: it holds attestations this peer
    /// never saw, without their outputs, which could complete a quorum there without the
    /// output; requests about the job that reach it are forwarded here.
    pub(crate) fn merged_from(&self, job: JobId, from: PeerId) {
        let me = self.peer_id();
        let named = {
            let core = self.core();
            let Some(meta) = core.jobs.get(&job) else { return };
            if from == me || !core.leads(&job, &me) {
                return;
            }
            meta.coordinators.contains(&from)
        };
        tracing::info!(job = %job.short(), from = %from.short(), "merged the records of the other side of a healed split");
        let node = self.clone();
        tokio::spawn(async move {
            if named {
                // Named here before the split: no longer, for the same reason.
                let list: Vec<PeerId> = node.core().jobs.get(&job).map(|m| m.coordinators.iter().copied().filter(|c| *c != from).collect()).unwrap_or_default();
                if node.set_list(job, list, false).await.is_none() {
                    return;
                }
            }
            tokio::time::sleep(REANNOUNCE_AFTER).await;
            node.publish_job(job, node.is_finished(&job));
            // A backup that followed the other side's ad for a while refused this peer's
            // replication meanwhile: bring every backup up to date.
            node.catch_up_backups(job);
        });
    }
}
