//! Driving membership, as `worker/src/node/mesh.rs` does in the real peer: deliver gossip to
//! `Membership::handle_data` with the authenticated sender, fire its timers, send what it
//! queues, publish adverts and job ads, greet bootstrap peers (again every 3 s while alone,
//! every 30 s otherwise), and react to its events (peers up and down reach the coordinator and
//! its roles, job ads wake the slots and give coordinators their list).

use crate::membership::{MemberState, MeshEvent};
use crate::records::{Advert, JobAd, Record};
use crate::{Millis, PeerId};

use super::engine::Sim;
use super::keys;
use super::peer::NEVER;
use super::queue::Event;

/// An advert is refreshed this often even when nothing changed.
const ADVERT_REFRESH_MS: Millis = 30_000;
/// Free-slot changes are advertised at most this often.
const ADVERT_MIN_GAP_MS: Millis = 1_000;
/// While alone, bootstrap peers are greeted again this often…
const REJOIN_MS: Millis = 3_000;
/// …and this often otherwise.
const REGREET_MS: Millis = 30_000;

impl Sim {
    /// After any call into a membership: send what it queued, handle its events, schedule its
    /// next timer.
    pub(super) fn after_mesh(&mut self, p: u32, v: usize) {
        let peer = &mut self.peers[p as usize];
        let Some(view) = peer.views.get_mut(v) else { return };
        // Reused buffers (a nested call, from an event handled below, just allocates its own).
        let (mut sends, mut events) = std::mem::take(&mut self.scratch);
        sends.extend(std::iter::from_fn(|| view.m.poll_send()));
        events.extend(std::iter::from_fn(|| view.m.poll_event()));
        let cell = view.cell;
        if let Some(at) = view.m.next_deadline() {
            let at = at.max(self.now);
            if at < view.tick_at {
                view.tick_at = at;
                self.queue.push(at, Event::MeshTick { peer: p, view: v as u16 });
            }
        }
        for (to, data) in sends.drain(..) {
            // A hello goes to an address whose peer is not known yet.
            let dest = if to.peer == PeerId([0; 32]) { keys::index_of_addr(&to.addr) } else { Some(keys::index_of(&to.peer)) };
            self.send_gossip(p, dest, cell, data);
        }
        for e in events.drain(..) {
            self.on_mesh_event(p, e);
        }
        self.scratch = (sends, events);
    }

    pub(super) fn on_mesh_tick(&mut self, p: u32, v: usize) {
        let now = self.now;
        let Some(view) = self.peers[p as usize].views.get_mut(v) else { return };
        if view.tick_at != now {
            return;
        }
        view.tick_at = NEVER;
        view.m.tick(now);
        self.after_mesh(p, v);
    }

    fn on_mesh_event(&mut self, p: u32, event: MeshEvent) {
        match event {
            MeshEvent::PeerUp(m) => self.peers_changed(p, m.peer, true),
            MeshEvent::PeerDown(m) => self.peers_changed(p, m.peer, false),
            MeshEvent::Record(Record::JobAd(ad)) => {
                self.take_ad(p, ad);
                self.wake(p);
            }
            // Rival ads arise only from a split, which the simulator does not make.
            MeshEvent::Record(Record::Advert(_)) | MeshEvent::Rival(_) | MeshEvent::Joined | MeshEvent::Idle => {}
            MeshEvent::Invalid { sender } => {
                self.m.invalid_records += 1;
                if let (Some(s), Some(h)) = (sender, self.peers[p as usize].host.as_mut()) {
                    h.coord.penalize(s);
                }
            }
        }
    }

    /// Membership changed (`node/mesh.rs:peers_changed`): the coordinator learns the live count
    /// and hands a dead peer's leases back; the slots look again.
    fn peers_changed(&mut self, p: u32, who: PeerId, up: bool) {
        let now = self.now;
        let peer = &mut self.peers[p as usize];
        if let Some(c) = peer.coordinators.iter_mut().find(|(id, _)| *id == who) {
            c.1 = up;
        }
        let live = 1 + peer.views.iter().map(|v| v.m.active()).sum::<usize>();
        if let Some(h) = peer.host.as_mut() {
            h.coord.set_live_peers(live);
            if !up {
                h.coord.peer_down(who, now);
            }
            self.drain_coordinator(p);
            if !up {
                // `node/mesh.rs`: a peer declared down has roles looked at at once.
                self.schedule_roles(p, now);
            }
        }
        self.wake(p);
    }

    /// A job ad arrived: keep the newest, and learn whether its coordinators are alive here.
    fn take_ad(&mut self, p: u32, ad: JobAd) {
        let me = self.peers[p as usize].id;
        if ad.job == self.job {
            self.peers[p as usize].has_ad = true;
        }
        for c in &ad.coordinators {
            let peer = &self.peers[p as usize];
            if *c == me || peer.coordinators.iter().any(|(id, _)| id == c) {
                continue;
            }
            let alive = peer.views.iter().any(|v| v.m.members().iter().any(|(m, s)| m.peer == *c && *s != MemberState::Dead));
            self.peers[p as usize].coordinators.push((*c, alive));
        }
        let newer = ad.job == self.job && ad.announcer != me && self.peers[p as usize].holds(&ad.job);
        let list: Vec<u32> = ad.coordinators.iter().map(keys::index_of).collect();
        let ads = &mut self.peers[p as usize].ads;
        let newer = newer && ads.iter().find(|a| a.job == ad.job).is_none_or(|known| known.seq < ad.seq);
        match ads.iter_mut().find(|a| a.job == ad.job) {
            Some(known) if known.seq < ad.seq => *known = ad,
            Some(_) => {}
            None => ads.push(ad),
        }
        if newer {
            self.follow_ad(p, list);
        }
    }

