//! The virtual network: every message between virtual peers goes through here. Each is lost
//! with probability `loss`, independently, and otherwise arrives after a uniform random delay;
//! its bytes are counted against its sender.
//!
//! **Partitions.** From `partition_at_ms` until `heal_at_ms` (or the end of the run) the
//! network is split in two, by peer (not by membership cell: a bridge coordinator is on one
//! side in every cell it belongs to), and every message sent from one side to the other, gossip,
//! RPC request, reply or refusal, is lost as the loss model loses one (counted in
//! `messages_lost`, a lost RPC failing at its caller after `rpc_fail_ms`). The cut is checked
//! when a message is sent: one already in flight when the partition starts still arrives. The
//! sides ([`Sim::far_side`]), a fixed rule of the peer's index: the *near* side holds the
//! origin, every backup but the first, and the workers of even index; the *far* side holds
//! the origin's first backup and the workers of odd index (joiners too, by the same parity).
//! So each side has about half the workers and at least one coordinator of the job: the far
//! side's backup sees the origin die and takes the job over, and when the partition heals the
//! two leaders settle by [`crate::peer::heal`]. Deciding who is cut draws no random number, so
//! a run without a partition is the same as before, and one with it is the same for one seed.
//!
//! Gossip is fire-and-forget, as `MeshService.Gossip` is used (the empty reply is counted
//! against the receiver). The lease, report, blob, adopt and replicate RPCs are a request and a
//! reply carrying what the real ones carry; a lost request or reply, or a callee that crashed,
//! fails the call at the caller `rpc_fail_ms` after it was sent. (The real clients set no deadline, and TCP
//! would usually deliver late rather than fail; the simulator is the harsher of the two.)

use crate::peer::host::{AdoptKind, Logged, Recorded, ReportItem, Streamed};
use crate::peer::reports::Delivery;
use crate::peer::wire;
use crate::{BlobId, JobId, Millis, PeerId};

use super::engine::Sim;
use super::queue::Event;

/// A gossip message in flight.
#[derive(Debug, Default)]
pub struct Packet {
    /// Sender.
    pub from: u32,
    /// Receiver.
    pub to: u32,
    /// The membership cell it belongs to.
    pub cell: u32,
    /// What `Membership::poll_send` produced.
    pub data: Vec<u8>,
}

/// An RPC request.
#[derive(Debug)]
pub enum Request {
    /// `MeshService.Lease`.
    Lease { job: JobId, max: u32, asked_at: Millis },
    /// `MeshService.Report`.
    Report { batch: Vec<ReportItem> },
    /// `BlobService.Get` of a module.
    Blob { module: BlobId },
    /// `MeshService.Adopt`: the whole job, with the sender's list of its coordinators (the
    /// receiver and the sender included) and every attestation the sender recorded.
    Adopt { job: JobId, coordinators: Vec<PeerId>, log: Vec<Logged>, kind: AdoptKind },
    /// `MeshService.Replicate`: what the active coordinator recorded (attestations, leases it
    /// gave, releases), in order.
    Replicate { job: JobId, items: Vec<Streamed> },
}

/// What an answer brings back beyond being one.
#[derive(Debug)]
pub enum Reply {
    /// Leases granted: each task's `(index, expires_in_ms)`, with the job's module and deadline.
    Lease { module: BlobId, timeout_ms: u64, tasks: Vec<(u32, u64)>, asked_at: Millis },
    /// The job was adopted; to a sync, with what the receiver recorded that the sender lacked.
    Adopt(Vec<Logged>),
    /// Taken: a report batch, a module fetch, a replication batch.
    Taken,
}

/// What a call was, so its answer or failure goes back to what made it.
#[derive(Clone, Copy, Debug)]
pub enum CallKind {
    /// A lease request for the job to this coordinator.
    Lease(JobId, u32),
    /// A report batch to the coordinator.
    Report(u32),
    /// A module fetch.
    Blob(BlobId),
    /// An adoption of the job by this peer.
    Adopt(u32, AdoptKind),
    /// A replication batch to this backup.
    Replicate(u32),
}

