//! A virtual peer's coordinator side, serving `MeshService`: lease requests are answered by
//! [`lease::grant`] and report batches taken by [`report::take`], as the peer does both;
//! releases hand replicas back, and a 200 ms ticker lapses expired leases. The leases given to
//! other peers and the releases they send stream to the backups ([`super::replicate`]), which
//! hold those leases too and, after a takeover, take the reports for them. Any peer can hold a
//! coordinator for any job: the origin and its backups do ([`super::coord`]), and only the
//! verdicts of one leading are counted.

use std::sync::Arc;

use crate::peer::lease;
use crate::peer::replication::BACKUP_ACK_TIMEOUT_MS;
use crate::peer::report::{self, Taken};
use crate::{Attestation, BlobId, Event, JobId, Verdict};

use super::engine::Sim;
use super::net::{CallKind, Reply};
use super::peer::{Held, Logged, NEVER, ReportItem};
use super::queue;
use super::{wire, workload};

use crate::requests::TICK_MS;
const NOT_HELD: u64 = 100;

impl Sim {
    /// `MeshService.Lease` at peer `c`, from `worker`.
    pub(super) fn serve_lease(&mut self, c: u32, worker: u32, job: JobId, max: u32, asked_at: u64) {
        let (now, wid) = (self.now, self.peers[worker as usize].id);
        let network = workload::network_of(&self.cfg, worker, self.peers[worker as usize].behaviour);
        let holds = self.peers[c as usize].holds(&job);
        let Some(h) = self.peers[c as usize].host.as_mut().filter(|_| holds) else {
            self.refuse(c, worker, CallKind::Lease(job), NOT_HELD);
            return;
        };
        h.coord.note_prefix(wid, network);
        let granted = lease::grant(&mut h.coord, &job, wid, max, now);
        let tasks: Vec<(u32, u64)> = granted.leases.iter().map(|l| (l.task.index, l.expires_at.saturating_sub(now))).collect();
        let note = granted.note.map_or(0, str::len);
        // The backups hold the leases too, so a report follows a takeover.
        let me = self.peers[c as usize].id;
        for l in granted.to_stream(me) {
            self.note_leased(c, l);
        }
        let size = wire::lease_reply(wire::limits(&self.spec.policy.limits), &tasks, self.cfg.input_bytes, note as u64);
        self.schedule_coord_tick(c);
        if !tasks.is_empty() {
            self.leased_by(c);
        }
        let reply = Reply::Lease { job, module: self.spec.module, timeout_ms: self.spec.policy.limits.timeout_ms, tasks, asked_at };
        self.reply(c, worker, reply, size, CallKind::Lease(job));
    }

    /// `MeshService.Report` at peer `c`, from `worker`.
    pub(super) fn serve_report(&mut self, c: u32, worker: u32, batch: Vec<ReportItem>) {
        let wid = self.peers[worker as usize].id;
        let (mut accepted, mut rejected) = (0u32, 0u32);
        let mut released = false;
        let streamed = |s: &Sim| if s.leads(c) { s.peers[c as usize].host.as_ref().map_or(0, |h| h.log.len() as u64) } else { 0 };
        let before = streamed(self);
        for item in batch {
            match item {
                ReportItem::Attest(att, out) => {
                    if self.record(c, worker, att, out, true) {
                        accepted += 1;
                    } else {
                        rejected += 1;
                    }
                }
                ReportItem::Release(task, why) => {
                    if let Some(h) = self.peers[c as usize].host.as_mut() {
                        h.coord.release(task, wid, why);
                    }
                    self.note_released(c, task, wid, why);
                    released = true;
                }
            }
            self.drain_coordinator(c);
        }
        if released {
            self.wake(c);
        }
        // Answered once a backup holds what was recorded, or the wait for one gives up
        // (`Node::take_report`).
        let upto = streamed(self);
        let backups = self.peers[c as usize].host.as_ref().is_some_and(|h| h.coordinators.len() > 1);
        if upto > before && backups && let Some(h) = self.peers[c as usize].host.as_mut() {
            h.held.push(Held { worker, accepted, rejected, upto });
            self.queue.push(self.now + BACKUP_ACK_TIMEOUT_MS, queue::Event::AnswerHeld { peer: c, upto });
            return;
        }
        self.reply(c, worker, Reply::Report, wire::report_reply(accepted, rejected), CallKind::Report(c));
    }

