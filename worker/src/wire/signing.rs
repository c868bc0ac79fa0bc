//! The bytes each signed mesh message's signature covers, with its domain tag, so a signature
//! made for one kind of message never verifies as another. `proto/` documents each.

use spare_protocol::{JobId, PeerId};
use spare_proto as pb;

pub use spare_protocol::requests::{LEASE_CLOCK_SKEW_MS, REQUEST_NONCE_BYTES};

/// The bytes the origin signs to claim a job id as its own.
pub fn job(id: &JobId) -> Vec<u8> {
    let mut b = b"spare.v1.job\0".to_vec();
    b.extend_from_slice(id.as_bytes());
    b
}

/// The bytes a lease request's signature covers.
pub fn lease(job: &JobId, max: u32, timestamp_ms: u64, receiver: &PeerId, nonce: &[u8]) -> Vec<u8> {
    let mut b = b"spare.v1.lease\0".to_vec();
    b.extend_from_slice(job.as_bytes());
    b.extend_from_slice(&max.to_le_bytes());
    b.extend_from_slice(&timestamp_ms.to_le_bytes());
    b.extend_from_slice(receiver.as_bytes());
    b.extend_from_slice(nonce);
    b
}

/// A fresh `request_nonce`.
pub fn request_nonce() -> Vec<u8> {
    let mut n = [0u8; REQUEST_NONCE_BYTES];
    // Without randomness the nonce is zeros: the receiver then takes one such request per
    // window and refuses the rest as replays, which fails safe.
    let _ = getrandom::fill(&mut n);
    n.to_vec()
}

/// The bytes a report batch's signature covers.
pub fn report(req: &pb::ReportRequest) -> Vec<u8> {
    use prost::Message;
    let mut unsigned = req.clone();
    unsigned.signature.clear();
    let mut b = b"spare.v1.report\0".to_vec();
    b.extend_from_slice(blake3::hash(&unsigned.encode_to_vec()).as_bytes());
    b
}

/// The bytes a gossip message's signature covers.
pub fn gossip(data: &[u8]) -> Vec<u8> {
    let mut b = b"spare.v1.gossip\0".to_vec();
    b.extend_from_slice(blake3::hash(data).as_bytes());
    b
}

/// The bytes the sender of a gossip message relayed to `to` (a peer behind NAT) signs at
/// `sent_at_ms`, so `to` knows who sent it without taking the relay's word, and when.
pub fn relayed(to: &spare_protocol::PeerId, sent_at_ms: u64, data: &[u8]) -> Vec<u8> {
    let mut b = b"spare.v1.relayed\0".to_vec();
    b.extend_from_slice(to.as_bytes());
    b.extend_from_slice(&sent_at_ms.to_le_bytes());
    b.extend_from_slice(blake3::hash(data).as_bytes());
    b
}

/// The bytes the sender of an adoption signs.
pub fn adopt(req: &pb::AdoptRequest) -> Vec<u8> {
    signed_digest(b"spare.v1.adopt\0", &pb::AdoptRequest { signature: Vec::new(), ..req.clone() })
}

/// The bytes the sender of a replication batch signs.
pub fn replicate(req: &pb::ReplicateRequest) -> Vec<u8> {
    signed_digest(b"spare.v1.replicate\0", &pb::ReplicateRequest { signature: Vec::new(), ..req.clone() })
}

fn signed_digest(tag: &[u8], msg: &impl prost::Message) -> Vec<u8> {
    let mut b = tag.to_vec();
    b.extend_from_slice(blake3::hash(&msg.encode_to_vec()).as_bytes());
    b
}

