//! Replicated coordination, as `worker/src/node/replicate.rs` and `service/replica.rs` do it:
//! the job's coordinators (its origin, then the live peers that rank highest by
//! [`rendezvous`]), hand-overs (`MeshService.Adopt`), the active coordinator's stream of every
//! attestation it records to the backups (`MeshService.Replicate`, which replay it into a real
//! [`Coordinator`] in standby), and roles: the first live coordinator of a peer's list leads,
//! and one that finds the coordinators before it dead takes the job over, hands it to a
//! replacement and announces the new list.
//!
//! Where this departs from the real peer, and why:
//! - "Live" at a coordinator means: no membership view of it holds the peer dead. A coordinator
//!   bridges every cell, so it has one view per cell, and the first cell to declare a peer dead
//!   stands for the real mesh's one SWIM cluster, whose first detection spreads to everyone. A
//!   peer no view knows yet counts as live: the simulated mesh starts at the same moment as the
//!   job, which a real mesh does not, and the real rule (unknown means dead) would make every
//!   backup take over before it had heard of the origin.
//! - Roles are first looked at `ROLES_GRACE_MS` after the peer started (the real peer also
//!   starts earlier once any member is active, see above for why not here), then every second
//!   and at once when a view declares a peer dead, as `node/mesh.rs` does.
//! - The module fetch of an adoption is counted as bytes with the `Adopt` call rather than
//!   simulated as its own call.
//! - A coordinator that leads and hears a newer ad that puts another peer first steps down to
//!   standby. The real peers settle two leaders by `heal::outranks` (the origin wins) and hand
//!   final results over; that only arises here when membership wrongly declares a coordinator
//!   dead, under message loss.

use crate::rendezvous::{self, DEFAULT_COORDINATORS};
use crate::{Coordinator, CoordinatorConfig, JobId, Millis, PeerId, Reported};

use super::engine::Sim;
use super::keys;
use super::net::Request;
use super::peer::{AdoptRound, Host, Logged, NEVER, Replicator};
use super::queue::Event;
use super::wire;

/// Roles are looked at again this often (`node/mesh.rs:ROLES_EVERY_MS`).
const ROLES_EVERY_MS: Millis = 1_000;
/// After a start, roles wait this long for membership to learn who is alive
/// (`node/mesh.rs:ROLES_GRACE_MS`).
pub const ROLES_GRACE_MS: Millis = 6_000;
/// Attestations per replication request (`node/replicate.rs:REPLICATE_BATCH`).
const REPLICATE_BATCH: usize = 256;
/// Attempts at one replication batch, 100 ms then 200 ms apart (`REPLICATE_TRIES`).
const REPLICATE_TRIES: u32 = 3;
/// A job led with fewer coordinators than wanted is offered to more peers this often
/// (`TOP_UP_EVERY`).
const TOP_UP_EVERY_MS: Millis = 30_000;
/// The status message of a refused `Replicate` ("the sender is not a coordinator of the job").
const NOT_COORDINATOR: u64 = 37;

impl Sim {
    /// A fresh coordinator for peer `p`, with its own secret (spot checks are keyed by it).
    pub(super) fn new_coordinator(&self, p: u32) -> Coordinator {
        let mut key = self.cfg.seed.to_le_bytes().to_vec();
        // The origin's is the one the simulator always gave it, so its spot checks stay put.
        if p != self.origin {
            key.extend_from_slice(&p.to_le_bytes());
        }
        let secret = *blake3::keyed_hash(&[9; 32], &key).as_bytes();
        Coordinator::new(CoordinatorConfig { secret, ..CoordinatorConfig::default() })
    }

    /// Whether peer `p` takes `who` for live: none of its membership views holds it dead.
    pub(super) fn sees_live(&self, p: u32, who: u32) -> bool {
        if p == who {
            return true;
        }
        let id = self.peers[who as usize].id;
        let peer = &self.peers[p as usize];
        peer.alive && !peer.views.iter().any(|v| v.m.state_of(&id).is_some_and(|(_, s)| s == crate::membership::MemberState::Dead))
    }

