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

/// The bytes a report batch's signature covers: the batch as encoded with its `signature` field
/// empty (the field is taken out for the encoding and put back, so no copy of the batch is made).
pub fn report(req: &mut pb::ReportRequest) -> Vec<u8> {
    signed_digest(b"spare.v1.report\0", req)
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

/// The bytes the sender of an adoption signs (its `signature` field empty, as for [`report`]).
pub fn adopt(req: &mut pb::AdoptRequest) -> Vec<u8> {
    signed_digest(b"spare.v1.adopt\0", req)
}

/// The bytes the sender of a replication batch signs (its `signature` field empty, as for
/// [`report`]).
pub fn replicate(req: &mut pb::ReplicateRequest) -> Vec<u8> {
    signed_digest(b"spare.v1.replicate\0", req)
}

/// A signed mesh message's own signature field.
pub trait Signed: prost::Message {
    fn signature_mut(&mut self) -> &mut Vec<u8>;
}

macro_rules! signed {
    ($($t:ty),*) => {$(
        impl Signed for $t {
            fn signature_mut(&mut self) -> &mut Vec<u8> {
                &mut self.signature
            }
        }
    )*};
}
signed!(pb::ReportRequest, pb::AdoptRequest, pb::ReplicateRequest);

/// `tag` ‖ BLAKE3 of `msg` encoded without its signature. Encoding it in place of a copy matters:
/// a replication or report batch carries outputs, and the copy was 2 % of a busy peer's CPU.
fn signed_digest(tag: &[u8], msg: &mut impl Signed) -> Vec<u8> {
    let signature = std::mem::take(msg.signature_mut());
    let encoded = msg.encode_to_vec();
    *msg.signature_mut() = signature;
    let mut b = tag.to_vec();
    b.extend_from_slice(blake3::hash(&encoded).as_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_digest_leaves_out_the_signature_and_puts_it_back() {
        let mut req = pb::ReplicateRequest {
            job_id: "ab".repeat(32),
            peer_id: "cd".repeat(32),
            timestamp_ms: 1_234,
            signature: vec![9; 64],
            ..Default::default()
        };
        let unsigned = pb::ReplicateRequest { signature: Vec::new(), ..req.clone() };
        let bytes = replicate(&mut req);
        assert_eq!(req.signature, vec![9; 64], "the signature is put back");
        let mut want = b"spare.v1.replicate\0".to_vec();
        want.extend_from_slice(blake3::hash(&prost::Message::encode_to_vec(&unsigned)).as_bytes());
        assert_eq!(bytes, want);
        // The same fields under another message's tag never give the same bytes.
        let mut report_req = pb::ReportRequest { peer_id: req.peer_id.clone(), ..Default::default() };
        assert_ne!(report(&mut report_req)[..16], bytes[..16]);
    }
}