    /// Says hello to the view's bootstrap peers (`node/mesh.rs:greet_bootstrap`).
    pub(super) fn greet(&mut self, p: u32, v: usize) {
        let now = self.now;
        let Some(view) = self.peers[p as usize].views.get_mut(v) else { return };
        view.last_join = now;
        for &b in &view.bootstrap {
            if b != p {
                view.m.join(&keys::addr(b), now);
            }
        }
        self.after_mesh(p, v);
    }

    /// Publishes the peer's advert if its free slots changed (at most once a second) or it is
    /// due a refresh; `force` publishes now (`node/mesh.rs:publish_advert`).
    pub(super) fn publish_advert(&mut self, p: u32, force: bool) {
        let (now, unix, slots) = (self.now, self.unix(), self.cfg.slots);
        let peer = &mut self.peers[p as usize];
        if !peer.alive || !peer.advertises {
            return;
        }
        let free = peer.free_slots(slots);
        let changed = peer.advertised_free != Some(free) && now >= peer.advertised_at + ADVERT_MIN_GAP_MS;
        if !(force || changed || now >= peer.advertised_at + ADVERT_REFRESH_MS) {
            return;
        }
        peer.advert_seq = unix.max(peer.advert_seq + 1);
        let mut record = Record::Advert(Advert {
            peer: peer.id,
            seq: peer.advert_seq,
            addr: keys::addr(p),
            cpus_total: slots,
            cpus_free: free,
            memory_bytes: crate::PolicyCaps::default().limits.memory_bytes,
            version: env!("CARGO_PKG_VERSION").to_string(),
            reachable: true,
            signature: Vec::new(),
        });
        record.sign(&keys::signer(peer.id));
        peer.advertised_free = Some(free);
        peer.advertised_at = now;
        for v in 0..peer.views.len() {
            self.peers[p as usize].views[v].m.publish(record.clone(), now);
            self.after_mesh(p, v);
        }
    }

    /// Coordinator `o` announces the job with its list of coordinators (again, with `done`
    /// once it ended) in every view.
    pub(super) fn publish_job(&mut self, o: u32, done: bool) {
        let now = self.now;
        self.job_seq = self.unix().max(self.job_seq + 1);
        let announcer = self.peers[o as usize].id;
        let coordinators = match self.peers[o as usize].host.as_ref() {
            Some(h) => h.coordinators.iter().map(|&i| self.peers[i as usize].id).collect(),
            None => return,
        };
        let mut record = Record::JobAd(JobAd {
            job: self.job,
            origin: self.spec.origin,
            announcer,
            seq: self.job_seq,
            module: self.spec.module,
            task_count: self.spec.task_count,
            policy: self.spec.policy,
            coordinators,
            submitted_at_ms: self.spec.submitted_at_ms,
            done,
            signature: Vec::new(),
        });
        record.sign(&keys::signer(announcer));
        if let Record::JobAd(ad) = &record {
            self.take_ad(o, ad.clone());
        }
        for v in 0..self.peers[o as usize].views.len() {
            self.peers[o as usize].views[v].m.publish(record.clone(), now);
            self.after_mesh(o, v);
        }
    }

    /// The peer's mesh loop: advert changes and refreshes, bootstrap greetings.
    pub(super) fn on_house(&mut self, p: u32) {
        let peer = &mut self.peers[p as usize];
        if !peer.alive || peer.house_at != self.now {
            return;
        }
        peer.house_at = NEVER;
        self.publish_advert(p, false);
        for v in 0..self.peers[p as usize].views.len() {
            let view = &self.peers[p as usize].views[v];
            let gap = if view.m.active() == 0 { REJOIN_MS } else { REGREET_MS };
            if self.now >= view.last_join + gap {
                self.greet(p, v);
            }
        }
        self.schedule_house(p);
    }

    /// Schedules the mesh loop for the next thing it has to do.
    pub(super) fn schedule_house(&mut self, p: u32) {
        let slots = self.cfg.slots;
        let peer = &mut self.peers[p as usize];
        if !peer.alive {
            return;
        }
        let mut at = NEVER;
        if peer.advertises {
            at = peer.advertised_at + ADVERT_REFRESH_MS;
            if peer.advertised_free != Some(peer.free_slots(slots)) {
                at = at.min(peer.advertised_at + ADVERT_MIN_GAP_MS);
            }
        }
        for view in &peer.views {
            let gap = if view.m.active() == 0 { REJOIN_MS } else { REGREET_MS };
            at = at.min(view.last_join + gap);
        }
        let at = at.max(self.now);
        if at < peer.house_at {
            peer.house_at = at;
            self.queue.push(at, Event::House { peer: p });
        }
    }
}
