//! Driving the coordinator side: every peer that coordinates the job holds a real
//! [`Hosts`] (the origin and the peers it or a successor adopted), and
//! the simulator only carries what it emits: messages through the virtual network, notices into
//! the metrics and the mesh, its timer on the event queue. Every call is followed by
//! `Sim::drain_host`, as the host's contract asks.
//!
//! **Liveness is simplified**: a coordinator bridges every cell, so it has one view per cell,
//! and its host is told what they all show ([`MeshMembers`]): a peer is dead when any of them
//! holds it dead, live otherwise, also when none knows it.
//!
//! **The roles' grace is waited out in full** ([`MeshMembers::full_grace`]). A peer may look at roles
//! as soon as one member is active, but a simulated mesh forms at the same moment as its job,
//! when one active member says nothing about who else is alive; and a first look re-announces
//! the job, whose gossip, in the second when the whole mesh is joining, crowds out the join's
//! membership updates (at 10,000 peers membership then took 21 gossip rounds to converge
//! instead of 11).

use crate::peer::host::{Host, Hosts, Members, Notice, Transmit};
use crate::peer::members::MeshMembers;
use crate::{Coordinator, CoordinatorConfig, Event, Verdict};

use super::engine::Sim;
use super::keys;
use super::net::{CallKind, Reply, Request};
use super::peer::NEVER;
use super::{queue, workload};
use crate::peer::wire;

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

    /// The peer currently leading the job as the simulation knows it (for the report).
    pub(super) fn lead_host(&self) -> Option<(&Host, &Coordinator)> {
        let hosts = self.peers[self.active? as usize].hosts.as_deref()?;
        Some((hosts.host(&self.job)?, hosts.coordinator()))
    }

    /// Runs `f` on `p`'s host (if it holds one) with `p`'s view of the mesh, then carries out
    /// what the host emitted.
    pub(super) fn with_hosts<R>(&mut self, p: u32, f: impl FnOnce(&mut Hosts, &dyn Members) -> R) -> Option<R> {
        let mut hosts = self.peers[p as usize].hosts.take()?;
        let peer = &self.peers[p as usize];
        let r = f(&mut hosts, &MeshMembers::new(peer.id, &peer.views).full_grace());
        self.peers[p as usize].hosts = Some(hosts);
        self.drain_host(p);
        Some(r)
    }

    /// Carries out everything `p`'s host emitted, and arms its timer.
    pub(super) fn drain_host(&mut self, p: u32) {
        // A virtual peer's store is durable at once: what waits for a write goes out now.
        if let Some(hosts) = self.peers[p as usize].hosts.as_mut() {
            let mut last = None;
            while let Some((id, _)) = hosts.poll_persist() {
                last = Some(id);
            }
            if let Some(id) = last {
                hosts.handle_durable(id);
            }
        }
        while let Some(t) = self.peers[p as usize].hosts.as_mut().and_then(|h| h.poll_transmit()) {
            self.transmit(p, t);
        }
        while let Some((_, n)) = self.peers[p as usize].hosts.as_mut().and_then(|h| h.poll_notice()) {
            self.notice(p, n);
        }
        let now = self.now;
        let peer = &mut self.peers[p as usize];
        if let Some(at) = peer.hosts.as_ref().and_then(|h| h.poll_timeout()) {
            self.queue.arm(&mut peer.host_at, at.max(now), queue::Event::Host { peer: p });
        }
    }

    /// `p`'s host timer ran out.
    pub(super) fn on_host_timer(&mut self, p: u32) {
        let (now, peer) = (self.now, &mut self.peers[p as usize]);
        if !peer.alive || peer.host_at != now {
            return;
        }
        peer.host_at = NEVER;
        self.with_hosts(p, |h, m| h.handle_timeout(now, m));
    }

    fn transmit(&mut self, p: u32, t: Transmit) {
        match t {
            Transmit::ReportAnswer { to, accepted, rejected, .. } => {
                let to = keys::index_of(&to);
                self.answer(p, to, CallKind::Report(p), Some(Reply::Taken), wire::report_reply(accepted, rejected));
            }
            Transmit::Replicate { to, job, items } => {
                let size = wire::replicate_request(&items, self.cfg.output_bytes, self.unix());
                self.call(p, keys::index_of(&to), Request::Replicate { job, items }, size);
            }
            Transmit::Adopt { to, job, coordinators, log, kind, .. } => {
                let items = self.recorded(p, &log);
                let size = wire::adopt_request(&self.spec, self.cfg.input_bytes, coordinators.len(), &items, kind, self.unix());
                self.call(p, keys::index_of(&to), Request::Adopt { job, coordinators, log, kind }, size);
            }
        }
    }

    fn notice(&mut self, p: u32, n: Notice) {
        match n {
            Notice::Coordinator { event, leads, lone } => self.count_event(event, leads, lone),
            Notice::Announce { done } => self.publish_job(p, done),
            Notice::Wake => self.wake(p),
            Notice::TookOver => {
                self.m.takeovers += 1;
                self.active = Some(p);
                // Across a cut no leader crashed: the far side was leaderless from the cut.
                if self.partitioned() && self.m.leaderless_since.is_none() {
                    self.m.leaderless_since = self.cfg.partition_at_ms;
                }
            }
            Notice::HandedOver { to } => {
                if self.active == Some(p) {
                    self.active = Some(keys::index_of(&to));
                }
            }
            Notice::ReplicationDropped => self.m.replication_dropped += 1,
        }
    }

    /// Counts what `p`'s coordinator emitted: only a leading coordinator's verdicts count, each
    /// task's first one once (a backup's, replayed, are the same verdicts again).
    fn count_event(&mut self, event: Event, leads: bool, lone: bool) {
        match event {
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
                        self.peers.iter().enumerate().filter(|(i, q)| q.alive && !q.has_ad && *i != origin as usize).count() as u32;
                }
            }
            // A backup's copies of the leader's leases lapse too: counted once, by the leader.
            Event::LeaseExpired { .. } => self.m.lapses += u64::from(leads),
        }
    }

    /// At the end: the tasks the leader holds final that no leading coordinator decided while
    /// leading are counted from its table (a backup takes the reports of workers that hold the
    /// leader dead before it takes the job over, so it may decide a task while in standby).
    pub(super) fn count_leader_finals(&mut self) {
        let Some((_, coord)) = self.lead_host() else { return };
        let finals: Vec<(crate::TaskId, Verdict, bool)> = (0..self.spec.task_count)
            .filter(|&i| self.decided.get(i as usize).is_some_and(Option::is_none))
            .filter_map(|index| {
                let task = crate::TaskId { job: self.job, index };
                coord.task(&task).filter(|t| t.verdict.is_final()).map(|t| (task, t.verdict, t.lone))
            })
            .collect();
        for (task, verdict, lone) in finals {
            self.decided[task.index as usize] = Some(verdict.clone());
            self.count_verdict(task, verdict, lone);
        }
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
