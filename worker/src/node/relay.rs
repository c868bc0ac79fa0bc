//! What a peer does for others' reachability: dial-backs it makes when asked
//! (`MeshService.DialBack`), and, as a relay, the peers behind NAT attached to it
//! (`MeshService.Attach`), whose gossip it passes down their streams.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use spare_proto as pb;
use spare_protocol::PeerId;
use tokio::sync::{Semaphore, mpsc};
use tonic::Status;

use super::Node;
use super::reach::lock;

/// Most peers attached to this one (it relays for them); past it `Attach` is refused.
pub const MAX_ATTACHED: usize = 256;
/// Packets queued per attached peer; past it they are dropped (SWIM tolerates loss).
pub const ATTACH_QUEUE: usize = 64;
/// Largest gossip packet relayed.
pub const MAX_RELAYED_BYTES: usize = 64 << 10;
/// Dial-backs this peer makes for others at once.
const MAX_DIAL_BACKS: usize = 8;
/// One dial-back per asker this often (`reachability::DIAL_BACK_EVERY_MS`).
const DIAL_BACK_EVERY: Duration = Duration::from_millis(spare_protocol::reachability::DIAL_BACK_EVERY_MS);
/// How long a dial-back may take (`reachability::DIAL_BACK_TIMEOUT_MS`).
const DIAL_BACK_TIMEOUT: Duration = Duration::from_millis(spare_protocol::reachability::DIAL_BACK_TIMEOUT_MS);
/// Askers remembered for [`DIAL_BACK_EVERY`]; when full, those older are forgotten, and a new
/// asker is refused while all are recent.
const MAX_ASKERS: usize = 4096;

type Queue = mpsc::Sender<Result<pb::RelayedGossip, Status>>;

/// The peers attached here and the dial-backs made for others.
pub struct Relay {
    /// Peers attached here: their stream's id (a newer stream replaces an older one) and queue.
    pub(super) attached: DashMap<PeerId, (u64, Queue)>,
    next_stream: AtomicU64,
    dialing: Arc<Semaphore>,
    /// When each asker last asked for a dial-back.
    asked: Mutex<HashMap<PeerId, Instant>>,
}

impl Default for Relay {
    fn default() -> Self {
        Relay {
            attached: DashMap::new(),
            next_stream: AtomicU64::new(0),
            dialing: Arc::new(Semaphore::new(MAX_DIAL_BACKS)),
            asked: Mutex::new(HashMap::new()),
        }
    }
}

/// The stream `Attach` answers with: it leaves the relay's table when the attached peer goes.
pub struct AttachStream {
    rx: mpsc::Receiver<Result<pb::RelayedGossip, Status>>,
    node: Node,
    peer: PeerId,
    id: u64,
}

impl futures::Stream for AttachStream {
    type Item = Result<pb::RelayedGossip, Status>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for AttachStream {
    fn drop(&mut self) {
        let gone = self.node.0.nat.relay.attached.remove_if(&self.peer, |_, (id, _)| *id == self.id).is_some();
        if gone {
            tracing::info!(peer = %self.peer.short(), "an unreachable peer detached from this relay");
        }
    }
}

impl Node {
    /// Passes a gossip `packet`, signed by its sender for `to` (`signing::relayed`), down the
    /// stream of `to`, attached here; false when it is not attached (a full queue drops the
    /// packet and counts as passed).
    pub(crate) fn relay_down(&self, to: &PeerId, packet: pb::RelayedGossip) -> bool {
        let Some(queue) = self.0.nat.relay.attached.get(to).map(|e| e.1.clone()) else { return false };
        if queue.try_send(Ok(packet)).is_err() {
            tracing::debug!(to = %to.short(), "relayed gossip dropped: the attached peer's queue is full");
        }
        true
    }

    /// Attaches `peer` (over its own TLS link) to this peer, which then relays its gossip.
    pub(crate) fn attach(&self, peer: PeerId) -> Result<AttachStream, Status> {
        let attached = &self.0.nat.relay.attached;
        if attached.len() >= MAX_ATTACHED && !attached.contains_key(&peer) {
            return Err(Status::resource_exhausted(format!("this relay holds {MAX_ATTACHED} attached peers already")));
        }
        if !self.may_coordinate(&self.peer_id()) {
            return Err(Status::failed_precondition("this peer is unreachable itself; attach to a reachable peer"));
        }
        let (tx, rx) = mpsc::channel(ATTACH_QUEUE);
        let id = self.0.nat.relay.next_stream.fetch_add(1, Ordering::Relaxed);
        attached.insert(peer, (id, tx));
        tracing::info!(peer = %peer.short(), "an unreachable peer attached to this relay");
        self.0.mesh_wake.notify_one();
        Ok(AttachStream { rx, node: self.clone(), peer, id })
    }

    /// Dials `asker` back at `addr` (see `reachability::dial_back_target`) and says
    /// whether the TLS handshake met its PeerId. Bounded: one per asker per
    /// [`DIAL_BACK_EVERY`], [`MAX_DIAL_BACKS`] at once.
    pub(crate) async fn dial_back(&self, asker: PeerId, addr: SocketAddr) -> Result<pb::DialBackResponse, Status> {
        {
            let mut asked = lock(&self.0.nat.relay.asked);
            let now = Instant::now();
            if asked.get(&asker).is_some_and(|t| now.duration_since(*t) < DIAL_BACK_EVERY) {
                return Err(Status::resource_exhausted("one dial-back per peer every 10 s"));
            }
            if asked.len() >= MAX_ASKERS {
                asked.retain(|_, t| now.duration_since(*t) < DIAL_BACK_EVERY);
                if asked.len() >= MAX_ASKERS {
                    return Err(Status::resource_exhausted("too many dial-backs asked lately"));
                }
            }
            asked.insert(asker, now);
        }
        let Ok(_permit) = self.0.nat.relay.dialing.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted("too many dial-backs in progress"));
        };
        let dialed = addr.to_string();
        let r = tokio::time::timeout(DIAL_BACK_TIMEOUT, self.0.clients.dial_back(addr, asker)).await;
        let error = match r {
            Ok(Ok(())) => String::new(),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {DIAL_BACK_TIMEOUT:?}"),
        };
        tracing::debug!(asker = %asker.short(), %dialed, reached = error.is_empty(), "dial-back");
        Ok(pb::DialBackResponse { reached: error.is_empty(), dialed, error })
    }
}
