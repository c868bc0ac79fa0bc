//! `spare.v1.MeshService`: what peers say to each other. Gossip goes to membership; Lease and
//! Report reach the coordinator of the jobs this peer holds, after their signatures are checked.

use spare_protocol::peer::host::ReportItem;
use spare_protocol::{Detail, JobId, NetPrefix, PeerId, Release, TaskId};
use spare_proto as pb;
use tonic::{Request, Response, Status};

use crate::wire::convert::{self, attestation, parse_id};
use crate::wire::signing::{self, LEASE_CLOCK_SKEW_MS};
use crate::identity;
use crate::node::{Node, unix_ms};
use crate::store::StoredInput;

use spare_protocol::requests::INLINE_INPUT_BYTES as INLINE_INPUT;

/// The MeshService of one peer.
pub struct MeshApi {
    node: Node,
}

impl MeshApi {
    /// The service over `node`.
    pub fn new(node: Node) -> MeshApi {
        MeshApi { node }
    }
}

/// A mesh call is taken only over TLS from the peer named as its signer (`peer_id`).
fn from_its_peer<T>(req: &Request<T>, peer_id: &str) -> Result<(), Status> {
    let sender: PeerId = parse_id("peer_id", peer_id)?;
    super::listener::require_peer(req, &sender)
}

/// The peer on the other end of a mesh call's TLS link.
fn link<T>(req: &Request<T>) -> Result<PeerId, Status> {
    super::listener::link_peer(req)
        .ok_or_else(|| Status::unauthenticated("mesh calls are taken only over TLS from a peer presenting its certificate"))
}

/// Refuses a signed request (already verified as `sender`'s) made for another peer, or taken
/// before: its `receiver` must be this peer, and its `(sender, request_nonce)` new within the
/// clock window (what was known-gaps.md, gap 4).
pub(super) fn first_and_for_me(node: &Node, sender: PeerId, receiver: &str, nonce: &[u8]) -> Result<(), Status> {
    if receiver != node.peer_id().to_hex() {
        return Err(Status::permission_denied(format!("this request was signed for another peer ({receiver:?}), not {}", node.peer_id().short())));
    }
    let nonce: [u8; signing::REQUEST_NONCE_BYTES] =
        nonce.try_into().map_err(|_| Status::invalid_argument("request_nonce must be 16 bytes"))?;
    node.check_mesh_replay(sender, nonce).map_err(|e| match e {
        crate::node::replay::ReplayError::Replayed => Status::unauthenticated(e.to_string()),
        crate::node::replay::ReplayError::Full => Status::resource_exhausted(e.to_string()),
    })
}

#[tonic::async_trait]
impl pb::mesh_service_server::MeshService for MeshApi {
    type AttachStream = crate::node::relay::AttachStream;

    async fn dial_back(&self, req: Request<pb::DialBackRequest>) -> Result<Response<pb::DialBackResponse>, Status> {
        let asker = link(&req)?;
        let from = super::listener::remote_of(&req).map(|a| a.ip()).ok_or_else(|| Status::internal("no remote address"))?;
        // Only the asker: a dial-back is no way to make this peer dial anyone else.
        let target = spare_protocol::reachability::dial_back_target(&req.get_ref().addr, from)
            .ok_or_else(|| Status::invalid_argument("addr must be the asker's advertised IP:port"))?;
        let r = self.node.dial_back(asker, target).await?;
        Ok(Response::new(r))
    }

    async fn attach(&self, req: Request<pb::AttachRequest>) -> Result<Response<Self::AttachStream>, Status> {
        let peer = link(&req)?;
        if !self.node.peer_allowed(peer) {
            return Err(Status::resource_exhausted("too many requests from this peer"));
        }
        Ok(Response::new(self.node.attach(peer)?))
    }