    /// The live peers `p`'s views know, other than `p` (`Node::live_set`), in index order.
    fn live_set(&self, p: u32) -> Vec<u32> {
        let mut seen: Vec<u32> = Vec::new();
        for v in &self.peers[p as usize].views {
            for (m, s) in v.m.members() {
                if s != crate::membership::MemberState::Dead {
                    seen.push(keys::index_of(&m.peer));
                }
            }
        }
        seen.sort_unstable();
        seen.dedup();
        seen.retain(|&i| i != p && self.sees_live(p, i));
        seen
    }

    fn ids(&self, list: &[u32]) -> Vec<PeerId> {
        list.iter().map(|&i| self.peers[i as usize].id).collect()
    }

    /// The peer currently leading the job as the simulation knows it (for the report).
    pub(super) fn lead_host(&self) -> Option<&Host> {
        self.active.and_then(|a| self.peers[a as usize].host.as_deref())
    }

    /// Brings `p`'s list up to [`DEFAULT_COORDINATORS`] (`Node::add_coordinators`): `p` first,
    /// then the live coordinators it keeps, then `Adopt` to the highest-ranked live peers. The
    /// list settles, and the ad goes out, once every new one answered.
    pub(super) fn add_coordinators(&mut self, p: u32, keep: Vec<u32>, candidates: &[u32]) {
        let job = self.job;
        let wanted = rendezvous::choose(&job, &self.ids(&keep), &self.ids(candidates), DEFAULT_COORDINATORS);
        let new: Vec<u32> = wanted.iter().map(keys::index_of).filter(|i| !keep.contains(i)).collect();
        let Some(h) = self.peers[p as usize].host.as_mut() else { return };
        h.adopting = Some(AdoptRound { keep: keep.clone(), waiting: new.clone(), adopted: Vec::new() });
        if new.is_empty() {
            self.settle_coordinators(p);
            return;
        }
        for n in new {
            let mut list = keep.clone();
            list.push(n);
            self.send_adopt(p, n, list, false);
        }
    }

    /// Sends `to` the whole job with `list` as its coordinators (`adopt_request` + `adopt_to`).
    fn send_adopt(&mut self, p: u32, to: u32, list: Vec<u32>, catch_up: bool) {
        let unix = self.unix();
        let Some(h) = self.peers[p as usize].host.as_ref() else { return };
        let log = h.log.clone();
        // Every attestation that carries the agreed result of a final task goes with its output.
        let items: Vec<u64> = log
            .iter()
            .map(|l| {
                let final_output = h.coord.task(&l.att.task).is_some_and(|t| t.verdict.agreed() == Some(&l.att.result));
                let out = if final_output { self.cfg.output_bytes } else { 0 };
                wire::recorded_attestation(l.att.task.index, l.att.fuel_used, out, l.solo)
            })
            .collect();
        let label = self.spec.label.len() as u64;
        let policy = wire::policy(&self.spec.policy);
        let size = wire::adopt_request(
            policy,
            label,
            self.spec.task_count,
            self.cfg.input_bytes,
            list.len() as u64,
            &items,
            self.spec.submitted_at_ms,
            unix,
        );
        self.call(p, to, Request::Adopt { job: self.job, coordinators: list, log, catch_up }, size);
    }

    /// `MeshService.Adopt` at `r`, from coordinator `from` (`service/replica.rs:adopt`).
    pub(super) fn serve_adopt(&mut self, r: u32, from: u32, job: JobId, list: Vec<u32>, log: Vec<Logged>, catch_up: bool) {
        if !self.peers[r as usize].holds(&job) {
            let mut coord = self.new_coordinator(r);
            if coord.submit(job, self.spec.clone()).is_err() {
                self.refuse(r, from, super::net::CallKind::Adopt(r, catch_up), 0);
                return;
            }
            coord.set_standby(&job, true);
            self.peers[r as usize].host = Some(Box::new(Host::new(coord, job, list)));
            // It fetches the module from the sender.
            self.peers[r as usize].bytes_sent += wire::REQUEST_OVERHEAD + wire::blob_request();
            self.peers[from as usize].bytes_sent += wire::REPLY_OVERHEAD + wire::blob_reply(self.cfg.module_bytes);
            self.m.rpcs += 2;
            self.make_bridge(r);
            self.schedule_roles(r, self.now + ROLES_EVERY_MS);
        }
        self.record_replicated(r, log);
        self.reply(r, from, super::net::Reply::Adopt { catch_up }, 0, super::net::CallKind::Adopt(r, catch_up));
    }

