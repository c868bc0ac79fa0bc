//! This peer's reachability, driven: dial-back rounds that tell whether others can dial it (the
//! rule is `spare_protocol::reachability`), how gossip reaches a member, and the relays an
//! unreachable peer keeps (`MeshService.Attach` streams it opens to reachable peers, over which
//! their gossip reaches it). What a peer does for others (dial-backs, relaying) is `relay.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spare_proto as pb;
use spare_protocol::PeerId;
use spare_protocol::membership::MemberState;
use spare_protocol::reachability::{Answer, MAX_RELAYS, Reachability, Route, Verdict};
use spare_protocol::records::{Record, RecordKey};

use super::Node;
use super::relay::MAX_RELAYED_BYTES;

/// How long the asker waits for an answer (`reachability::ASK_TIMEOUT_MS`).
const ASK_TIMEOUT: Duration = Duration::from_millis(spare_protocol::reachability::ASK_TIMEOUT_MS);
/// How often the loop looks at rounds and relays (a relay that failed is dialed again then).
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// A relay this peer holds a stream to.
struct Held {
    task: tokio::task::JoinHandle<()>,
    /// The stream is open (the relay answered `Attach`).
    open: Arc<AtomicBool>,
    /// Its PeerId, once a member at its address is known (a bootstrap address names none).
    peer: Option<PeerId>,
}

/// What the node keeps for reachability.
pub struct Nat {
    rule: Mutex<Reachability>,
    /// The relays this (unreachable) peer holds streams to, by address.
    relays: Mutex<HashMap<String, Held>>,
    /// What this peer does for others: the peers attached to it, the dial-backs it makes.
    pub(super) relay: super::relay::Relay,
}

