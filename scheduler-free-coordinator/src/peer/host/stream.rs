//! Replication: the leading coordinator streams to each backup (`MeshService.Replicate`), in
//! recording order, every attestation it records, every lease it gives another peer (with the
//! time left) and every replica handed back to it; its own replicas are not streamed, they end
//! with it. A backup replays them into its standby coordinator (leases counted from when the
//! entry arrives), so it counts the same replicas out and, once it takes over, takes the
//! workers' reports for the dead leader's leases instead of running those tasks again.
//!
//! Batching and retries are one [`ReplicationQueue`](crate::peer::replication::ReplicationQueue)
//! per backup. A batch finally given up, or a backup too far behind, is caught up instead:
//! [`CatchUps`](crate::peer::catchup::CatchUps) coalesces the requests and says when each is
//! due, and the backup then gets the whole job as an adoption, if this peer still leads and the
//! backup is still in its list. An adoption carries attestations only: leases lost with a
//! failed batch are not repaired, and those tasks run again should the backup take over.

use std::sync::Arc;

use crate::peer::replication::Replicated;
use crate::{Detail, JobId, Lease, Millis, PeerId, Release, Reported, TaskId};

use super::persist::Evidence;
use super::{AdoptKind, Host, Logged, Notice, Recorded, Shared, Streamed, Transmit, Write};

/// Why a `Replicate` was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the sender is not a coordinator of the job")]
pub struct NotCoordinator;

impl Host {
    /// `MeshService.Replicate` from `from`: the entries replayed here; the answer is how many
    /// attestations were new. Refused unless `from` is one of this peer's coordinators of `job`.
    pub(super) fn handle_replicate(&mut self, cx: &mut Shared, from: PeerId, job: JobId, items: Vec<Streamed>, now: Millis) -> Result<u32, NotCoordinator> {
        self.clock = now;
        if job != self.job || !self.coordinators.contains(&from) {
            return Err(NotCoordinator);
        }
        let mut recorded = 0;
        for item in &items {
            match *item {
                Streamed::Attestation(ref r, _) => recorded += u32::from(self.replay(cx, r, now)),
                Streamed::Lease { task, peer, expires_in } => {
                    cx.coord.restore_lease(Lease { task, peer, expires_at: now + expires_in });
                }
                Streamed::Release { task, peer, why } => cx.coord.release(task, peer, why),
            }
        }
        let evidence: Vec<Evidence<'_>> = items.iter().filter_map(|i| if let Streamed::Attestation(r, _) = i { Some(r.evidence()) } else { None }).collect();
        self.drain(cx, &evidence);
        Ok(recorded)
    }

    /// The batch sent to `to` came back, `taken` or not (lost, refused, the backup gone).
    pub(super) fn handle_replicated(&mut self, to: PeerId, taken: bool, now: Millis) {
        self.clock = now;
        match self.replicators.handle_sent(&to, taken, now) {
            Some(Replicated::Taken(items)) => self.answer_held(last_seq(&items)),
            Some(Replicated::Failed { items, catch_up }) => {
                // The wait for an ack ends too, unconfirmed.
                self.answer_held(last_seq(&items));
                self.notices.push_back(Notice::ReplicationDropped);
                for job in catch_up {
                    self.request_catch_up(job, to, now);
                }
            }
            _ => {}
        }
        self.replicate_at = self.replicators.poll_timeout(now);
    }

    /// This peer recorded an attestation: store it, log it, and stream it when it leads, with its
    /// `output` and, when it decided its task, its `detail`.
    pub(super) fn note_recorded(&mut self, cx: &Shared, item: Logged, output: &[u8], decided: Option<&Detail>, now: Millis) {
        self.writes.push(Write::Attestation { logged: item.clone() });
        let seq = self.logged + 1;
        if self.leads(cx) {
            let entry = Recorded { logged: item.clone(), output: output.to_vec(), detail: decided.cloned().unwrap_or_default() };
            self.stream(cx, Streamed::Attestation(entry, seq), output.len(), now);
        }
        self.logged = seq;
        if !self.shed {
            self.log.push(item);
        }
    }

    /// `peer` handed a replica of `task` back: streamed when it is another peer's.
    pub(super) fn note_released(&mut self, cx: &Shared, task: TaskId, peer: PeerId, why: Release, now: Millis) {
        if peer != self.me {
            self.stream(cx, Streamed::Release { task, peer, why }, 0, now);
        }
    }

