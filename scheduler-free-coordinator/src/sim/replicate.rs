//! Replication: the leading coordinator streams to each backup (`MeshService.Replicate`), in
//! recording order, every attestation it records, every lease it gives another peer (with the
//! time left) and every replica handed back to it; its own replicas are not streamed, they end
//! with it. A backup replays them into its standby [`Coordinator`](crate::Coordinator):
//! attestations with `restore_attestation_lone`, leases with `restore_lease` (counted from when
//! the entry arrives), releases with `release`. So it counts the same replicas out, and once it
//! takes over it takes the workers' reports for leases the dead leader gave instead of running
//! those tasks again. Batching and retries are one
//! [`ReplicationQueue`](crate::peer::replication::ReplicationQueue) per backup: a batch it polls
//! goes out as a `Replicate` call and comes back taken or not (lost, refused, or the backup
//! crashed). A batch that finally fails counts in `replication_dropped`, and its job is caught
//! up instead: [`CatchUps`](crate::peer::catchup::CatchUps) coalesces the requests and says
//! when each is due, and the backup then gets the whole job as an adoption, if this peer still
//! leads and the backup is still in its list. An adoption carries attestations only (as the
//! real `Adopt` does): leases lost with a failed batch are not repaired, and those tasks run
//! again should the backup take over.

use crate::peer::replication::Replicated;
use crate::{JobId, Lease, PeerId, Release, Reported, TaskId};

use super::engine::Sim;
use super::net::{CallKind, Reply, Request};
use super::peer::{AdoptKind, Held, Logged, NEVER, Streamed};
use super::queue::Event;
use super::wire;

/// The status message of a refused `Replicate` ("the sender is not a coordinator of the job").
const NOT_COORDINATOR: u64 = 37;

impl Sim {
    /// `p` recorded an attestation: log it, and stream it to the backups when `p` leads.
    pub(super) fn note_recorded(&mut self, p: u32, item: Logged) {
        let seq = self.peers[p as usize].host.as_ref().map_or(0, |h| h.log.len() as u64 + 1);
        self.stream(p, Streamed::Attestation(item.clone(), seq));
        if let Some(h) = self.peers[p as usize].host.as_mut() {
            h.log.push(item);
        }
    }

    /// `p` leased `lease` to another peer ([`Granted::to_stream`](crate::peer::lease::Granted::to_stream)):
    /// stream it to the backups when `p` leads.
    pub(super) fn note_leased(&mut self, p: u32, lease: &Lease) {
        let expires_in = lease.expires_at.saturating_sub(self.now);
        self.stream(p, Streamed::Lease { task: lease.task, peer: lease.peer, expires_in });
    }

    /// `peer` handed a replica of `task` back to `p`: stream it when `p` leads and it is another
    /// peer's.
    pub(super) fn note_released(&mut self, p: u32, task: TaskId, peer: PeerId, why: Release) {
        if peer != self.peers[p as usize].id {
            self.stream(p, Streamed::Release { task, peer, why });
        }
    }

    /// Queues `entry` for every backup when `p` leads the job.
    fn stream(&mut self, p: u32, entry: Streamed) {
        let job = self.job;
        if !self.leads(p) {
            return;
        }
        let Some(h) = self.peers[p as usize].host.as_mut() else { return };
        let bytes = match &entry {
            // Every attestation streams with its output (the peer's `Node::replicate`).
            Streamed::Attestation(..) => self.cfg.output_bytes as usize,
            _ => 0,
        };
        let mut behind = Vec::new();
        for &b in &h.coordinators[1..] {
            if let Some(Replicated::Failed { items, catch_up }) = h.replicators.push(b, job, entry.clone(), bytes) {
                behind.push((b, catch_up, last_seq(&items)));
            }
        }
        // A backup too far behind is caught up instead, as after a failed batch.
        for (b, jobs, seq) in behind {
            self.answer_held(p, seq);
            self.m.replication_dropped += 1;
            for job in jobs {
                self.request_catch_up(p, job, b);
            }
        }
        self.schedule_replicate(p);
    }

