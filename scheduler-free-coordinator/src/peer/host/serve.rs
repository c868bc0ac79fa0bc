//! Serving the workers: lease requests answered by [`lease::grant`], report batches taken by
//! [`report::take`] (their answers held until a backup holds what was recorded), releases, the
//! peer's own replicas, and membership changes.

use std::sync::Arc;

use crate::peer::lease::{self, Granted};
use crate::peer::replication::BACKUP_ACK_TIMEOUT_MS;
use crate::peer::report::{self, Taken};
use crate::{Attestation, Detail, Lease, Millis, NetPrefix, PeerId, Release, TaskId};

use super::persist::Evidence;
use super::{Held, Host, Logged, Notice, ReportItem, Shared, Streamed};

/// What a report batch came to, for the driver's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Attestations the worker is told were taken (late ones included).
    pub accepted: u32,
    /// Attestations refused or invalid.
    pub rejected: u32,
    /// Attestations that came after their task's verdict.
    pub late: u32,
    /// Attestations refused for a bad signature or an output that does not match (counted in
    /// `rejected` too): what a peer counts as invalid records.
    pub invalid: u32,
}

impl Host {
    /// `MeshService.Lease` from `worker`, whose connection comes from `network`: the answer.
    /// The leases stream to the backups, so a report follows a takeover.
    pub(super) fn handle_lease(&mut self, cx: &mut Shared, worker: PeerId, max: u32, network: Option<NetPrefix>, now: Millis) -> Granted {
        self.clock = now;
        cx.coord.note_prefix(worker, network);
        let granted = lease::grant(&mut cx.coord, &self.job, worker, max, now);
        let streamed: Vec<Lease> = granted.to_stream(self.me).cloned().collect();
        for l in streamed {
            let expires_in = l.expires_at.saturating_sub(now);
            self.stream(cx, Streamed::Lease { task: l.task, peer: l.peer, expires_in }, 0, now);
        }
        granted
    }

    /// `MeshService.Report` from `worker`: its attestations recorded, its releases taken. The
    /// answer comes out as a [`Transmit::ReportAnswer`](super::Transmit::ReportAnswer), at once
    /// or once a backup holds what was recorded (or the wait for one gives up).
    /// Each attestation comes with whether its signature checked out.
    pub(super) fn handle_report(&mut self, cx: &mut Shared, worker: PeerId, id: u64, batch: Vec<(ReportItem, bool)>, now: Millis) -> Tally {
        self.clock = now;
        let mut tally = Tally::default();
        let mut released = false;
        let streamed = |h: &Host, cx: &Shared| if h.leads(cx) { h.logged } else { 0 };
        let before = streamed(self, cx);
        for (item, signed) in batch {
            match item {
                ReportItem::Attest(att, output, detail) => {
                    let att = Arc::new(att);
                    let taken = report::take(&mut cx.coord, worker, Arc::clone(&att), signed, &output);
                    let evidence = Evidence { att: &att, output: &output, detail: &detail };
                    self.note_taken(cx, evidence, &taken, now, &mut tally);
                    self.drain(cx, &[evidence]);
                }
                ReportItem::Release(task, why) => {
                    cx.coord.release(task, worker, why);
                    self.note_released(cx, task, worker, why, now);
                    released = true;
                    self.drain(cx, &[]);
                    self.after_release(cx, task, now);
                }
            }
        }
        if released {
            self.notices.push_back(Notice::Wake);
        }
        let upto = streamed(self, cx);
        if upto > before && self.coordinators.len() > 1 {
            let (accepted, rejected) = (tally.accepted, tally.rejected);
            self.held.push(Held { worker, batch: id, accepted, rejected, upto, until: now + BACKUP_ACK_TIMEOUT_MS });
        } else {
            self.transmits.push_back(super::Transmit::ReportAnswer { to: worker, batch: id, accepted: tally.accepted, rejected: tally.rejected });
        }
        tally
    }

    /// Records an attestation of this peer's own, with its `output` and `detail` (no signature
    /// check: it made it).
    fn record_own(&mut self, cx: &mut Shared, att: Attestation, output: &[u8], detail: &Detail, now: Millis) -> Tally {
        let mut tally = Tally::default();
        let att = Arc::new(att);
        let taken = report::record(&mut cx.coord, Arc::clone(&att));
        let evidence = Evidence { att: &att, output, detail };
        self.note_taken(cx, evidence, &taken, now, &mut tally);
        self.drain(cx, &[evidence]);
        tally
    }

    /// The outcome of one of this peer's own replicas (what its
    /// [`Work`](crate::peer::work::Work) gives as [`Notice::Own`](crate::peer::work::Notice::Own)).
    pub(super) fn handle_own(&mut self, cx: &mut Shared, item: ReportItem, now: Millis) -> Tally {
        self.clock = now;
        match item {
            ReportItem::Attest(att, output, detail) => self.record_own(cx, att, &output, &detail, now),
            ReportItem::Release(task, why) => {
                self.release_own(cx, task, why, now);
                Tally::default()
            }
        }
    }

    /// This peer's own replica of `task` handed back.
    fn release_own(&mut self, cx: &mut Shared, task: TaskId, why: Release, now: Millis) {
        cx.coord.release(task, self.me, why);
        self.drain(cx, &[]);
        self.after_release(cx, task, now);
    }

    /// A release failed `task` by deadline misses: no attestation carries that to the backups
    /// (this peer's own misses are not streamed at all), so they get the whole job, which names
    /// the tasks failed so.
    fn after_release(&mut self, cx: &Shared, task: TaskId, now: Millis) {
        let timed_out = cx.coord.task(&task).is_some_and(|t| matches!(t.verdict, crate::Verdict::Failed(crate::Failure::TimedOut(_))));
        if timed_out {
            self.catch_up_backups(cx, now);
        }
    }

    fn note_taken(&mut self, cx: &mut Shared, e: Evidence<'_>, taken: &Taken, now: Millis, tally: &mut Tally) {
        match taken {
            Taken::Recorded { lone, decided } => {
                cx.outputs.keep(e.att.task, e.att.result.output_hash, e.output);
                let logged = Logged { att: Arc::clone(e.att), lone: *lone };
                self.note_recorded(cx, logged, e.output, decided.then_some(e.detail), now);
            }
            Taken::Late => tally.late += 1,
            Taken::Invalid => tally.invalid += 1,
            Taken::Refused(_) => {}
        }
        if taken.accepted() {
            tally.accepted += 1;
        } else {
            tally.rejected += 1;
        }
    }
}