    /// Queues `entry`, `bytes` long, for every backup when this peer leads.
    pub(super) fn stream(&mut self, cx: &Shared, entry: Streamed, bytes: usize, now: Millis) {
        if !self.leads(cx) {
            return;
        }
        let mut behind = Vec::new();
        for &b in &self.coordinators[1..] {
            if let Some(Replicated::Failed { items, catch_up }) = self.replicators.push(b, self.job, entry.clone(), bytes) {
                behind.push((b, catch_up, last_seq(&items)));
            }
        }
        // A backup too far behind is caught up instead, as after a failed batch.
        for (b, jobs, seq) in behind {
            self.answer_held(seq);
            self.notices.push_back(Notice::ReplicationDropped);
            for job in jobs {
                self.request_catch_up(job, b, now);
            }
        }
        self.replicate_at = self.replicators.poll_timeout(now);
    }

    /// Sends every stream's batch that is due.
    pub(super) fn send_batches(&mut self, now: Millis) {
        while let Some((to, batch)) = self.replicators.poll_batch(now) {
            self.transmits.push_back(Transmit::Replicate { to, job: batch.job, items: batch.items.clone() });
        }
        self.replicate_at = self.replicators.poll_timeout(now);
    }

    /// Sends the held report answers that wait for log positions up to `seq`.
    pub(super) fn answer_held(&mut self, seq: u64) {
        self.acked = self.acked.max(seq);
        self.release_gated();
        let (due, keep): (Vec<_>, Vec<_>) = self.held.drain(..).partition(|r| r.upto <= seq);
        self.held = keep;
        for r in due {
            self.transmits.push_back(Transmit::ReportAnswer { to: r.worker, batch: r.batch, accepted: r.accepted, rejected: r.rejected });
        }
    }

    /// Replays attestations another coordinator recorded (an adoption); returns how many were
    /// new here.
    pub(super) fn record_replicated(&mut self, cx: &mut Shared, items: &[Recorded], now: Millis) -> u32 {
        let recorded = items.iter().map(|r| u32::from(self.replay(cx, r, now))).sum();
        let evidence: Vec<Evidence<'_>> = items.iter().map(Recorded::evidence).collect();
        self.drain(cx, &evidence);
        recorded
    }

    /// Records what another coordinator recorded (its output, when it came with one, kept for
    /// the task's verdict); whether it was new here.
    fn replay(&mut self, cx: &mut Shared, r: &Recorded, now: Millis) -> bool {
        // No honest run outputs more than the job allows: one that does is refused wherever it
        // comes from.
        if crate::peer::report::too_long(&cx.coord, &r.logged.att, &r.output) {
            return false;
        }
        let decided = match cx.coord.restore_attestation_lone(Arc::clone(&r.logged.att), r.logged.lone) {
            Ok(Reported::Recorded) => false,
            Ok(Reported::Decided) => true,
            Ok(Reported::Late) | Err(_) => return false,
        };
        let att = &r.logged.att;
        cx.outputs.keep(att.task, att.result.output_hash, &r.output);
        self.note_recorded(cx, r.logged.clone(), &r.output, decided.then_some(&r.detail), now);
        true
    }

    /// Asks for backup `to` to get the whole of `job` soon (coalesced with a pending request).
    pub(super) fn request_catch_up(&mut self, job: JobId, to: PeerId, now: Millis) {
        self.catch_ups.request(job, to, now);
    }

    /// Catches up every backup, when this peer leads.
    pub(super) fn catch_up_backups(&mut self, cx: &Shared, now: Millis) {
        if !self.leads(cx) {
            return;
        }
        for &b in &self.coordinators[1..] {
            self.catch_ups.request(self.job, b, now);
        }
    }

    /// Sends the catch-ups that are due, each if this peer still leads and the backup is still
    /// one of its coordinators.
    pub(super) fn send_catch_ups(&mut self, cx: &Shared, now: Millis) {
        while let Some((job, backup)) = self.catch_ups.poll_due(now) {
            if job == self.job && self.leads(cx) && self.coordinators.contains(&backup) {
                self.send_adopt(backup, self.coordinators.clone(), AdoptKind::CatchUp);
            }
        }
    }
}

/// The last log position among streamed entries (0 when none is an attestation).
fn last_seq(items: &[Streamed]) -> u64 {
    items.iter().filter_map(|e| if let Streamed::Attestation(_, seq) = e { Some(*seq) } else { None }).max().unwrap_or(0)
}