    /// Schedules `p`'s `Replicate` when its streams say a batch may be due.
    fn schedule_replicate(&mut self, p: u32) {
        let now = self.now;
        let Some(h) = self.peers[p as usize].host.as_mut() else { return };
        if let Some(at) = h.replicators.poll_timeout(now) {
            self.queue.arm(&mut h.replicate_at, at, Event::Replicate { peer: p });
        }
    }

    /// Sends every stream's batch that is due.
    pub(super) fn on_replicate(&mut self, p: u32) {
        let (now, unix, out) = (self.now, self.unix(), self.cfg.output_bytes);
        let peer = &mut self.peers[p as usize];
        let alive = peer.alive;
        let Some(h) = peer.host.as_mut() else { return };
        if !alive || h.replicate_at != now {
            return;
        }
        h.replicate_at = NEVER;
        let mut calls = Vec::new();
        while let Some((to, batch)) = h.replicators.poll_batch(now) {
            let items: Vec<u64> = batch
                .items
                .iter()
                .map(|e| {
                    wire::replication_entry(match e {
                        Streamed::Attestation(l, _) => {
                            wire::recorded_attestation(l.att.task.index, l.att.fuel_used, out, l.lone)
                        }
                        Streamed::Lease { task, expires_in, .. } => wire::replicated_lease(task.index, *expires_in),
                        Streamed::Release { task, why, .. } => wire::replicated_release(task.index, *why == Release::Deadline),
                    })
                })
                .collect();
            calls.push((to, batch.job, batch.items.clone(), wire::replicate_request(&items, unix)));
        }
        for (to, job, items, size) in calls {
            self.call(p, to, Request::Replicate { job, items }, size);
        }
        self.schedule_replicate(p);
    }

    /// The batch to `to` came back, `taken` or not; a batch given up has its jobs caught up.
    pub(super) fn on_replicated(&mut self, p: u32, to: u32, taken: bool) {
        let now = self.now;
        let Some(h) = self.peers[p as usize].host.as_mut() else { return };
        match h.replicators.handle_sent(&to, taken, now) {
            Some(Replicated::Taken(items)) => self.answer_held(p, last_seq(&items)),
            Some(Replicated::Failed { items, catch_up }) => {
                // The peer's wait for an ack ends too, unconfirmed.
                self.answer_held(p, last_seq(&items));
                self.m.replication_dropped += 1;
                for job in catch_up {
                    self.request_catch_up(p, job, to);
                }
            }
            _ => {}
        }
        self.schedule_replicate(p);
    }

    /// Sends the held report answers of `p` that wait for log positions up to `seq`.
    pub(super) fn answer_held(&mut self, p: u32, seq: u64) {
        let Some(h) = self.peers[p as usize].host.as_mut() else { return };
        let (due, keep): (Vec<Held>, Vec<Held>) = h.held.drain(..).partition(|r| r.upto <= seq);
        h.held = keep;
        for r in due {
            self.reply(p, r.worker, Reply::Report, wire::report_reply(r.accepted, r.rejected), CallKind::Report(p));
        }
    }