    /// The answer (or failure) of an `Adopt` sent by `p` to `to`.
    pub(super) fn on_adopted(&mut self, p: u32, to: u32, ok: bool, catch_up: bool) {
        if catch_up {
            return;
        }
        let Some(round) = self.peers[p as usize].host.as_mut().and_then(|h| h.adopting.as_mut()) else { return };
        let Some(i) = round.waiting.iter().position(|&w| w == to) else { return };
        round.waiting.swap_remove(i);
        if ok {
            round.adopted.push(to);
        }
        if round.waiting.is_empty() {
            self.settle_coordinators(p);
        }
    }

    /// Every hand-over of the round answered: the list is the kept coordinators and the new ones
    /// that adopted; the job's ad goes out with it, and the new ones get a catch-up `Adopt` with
    /// what was recorded before they were in the list.
    fn settle_coordinators(&mut self, p: u32) {
        let Some(h) = self.peers[p as usize].host.as_mut() else { return };
        let Some(mut round) = h.adopting.take() else { return };
        round.adopted.sort_unstable_by_key(|&i| std::cmp::Reverse(rendezvous::weight(&self.job, &self.peers[i as usize].id)));
        let mut list = round.keep;
        list.extend(round.adopted.iter().copied());
        self.set_coordinators(p, list.clone());
        let done = self.peers[p as usize].host.as_ref().is_some_and(|h| job_final(&h.coord, &self.job));
        self.publish_job(p, done);
        for n in round.adopted {
            self.send_adopt(p, n, list.clone(), true);
        }
        self.wake(p);
    }

    /// Sets `p`'s list, and its replication streams to match.
    fn set_coordinators(&mut self, p: u32, list: Vec<u32>) {
        let Some(h) = self.peers[p as usize].host.as_mut() else { return };
        let backups: Vec<u32> = if list.first() == Some(&p) { list[1..].to_vec() } else { Vec::new() };
        h.replicators.retain(|r| backups.contains(&r.to));
        for b in backups {
            if !h.replicators.iter().any(|r| r.to == b) {
                h.replicators.push(Replicator { to: b, queue: Default::default(), batch: None, flush_pending: false });
            }
        }
        h.coordinators = list;
    }

    /// `p` recorded an attestation: log it, and stream it to the backups when `p` leads
    /// (`Node::replicate`).
    pub(super) fn note_recorded(&mut self, p: u32, item: Logged) {
        let now = self.now;
        let Some(h) = self.peers[p as usize].host.as_mut() else { return };
        let leads = h.coordinators.first() == Some(&p) && !h.coord.is_standby(&self.job);
        if leads {
            for r in &mut h.replicators {
                r.queue.push_back(item.clone());
                if r.batch.is_none() && !r.flush_pending {
                    r.flush_pending = true;
                    self.queue.push(now, Event::Replicate { peer: p, to: r.to });
                }
            }
        }
        h.log.push(item);
    }

    /// Sends the next replication batch to backup `to`: a retry of the one in flight, or what
    /// is queued, up to [`REPLICATE_BATCH`] (`replicator`).
    pub(super) fn on_replicate(&mut self, p: u32, to: u32) {
        let unix = self.unix();
        let peer = &mut self.peers[p as usize];
        if !peer.alive {
            return;
        }
        let Some(r) = peer.host.as_mut().and_then(|h| h.replicators.iter_mut().find(|r| r.to == to)) else { return };
        if !r.flush_pending {
            return;
        }
        r.flush_pending = false;
        if r.batch.is_none() {
            let n = r.queue.len().min(REPLICATE_BATCH);
            if n == 0 {
                return;
            }
            r.batch = Some((r.queue.drain(..n).collect(), 1));
        }
        let Some((batch, _)) = r.batch.as_ref() else { return };
        let out = self.cfg.output_bytes;
        let items: Vec<u64> = batch
            .iter()
            .map(|l| wire::recorded_attestation(l.att.task.index, l.att.fuel_used, if l.output { out } else { 0 }, l.solo))
            .collect();
        let size = wire::replicate_request(&items, unix);
        let batch = batch.clone();
        self.call(p, to, Request::Replicate { job: self.job, items: batch }, size);
    }

