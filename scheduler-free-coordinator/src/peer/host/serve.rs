//! Serving the workers: lease requests answered by [`lease::grant`], report batches taken by
//! [`report::take`] (their answers held until a backup holds what was recorded), releases, the
//! peer's own replicas, and membership changes.

use std::sync::Arc;

use crate::peer::lease::{self, Granted};
use crate::peer::replication::BACKUP_ACK_TIMEOUT_MS;
use crate::peer::report::{self, Taken};
use crate::{Attestation, Coordinator, Lease, Millis, NetPrefix, PeerId, Release, TaskId};

use super::{Held, Host, Logged, Notice, ReportItem, Streamed};

/// What a report batch came to, for the driver's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Attestations the worker is told were taken (late ones included).
    pub accepted: u32,
    /// Attestations refused or invalid.
    pub rejected: u32,
    /// Attestations that came after their task's verdict.
    pub late: u32,
}

impl Host {
    /// `MeshService.Lease` from `worker`, whose connection comes from `network`: the answer.
    /// The leases stream to the backups, so a report follows a takeover.
    pub(super) fn handle_lease(&mut self, coord: &mut Coordinator, worker: PeerId, max: u32, network: Option<NetPrefix>, now: Millis) -> Granted {
        coord.note_prefix(worker, network);
        let granted = lease::grant(coord, &self.job, worker, max, now);
        let streamed: Vec<Lease> = granted.to_stream(self.me).cloned().collect();
        for l in streamed {
            let expires_in = l.expires_at.saturating_sub(now);
            self.stream(coord, Streamed::Lease { task: l.task, peer: l.peer, expires_in }, 0, now);
        }
        granted
    }

    /// `MeshService.Report` from `worker`: its attestations recorded, its releases taken. The
    /// answer comes out as a [`Transmit::ReportAnswer`](super::Transmit::ReportAnswer), at once
    /// or once a backup holds what was recorded (or the wait for one gives up).
    pub(super) fn handle_report(&mut self, coord: &mut Coordinator, worker: PeerId, id: u64, batch: Vec<ReportItem>, now: Millis) -> Tally {
        let mut tally = Tally::default();
        let mut released = false;
        let streamed = |h: &Host, coord: &Coordinator| if h.leads(coord) { h.log.len() as u64 } else { 0 };
        let before = streamed(self, coord);
        for item in batch {
            match item {
                ReportItem::Attest(att, out) => {
                    let signed = (self.verifier)(&att.peer, &att.signing_bytes(), &att.signature);
                    let taken = report::take(coord, worker, att.clone(), signed, &out);
                    self.note_taken(coord, att, &taken, out.len(), now, &mut tally);
                }
                ReportItem::Release(task, why) => {
                    coord.release(task, worker, why);
                    self.note_released(coord, task, worker, why, now);
                    released = true;
                }
            }
            self.drain(coord);
        }
        if released {
            self.notices.push_back(Notice::Wake);
        }
        let upto = streamed(self, coord);
        if upto > before && self.coordinators.len() > 1 {
            let (accepted, rejected) = (tally.accepted, tally.rejected);
            self.held.push(Held { worker, batch: id, accepted, rejected, upto, until: now + BACKUP_ACK_TIMEOUT_MS });
        } else {
            self.transmits.push_back(super::Transmit::ReportAnswer { to: worker, batch: id, accepted: tally.accepted, rejected: tally.rejected });
        }
        tally
    }

    /// Records an attestation of this peer's own, with its `output` (no signature check: it
    /// made it).
    pub(super) fn record_own(&mut self, coord: &mut Coordinator, att: Attestation, output: &[u8], now: Millis) -> Tally {
        let mut tally = Tally::default();
        let taken = report::record(coord, att.clone());
        self.note_taken(coord, att, &taken, output.len(), now, &mut tally);
        self.drain(coord);
        tally
    }

    /// The outcome of one of this peer's own replicas (what its
    /// [`Work`](crate::peer::work::Work) gives as [`Notice::Own`](crate::peer::work::Notice::Own)).
    pub(super) fn handle_own(&mut self, coord: &mut Coordinator, item: ReportItem, now: Millis) -> Tally {
        match item {
            ReportItem::Attest(att, output) => self.record_own(coord, att, &output, now),
            ReportItem::Release(task, why) => {
                self.release_own(coord, task, why);
                Tally::default()
            }
        }
    }

    /// This peer's own replica of `task` handed back.
    pub(super) fn release_own(&mut self, coord: &mut Coordinator, task: TaskId, why: Release) {
        coord.release(task, self.me, why);
        self.drain(coord);
    }

    fn note_taken(&mut self, coord: &Coordinator, att: Attestation, taken: &Taken, output: usize, now: Millis, tally: &mut Tally) {
        match taken {
            Taken::Recorded { lone, .. } => self.note_recorded(coord, Logged { att: Arc::new(att), lone: *lone }, output, now),
            Taken::Late => tally.late += 1,
            Taken::Invalid | Taken::Refused(_) => {}
        }
        if taken.accepted() {
            tally.accepted += 1;
        } else {
            tally.rejected += 1;
        }
    }
}
