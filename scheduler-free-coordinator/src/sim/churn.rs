//! Churn: while the job runs, peers crash at random (a Poisson process of `churn × peers`
//! crashes per virtual minute) and as many fresh peers join, each into the cell of the peer it
//! replaces, greeting three live peers of that cell. A crash loses everything the peer held and
//! tells nobody: SWIM has to notice. The origin never crashes, since a job with one coordinator
//! cannot survive that yet (the report says `origin_protected`).

use super::engine::Sim;
use super::keys;
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
        if self.live_workers.len() > 1 {
            let victim = self.live_workers[self.rng.below(self.live_workers.len() as u64) as usize];
            let cell = self.peers[victim as usize].cell;
            self.crash(victim);
            self.join(cell);
        }
        self.schedule_churn();
    }

    fn crash(&mut self, p: u32) {
        let now = self.now;
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
        let members = &self.cells[cell as usize].members;
        let want = (self.cfg.bootstrap_peers as usize).min(members.len());
        let mut bootstrap = Vec::with_capacity(want);
        while bootstrap.len() < want {
            let b = members[self.rng.below(members.len() as u64) as usize];
            if !bootstrap.contains(&b) {
                bootstrap.push(b);
            }
        }
        let view = self.view(p, cell, self.now, bootstrap);
        let mut peer = VirtualPeer::new(keys::peer_id(self.cfg.seed, p), cell, self.now, behaviour, vec![view], false);
        peer.live_pos = Some(self.live_workers.len() as u32);
        self.live_workers.push(p);
        self.peers.push(peer);
        self.cells[cell as usize].members.push(p);
        self.m.joins += 1;
        self.boot(p);
    }
}
