//! `spare.v1.PeerService`: what this peer is, and the peers it knows.

use spare_proto as pb;
use tonic::{Request, Response, Status};

use crate::node::Node;

/// The PeerService of one peer.
pub struct PeerApi {
    node: Node,
}

impl PeerApi {
    /// The service over `node`.
    pub fn new(node: Node) -> PeerApi {
        PeerApi { node }
    }
}

/// This peer as the API shows it.
pub fn info(node: &Node, addr: &str) -> pb::PeerInfo {
    let slots = node.sandbox().slots() as u32;
    pb::PeerInfo {
        peer_id: node.peer_id().to_hex(),
        addr: addr.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        cpus_total: slots,
        cpus_free: slots.saturating_sub(node.running().min(slots as usize) as u32),
        memory_bytes: node.config().caps.limits.memory_bytes,
        state: pb::PeerState::Alive as i32,
        features: vec!["abi-v1".into(), "wasi-p1".into()],
        jobs: node.core().jobs.len() as u32,
        uptime_ms: node.uptime().as_millis() as u64,
        caps: Some(caps(node)),
        reachability: match node.reachability() {
            spare_protocol::reachability::Verdict::Unknown => pb::Reachability::Unspecified,
            spare_protocol::reachability::Verdict::Reachable => pb::Reachability::Reachable,
            spare_protocol::reachability::Verdict::Unreachable => pb::Reachability::Unreachable,
        } as i32,
    }
}

/// This peer's bounds, so a client learns them before a request is refused.
fn caps(node: &Node) -> pb::PeerCaps {
    let config = node.config();
    let limits = |l: spare_protocol::Limits| crate::wire::convert::limits_pb(&l);
    pb::PeerCaps {
        max_message_bytes: crate::wire::MAX_MESSAGE_BYTES as u64,
        max_module_bytes: config.max_module_bytes as u64,
        max_blob_bytes: config.max_blob_bytes,
        max_tasks: config.caps.max_tasks,
        max_quorum: config.caps.max_quorum,
        max_replicas: config.caps.max_replicas,
        max_limits: Some(limits(config.caps.limits)),
        default_limits: Some(limits(spare_protocol::Limits::default())),
        max_args_bytes: crate::node::MAX_ARGS_BYTES as u64,
        max_task_list: super::job::MAX_TASK_LIST,
        max_list: super::job::MAX_LIST,
    }
}

#[tonic::async_trait]
impl pb::peer_service_server::PeerService for PeerApi {
    async fn info(&self, _req: Request<pb::InfoRequest>) -> Result<Response<pb::PeerInfo>, Status> {
        Ok(Response::new(info(&self.node, &self.node.advertised_addr())))
    }

    async fn peers(&self, _req: Request<pb::PeersRequest>) -> Result<Response<pb::PeersResponse>, Status> {
        let me = self.node.peer_id();
        let peers = self
            .node
            .peers()
            .into_iter()
            .map(|v| {
                if v.peer == me {
                    return info(&self.node, &v.addr);
                }
                let reachability = match &v.advert {
                    None => pb::Reachability::Unspecified,
                    Some(a) if a.reachable => pb::Reachability::Reachable,
                    Some(_) => pb::Reachability::Unreachable,
                };
                let a = v.advert.unwrap_or_else(|| spare_protocol::records::Advert {
                    peer: v.peer,
                    seq: 0,
                    addr: v.addr.clone(),
                    cpus_total: 0,
                    cpus_free: 0,
                    memory_bytes: 0,
                    version: String::new(),
                    reachable: false,
                    relays: Vec::new(),
                    signature: Vec::new(),
                    epoch: 0,
                });
                pb::PeerInfo {
                    peer_id: v.peer.to_hex(),
                    addr: v.addr,
                    version: a.version,
                    cpus_total: a.cpus_total,
                    cpus_free: a.cpus_free,
                    memory_bytes: a.memory_bytes,
                    state: crate::node::mesh::peer_state(v.state) as i32,
                    features: Vec::new(),
                    jobs: 0,
                    uptime_ms: 0,
                    caps: None,
                    reachability: reachability as i32,
                }
            })
            .collect();
        Ok(Response::new(pb::PeersResponse { peers }))
    }
}