impl Default for Nat {
    fn default() -> Self {
        Nat {
            rule: Mutex::new(Reachability::new()),
            relays: Mutex::new(HashMap::new()),
            relay: Default::default(),
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Node {
    /// This peer's dial-back verdict so far.
    pub fn reachability(&self) -> Verdict {
        lock(&self.0.nat.rule).verdict()
    }

    /// What this peer's advert says: reachable unless found unreachable, and its open relays.
    /// Called at every turn of the mesh loop: the members are looked through only while an open
    /// relay's PeerId is not known yet.
    pub(crate) fn advert_reach(&self) -> (bool, Vec<PeerId>) {
        let reachable = lock(&self.0.nat.rule).advertised();
        if reachable {
            return (true, Vec::new());
        }
        let unresolved =
            lock(&self.0.nat.relays).values().any(|h| h.peer.is_none() && h.open.load(Ordering::Relaxed));
        let by_addr: HashMap<String, PeerId> = if unresolved {
            self.peers()
                .into_iter()
                .flat_map(|v| {
                    let advertised = v.advert.as_ref().map(|a| (a.addr.clone(), v.peer));
                    std::iter::once((v.addr.clone(), v.peer)).chain(advertised)
                })
                .collect()
        } else {
            HashMap::new()
        };
        let mut held = lock(&self.0.nat.relays);
        let mut relays = Vec::new();
        for (addr, h) in held.iter_mut() {
            if !h.open.load(Ordering::Relaxed) {
                continue;
            }
            if h.peer.is_none() {
                h.peer = by_addr.get(addr).copied();
            }
            relays.extend(h.peer);
        }
        drop(held);
        relays.sort();
        relays.dedup();
        relays.truncate(MAX_RELAYS);
        (false, relays)
    }

    /// Whether `peer` may be chosen to coordinate a job (its advert does not say unreachable).
    pub(crate) fn may_coordinate(&self, peer: &PeerId) -> bool {
        if *peer == self.peer_id() {
            return self.may_coordinate_self();
        }
        advert_allows(&self.mesh(), peer)
    }

    /// Whether this peer may coordinate: it has not found itself unreachable.
    pub(crate) fn may_coordinate_self(&self) -> bool {
        lock(&self.0.nat.rule).advertised()
    }

    /// The address of some live peer that is reachable, to name in an error.
    pub(crate) fn some_reachable_addr(&self) -> Option<String> {
        let me = self.peer_id();
        self.peers()
            .into_iter()
            .find(|v| v.peer != me && v.state == MemberState::Alive && v.advert.as_ref().is_some_and(|a| a.reachable))
            .map(|v| v.advert.map_or(v.addr, |a| a.addr))
    }

    /// How gossip for `to` travels from here.
    pub(crate) fn gossip_route(&self, to: &PeerId) -> Route {
        let attached = self.0.nat.relay.attached.contains_key(to);
        let mesh = self.mesh();
        let advert = match mesh.membership.record(&RecordKey::Advert(*to)) {
            Some(Record::Advert(a)) => Some(a),
            _ => None,
        };
        let alive = |p: &PeerId| mesh.membership.state_of(p).is_some_and(|(_, s)| s != MemberState::Dead);
        spare_protocol::reachability::route(&self.peer_id(), advert.as_ref(), attached, alive)
    }

    /// Up to `n` peers to ask for dial-backs or to relay through, by address, not in `skip`: live
    /// peers whose adverts do not say unreachable, from a random place in the list; the bootstrap
    /// addresses when there are none (a peer behind NAT hears nobody until it has a relay).
    fn reachable_addrs(&self, n: usize, skip: &[String]) -> Vec<String> {
        let mut peers = self.reachable_peers();
        let mut r = [0u8; 4];
        if !peers.is_empty() && getrandom::fill(&mut r).is_ok() {
            let by = u32::from_le_bytes(r) as usize % peers.len();
            peers.rotate_left(by);
        }
        // Addresses only for the few taken: `addr_of` ties each to its PeerId in the channel pool.
        let mut addrs: Vec<String> = Vec::with_capacity(n);
        for p in peers {
            if addrs.len() >= n {
                break;
            }
            if let Some(a) = self.addr_of(&p).filter(|a| !skip.contains(a)) {
                addrs.push(a);
            }
        }
        if addrs.is_empty() {
            addrs = self.config().bootstrap.iter().filter(|a| !skip.contains(a)).take(n).cloned().collect();
        }
        addrs
    }

    /// Live peers other than this one whose adverts do not say unreachable.
    fn reachable_peers(&self) -> Vec<PeerId> {
        let me = self.peer_id();
        self.peers()
            .into_iter()
            .filter(|v| v.peer != me && v.state == MemberState::Alive && v.advert.as_ref().is_none_or(|a| a.reachable))
            .map(|v| v.peer)
            .collect()
    }

    /// Asks peers to dial this one back when a round is due.
    fn dial_back_round(&self) {
        let advertised = self.advertised_addr();
        // Peers are counted only while a lone success waits for a second opinion.
        let confirming = lock(&self.0.nat.rule).confirming();
        let available = if confirming { self.reachable_peers().len() } else { 0 };
        if !lock(&self.0.nat.rule).due(&advertised, available, self.now()) {
            return;
        }
        let addrs = self.reachable_addrs(spare_protocol::reachability::DIAL_BACK_ASKED, &[]);
        let n = lock(&self.0.nat.rule).start(&advertised, addrs.len(), self.now());
        for addr in addrs.into_iter().take(n) {
            let node = self.clone();
            tokio::spawn(async move {
                let answer = node.ask_dial_back(&addr, node.advertised_addr()).await;
                let before = node.reachability();
                let verdict = lock(&node.0.nat.rule).handle_answer(answer, node.now());
                if let Some(v) = verdict {
                    node.on_verdict(before, v);
                }
            });
        }
    }

    async fn ask_dial_back(&self, addr: &str, advertised: String) -> Answer {
        // Asked from the advertised IP where this machine has it (a multi-homed peer whose
        // default route leaves by another address), since the asked peer dials back the IP the
        // question came from; otherwise over the usual link.
        let from_advertised = advertised.parse::<std::net::SocketAddr>().ok().and_then(|a| self.0.clients.mesh_from(addr, a.ip()));
        let Some(mut client) = from_advertised.or_else(|| self.0.clients.mesh(addr)) else { return Answer::NoAnswer };
        let req = pb::DialBackRequest { addr: advertised.clone() };
        match tokio::time::timeout(ASK_TIMEOUT, client.dial_back(req)).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                tracing::debug!(by = %addr, dialed = %r.dialed, reached = r.reached, error = %r.error, "dial-back answered");
                match r.reached {
                    false => Answer::NotReached,
                    true if dialed_advertised(&r.dialed, &advertised).await => Answer::Reached,
                    true => Answer::ReachedElsewhere,
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(by = %addr, "dial-back not answered: {}", e.message());
                Answer::NoAnswer
            }
            Err(_) => Answer::NoAnswer,
        }
    }

    fn on_verdict(&self, before: Verdict, now: Verdict) {
        match now {
            Verdict::Reachable if before != now => tracing::info!(addr = %self.advertised_addr(), "reachability: reachable (another peer dialed this one back)"),
            Verdict::Unreachable if before != now => tracing::warn!(
                addr = %self.advertised_addr(),
                "reachability: unreachable (no peer could dial this one back: behind NAT or a firewall); \
                 it works through relays and will not coordinate jobs"
            ),
            Verdict::Unknown => tracing::debug!("reachability: no peer answered a dial-back; asking again later"),
            _ => {}
        }
        self.publish_advert(false);
        self.0.mesh_wake.notify_one();
    }

    /// Keeps up to [`MAX_RELAYS`] relay streams while unreachable, none otherwise.
    fn keep_relays(&self) {
        let unreachable = self.reachability() == Verdict::Unreachable;
        let held: Vec<String> = {
            let mut relays = lock(&self.0.nat.relays);
            relays.retain(|_, h| !h.task.is_finished());
            if !unreachable {
                for (_, h) in relays.drain() {
                    h.task.abort();
                }
                return;
            }
            if relays.len() >= MAX_RELAYS {
                return;
            }
            relays.keys().cloned().collect()
        };
        let wanted = self.reachable_addrs(MAX_RELAYS - held.len(), &held);
        let mut relays = lock(&self.0.nat.relays);
        for addr in wanted {
            if relays.len() >= MAX_RELAYS || relays.contains_key(&addr) {
                continue;
            }
            let open = Arc::new(AtomicBool::new(false));
            let task = tokio::spawn(self.clone().hold_relay(addr.clone(), open.clone()));
            relays.insert(addr, Held { task, open, peer: None });
        }
    }

    /// Holds a stream open to the relay at `addr`, taking the gossip it passes down.
    async fn hold_relay(self, addr: String, open: Arc<AtomicBool>) {
        let Some(mut client) = self.0.clients.mesh(&addr) else { return };
        let mut stream = match client.attach(pb::AttachRequest {}).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                tracing::debug!(relay = %addr, "could not attach: {}", e.message());
                self.0.clients.forget(&addr);
                return;
            }
        };
        open.store(true, Ordering::Relaxed);
        tracing::info!(relay = %addr, "attached to a relay");
        self.publish_advert(false);
        let me = self.peer_id();
        while let Ok(Some(m)) = stream.message().await {
            let Some(from) = relayed_sender(&me, &m) else {
                tracing::debug!(relay = %addr, "relayed gossip dropped: not signed by the peer it names");
                continue;
            };
            if !fresh(&m, super::unix_ms()) {
                tracing::debug!(relay = %addr, "relayed gossip dropped: signed too long ago or ahead");
                continue;
            }
            if self.check_mesh_replay(from, relayed_nonce(&m)).is_err() {
                tracing::debug!(relay = %addr, "relayed gossip dropped: taken before (a replay), or too many to check");
                continue;
            }
            if let Err(e) = self.mesh_receive(&m.data, from) {
                tracing::debug!(relay = %addr, "relayed gossip refused: {e}");
            }
        }
        open.store(false, Ordering::Relaxed);
        tracing::info!(relay = %addr, "relay stream closed");
        self.publish_advert(false);
    }

