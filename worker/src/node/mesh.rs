//! The peer's side of the mesh: drives [`Membership`] (SWIM plus signed records) with real time,
//! sends what it wants sent over `MeshService.Gossip`, publishes this peer's advert and the ads
//! of the jobs it originates, and reacts to what membership reports (peers up and down, forged
//! records).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use spare_protocol::membership::{MemberState, MeshEvent, Membership};
pub use spare_protocol::peer::mesh::MeshState;
use spare_protocol::peer::mesh::{GOSSIP_SEND_TIMEOUT_MS, MAX_GOSSIP_SENDS};
use spare_protocol::reachability::Route;
use spare_protocol::records::{Advert, JobAd, Record, RecordKey, Signer, Verifier};
use spare_protocol::{JobId, PeerId};
use spare_proto as pb;
use tokio::sync::Semaphore;

use super::{Node, unix_ms};
use crate::wire::signing;

/// Most a shutdown waits for its leave notices to be delivered (on a live link they take
/// milliseconds; a peer that does not answer learns it from the others).
const LEAVE_WAIT: Duration = Duration::from_secs(1);

/// Longest wait between two looks at membership's timers.
const MAX_NAP: Duration = Duration::from_millis(100);

/// The signer and verifier membership uses: this peer's ed25519 key, and ed25519 checks.
pub fn crypto(identity: &crate::identity::Identity) -> (Signer, Verifier) {
    let id = identity.clone();
    let signer: Signer = Arc::new(move |m: &[u8]| id.sign(m).to_vec());
    let verifier: Verifier = Arc::new(|p: &PeerId, m: &[u8], s: &[u8]| crate::identity::verify(p, m, s));
    (signer, verifier)
}

/// A peer as `spare peers` shows it.
#[derive(Clone, Debug)]
pub struct PeerView {
    /// The peer.
    pub peer: PeerId,
    /// Its address.
    pub addr: String,
    /// Alive, suspect or dead.
    pub state: MemberState,
    /// Its newest advert, if one arrived.
    pub advert: Option<Advert>,
}

impl Node {
    /// Membership, locked. Never held across an await.
    pub fn mesh(&self) -> std::sync::MutexGuard<'_, MeshState> {
        self.0.mesh.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn signer(&self) -> Signer {
        crypto(&self.0.identity).0
    }

    /// Takes a gossip message another peer sent (and signed: `sender`).
    pub fn mesh_receive(&self, data: &[u8], sender: PeerId) -> Result<(), spare_protocol::membership::MembershipError> {
        let now = self.now();
        self.0.metrics.gossip_in_bytes.inc_by(data.len() as u64);
        let r = {
            let mut mesh = self.mesh();
            // Epochs are Unix times: one far ahead of this clock is a lie.
            mesh.membership.set_unix_time(unix_ms());
            mesh.membership.handle_data(data, Some(sender), now)
        };
        self.0.mesh_wake.notify_one();
        r
    }

    /// Publishes this peer's advert when the mesh rules say it is due; `force` publishes now.
    pub(crate) fn publish_advert(&self, force: bool) {
        let now = self.now();
        let total = self.sandbox().slots() as u32;
        let free = total.saturating_sub(self.running().min(total as usize) as u32);
        let (reachable, relays) = self.advert_reach();
        let memory = self.config().caps.limits.memory_bytes;
        let advert = spare_protocol::peer::mesh::advert(self.peer_id(), self.advertised_addr(), total, free, memory, reachable, relays);
        let mut mesh = self.mesh();
        if !(force || mesh.advert_due(&advert, now)) {
            return;
        }
        mesh.publish_advert(advert, unix_ms(), &self.signer(), now);
        drop(mesh);
        self.0.mesh_wake.notify_one();
    }

    /// Announces the job's ad with this list of coordinators, signed by this peer (also when it
    /// hands the job to another: the peers that take this peer's ads then take the other's).
    pub(crate) fn publish_job_ad(&self, job: JobId, coordinators: Vec<PeerId>, done: bool) {
        let Some((spec, content_digest, nonce)) =
            self.core().jobs.get(&job).map(|m| (m.spec.clone(), m.content_digest, m.nonce.clone()))
        else {
            return;
        };
        let (digest, me) = (content_digest.unwrap_or_default(), self.peer_id());
        let ad = spare_protocol::peer::mesh::job_ad(job, &spec, me, coordinators, done, digest, nonce);
        let now = self.now();
        self.mesh().publish_job_ad(ad, unix_ms(), &self.signer(), now);
        self.0.mesh_wake.notify_one();
    }

    /// JobService of the peer at `addr`.
    pub fn client_jobs(&self, addr: &str) -> Option<pb::job_service_client::JobServiceClient<tonic::transport::Channel>> {
        self.0.clients.jobs(addr)
    }

    /// The address other peers should dial.
    pub fn advertised_addr(&self) -> String {
        self.0.advertised.clone()
    }