/// An RPC message in flight.
#[derive(Debug)]
pub enum RpcMsg {
    /// A request from a caller.
    Request { from: u32, to: u32, sent_at: Millis, req: Request },
    /// The callee's answer to `to`'s call: its reply, or `None` when it refused the call (an
    /// error status).
    Answer { to: u32, kind: CallKind, reply: Option<Reply> },
}

impl Request {
    fn kind(&self, to: u32) -> CallKind {
        match self {
            Request::Lease { job, .. } => CallKind::Lease(*job, to),
            Request::Report { .. } => CallKind::Report(to),
            Request::Blob { module } => CallKind::Blob(*module),
            Request::Adopt { kind, .. } => CallKind::Adopt(to, *kind),
            Request::Replicate { .. } => CallKind::Replicate(to),
        }
    }
}

impl Sim {
    fn delay(&mut self) -> Millis {
        let (lo, hi) = self.cfg.delay_ms;
        self.rng.range(lo, hi)
    }

    /// Whether `p` is on the far side of a partition (see the module docs).
    pub fn far_side(&self, p: u32) -> bool {
        p != self.origin && (self.backups.first() == Some(&p) || (!self.backups.contains(&p) && p % 2 == 1))
    }

    /// Whether the network is split now.
    pub fn partitioned(&self) -> bool {
        self.cfg.partition_at_ms.is_some_and(|at| self.now >= at) && self.cfg.heal_at_ms.is_none_or(|at| self.now < at)
    }

    /// Whether a message from `a` to `b` sent now is lost: cut by the partition, or by chance.
    fn lost_between(&mut self, a: u32, b: u32) -> bool {
        if self.partitioned() && self.far_side(a) != self.far_side(b) {
            self.m.lost += 1;
            return true;
        }
        self.lost()
    }

    fn lost(&mut self) -> bool {
        let lost = self.rng.chance(self.cfg.loss);
        if lost {
            self.m.lost += 1;
        }
        lost
    }

    /// Sends a gossip message (`to` is `None` when the address names no peer).
    pub(super) fn send_gossip(&mut self, from: u32, to: Option<u32>, cell: u32, data: Vec<u8>) {
        let size = wire::REQUEST_OVERHEAD + wire::gossip_request(data.len() as u64);
        self.peers[from as usize].bytes_sent += size;
        self.peers[from as usize].gossip_sent += size;
        self.m.gossip += 1;
        let Some(to) = to.filter(|&t| (t as usize) < self.peers.len()) else { return };
        if self.lost_between(from, to) {
            return;
        }
        let at = self.now + self.delay();
        self.queue.push_packet(at, from, to, cell, &data);
    }

    /// Starts an RPC whose request body is `size` bytes.
    pub(super) fn call(&mut self, from: u32, to: u32, req: Request, size: u64) {
        self.peers[from as usize].bytes_sent += wire::REQUEST_OVERHEAD + size;
        self.m.rpcs += 1;
        if self.lost_between(from, to) {
            let kind = req.kind(to);
            self.queue.push(self.now + self.cfg.rpc_fail_ms, Event::RpcFailed { peer: from, kind: Box::new(kind) });
            return;
        }
        let at = self.now + self.delay();
        self.queue.push(at, Event::Rpc(Box::new(RpcMsg::Request { from, to, sent_at: self.now, req })));
    }

    /// Answers an RPC with a body of `size` bytes: `reply`, or `None` for an error status (`size`
    /// bytes of message in the trailers); `kind` says what fails if it is lost. A lost refusal
    /// still reaches the caller as one, when its call fails.
    pub(super) fn answer(&mut self, from: u32, to: u32, kind: CallKind, reply: Option<Reply>, size: u64) {
        self.peers[from as usize].bytes_sent += wire::REPLY_OVERHEAD + size;
        self.m.rpcs += 1;
        let lost = self.lost_between(from, to);
        if lost && reply.is_some() {
            self.queue.push(self.now + self.cfg.rpc_fail_ms, Event::RpcFailed { peer: to, kind: Box::new(kind) });
            return;
        }
        let at = if lost { self.now + self.cfg.rpc_fail_ms } else { self.now + self.delay() };
        self.queue.push(at, Event::Rpc(Box::new(RpcMsg::Answer { to, kind, reply })));
    }