    /// Dial-back rounds and relays, until shutdown.
    pub(super) async fn reach_loop(self) {
        let mut stop = self.shutdown_signal();
        loop {
            self.dial_back_round();
            self.keep_relays();
            tokio::select! {
                _ = tokio::time::sleep(LOOK_EVERY) => {}
                _ = stop.changed() => break,
            }
        }
        for (_, h) in lock(&self.0.nat.relays).drain() {
            h.task.abort();
        }
    }
}

/// Whether the address a dial-back `dialed` (`IP:port`) is this peer's `advertised` one (a
/// `HOST:PORT` whose name is resolved): the asker then knows others dial what it advertises.
async fn dialed_advertised(dialed: &str, advertised: &str) -> bool {
    let Ok(dialed) = dialed.parse::<std::net::SocketAddr>() else { return false };
    let same = |a: std::net::SocketAddr| a.ip().to_canonical() == dialed.ip().to_canonical() && a.port() == dialed.port();
    if let Ok(a) = advertised.parse::<std::net::SocketAddr>() {
        return same(a);
    }
    match tokio::time::timeout(ASK_TIMEOUT, tokio::net::lookup_host(advertised)).await {
        Ok(Ok(mut addrs)) => addrs.any(same),
        _ => false,
    }
}

/// Who sent a packet a relay passed down to `me`: the peer it names, when the packet is no
/// larger than a relay passes and that peer signed it for `me` (`signing::relayed`); `None`
/// otherwise, so a relay cannot put words in another member's mouth.
fn relayed_sender(me: &PeerId, m: &pb::RelayedGossip) -> Option<PeerId> {
    let from = m.from.parse::<PeerId>().ok()?;
    let signed = m.data.len() <= MAX_RELAYED_BYTES
        && crate::identity::verify(&from, &crate::wire::signing::relayed(me, m.sent_at_ms, &m.data), &m.signature);
    signed.then_some(from)
}