    async fn gossip(&self, req: Request<pb::GossipRequest>) -> Result<Response<pb::GossipResponse>, Status> {
        // The TLS link names the sender; gossip carries no signature of its own (see mesh.proto).
        let sender = link(&req)?;
        let r = req.into_inner();
        if !r.peer_id.is_empty() || !r.signature.is_empty() {
            let named: PeerId = parse_id("peer_id", &r.peer_id)?;
            if named != sender || !identity::verify(&named, &signing::gossip(&r.data), &r.signature) {
                return Err(Status::unauthenticated("the gossip message is not signed by the link's peer"));
            }
        }
        if !self.node.peer_allowed(sender) {
            return Err(Status::resource_exhausted("too many requests from this peer"));
        }
        if !r.to.is_empty() {
            // For a peer attached here: passed down its stream, naming the sender.
            let to: PeerId = parse_id("to", &r.to)?;
            if r.data.len() > crate::node::relay::MAX_RELAYED_BYTES {
                return Err(Status::invalid_argument("a relayed gossip message is at most 64 KiB"));
            }
            let packet = pb::RelayedGossip { from: sender.to_hex(), data: r.data, signature: r.relay_signature, sent_at_ms: r.relay_sent_at_ms };
            if !self.node.relay_down(&to, packet) {
                return Err(Status::not_found(format!("peer {} is not attached to this relay", to.short())));
            }
            self.node.metrics().gossip_relayed.inc();
            return Ok(Response::new(pb::GossipResponse {}));
        }
        self.node.mesh_receive(&r.data, sender).map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(pb::GossipResponse {}))
    }

    async fn lease(&self, req: Request<pb::LeaseRequest>) -> Result<Response<pb::LeaseResponse>, Status> {
        from_its_peer(&req, &req.get_ref().peer_id)?;
        // The network it asks from: no two replicas of a task go to one (see `prefix`).
        let network = super::listener::remote_of(&req).and_then(|a| NetPrefix::of(a.ip()));
        let r = req.into_inner();
        let peer: PeerId = parse_id("peer_id", &r.peer_id)?;
        let job: JobId = parse_id("job_id", &r.job_id)?;
        if unix_ms().abs_diff(r.timestamp_ms) > LEASE_CLOCK_SKEW_MS {
            return Err(Status::invalid_argument("timestamp_ms is too far from this peer's clock"));
        }
        let receiver: PeerId = parse_id("receiver", &r.receiver)?;
        if !identity::verify(&peer, &signing::lease(&job, r.max, r.timestamp_ms, &receiver, &r.request_nonce), &r.signature) {
            // Whoever sent it, it was not `peer`: nobody to blame.
            return Err(Status::unauthenticated("the lease request is not signed by peer_id"));
        }
        first_and_for_me(&self.node, peer, &r.receiver, &r.request_nonce)?;
        if !self.node.peer_allowed(peer) {
            return Err(Status::resource_exhausted("too many requests from this peer"));
        }
        let (now, meta, granted) = self.node.with_hosts(|c, now| {
            let meta = c.jobs.get(&job).cloned();
            (now, meta, c.hosts.handle_lease(&job, peer, r.max, network, now))
        });
        let (Some(meta), Some(granted)) = (meta, granted) else {
            return Err(Status::not_found(format!("job {job} is not coordinated here")));
        };
        let leases = granted.leases;
        let mut tasks = Vec::with_capacity(leases.len());
        let ids: Vec<TaskId> = leases.iter().map(|l| l.task).collect();
        let inputs = self.node.store().inputs(&ids).map_err(|e| Status::internal(e.to_string()))?;
        for (l, input) in leases.iter().zip(inputs) {
            let input = match input {
                Some(StoredInput::Inline(b)) if b.len() <= INLINE_INPUT => pb::task_input::Source::Inline(b),
                Some(StoredInput::Inline(b)) => {
                    let (id, _) = self.node.store().blobs().put(&b).await.map_err(|e| Status::internal(e.to_string()))?;
                    pb::task_input::Source::BlobId(id.to_hex())
                }
                Some(StoredInput::Blob(id)) => pb::task_input::Source::BlobId(id.to_hex()),
                None => return Err(Status::internal(format!("task {} has no stored input", l.task))),
            };
            tasks.push(pb::LeasedTask {
                index: l.task.index,
                input: Some(pb::TaskInput { source: Some(input) }),
                expires_in_ms: l.expires_at.saturating_sub(now),
            });
        }
        let note = granted.note.unwrap_or_default().to_string();
        let policy = convert::policy_pb(&meta.spec.policy);
        Ok(Response::new(pb::LeaseResponse {
            job_id: job.to_hex(),
            module_id: meta.spec.module.to_hex(),
            args: meta.args.to_vec(),
            env: meta.env.iter().map(|(k, v)| pb::EnvVar { key: k.clone(), value: v.clone() }).collect(),
            limits: policy.limits,
            tasks,
            note,
        }))
    }

    async fn report(&self, req: Request<pb::ReportRequest>) -> Result<Response<pb::ReportResponse>, Status> {
        from_its_peer(&req, &req.get_ref().peer_id)?;
        let mut r = req.into_inner();
        let sender: PeerId = parse_id("peer_id", &r.peer_id)?;
        if unix_ms().abs_diff(r.timestamp_ms) > LEASE_CLOCK_SKEW_MS {
            return Err(Status::invalid_argument("timestamp_ms is too far from this peer's clock"));
        }
        let bytes = signing::report(&mut r);
        if !identity::verify(&sender, &bytes, &r.signature) {
            return Err(Status::unauthenticated("the report is not signed by peer_id"));
        }
        first_and_for_me(&self.node, sender, &r.receiver, &r.request_nonce)?;
        if !self.node.peer_allowed(sender) {
            return Err(Status::resource_exhausted("too many requests from this peer"));
        }
        let mut rejected = 0;
        let mut items = Vec::with_capacity(r.items.len() + r.released.len());
        for item in r.items {
            match item.attestation.as_ref().map(attestation) {
                Some(Ok(att)) => items.push(ReportItem::Attest(att, item.output, Detail::bounded(&item.message, &item.stderr))),
                _ => rejected += 1,
            }
        }
        for rel in r.released {
            let job: JobId = parse_id("job_id", &rel.job_id)?;
            let why = if rel.deadline { Release::Deadline } else { Release::Abandoned };
            items.push(ReportItem::Release(TaskId { job, index: rel.index }, why));
        }
        // Answered once what was recorded is durable here and a backup holds it (or the wait
        // for one gave up): the worker never lets go of an attestation no live coordinator has.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tally = self.node.with_hosts(|c, now| {
            let batch = c.await_report(tx);
            c.hosts.handle_report(sender, batch, items, now)
        });
        for _ in 0..tally.invalid {
            self.node.count_invalid();
        }
        // A dropped wait is a shutdown, which the worker's retry covers.
        let (accepted, taken_rejected) = rx.await.map_err(|_| Status::unavailable("this peer is stopping"))?;
        Ok(Response::new(pb::ReportResponse { accepted, rejected: rejected + taken_rejected }))
    }

    async fn adopt(&self, req: Request<pb::AdoptRequest>) -> Result<Response<pb::AdoptResponse>, Status> {
        from_its_peer(&req, &req.get_ref().peer_id)?;
        Ok(Response::new(super::replica::adopt(&self.node, req.into_inner()).await?))
    }

    async fn replicate(&self, req: Request<pb::ReplicateRequest>) -> Result<Response<pb::ReplicateResponse>, Status> {
        from_its_peer(&req, &req.get_ref().peer_id)?;
        let recorded = super::replica::replicate(&self.node, req.into_inner()).await?;
        Ok(Response::new(pb::ReplicateResponse { recorded }))
    }
}
