//! A virtual peer's worker side as the network and the sandbox see it: its real
//! [`Work`] driven. Its lease requests, report batches and module
//! fetches go out as calls (with their byte sizes) and their answers or failures come back to
//! it; a replica it asks to run "runs" for a random time and the workload attests it; the
//! outcome of a replica of the peer's own job goes to the peer's
//! [`Hosts`](crate::peer::host::Hosts).

use crate::peer::host::{OwnHost, ReportItem};
use crate::peer::work::{Notice, Transmit, Work};
use crate::{Detail, Millis, TaskId};

use super::engine::Sim;
use super::net::Request;
use super::peer::NEVER;
use super::queue::Event;
use super::workload::{self, Behaviour};
use super::keys;
use crate::peer::wire;

impl Sim {
    /// Wakes the peer's slot pass: it runs once, now.
    pub(super) fn wake(&mut self, p: u32) {
        self.with_work(p, |w, now| w.handle_wake(now));
    }

    /// Runs `f` on `p`'s work, then carries out what it emitted.
    pub(super) fn with_work<R>(&mut self, p: u32, f: impl FnOnce(&mut Work, Millis) -> R) -> R {
        let now = self.now;
        let r = f(&mut self.peers[p as usize].work, now);
        self.drain_work(p);
        r
    }

    /// Carries out everything `p`'s work emitted, and arms its timer.
    pub(super) fn drain_work(&mut self, p: u32) {
        while let Some(t) = self.peers[p as usize].work.poll_transmit() {
            self.work_transmit(p, t);
        }
        while let Some(n) = self.peers[p as usize].work.poll_notice() {
            self.work_notice(p, n);
        }
        let peer = &mut self.peers[p as usize];
        if let Some(at) = peer.work.poll_timeout().filter(|_| peer.alive) {
            self.queue.arm(&mut peer.work_at, at.max(self.now), Event::Work { peer: p });
        }
    }

    /// `p`'s work timer ran out: the slot pass (leasing from its own host first) and the
    /// report batches due.
    pub(super) fn on_work_timer(&mut self, p: u32) {
        let now = self.now;
        let peer = &mut self.peers[p as usize];
        if !peer.alive || peer.work_at != now {
            return;
        }
        peer.work_at = NEVER;
        let mut hosts = peer.hosts.take();
        let mut own = OwnHost::new(hosts.as_deref_mut());
        peer.work.handle_timeout(now, &mut own);
        let leased = own.leased();
        peer.hosts = hosts;
        self.drain_host(p);
        if leased {
            self.leased_by(p);
        }
        self.drain_work(p);
    }

    fn work_transmit(&mut self, p: u32, t: Transmit) {
        match t {
            Transmit::Lease { to, job, max } => {
                let size = wire::lease_request(max, self.unix());
                self.call(p, keys::index_of(&to), Request::Lease { job, max, asked_at: self.now }, size);
            }
            Transmit::Report { to, items } => {
                let size = wire::report_request(&items, self.unix());
                self.call(p, keys::index_of(&to), Request::Report { batch: items }, size);
            }
            Transmit::Fetch { from, module } => self.call(p, keys::index_of(&from), Request::Blob { module }, wire::blob_request()),
        }
    }

    fn work_notice(&mut self, p: u32, n: Notice) {
        match n {
            Notice::Run(r) => {
                let ran = self.rng.range(self.cfg.run_ms.0, self.cfg.run_ms.1);
                self.queue.push(self.now + ran, Event::RunDone { peer: p, run: Box::new((r.task, ran as u32)) });
            }
            Notice::Own(item) => {
                let now = self.now;
                self.with_hosts(p, |h, _| h.handle_own(item, now));
            }
            Notice::Held => self.schedule_house(p),
            Notice::Stale => {}
            Notice::ReportDropped => self.m.reports_dropped += 1,
        }
    }

    /// A replica finished its run: the workload attests it (a sleeper liar behaves until it has
    /// run its quota, then lies).
    pub(super) fn on_run_done(&mut self, p: u32, ran_ms: u64, task: TaskId) {
        let peer = &mut self.peers[p as usize];
        if !peer.alive {
            return;
        }
        let behaviour = if peer.runs < self.cfg.liars_honest_for { Behaviour::Honest } else { peer.behaviour };
        peer.runs = peer.runs.saturating_add(1);
        self.m.replicas_run += 1;
        let (att, out) = workload::attest(behaviour, peer.id, task, self.cfg.output_bytes);
        self.with_work(p, |w, now| w.handle_ran(task, ran_ms * 1_000, ReportItem::Attest(att, out, Detail::default()), now));
    }
}
