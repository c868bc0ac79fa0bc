//! The job's coordinators: the origin, then the live peers that rank highest by
//! [`rendezvous`], each holding a real [`Coordinator`] (in standby unless it leads), and
//! adoptions (`MeshService.Adopt`): the whole job with the sender's list and every attestation
//! it recorded, sent to a peer joining the list, to a backup being caught up, or to the winner
//! of two leaders. Replication streams and catch-ups are in [`super::replicate`], roles and
//! takeovers in [`super::roles`], two leaders in [`super::heal`].
//!
//! Simplifications: the module fetch of an adoption is counted as bytes with the `Adopt` call
//! rather than simulated as its own call; reputation is not replicated, as in the real peer.

use std::collections::BTreeSet;

use crate::peer::adoption::{AdoptRound, Settled};
use crate::peer::roles::ROLES_EVERY_MS;
use crate::peer::takeover;
use crate::{Coordinator, CoordinatorConfig, JobId, PeerId};

use super::engine::Sim;
use super::keys;
use super::net::{CallKind, Reply, Request};
use super::peer::{AdoptKind, Host, Logged};
use super::wire;

impl Sim {
    /// A fresh coordinator for peer `p`, with its own secret (spot checks are keyed by it).
    pub(super) fn new_coordinator(&self, p: u32) -> Coordinator {
        let mut key = self.cfg.seed.to_le_bytes().to_vec();
        // The origin's is the one the simulator always gave it, so its spot checks stay put.
        if p != self.origin {
            key.extend_from_slice(&p.to_le_bytes());
        }
        let secret = *blake3::keyed_hash(&[9; 32], &key).as_bytes();
        Coordinator::new(CoordinatorConfig { secret, diversity: self.cfg.diversity, ..CoordinatorConfig::default() })
    }

    pub(super) fn ids(&self, list: &[u32]) -> Vec<PeerId> {
        list.iter().map(|&i| self.peers[i as usize].id).collect()
    }

    /// Whether `p` leads the job: first in its own list, and not in standby.
    pub(super) fn leads(&self, p: u32) -> bool {
        self.peers[p as usize].host.as_ref().is_some_and(|h| h.coordinators.first() == Some(&p) && !h.coord.is_standby(&self.job))
    }

    /// The peer currently leading the job as the simulation knows it (for the report).
    pub(super) fn lead_host(&self) -> Option<&Host> {
        self.active.and_then(|a| self.peers[a as usize].host.as_deref())
    }

    /// Brings `p`'s list up to [`DEFAULT_COORDINATORS`](crate::rendezvous::DEFAULT_COORDINATORS)
    /// by an [`AdoptRound`]: `keep` (`p` first), then `Adopt` to the highest-ranked of
    /// `candidates`. The list settles, and the ad goes out, once every new one answered.
    pub(super) fn add_coordinators(&mut self, p: u32, keep: Vec<u32>, candidates: &[u32]) {
        let round = AdoptRound::new(self.job, self.ids(&keep), &self.ids(candidates));
        let asks: Vec<(u32, Vec<u32>)> =
            round.asked().iter().map(|n| (keys::index_of(n), round.list_for(*n).iter().map(keys::index_of).collect())).collect();
        let now = round.settle_now();
        let Some(h) = self.peers[p as usize].host.as_mut() else { return };
        h.adopting = Some(round);
        if let Some(settled) = now {
            self.settle_coordinators(p, settled);
            return;
        }
        for (n, list) in asks {
            self.send_adopt(p, n, list, AdoptKind::Join);
        }
    }

