//! A virtual peer's coordinator side as the network and the mesh see it: `MeshService` calls
//! handed to its [`Hosts`], answers to the calls they made, job
//! ads and membership changes passed on. Any peer
//! can hold a coordinator for the job: the origin and the peers it adopted; a peer that does
//! not hold the job refuses its calls (an `Adopt` makes it a coordinator, in standby).
//!
//! Simplification: the module fetch of an adoption is counted as bytes with the `Adopt` call
//! rather than simulated as its own call.

use crate::peer::host::{Adopt, AdoptKind, Hosts, Logged, Recorded, ReportItem, Streamed};
use crate::{BlobId, JobId, PeerId};

use super::engine::Sim;
use super::net::{CallKind, Reply};
use super::workload;
use crate::peer::wire;

/// The status message of a refused call to a peer that does not hold the job.
const NOT_HELD: u64 = 100;
/// The status message of a refused `Replicate` ("the sender is not a coordinator of the job").
const NOT_COORDINATOR: u64 = 37;

impl Sim {
    /// `MeshService.Lease` at peer `c`, from `worker`.
    pub(super) fn serve_lease(&mut self, c: u32, worker: u32, job: JobId, max: u32, asked_at: u64) {
        let (now, wid) = (self.now, self.peers[worker as usize].id);
        let network = workload::network_of(&self.cfg, worker, self.peers[worker as usize].behaviour);
        if !self.peers[c as usize].holds(&job) {
            self.answer(c, worker, CallKind::Lease(job, c), None, NOT_HELD);
            return;
        }
        let Some(Some(granted)) = self.with_hosts(c, |h, _| h.handle_lease(&job, wid, max, network, now)) else { return };
        let tasks: Vec<(u32, u64)> = granted.leases.iter().map(|l| (l.task.index, l.expires_at.saturating_sub(now))).collect();
        let size = wire::lease_reply(&self.spec.policy.limits, &tasks, self.cfg.input_bytes, granted.note);
        if !tasks.is_empty() {
            self.leased_by(c);
        }
        let reply = Reply::Lease { module: self.spec.module, timeout_ms: self.spec.policy.limits.timeout_ms, tasks, asked_at };
        self.answer(c, worker, CallKind::Lease(job, c), Some(reply), size);
    }

    /// `MeshService.Report` at peer `c`, from `worker`: answered by the host, maybe later.
    pub(super) fn serve_report(&mut self, c: u32, worker: u32, batch: Vec<ReportItem>) {
        let (now, wid) = (self.now, self.peers[worker as usize].id);
        if self.peers[c as usize].hosts.is_none() {
            // Nothing held here: every attestation is turned down.
            let rejected = batch.iter().filter(|i| matches!(i, ReportItem::Attest(..))).count() as u32;
            self.answer(c, worker, CallKind::Report(c), Some(Reply::Taken), wire::report_reply(0, rejected));
            return;
        }
        self.with_hosts(c, |h, _| h.handle_report(wid, 0, batch, now));
    }

    /// `BlobService.Get` of the module at peer `c`.
    pub(super) fn serve_blob(&mut self, c: u32, worker: u32, module: BlobId) {
        let size = wire::blob_reply(self.cfg.module_bytes);
        self.answer(c, worker, CallKind::Blob(module), Some(Reply::Taken), size);
    }

    /// `MeshService.Replicate` at `b`, from `from`.
    pub(super) fn serve_replicate(&mut self, b: u32, from: u32, job: JobId, items: Vec<Streamed>) {
        let (now, sender) = (self.now, self.peers[from as usize].id);
        match self.with_hosts(b, |h, _| h.handle_replicate(sender, job, items, now)) {
            Some(Ok(recorded)) => self.answer(b, from, CallKind::Replicate(b), Some(Reply::Taken), wire::replicate_reply(recorded)),
            Some(Err(_)) | None => self.answer(b, from, CallKind::Replicate(b), None, NOT_COORDINATOR),
        }
    }

    /// `MeshService.Adopt` at `r`, from `from`: a peer that does not hold the job takes it in
    /// standby (and becomes a bridge of every cell); either way its host takes the adoption.
    pub(super) fn serve_adopt(&mut self, r: u32, from: u32, job: JobId, list: Vec<PeerId>, log: Vec<Logged>, kind: AdoptKind) {
        let fresh = !self.peers[r as usize].holds(&job);
        if fresh {
            let (me, born, coord) = (self.peers[r as usize].id, self.peers[r as usize].born, self.new_coordinator(r));
            let mut hosts = Hosts::new(me, coord, self.verifier.clone());
            if hosts.adopt(job, self.spec.clone(), list.clone(), born).is_err() {
                return self.answer(r, from, CallKind::Adopt(r, kind), None, 0);
            }
            self.peers[r as usize].hosts = Some(Box::new(hosts));
            // It fetches the module from the sender.
            self.peers[r as usize].bytes_sent += wire::REQUEST_OVERHEAD + wire::blob_request();
            self.peers[from as usize].bytes_sent += wire::REPLY_OVERHEAD + wire::blob_reply(self.cfg.module_bytes);
            self.m.rpcs += 2;
            self.make_bridge(r);
        }
        let (now, sender) = (self.now, self.peers[from as usize].id);
        let log = log.into_iter().map(Recorded::bare).collect();
        let adopt = Adopt { from: sender, job, coordinators: list, log, kind, timed_out: Vec::new(), cancelled: false };
        let missing = self.with_hosts(r, |h, _| h.handle_adopt(adopt, fresh, now)).unwrap_or_default();
        let size = wire::adopt_response(&self.recorded(r, &missing));
        self.answer(r, from, CallKind::Adopt(r, kind), Some(Reply::Adopt(missing)), size);
    }

    /// The sizes of `log`'s attestations as peer `p` sends them.
    pub(super) fn recorded(&self, p: u32, log: &[Logged]) -> Vec<u64> {
        self.peers[p as usize].hosts.as_deref().map_or(Vec::new(), |h| wire::recorded(h.coordinator(), log, self.cfg.output_bytes))
    }
}