    /// The ad of a job, if one was heard.
    pub fn job_ad(&self, job: &JobId) -> Option<JobAd> {
        match self.mesh().membership.record(&RecordKey::JobAd(*job)) {
            Some(Record::JobAd(ad)) => Some(ad),
            _ => None,
        }
    }

    /// The address of a live peer, from membership or its advert.
    pub fn addr_of(&self, peer: &PeerId) -> Option<String> {
        if *peer == self.peer_id() {
            return Some(self.advertised_addr());
        }
        let mesh = self.mesh();
        let alive = mesh.membership.state_of(peer).filter(|(_, s)| *s != MemberState::Dead);
        // The signed advert's address first: membership's is whatever a packet claimed.
        let addr = match (alive, mesh.membership.record(&RecordKey::Advert(*peer))) {
            (Some(_), Some(Record::Advert(a))) => Some(a.addr),
            (Some((m, _)), _) => Some(m.addr.into_string()),
            (None, _) => None,
        }?;
        drop(mesh);
        // A channel there must meet this peer.
        self.0.clients.expect(&addr, *peer);
        Some(addr)
    }

    /// Every peer known, this one first.
    pub fn peers(&self) -> Vec<PeerView> {
        let mesh = self.mesh();
        let adverts: HashMap<PeerId, Advert> =
            mesh.membership.adverts().into_iter().map(|a| (a.peer, a)).collect();
        let me = self.peer_id();
        let mut out = vec![PeerView {
            peer: me,
            addr: self.advertised_addr(),
            state: MemberState::Alive,
            advert: adverts.get(&me).cloned(),
        }];
        let mut others: Vec<PeerView> = mesh
            .membership
            .members()
            .into_iter()
            .map(|(m, state)| PeerView { advert: adverts.get(&m.peer).cloned(), peer: m.peer, addr: m.addr.into_string(), state })
            .collect();
        others.sort_by(|a, b| a.addr.cmp(&b.addr));
        out.extend(others);
        out
    }

    /// Alive peers, this one included.
    pub fn live_peers(&self) -> usize {
        1 + self.mesh().membership.active()
    }