    /// The answer (or failure) of a replication batch: the next one may go; a failed one is
    /// tried again after 100 ms, then 200 ms, then dropped and not sent again.
    pub(super) fn on_replicated(&mut self, p: u32, to: u32, ok: bool) {
        let now = self.now;
        let Some(r) = self.peers[p as usize].host.as_mut().and_then(|h| h.replicators.iter_mut().find(|r| r.to == to)) else { return };
        let Some((_, attempt)) = r.batch.as_mut() else { return };
        if !ok && *attempt < REPLICATE_TRIES {
            let pause = 100 * Millis::from(*attempt);
            *attempt += 1;
            r.flush_pending = true;
            self.queue.push(now + pause, Event::Replicate { peer: p, to });
            return;
        }
        if !ok {
            self.m.replication_dropped += 1;
        }
        r.batch = None;
        if !r.queue.is_empty() && !r.flush_pending {
            r.flush_pending = true;
            self.queue.push(now, Event::Replicate { peer: p, to });
        }
    }

    /// `MeshService.Replicate` at `b`, from `from` (`service/replica.rs:replicate`): refused
    /// unless `b` holds the job and counts the sender among its coordinators.
    pub(super) fn serve_replicate(&mut self, b: u32, from: u32, job: JobId, items: Vec<Logged>) {
        let named = self.peers[b as usize].host.as_ref().is_some_and(|h| h.jobs.contains(&job) && h.coordinators.contains(&from));
        if !named {
            self.refuse(b, from, super::net::CallKind::Replicate(b), NOT_COORDINATOR);
            return;
        }
        let recorded = self.record_replicated(b, items);
        self.reply(b, from, super::net::Reply::Replicate, wire::replicate_reply(recorded), super::net::CallKind::Replicate(b));
    }

    /// Replays attestations another coordinator recorded (`Node::record_replicated`); returns
    /// how many were recorded here.
    fn record_replicated(&mut self, b: u32, items: Vec<Logged>) -> u32 {
        let mut recorded = 0;
        for item in items {
            let Some(h) = self.peers[b as usize].host.as_mut() else { break };
            match h.coord.restore_attestation_solo(item.att.clone(), item.solo) {
                Ok(Reported::Recorded | Reported::Decided) => {
                    recorded += 1;
                    self.note_recorded(b, item);
                }
                Ok(Reported::Late) | Err(_) => {}
            }
        }
        self.drain_coordinator(b);
        recorded
    }

    /// Schedules `p`'s role evaluation at `at` (sooner wins).
    pub(super) fn schedule_roles(&mut self, p: u32, at: Millis) {
        let Some(h) = self.peers[p as usize].host.as_mut() else { return };
        let at = at.max(self.now);
        if at < h.roles_at {
            h.roles_at = at;
            self.queue.push(at, Event::Roles { peer: p });
        }
    }

    pub(super) fn on_roles(&mut self, p: u32) {
        let now = self.now;
        let peer = &mut self.peers[p as usize];
        let alive = peer.alive;
        let Some(h) = peer.host.as_mut() else { return };
        if h.roles_at != now || !alive {
            return;
        }
        h.roles_at = NEVER;
        self.evaluate_roles(p);
        let done = self.peers[p as usize].host.as_ref().is_none_or(|h| job_final(&h.coord, &self.job));
        if !done {
            self.schedule_roles(p, now + ROLES_EVERY_MS);
        }
    }

