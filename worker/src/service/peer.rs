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
    }
}

#[tonic::async_trait]
impl pb::peer_service_server::PeerService for PeerApi {
    async fn info(&self, req: Request<pb::InfoRequest>) -> Result<Response<pb::PeerInfo>, Status> {
        let addr = req.local_addr().map(|a| a.to_string()).unwrap_or_default();
        Ok(Response::new(info(&self.node, &addr)))
    }

    async fn peers(&self, req: Request<pb::PeersRequest>) -> Result<Response<pb::PeersResponse>, Status> {
        // Until the mesh exists, the only peer known is this one.
        let addr = req.local_addr().map(|a| a.to_string()).unwrap_or_default();
        Ok(Response::new(pb::PeersResponse { peers: vec![info(&self.node, &addr)] }))
    }
}