    /// `MeshService.Replicate` at `b`, from `from`: refused unless `b` holds the job and counts
    /// the sender among its coordinators.
    pub(super) fn serve_replicate(&mut self, b: u32, from: u32, job: JobId, items: Vec<Streamed>) {
        let named = self.peers[b as usize].host.as_ref().is_some_and(|h| h.jobs.contains(&job) && h.coordinators.contains(&from));
        if !named {
            self.refuse(b, from, CallKind::Replicate(b), NOT_COORDINATOR);
            return;
        }
        let mut recorded = 0;
        let now = self.now;
        for item in items {
            match item {
                Streamed::Attestation(l, _) => recorded += u32::from(self.replay(b, l)),
                Streamed::Lease { task, peer, expires_in } => {
                    if let Some(h) = self.peers[b as usize].host.as_mut() {
                        h.coord.restore_lease(Lease { task, peer, expires_at: now + expires_in });
                    }
                }
                Streamed::Release { task, peer, why } => {
                    if let Some(h) = self.peers[b as usize].host.as_mut() {
                        h.coord.release(task, peer, why);
                    }
                }
            }
        }
        self.drain_coordinator(b);
        self.reply(b, from, Reply::Replicate, wire::replicate_reply(recorded), CallKind::Replicate(b));
    }

    /// Replays attestations another coordinator recorded (an adoption); returns how many were
    /// recorded here.
    pub(super) fn record_replicated(&mut self, b: u32, items: Vec<Logged>) -> u32 {
        let recorded = items.into_iter().map(|l| u32::from(self.replay(b, l))).sum();
        self.drain_coordinator(b);
        recorded
    }

    /// Replays one attestation another coordinator recorded; returns whether it was new here.
    fn replay(&mut self, b: u32, item: Logged) -> bool {
        let Some(h) = self.peers[b as usize].host.as_mut() else { return false };
        match h.coord.restore_attestation_lone((*item.att).clone(), item.lone) {
            Ok(Reported::Recorded | Reported::Decided) => {
                self.note_recorded(b, item);
                true
            }
            Ok(Reported::Late) | Err(_) => false,
        }
    }

    /// Asks for backup `to` to get the whole of `job` soon (coalesced with a pending request).
    pub(super) fn request_catch_up(&mut self, p: u32, job: JobId, to: u32) {
        let (now, id) = (self.now, self.peers[to as usize].id);
        let Some(h) = self.peers[p as usize].host.as_mut() else { return };
        h.catch_ups.request(job, id, now);
        if let Some(at) = h.catch_ups.poll_timeout() {
            self.queue.arm(&mut h.catch_up_at, at, Event::CatchUp { peer: p });
        }
    }

    /// Catches up every backup of the job `p` leads.
    pub(super) fn catch_up_backups(&mut self, p: u32) {
        if !self.leads(p) {
            return;
        }
        let backups = self.peers[p as usize].host.as_ref().map(|h| h.coordinators[1..].to_vec()).unwrap_or_default();
        for b in backups {
            self.request_catch_up(p, self.job, b);
        }
    }

    /// Sends the catch-ups that are due, each if `p` still leads the job and the backup is still
    /// one of its coordinators.
    pub(super) fn on_catch_up(&mut self, p: u32) {
        let now = self.now;
        let peer = &mut self.peers[p as usize];
        let alive = peer.alive;
        let Some(h) = peer.host.as_mut() else { return };
        if !alive || h.catch_up_at != now {
            return;
        }
        h.catch_up_at = NEVER;
        let due: Vec<_> = std::iter::from_fn(|| h.catch_ups.poll_due(now)).collect();
        for (job, backup) in due {
            let to = super::keys::index_of(&backup);
            let list = self.peers[p as usize].host.as_ref().map(|h| h.coordinators.clone()).unwrap_or_default();
            if job == self.job && self.leads(p) && list.contains(&to) {
                self.send_adopt(p, to, list, AdoptKind::CatchUp);
            }
        }
        let Some(h) = self.peers[p as usize].host.as_mut() else { return };
        if let Some(at) = h.catch_ups.poll_timeout() {
            self.queue.arm(&mut h.catch_up_at, at, Event::CatchUp { peer: p });
        }
    }
}

/// The last log position among streamed entries (0 when none is an attestation).
fn last_seq(items: &[Streamed]) -> u64 {
    items.iter().filter_map(|e| if let Streamed::Attestation(_, seq) = e { Some(*seq) } else { None }).max().unwrap_or(0)
}