    /// `Node::evaluate_roles` for the one job: lead if first live in the list (taking the job
    /// over if the ones before are dead, replacing dead backups), otherwise stand by.
    pub(super) fn evaluate_roles(&mut self, p: u32) {
        let (now, job) = (self.now, self.job);
        let peer = &self.peers[p as usize];
        if now < peer.born + ROLES_GRACE_MS {
            self.schedule_roles(p, peer.born + ROLES_GRACE_MS);
            return;
        }
        let Some(h) = peer.host.as_ref() else { return };
        if job_final(&h.coord, &job) || h.adopting.is_some() {
            return;
        }
        let list = h.coordinators.clone();
        let standby = h.coord.is_standby(&job);
        if !list.contains(&p) {
            if let Some(h) = self.peers[p as usize].host.as_mut() {
                h.coord.set_standby(&job, true);
            }
            return;
        }
        let first_live = list.iter().copied().find(|&c| self.sees_live(p, c));
        let active = first_live == Some(p);
        let some_dead = list.iter().any(|&c| !self.sees_live(p, c));
        if active && (standby || some_dead) {
            // This peer first, before it leases anything, so what it records from now on
            // streams to the live backups at once; then dead ones are replaced.
            let mut keep = vec![p];
            keep.extend(list.iter().copied().filter(|&c| c != p && self.sees_live(p, c)));
            self.set_coordinators(p, keep.clone());
            if let Some(h) = self.peers[p as usize].host.as_mut() {
                h.coord.set_standby(&job, false);
                h.top_up_at = now + TOP_UP_EVERY_MS;
            }
            if standby {
                self.m.takeovers += 1;
                self.active = Some(p);
            }
            let candidates: Vec<u32> = self.live_set(p).into_iter().filter(|i| !keep.contains(i)).collect();
            self.add_coordinators(p, keep, &candidates);
            self.wake(p);
        } else if !active && !standby {
            if let Some(h) = self.peers[p as usize].host.as_mut() {
                h.coord.set_standby(&job, true);
            }
        } else if active && list.len() < DEFAULT_COORDINATORS && now >= h.top_up_at {
            if let Some(h) = self.peers[p as usize].host.as_mut() {
                h.top_up_at = now + TOP_UP_EVERY_MS;
            }
            let candidates: Vec<u32> = self.live_set(p).into_iter().filter(|i| !list.contains(i)).collect();
            if !candidates.is_empty() {
                self.add_coordinators(p, list, &candidates);
            }
        }
    }

    /// A job ad from another peer reached coordinator `p` (`node/mesh.rs:follow_job_ad`): take
    /// its list; a leader the ad no longer puts first steps down (see the module docs).
    pub(super) fn follow_ad(&mut self, p: u32, list: Vec<u32>) {
        let job = self.job;
        let Some(h) = self.peers[p as usize].host.as_mut() else { return };
        if h.coordinators == list {
            return;
        }
        let leads = h.coordinators.first() == Some(&p) && !h.coord.is_standby(&job);
        if leads && list.first() != Some(&p) {
            h.coord.set_standby(&job, true);
            h.adopting = None;
        }
        self.set_coordinators(p, list);
    }

    /// Makes `r` a member of every cell (see the module docs of `sim`): one fresh membership per
    /// cell it was not in, joining through three live members of that cell as a newcomer would.
    pub(super) fn make_bridge(&mut self, r: u32) {
        if self.peers[r as usize].bridge {
            return;
        }
        self.peers[r as usize].bridge = true;
        self.bridges.push(r);
        let now = self.now;
        for c in 0..self.cells.len() as u32 {
            if self.peers[r as usize].view_of(c).is_some() {
                continue;
            }
            let bootstrap = self.pick_bootstrap(c);
            let view = self.view(r, c, now, bootstrap);
            self.peers[r as usize].views.push(view);
            let v = self.peers[r as usize].views.len() - 1;
            self.greet(r, v);
        }
        self.publish_advert(r, true);
        self.schedule_house(r);
    }

    /// Up to `bootstrap_peers` distinct live members of cell `c`, at random.
    pub(super) fn pick_bootstrap(&mut self, c: u32) -> Vec<u32> {
        let members = &self.cells[c as usize].members;
        let want = (self.cfg.bootstrap_peers as usize).min(members.len());
        let mut bootstrap = Vec::with_capacity(want);
        while bootstrap.len() < want {
            let b = members[self.rng.below(members.len() as u64) as usize];
            if !bootstrap.contains(&b) {
                bootstrap.push(b);
            }
        }
        bootstrap
    }

    /// The first lease a coordinator gave since the one leading before it crashed: the
    /// takeover is over.
    pub(super) fn leased_by(&mut self, c: u32) {
        if self.active != Some(c) {
            return;
        }
        if let Some(since) = self.m.leaderless_since.take() {
            self.m.takeover_ms = self.m.takeover_ms.max(self.now - since);
        }
    }
}

/// Whether the job is final in this coordinator.
pub(super) fn job_final(coord: &Coordinator, job: &JobId) -> bool {
    coord.job(job).is_none_or(|v| v.state.is_final())
}
