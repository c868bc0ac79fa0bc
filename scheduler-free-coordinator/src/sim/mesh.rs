//! Driving membership: deliver gossip to `Membership::handle_data` with the authenticated
//! sender, fire its timers, send what it queues, and react to its events (peers up and down
//! reach the coordinator and its roles; job ads wake the slots, and a coordinator settles a
//! newer or rival ad by [`crate::peer::heal`]). What a peer publishes, and when (its advert,
//! the job's ads, greetings to its cell's bootstrap peers), is
//! [`MeshState`](crate::peer::mesh::MeshState)'s, one per view; the membership settings are
//! [`crate::peer::mesh::membership_config`]'s.

use crate::membership::MeshEvent;
use crate::peer::host::Members;
use crate::peer::members::MeshMembers;
use crate::peer::mesh;
use crate::records::{JobAd, Record};
use crate::PeerId;

use super::engine::{JOB_NONCE, Sim, job_digest};
use super::keys;
use super::peer::{NEVER, View};
use super::queue::Event;

impl Sim {
    /// After any call into a membership: send what it queued, handle its events, schedule its
    /// next timer.
    pub(super) fn after_mesh(&mut self, p: u32, v: usize) {
        let peer = &mut self.peers[p as usize];
        let Some(view) = peer.views.get_mut(v) else { return };
        // Reused buffers (a nested call, from an event handled below, just allocates its own).
        let (mut sends, mut events) = std::mem::take(&mut self.scratch);
        let m = &mut view.mesh.membership;
        sends.extend(std::iter::from_fn(|| m.poll_send()));
        events.extend(std::iter::from_fn(|| m.poll_event()));
        let cell = view.cell;
        if let Some(at) = view.mesh.membership.next_deadline() {
            self.queue.arm(&mut view.tick_at, at, Event::MeshTick { peer: p, view: v as u16 });
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
        view.mesh.membership.tick(now);
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
            MeshEvent::Rival(ad) => {
                self.with_hosts(p, |h, _| h.handle_rival(&ad));
            }
            MeshEvent::Record(Record::Advert(_)) | MeshEvent::Joined | MeshEvent::Idle => {}
            MeshEvent::Invalid { sender } => {
                if let (Some(s), Some(h)) = (sender, self.peers[p as usize].hosts.as_mut()) {
                    h.penalize(s);
                }
            }
        }
    }

    /// Membership changed: the coordinator learns the live count and hands a dead peer's leases
    /// back; roles are looked at once a peer is declared dead; the slots look again.
    fn peers_changed(&mut self, p: u32, who: PeerId, up: bool) {
        self.with_work(p, |w, now| w.handle_peer(who, up, now));
        let peer = &self.peers[p as usize];
        let live = MeshMembers::new(peer.id, &peer.views).live_peers();
        if peer.hosts.is_some() {
            let (now, down) = (self.now, (!up).then_some(who));
            self.with_hosts(p, |h, _| h.handle_members(live, down, now));
        }
    }

    /// A job ad arrived: keep the newest, learn whether its coordinators are alive here, and let
    /// a coordinator of the job settle a newer one from another announcer.
    fn take_ad(&mut self, p: u32, ad: JobAd) {
        let me = self.peers[p as usize].id;
        if ad.job == self.job {
            self.peers[p as usize].has_ad = true;
        }
        let follows = ad.job == self.job && ad.announcer != me && self.peers[p as usize].holds(&ad.job);
        let followed = follows.then(|| ad.clone());
        let (now, peer) = (self.now, &mut self.peers[p as usize]);
        let seen = MeshMembers::new(peer.id, &peer.views);
        let newer = peer.work.handle_ad(ad, |c| seen.seen_live(c), now);
        self.drain_work(p);
        if let Some(ad) = followed.filter(|_| newer) {
            self.with_hosts(p, |h, _| h.handle_ad(&ad));
        }
    }

    /// Greets the view's bootstrap peers.
    pub(super) fn greet(&mut self, p: u32, v: usize) {
        let now = self.now;
        let Some(View { mesh, bootstrap, .. }) = self.peers[p as usize].views.get_mut(v) else { return };
        mesh.greet(bootstrap, &keys::addr(p), now);
        self.after_mesh(p, v);
    }

    /// Publishes the peer's advert in each view where it is due (never published there, or a
    /// refresh).
    pub(super) fn publish_advert(&mut self, p: u32) {
        let (now, unix, slots) = (self.now, self.unix(), self.cfg.slots);
        let peer = &self.peers[p as usize];
        if !peer.alive || !peer.advertises {
            return;
        }
        let free = peer.work.free_slots();
        let signer = keys::signer(peer.id);
        let memory = crate::PolicyCaps::default().limits.memory_bytes;
        let advert = mesh::advert(peer.id, keys::addr(p), slots, free, memory, true, Vec::new());
        for v in 0..peer.views.len() {
            let peer = &mut self.peers[p as usize];
            if !peer.views[v].mesh.advert_due(&advert, now) {
                continue;
            }
            peer.views[v].mesh.publish_advert(advert.clone(), unix, &signer, now);
            self.after_mesh(p, v);
        }
    }

    /// Coordinator `o` announces the job with its list of coordinators (again, with `done`
    /// once it ended) in every view.
    pub(super) fn publish_job(&mut self, o: u32, done: bool) {
        let (now, unix) = (self.now, self.unix());
        let announcer = self.peers[o as usize].id;
        let Some(list) = self.peers[o as usize].hosts.as_ref().and_then(|h| h.host(&self.job)).map(|h| h.coordinators().to_vec()) else { return };
        let ad = mesh::job_ad(self.job, &self.spec, announcer, list, done, job_digest(self.cfg.seed), JOB_NONCE.to_vec());
        let signer = keys::signer(announcer);
        for v in 0..self.peers[o as usize].views.len() {
            self.peers[o as usize].views[v].mesh.publish_job_ad(ad.clone(), unix, &signer, now);
            self.after_mesh(o, v);
        }
        // The peer's own copy, as every view numbered it.
        let seq = self.peers[o as usize].views.first().and_then(|v| v.mesh.job_seq(&self.job));
        if let Some(seq) = seq {
            self.take_ad(o, JobAd { seq, ..ad });
        }
    }

    /// The peer's mesh loop: adverts due, greetings due.
    pub(super) fn on_house(&mut self, p: u32) {
        let peer = &mut self.peers[p as usize];
        if !peer.alive || peer.house_at != self.now {
            return;
        }
        peer.house_at = NEVER;
        self.publish_advert(p);
        for v in 0..self.peers[p as usize].views.len() {
            if self.peers[p as usize].views[v].mesh.greet_due(self.now) {
                self.greet(p, v);
            }
        }
        self.schedule_house(p);
    }

    /// Schedules the mesh loop for the next thing it has to do.
    pub(super) fn schedule_house(&mut self, p: u32) {
        let peer = &mut self.peers[p as usize];
        if !peer.alive {
            return;
        }
        let due = |v: &View| v.mesh.greet_due_at().min(if peer.advertises { v.mesh.advert_due_at() } else { NEVER });
        let at = peer.views.iter().map(due).min().unwrap_or(NEVER);
        self.queue.arm(&mut peer.house_at, at, Event::House { peer: p });
    }
}