    /// Records an attestation from `worker` at coordinator `c` ([`report::take`]); `check` is
    /// false for `c`'s own replicas ([`report::record`]). Returns whether it was accepted.
    pub(super) fn record(&mut self, c: u32, worker: u32, att: Attestation, out: Vec<u8>, check: bool) -> bool {
        let wid = self.peers[worker as usize].id;
        let Some(h) = self.peers[c as usize].host.as_mut() else { return false };
        let taken = if check {
            let signed = (self.verifier)(&att.peer, &att.signing_bytes(), &att.signature);
            report::take(&mut h.coord, wid, att.clone(), signed, &out)
        } else {
            report::record(&mut h.coord, att.clone())
        };
        match taken {
            Taken::Recorded { lone, .. } => self.note_recorded(c, Logged { att: Arc::new(att), lone }),
            Taken::Late => self.m.late += 1,
            Taken::Invalid | Taken::Refused(_) => self.m.rejected += 1,
        }
        taken.accepted()
    }

    /// `BlobService.Get` of the module at peer `c`.
    pub(super) fn serve_blob(&mut self, c: u32, worker: u32, module: BlobId) {
        let size = wire::blob_reply(self.cfg.module_bytes);
        self.reply(c, worker, Reply::Blob { module }, size, CallKind::Blob(module));
    }

    /// Handles what peer `c`'s coordinator emitted: verdicts are scored against the honest
    /// outputs, the job's end is announced, lapsed leases wake the slots. Only the leading
    /// coordinator's verdicts count, each task's first one once; a backup's (replayed) are the
    /// same verdicts again.
    pub(super) fn drain_coordinator(&mut self, c: u32) {
        let job = self.job;
        let Some(h) = self.peers[c as usize].host.as_mut() else { return };
        let leads = h.jobs.contains(&job) && !h.coord.is_standby(&job);
        let events: Vec<Event> = std::iter::from_fn(|| h.coord.poll_event()).collect();
        let events: Vec<(Event, bool)> = events
            .into_iter()
            .map(|e| {
                let lone = leads && matches!(&e, Event::TaskFinal { task, .. } if h.coord.task(task).is_some_and(|t| t.lone));
                (e, lone)
            })
            .collect();
        let mut wake = false;
        for (e, lone) in events {
            match e {
                Event::TaskFinal { .. } if !leads => {}
                Event::TaskFinal { task, verdict } => match self.decided.get_mut(task.index as usize) {
                    Some(Some(first)) if *first != verdict => self.m.overturned += 1,
                    Some(Some(_)) | None => {}
                    Some(slot @ None) => {
                        *slot = Some(verdict.clone());
                        self.count_verdict(task, verdict, lone);
                    }
                },
                Event::JobFinished { job, state } => {
                    if leads && job == self.job && self.m.done_at.is_none() {
                        self.m.done_at = Some(self.now);
                        self.m.job_state = Some(state);
                        let origin = self.origin;
                        self.m.unaware_at_end =
                            self.peers.iter().enumerate().filter(|(i, p)| p.alive && !p.has_ad && *i != origin as usize).count() as u32;
                        self.publish_job(c, true);
                    }
                }
                Event::LeaseExpired { .. } => {
                    // A backup's copies of the leader's leases lapse too: counted once, by the
                    // leader.
                    self.m.lapses += u64::from(leads);
                    wake = true;
                }
            }
        }
        if wake {
            self.wake(c);
        }
        self.schedule_coord_tick(c);
    }

    /// Scores a task's verdict against the honest output.
    fn count_verdict(&mut self, task: crate::TaskId, verdict: Verdict, lone: bool) {
        match verdict {
            Verdict::Verified(key) => {
                self.m.verified += 1;
                self.m.lone_verified += u32::from(lone);
                if key.output_hash != workload::honest_hash(task.index, self.cfg.output_bytes) {
                    self.m.wrong_verified += 1;
                    self.m.wrong_lone += u32::from(lone);
                }
            }
            Verdict::Inconclusive => self.m.inconclusive += 1,
            Verdict::Failed(_) => self.m.failed += 1,
            Verdict::Pending => {}
        }
    }

    /// Schedules the ticker at the first 200 ms boundary at or after the next lease expiry.
    pub(super) fn schedule_coord_tick(&mut self, c: u32) {
        let now = self.now;
        let Some(h) = self.peers[c as usize].host.as_mut() else { return };
        let Some(due) = h.coord.next_deadline() else { return };
        let at = due.max(now).div_ceil(TICK_MS) * TICK_MS;
        self.queue.arm(&mut h.tick_at, at, queue::Event::CoordTick { peer: c });
    }

    pub(super) fn on_coord_tick(&mut self, c: u32) {
        let now = self.now;
        let Some(h) = self.peers[c as usize].host.as_mut() else { return };
        if h.tick_at != now {
            return;
        }
        h.tick_at = NEVER;
        h.coord.tick(now);
        self.drain_coordinator(c);
    }
}