    /// A gossip message arrives.
    pub(super) fn on_gossip(&mut self, pkt: &Packet) {
        let to = pkt.to as usize;
        if !self.peers[to].alive {
            return;
        }
        // The empty GossipResponse.
        self.peers[to].bytes_sent += wire::REPLY_OVERHEAD;
        let Some(v) = self.peers[to].view_of(pkt.cell) else { return };
        let sender = self.peers[pkt.from as usize].id;
        let now = self.now;
        // A refused message is dropped, as the real peer drops it.
        let _ = self.peers[to].views[v].mesh.membership.handle_data(&pkt.data, Some(sender), now);
        self.after_mesh(pkt.to, v);
    }

    /// An RPC message arrives.
    pub(super) fn on_rpc(&mut self, msg: RpcMsg) {
        match msg {
            RpcMsg::Request { from, to, sent_at, req } => {
                if !self.peers[to as usize].alive {
                    let at = self.now.max(sent_at + self.cfg.rpc_fail_ms);
                    self.queue.push(at, Event::RpcFailed { peer: from, kind: Box::new(req.kind(to)) });
                    return;
                }
                match req {
                    Request::Lease { job, max, asked_at } => self.serve_lease(to, from, job, max, asked_at),
                    Request::Report { batch } => self.serve_report(to, from, batch),
                    Request::Blob { module } => self.serve_blob(to, from, module),
                    Request::Adopt { job, coordinators, log, kind } => self.serve_adopt(to, from, job, coordinators, log, kind),
                    Request::Replicate { job, items } => self.serve_replicate(to, from, job, items),
                }
            }
            RpcMsg::Answer { to, kind, reply } => self.answered(to, kind, reply.ok_or(true)),
        }
    }

    /// `p`'s call `kind` came back: answered, refused (`Err(true)`) or not answered in time
    /// (`Err(false)`). The machine that made the call takes it.
    pub(super) fn answered(&mut self, p: u32, kind: CallKind, answer: Result<Reply, bool>) {
        if !self.peers[p as usize].alive {
            return;
        }
        let (now, job) = (self.now, self.job);
        let id = |c: u32| self.peers[c as usize].id;
        match (kind, answer) {
            (CallKind::Lease(job, c), Ok(Reply::Lease { module, timeout_ms, tasks, asked_at })) => {
                let from = id(c);
                self.with_work(p, |w, now| w.handle_leased(from, job, module, timeout_ms, &tasks, asked_at, now));
            }
            (CallKind::Lease(job, _), _) => self.with_work(p, |w, now| w.handle_lease_failed(job, now)),
            (CallKind::Report(c), answer) => {
                let to = id(c);
                let delivery = match answer {
                    Ok(_) => Delivery::Taken,
                    Err(true) => Delivery::Refused,
                    Err(false) => Delivery::Unreachable,
                };
                self.with_work(p, |w, now| w.handle_report_sent(to, delivery, now));
            }
            (CallKind::Blob(module), Ok(_)) => self.with_work(p, |w, _| w.handle_fetched(module)),
            (CallKind::Blob(module), Err(_)) => self.with_work(p, |w, now| w.handle_fetch_failed(module, now)),
            (CallKind::Adopt(c, kind), answer) => {
                let to = id(c);
                let missing = match answer {
                    Ok(Reply::Adopt(missing)) => Some(missing),
                    _ => None,
                };
                let missing = missing.map(|log| log.into_iter().map(Recorded::bare).collect());
                self.with_hosts(p, |h, m| h.handle_adopted(&job, to, missing, kind, now, m));
            }
            (CallKind::Replicate(c), answer) => {
                let to = id(c);
                self.with_hosts(p, |h, _| h.handle_replicated(&job, to, answer.is_ok(), now));
            }
        }
    }
}