/// Whether a relayed packet was signed within the request skew of `now_unix_ms` (this peer's
/// clock): a relay may delay a packet that long at most. Within it, the mesh's replay cache
/// refuses the same packet twice ([`relayed_nonce`]).
fn fresh(m: &pb::RelayedGossip, now_unix_ms: u64) -> bool {
    now_unix_ms.abs_diff(m.sent_at_ms) <= crate::wire::signing::LEASE_CLOCK_SKEW_MS
}

/// What names one relayed packet in the replay cache, with its sender: its signing time and data.
fn relayed_nonce(m: &pb::RelayedGossip) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(&m.sent_at_ms.to_le_bytes());
    h.update(&m.data);
    let mut nonce = [0; 16];
    nonce.copy_from_slice(&h.finalize().as_bytes()[..16]);
    nonce
}

/// Whether `peer`'s advert, as `mesh` holds it, lets it coordinate (no advert: yes).
pub(crate) fn advert_allows(mesh: &super::mesh::MeshState, peer: &PeerId) -> bool {
    match mesh.membership.record(&RecordKey::Advert(*peer)) {
        Some(Record::Advert(a)) => spare_protocol::reachability::may_coordinate(Some(&a)),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::wire::signing;

    #[test]
    fn a_relayed_packet_is_taken_only_as_signed_by_its_sender_for_this_peer() {
        let (sender, other) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let (me, elsewhere) = (PeerId([7; 32]), PeerId([8; 32]));
        let data = b"swim packet".to_vec();
        let packet = |from: &Identity, to: &PeerId, data: &[u8]| pb::RelayedGossip {
            from: sender.peer_id().to_hex(),
            data: data.to_vec(),
            signature: from.sign(&signing::relayed(to, 1_000, data)).to_vec(),
            sent_at_ms: 1_000,
        };
        assert_eq!(relayed_sender(&me, &packet(&sender, &me, &data)), Some(sender.peer_id()));
        assert_eq!(relayed_sender(&me, &packet(&other, &me, &data)), None, "the relay (or anyone) signing in the sender's name");
        assert_eq!(relayed_sender(&me, &packet(&sender, &elsewhere, &data)), None, "signed for another peer");
        let mut altered = packet(&sender, &me, &data);
        altered.data.push(0);
        assert_eq!(relayed_sender(&me, &altered), None, "altered on the way");
        let unsigned = pb::RelayedGossip { signature: Vec::new(), ..packet(&sender, &me, &data) };
        assert_eq!(relayed_sender(&me, &unsigned), None, "unsigned");
        let big = vec![0u8; MAX_RELAYED_BYTES + 1];
        assert_eq!(relayed_sender(&me, &packet(&sender, &me, &big)), None, "past the relayed size");
        let retimed = pb::RelayedGossip { sent_at_ms: 2_000, ..packet(&sender, &me, &data) };
        assert_eq!(relayed_sender(&me, &retimed), None, "its time changed on the way");
    }

    #[test]
    fn a_relayed_packet_is_taken_once_and_only_while_fresh() {
        use crate::node::replay::ReplayCache;
        use crate::wire::signing::LEASE_CLOCK_SKEW_MS as SKEW;
        let at = |sent_at_ms: u64, data: &[u8]| pb::RelayedGossip { from: String::new(), data: data.to_vec(), signature: Vec::new(), sent_at_ms };
        let now = 10 * SKEW;
        assert!(fresh(&at(now - SKEW, b"p"), now) && fresh(&at(now + SKEW, b"p"), now), "within the skew either way");
        assert!(!fresh(&at(now - SKEW - 1, b"p"), now), "held back too long by the relay");
        assert!(!fresh(&at(now + SKEW + 1, b"p"), now), "from too far ahead");
        let mut seen = ReplayCache::new(SKEW, 16);
        let sender = PeerId([3; 32]);
        assert!(seen.check(sender, relayed_nonce(&at(now, b"p")), now).is_ok());
        assert!(seen.check(sender, relayed_nonce(&at(now, b"p")), now + 1).is_err(), "the same packet replayed");
        assert!(seen.check(sender, relayed_nonce(&at(now + 1, b"p")), now + 1).is_ok(), "the same data sent again later");
        assert!(seen.check(sender, relayed_nonce(&at(now, b"q")), now + 1).is_ok(), "other data");
    }
}
