//! A virtual peer's coordinator side as the network and the mesh see it: `MeshService` calls
//! handed to its [`Host`](crate::peer::host::Host), answers to the calls its host made, job
//! ads and membership changes passed on, and the byte size of everything it sends. Any peer
//! can hold a coordinator for the job: the origin and the peers it adopted; a peer that does
//! not hold the job refuses its calls (an `Adopt` makes it a coordinator, in standby).
//!
//! Simplification: the module fetch of an adoption is counted as bytes with the `Adopt` call
//! rather than simulated as its own call.

use crate::peer::host::{AdoptKind, Host, Logged, ReportItem, Streamed};
use crate::records::JobAd;
use crate::{Attestation, BlobId, JobId, PeerId, Release, TaskId};

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
            self.refuse(c, worker, CallKind::Lease(job), NOT_HELD);
            return;
        }
        let Some(granted) = self.with_host(c, |h, _| h.handle_lease(wid, max, network, now)) else { return };
        let tasks: Vec<(u32, u64)> = granted.leases.iter().map(|l| (l.task.index, l.expires_at.saturating_sub(now))).collect();
        let size = wire::lease_reply(&self.spec.policy.limits, &tasks, self.cfg.input_bytes, granted.note);
        if !tasks.is_empty() {
            self.leased_by(c);
        }
        let reply = Reply::Lease { job, module: self.spec.module, timeout_ms: self.spec.policy.limits.timeout_ms, tasks, asked_at };
        self.reply(c, worker, reply, size, CallKind::Lease(job));
    }

    /// `MeshService.Report` at peer `c`, from `worker`: answered by the host, maybe later.
    pub(super) fn serve_report(&mut self, c: u32, worker: u32, batch: Vec<ReportItem>) {
        let (now, wid) = (self.now, self.peers[worker as usize].id);
        if self.peers[c as usize].host.is_none() {
            // Nothing held here: every attestation is turned down.
            let rejected = batch.iter().filter(|i| matches!(i, ReportItem::Attest(..))).count() as u32;
            self.reply(c, worker, Reply::Report, wire::report_reply(0, rejected), CallKind::Report(c));
            return;
        }
        self.with_host(c, |h, _| h.handle_report(wid, batch, now));
    }

    /// Peer `p`'s own replica ran: its host records the attestation.
    pub(super) fn record_own(&mut self, p: u32, att: Attestation, out: Vec<u8>) {
        let now = self.now;
        self.with_host(p, |h, _| h.record_own(att, &out, now));
    }

    /// Peer `p` hands its own replica of `task` back.
    pub(super) fn release_own(&mut self, p: u32, task: TaskId, why: Release) {
        self.with_host(p, |h, _| h.release_own(task, why));
    }

    /// `BlobService.Get` of the module at peer `c`.
    pub(super) fn serve_blob(&mut self, c: u32, worker: u32, module: BlobId) {
        let size = wire::blob_reply(self.cfg.module_bytes);
        self.reply(c, worker, Reply::Blob { module }, size, CallKind::Blob(module));
    }

    /// `MeshService.Replicate` at `b`, from `from`.
    pub(super) fn serve_replicate(&mut self, b: u32, from: u32, job: JobId, items: Vec<Streamed>) {
        let (now, sender) = (self.now, self.peers[from as usize].id);
        match self.with_host(b, |h, _| h.handle_replicate(sender, job, items, now)) {
            Some(Ok(recorded)) => self.reply(b, from, Reply::Replicate, wire::replicate_reply(recorded), CallKind::Replicate(b)),
            Some(Err(_)) | None => self.refuse(b, from, CallKind::Replicate(b), NOT_COORDINATOR),
        }
    }

    /// The batch `p` sent to `to` came back, `taken` or not.
    pub(super) fn on_replicated(&mut self, p: u32, to: u32, taken: bool) {
        let (now, to) = (self.now, self.peers[to as usize].id);
        self.with_host(p, |h, _| h.handle_replicated(to, taken, now));
    }

    /// `MeshService.Adopt` at `r`, from `from`: a peer that does not hold the job takes it in
    /// standby (and becomes a bridge of every cell); either way its host takes the adoption.
    pub(super) fn serve_adopt(&mut self, r: u32, from: u32, job: JobId, list: Vec<u32>, log: Vec<Logged>, kind: AdoptKind) {
        let fresh = !self.peers[r as usize].holds(&job);
        if fresh {
            let mut coord = self.new_coordinator(r);
            if coord.submit(job, self.spec.clone()).is_err() {
                self.refuse(r, from, CallKind::Adopt(r, kind), 0);
                return;
            }
            coord.set_standby(&job, true);
            let (me, born) = (self.peers[r as usize].id, self.peers[r as usize].born);
            self.peers[r as usize].host = Some(Box::new(Host::new(me, coord, job, self.ids(&list), self.verifier.clone(), born)));
            // It fetches the module from the sender.
            self.peers[r as usize].bytes_sent += wire::REQUEST_OVERHEAD + wire::blob_request();
            self.peers[from as usize].bytes_sent += wire::REPLY_OVERHEAD + wire::blob_reply(self.cfg.module_bytes);
            self.m.rpcs += 2;
            self.make_bridge(r);
        }
        let (now, sender, ids) = (self.now, self.peers[from as usize].id, self.ids(&list));
        let missing = self.with_host(r, |h, _| h.handle_adopt(sender, ids, log, kind, fresh, now)).unwrap_or_default();
        let size = wire::adopt_response(&self.recorded(r, &missing));
        self.reply(r, from, Reply::Adopt { kind, missing }, size, CallKind::Adopt(r, kind));
    }

    /// The answer (or failure: `None`) of an `Adopt` sent by `p` to `to`.
    pub(super) fn on_adopted(&mut self, p: u32, to: u32, answer: Option<Vec<Logged>>, kind: AdoptKind) {
        let (now, to) = (self.now, self.peers[to as usize].id);
        self.with_host(p, |h, m| h.handle_adopted(to, answer, kind, now, m));
    }

    /// A newer ad of the job from another announcer reached coordinator `p`.
    pub(super) fn follow_ad(&mut self, p: u32, ad: &JobAd) {
        self.with_host(p, |h, _| h.handle_ad(ad));
    }

    /// A rival ad of the job reached `p`.
    pub(super) fn on_rival(&mut self, p: u32, ad: JobAd) {
        self.with_host(p, |h, _| h.handle_rival(&ad));
    }

    /// `p`'s membership changed: `live` peers live, `down` declared dead.
    pub(super) fn host_members_changed(&mut self, p: u32, live: usize, down: Option<PeerId>) {
        let now = self.now;
        self.with_host(p, |h, _| h.handle_members(live, down, now));
    }

    /// The sizes of `log`'s attestations as peer `p` sends them.
    pub(super) fn recorded(&self, p: u32, log: &[Logged]) -> Vec<u64> {
        self.peers[p as usize].host.as_deref().map_or(Vec::new(), |h| wire::recorded(h.coordinator(), log, self.cfg.output_bytes))
    }
}