    /// Drives membership until shutdown.
    pub(super) async fn mesh_loop(self) {
        let mut stop = self.shutdown_signal();
        let sends = Arc::new(Semaphore::new(MAX_GOSSIP_SENDS));
        self.greet_bootstrap();
        self.publish_advert(true);
        use super::journal::{Backoff, UNREACHABLE_FIRST, UNREACHABLE_MAX_GAP};
        let mut unreachable = Backoff::new(UNREACHABLE_FIRST, UNREACHABLE_MAX_GAP);
        loop {
            let now = self.now();
            let nap = {
                let mut mesh = self.mesh();
                mesh.membership.set_unix_time(unix_ms());
                mesh.membership.tick(now);
                mesh.membership.next_deadline().map_or(MAX_NAP, |d| Duration::from_millis(d.saturating_sub(now))).min(MAX_NAP)
            };
            self.flush_mesh(&sends);
            self.publish_advert(false);
            if self.mesh().greet_due(now) {
                self.greet_bootstrap();
            }
            // A peer given --bootstrap that has met nobody: say so, less and less often.
            let bootstrap = &self.config().bootstrap;
            if bootstrap.is_empty() || self.mesh().membership.active() > 0 {
                unreachable.reset(self.uptime(), UNREACHABLE_FIRST);
            } else if unreachable.due(self.uptime()) {
                tracing::warn!("cannot reach the mesh: no answer from --bootstrap {}; still trying", bootstrap.join(", "));
            }
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                _ = self.0.mesh_wake.notified() => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Tells the mesh this peer leaves (the last step of a shutdown, once what it did as a
    /// coordinator reached the others), so they declare it dead at once and take back its leases
    /// rather than wait out SWIM's suspicion: sends the notices and waits for them to be
    /// delivered, at most [`LEAVE_WAIT`].
    pub(crate) async fn leave_mesh(&self) {
        let sends = Arc::new(Semaphore::new(MAX_GOSSIP_SENDS));
        let now = self.now();
        self.mesh().membership.leave(now);
        self.flush_mesh(&sends);
        let all = u32::try_from(MAX_GOSSIP_SENDS).unwrap_or(u32::MAX);
        let delivered = tokio::time::timeout(LEAVE_WAIT, sends.acquire_many(all)).await;
        tracing::info!(delivered = delivered.is_ok(), "left the mesh");
    }

    fn greet_bootstrap(&self) {
        if !self.config().bootstrap.is_empty() {
            tracing::debug!(bootstrap = ?self.config().bootstrap, "greeting the bootstrap peers");
        }
        let now = self.now();
        self.mesh().greet(&self.config().bootstrap, &self.advertised_addr(), now);
    }

    /// Sends what membership queued and handles its events.
    fn flush_mesh(&self, sends: &Arc<Semaphore>) {
        let (out, events) = {
            let mut mesh = self.mesh();
            let out: Vec<_> = std::iter::from_fn(|| mesh.membership.poll_send()).collect();
            let events: Vec<_> = std::iter::from_fn(|| mesh.membership.poll_event()).collect();
            (out, events)
        };
        for (to, data) in out {
            let Ok(permit) = sends.clone().try_acquire_owned() else {
                tracing::debug!("gossip dropped: too many sends in flight");
                continue;
            };
            // A peer nobody can dial is reached down its stream, here or at one of its relays.
            let (addr, via) = match self.gossip_route(&to.peer) {
                Route::Direct => (to.addr.to_string(), String::new()),
                Route::Attached => {
                    self.0.metrics.gossip_out_bytes.inc_by(data.len() as u64);
                    let sent_at_ms = super::unix_ms();
                    let signature = self.sign(&signing::relayed(&to.peer, sent_at_ms, &data)).to_vec();
                    let packet = pb::RelayedGossip { from: self.peer_id().to_hex(), data, signature, sent_at_ms };
                    self.relay_down(&to.peer, packet);
                    continue;
                }
                Route::Via(relay) => match self.addr_of(&relay) {
                    Some(a) => (a, to.peer.to_hex()),
                    None => continue,
                },
                Route::Drop => {
                    tracing::debug!(to = %to.peer.short(), "gossip dropped: the peer is unreachable and none of its relays is alive");
                    continue;
                }
            };
            let Some(mut client) = self.0.clients.mesh(&addr) else { continue };
            let node = self.clone();
            self.0.metrics.gossip_out_bytes.inc_by(data.len() as u64);
            // Relayed: signed for the peer behind NAT, which cannot see this peer's TLS link.
            let relay_sent_at_ms = if via.is_empty() { 0 } else { super::unix_ms() };
            let relay_signature = if via.is_empty() { Vec::new() } else { self.sign(&signing::relayed(&to.peer, relay_sent_at_ms, &data)).to_vec() };
            tokio::spawn(async move {
                // Unsigned: the TLS link names this peer (see mesh.proto).
                let req = pb::GossipRequest { data, peer_id: String::new(), signature: Vec::new(), to: via, relay_signature, relay_sent_at_ms };
                let sent = tokio::time::timeout(Duration::from_millis(GOSSIP_SEND_TIMEOUT_MS), client.gossip(req)).await;
                if !matches!(sent, Ok(Ok(_))) {
                    tracing::debug!(to = %addr, "gossip not delivered: {}", match sent { Ok(Err(e)) => e.message().to_string(), _ => "timed out".into() });
                    node.0.clients.forget(&addr);
                }
                drop(permit);
            });
        }
        for event in events {
            self.on_mesh_event(event);
        }
    }

    fn on_mesh_event(&self, event: MeshEvent) {
        match event {
            MeshEvent::PeerUp(m) => {
                tracing::info!(peer = %m.peer.short(), addr = %m.addr, "peer up");
                self.members_changed(None);
            }
            MeshEvent::PeerDown(m) => {
                tracing::info!(peer = %m.peer.short(), addr = %m.addr, "peer down");
                self.members_changed(Some(m.peer));
            }
            MeshEvent::Record(Record::JobAd(ad)) => {
                tracing::debug!(job = %ad.job.short(), done = ad.done, "job ad");
                // A newer ad of a job held here, from another announcer (`Hosts` ignores the rest).
                if ad.announcer != self.peer_id() {
                    self.with_hosts(|c, _| c.hosts.handle_ad(&ad));
                }
                self.0.work.notify_one();
            }
            MeshEvent::Record(Record::Advert(_)) => {}
            MeshEvent::Rival(ad) => self.with_hosts(|c, _| c.hosts.handle_rival(&ad)),
            MeshEvent::Invalid { sender } => {
                self.0.invalid_records.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(sender = ?sender.map(|p| p.short()), "dropped a record with a bad signature");
                if let Some(p) = sender {
                    self.with_hosts(|c, _| c.hosts.penalize(p));
                }
            }
            MeshEvent::Joined => tracing::info!("joined the mesh"),
            MeshEvent::Idle => tracing::info!("no other live peer known"),
        }
    }

}

/// `spare.v1.PeerState` of a member state.
pub fn peer_state(s: MemberState) -> pb::PeerState {
    match s {
        MemberState::Alive => pb::PeerState::Alive,
        MemberState::Suspect => pb::PeerState::Suspect,
        MemberState::Dead => pb::PeerState::Dead,
    }
}

/// A fresh membership for this node's identity.
pub fn new_membership(identity: &crate::identity::Identity, addr: String, seed: u64) -> Membership {
    let me = spare_protocol::membership::Member { peer: identity.peer_id(), addr: addr.into(), epoch: unix_ms() };
    Membership::new(me, spare_protocol::peer::mesh::membership_config(), seed, crypto(identity).1)
}