    /// Sends `to` the whole job with `list` as its coordinators.
    pub(super) fn send_adopt(&mut self, p: u32, to: u32, list: Vec<u32>, kind: AdoptKind) {
        let unix = self.unix();
        let Some(h) = self.peers[p as usize].host.as_ref() else { return };
        let log = h.log.clone();
        let items = self.wire_items(h, &log);
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
        ) + if kind == AdoptKind::Sync { 2 } else { 0 };
        self.call(p, to, Request::Adopt { job: self.job, coordinators: list, log, kind }, size);
    }

    /// The wire sizes of `log`'s `RecordedAttestation`s at host `h`: an attestation goes with its
    /// output while its task is not final (the peer's outputs in hand), and after if it carries
    /// the agreed result.
    fn wire_items(&self, h: &Host, log: &[Logged]) -> Vec<u64> {
        log.iter()
            .map(|l| {
                let carries = h.coord.task(&l.att.task).is_some_and(|t| !t.verdict.is_final() || t.verdict.agreed() == Some(&l.att.result));
                let out = if carries { self.cfg.output_bytes } else { 0 };
                wire::recorded_attestation(l.att.task.index, l.att.fuel_used, out, l.lone)
            })
            .collect()
    }

    /// `MeshService.Adopt` at `r`, from `from`: a peer that does not hold the job takes it in
    /// standby (and becomes a bridge of every cell); either way it records every attestation
    /// sent, and one that held it already settles what the adoption means ([`super::heal`]).
    pub(super) fn serve_adopt(&mut self, r: u32, from: u32, job: JobId, list: Vec<u32>, log: Vec<Logged>, kind: AdoptKind) {
        let held = self.peers[r as usize].holds(&job);
        if !held {
            let mut coord = self.new_coordinator(r);
            if coord.submit(job, self.spec.clone()).is_err() {
                self.refuse(r, from, CallKind::Adopt(r, kind), 0);
                return;
            }
            coord.set_standby(&job, true);
            let named: BTreeSet<PeerId> = self.ids(&list).into_iter().collect();
            let born = self.peers[r as usize].born;
            self.peers[r as usize].host = Some(Box::new(Host::new(coord, job, list.clone(), named, born)));
            // It fetches the module from the sender.
            self.peers[r as usize].bytes_sent += wire::REQUEST_OVERHEAD + wire::blob_request();
            self.peers[from as usize].bytes_sent += wire::REPLY_OVERHEAD + wire::blob_reply(self.cfg.module_bytes);
            self.m.rpcs += 2;
            self.make_bridge(r);
            self.schedule_roles(r, self.now + ROLES_EVERY_MS);
        }
        // A new leader's sync: what is recorded here that it lacks, in this peer's order.
        let missing: Vec<Logged> = match (held, kind, self.peers[r as usize].host.as_ref()) {
            (true, AdoptKind::Sync, Some(h)) => {
                let carried = takeover::Carried::of(log.iter().map(|l| (l.att.task.index, l.att.peer)));
                takeover::missing(h.log.iter().map(|l| &*l.att), &carried).into_iter().map(|i| h.log[i].clone()).collect()
            }
            _ => Vec::new(),
        };
        self.record_replicated(r, log);
        if held {
            self.adopted_from(r, from, &list);
        }
        let size = self.peers[r as usize].host.as_deref().map_or(0, |h| wire::adopt_response(&self.wire_items(h, &missing)));
        self.reply(r, from, Reply::Adopt { kind, missing }, size, CallKind::Adopt(r, kind));
    }

    /// The answer (or failure: `None`) of an `Adopt` sent by `p` to `to`; a sync's answer
    /// carries what `to` recorded that `p` lacked.
    pub(super) fn on_adopted(&mut self, p: u32, to: u32, answer: Option<Vec<Logged>>, kind: AdoptKind) {
        let ok = answer.is_some();
        match kind {
            AdoptKind::CatchUp => return,
            AdoptKind::HandOver => return self.on_handed_over(p, ok),
            AdoptKind::Sync => return self.on_synced(p, to, answer),
            AdoptKind::Join => {}
        }
        let answered = self.peers[to as usize].id;
        let Some(round) = self.peers[p as usize].host.as_mut().and_then(|h| h.adopting.as_mut()) else { return };
        if let Some(settled) = round.handle_answer(answered, ok) {
            self.settle_coordinators(p, settled);
        }
    }

    /// The round settled: the list goes out with the job's ad, and the new coordinators get a
    /// second `Adopt` with what was recorded before they were in the list.
    fn settle_coordinators(&mut self, p: u32, settled: Settled) {
        let Some(h) = self.peers[p as usize].host.as_mut() else { return };
        h.adopting = None;
        let list: Vec<u32> = settled.coordinators.iter().map(keys::index_of).collect();
        self.set_coordinators(p, list.clone());
        let done = self.peers[p as usize].host.as_ref().is_some_and(|h| job_final(&h.coord, &self.job));
        self.publish_job(p, done);
        for n in &settled.catch_up {
            self.send_adopt(p, keys::index_of(n), list.clone(), AdoptKind::CatchUp);
        }
        self.wake(p);
    }

    /// Sets `p`'s list (each one named is remembered), and its replication streams to match.
    pub(super) fn set_coordinators(&mut self, p: u32, list: Vec<u32>) {
        let ids = self.ids(&list);
        let Some(h) = self.peers[p as usize].host.as_mut() else { return };
        let backups: Vec<u32> = if list.first() == Some(&p) { list[1..].to_vec() } else { Vec::new() };
        h.replicators.retain(|to| backups.contains(to));
        h.named.extend(ids);
        h.coordinators = list;
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
            let view = self.view(r, c, now, &bootstrap);
            self.peers[r as usize].views.push(view);
            let v = self.peers[r as usize].views.len() - 1;
            self.greet(r, v);
        }
        self.publish_advert(r);
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
