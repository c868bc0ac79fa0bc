//! Churn: while the job runs, peers crash at random (a Poisson process of `churn × peers`
//! crashes per virtual minute) and as many fresh peers join, each into the cell of the peer it
//! replaces, greeting three live peers of that cell. A crash loses everything the peer held and
//! tells nobody: SWIM has to notice. The job's coordinators (the origin, its backups and their
//! replacements) are spared unless `churn_coordinators`; `crash_origin_at` crashes the origin
//! once, at a set time. When the one leading crashes, a backup has to take the job over
//! ([`crate::peer::host`]).

use crate::peer::roles::ROLES_EVERY_MS;

use super::engine::Sim;
use super::keys;
use super::net::CallKind;
use crate::peer::host::Hosts;
use crate::PeerId;
use super::peer::VirtualPeer;
use super::queue::Event;
use super::workload::Behaviour;

impl Sim {
    /// Schedules the next crash, if churn is on and the job still runs.
    pub(super) fn schedule_churn(&mut self) {
        if self.cfg.churn <= 0.0 || self.m.done_at.is_some() {
            return;
        }
        let per_minute = self.cfg.churn * f64::from(self.cfg.peers);
        let wait = self.rng.exponential(60_000.0 / per_minute).max(1.0);
        self.queue.push(self.now + wait as u64, Event::Churn);
    }

    pub(super) fn on_churn(&mut self) {
        if self.m.done_at.is_some() {
            return;
        }
        if self.live_workers.len() > 1
            && let Some(victim) = self.pick_victim()
        {
            let cell = self.peers[victim as usize].cell;
            self.crash(victim);
            self.join(cell);
        }
        self.schedule_churn();
    }

    /// A live peer to crash, at random: any worker, and the origin too with
    /// `churn_coordinators`; otherwise a coordinator drawn is drawn again (so runs without
    /// coordinators hit draw exactly as before coordinators were spared).
    fn pick_victim(&mut self) -> Option<u32> {
        let workers = self.live_workers.len() as u64;
        let origin = self.origin;
        let with_origin = self.cfg.churn_coordinators && self.peers[origin as usize].alive;
        for _ in 0..64 {
            let i = self.rng.below(workers + u64::from(with_origin));
            let victim = if i == workers { origin } else { self.live_workers[i as usize] };
            if self.cfg.churn_coordinators || self.peers[victim as usize].hosts.is_none() {
                return Some(victim);
            }
        }
        None
    }

    /// `--crash-origin-at`: the origin crashes, if the job still runs. Nobody joins for it.
    pub(super) fn on_crash_origin(&mut self) {
        if self.m.done_at.is_none() && self.peers[self.origin as usize].alive {
            self.crash(self.origin);
        }
    }

    fn crash(&mut self, p: u32) {
        let now = self.now;
        if self.active == Some(p) && self.m.leaderless_since.is_none() {
            self.m.leaderless_since = Some(now);
        }
        // Its held report answers never come: the workers' calls fail.
        let held: Vec<PeerId> = self.peers[p as usize].hosts.as_ref().map(|h| h.held_workers().collect()).unwrap_or_default();
        for worker in held {
            self.queue.push(now + self.cfg.rpc_fail_ms, Event::RpcFailed { peer: keys::index_of(&worker), kind: Box::new(CallKind::Report(p)) });
        }
        let peer = &mut self.peers[p as usize];
        peer.crash(now);
        if let Some(pos) = peer.live_pos.take() {
            self.live_workers.swap_remove(pos as usize);
            if let Some(&moved) = self.live_workers.get(pos as usize) {
                self.peers[moved as usize].live_pos = Some(pos);
            }
        }
        let cell = self.peers[p as usize].cell as usize;
        self.cells[cell].members.retain(|&m| m != p);
        self.m.crashes += 1;
    }

    fn join(&mut self, cell: u32) {
        let p = self.peers.len() as u32;
        let lies = self.rng.chance(self.cfg.liars);
        let behaviour = match (lies, self.cfg.collude) {
            (false, _) => Behaviour::Honest,
            (true, false) => Behaviour::Liar,
            (true, true) => Behaviour::Colluder,
        };
        // Three live peers of the cell, distinct, as its `--bootstrap` list.
        let bootstrap = self.pick_bootstrap(cell);
        let view = self.view(p, cell, self.now, &bootstrap);
        let mut peer = VirtualPeer::new(keys::peer_id(self.cfg.seed, p), cell, self.now, behaviour, vec![view], false, self.cfg.slots);
        peer.live_pos = Some(self.live_workers.len() as u32);
        self.live_workers.push(p);
        self.peers.push(peer);
        self.cells[cell as usize].members.push(p);
        self.m.joins += 1;
        self.boot(p);
    }

    /// `--restart-origin-at`: the crashed origin starts again on what it recorded, as a real
    /// peer does on its data directory: a new run of the same peer (a larger membership epoch)
    /// in every cell, and its job back from its list and every attestation it had recorded, in
    /// standby (another coordinator may lead meanwhile). Its roles decide the rest: first in its
    /// own list, it leads again, and the one that took over hands the job back (the origin
    /// outranks every other coordinator, [`crate::peer::heal::outranks`]).
    pub(super) fn on_restart_origin(&mut self) {
        let (p, now, job) = (self.origin, self.now, self.job);
        if self.peers[p as usize].alive {
            return;
        }
        let Some((list, log)) = self.peers[p as usize].stored.take() else { return };
        let views = (0..self.cells.len() as u32)
            .map(|c| {
                let bootstrap = self.pick_bootstrap(c);
                self.view(p, c, now, &bootstrap)
            })
            .collect();
        let mut coord = self.new_coordinator(p);
        if coord.submit(job, self.spec.clone()).is_err() {
            return;
        }
        let mut hosts = Hosts::new(self.peers[p as usize].id, coord, self.verifier.clone());
        hosts.restore(job, list, log, now);
        let peer = &mut self.peers[p as usize];
        peer.restart(now, views);
        peer.hosts = Some(Box::new(hosts));
        self.m.restarts += 1;
        self.boot(p);
        self.with_hosts(p, |h, _| h.look_at_roles(&job, now + ROLES_EVERY_MS));
        self.wake(p);
    }
}
