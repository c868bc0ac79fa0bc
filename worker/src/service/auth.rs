//! Who is asking: a client's signature of Submit and Cancel (checked for its receiver, its
//! clock and replays), the signed chain of peers that passed a Cancel on, and the signed
//! `spare-proxied` header that marks a read one peer forwarded to another. A client can make
//! none of the peer parts: a header or forward it did not get from a peer is refused.

use spare_proto as pb;
use spare_protocol::PeerId;
use spare_sdk::identity::{self as client, SignedMethod};
use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

use crate::identity;
use crate::node::replay::ReplayError;
use crate::node::{Node, unix_ms};
use crate::wire::convert::parse_id;
use crate::wire::signing::LEASE_CLOCK_SKEW_MS;

pub use spare_protocol::requests::MAX_FORWARDS;

/// Marks a read one peer forwarded to another, so it is never forwarded twice. Its value is
/// `PEERID.TIMESTAMP_MS.SIGNATURE` (hex, decimal, hex), signed over
/// `"spare.v1.proxied\0" ++ receiver PeerId ++ timestamp_ms (LE u64)`.
const PROXIED: &str = "spare-proxied";

/// Checks a client's signature of `method` (request digest `body`) made for the peer
/// `receiver`, and records its nonce; returns the client's key.
pub fn check_client(
    node: &Node,
    method: SignedMethod,
    body: &[u8; 32],
    auth: Option<&pb::ClientSignature>,
    receiver: &PeerId,
) -> Result<PeerId, Status> {
    let name = method.name();
    let Some(sig) = auth else {
        return Err(Status::unauthenticated(format!(
            "{name} must be signed with the submitter's key (field `auth`; see ClientSignature in \
             proto/spare/v1/common.proto); `spare` and spare-sdk sign it"
        )));
    };
    if unix_ms().abs_diff(sig.timestamp_ms) > LEASE_CLOCK_SKEW_MS {
        return Err(Status::unauthenticated(format!(
            "{name}: auth.timestamp_ms is more than {} minutes from this peer's clock; check the client's clock",
            LEASE_CLOCK_SKEW_MS / 60_000
        )));
    }
    if !client::verify(method, body, sig, receiver.as_bytes()) {
        return Err(Status::unauthenticated(format!(
            "{name}: the signature in `auth` does not verify for this request, auth.key and peer {}",
            receiver.short()
        )));
    }
    // Both lengths were checked by `verify`.
    let key = PeerId(sig.key.as_slice().try_into().map_err(|_| Status::unauthenticated("auth.key is not 32 bytes"))?);
    let nonce: [u8; 16] = sig.nonce.as_slice().try_into().map_err(|_| Status::unauthenticated("auth.nonce is not 16 bytes"))?;
    node.check_replay(key, nonce).map_err(|e| match e {
        ReplayError::Replayed => Status::unauthenticated(format!("{name}: {e}")),
        ReplayError::Full => Status::resource_exhausted(e.to_string()),
    })?;
    Ok(key)
}

/// The bytes forwarder `i` of a Cancel signs, for the next receiver `to`.
fn forward_bytes(req: &pb::CancelRequest, i: usize, to: &PeerId) -> Vec<u8> {
    use prost::Message;
    let mut r = req.clone();
    r.forwarded.truncate(i + 1);
    if let Some(f) = r.forwarded.get_mut(i) {
        f.signature.clear();
    }
    let mut b = b"spare.v1.forward\0".to_vec();
    b.extend_from_slice(blake3::hash(&r.encode_to_vec()).as_bytes());
    b.extend_from_slice(to.as_bytes());
    b
}

/// Checks the chain of peers that passed a Cancel on to this one (`me`), the last of which must
/// be on the other end of `conn` (over TLS); returns the peer the client signed it for (the first
/// forwarder, or `me` when the client sent it here).
pub fn check_forwards<T>(conn: &Request<T>, req: &pb::CancelRequest, me: &PeerId) -> Result<PeerId, Status> {
    if let Some(last) = req.forwarded.last() {
        super::listener::require_peer(conn, &parse_id("forwarded.peer_id", &last.peer_id)?)?;
    }
    if req.forwarded.len() > MAX_FORWARDS {
        return Err(Status::invalid_argument(format!("a request is forwarded at most {MAX_FORWARDS} times")));
    }
    for (i, f) in req.forwarded.iter().enumerate() {
        let peer: PeerId = parse_id("forwarded.peer_id", &f.peer_id)?;
        let next = match req.forwarded.get(i + 1) {
            Some(n) => parse_id("forwarded.peer_id", &n.peer_id)?,
            None => *me,
        };
        if unix_ms().abs_diff(f.timestamp_ms) > LEASE_CLOCK_SKEW_MS {
            return Err(Status::unauthenticated("forwarded.timestamp_ms is too far from this peer's clock"));
        }
        if !identity::verify(&peer, &forward_bytes(req, i, &next), &f.signature) {
            return Err(Status::unauthenticated(
                "`forwarded` is for peers passing a request on; this one is not signed by the peer it names",
            ));
        }
    }
    match req.forwarded.first() {
        Some(f) => parse_id("forwarded.peer_id", &f.peer_id),
        None => Ok(*me),
    }
}

/// Adds this peer to a Cancel's chain of forwarders, for the receiver `to`.
pub fn add_forward(node: &Node, req: &mut pb::CancelRequest, to: &PeerId) {
    req.forwarded.push(pb::Forward { peer_id: node.peer_id().to_hex(), timestamp_ms: unix_ms(), signature: Vec::new() });
    let i = req.forwarded.len() - 1;
    let signature = node.sign(&forward_bytes(req, i, to)).to_vec();
    req.forwarded[i].signature = signature;
}

fn proxied_bytes(receiver: &PeerId, timestamp_ms: u64) -> Vec<u8> {
    let mut b = b"spare.v1.proxied\0".to_vec();
    b.extend_from_slice(receiver.as_bytes());
    b.extend_from_slice(&timestamp_ms.to_le_bytes());
    b
}

/// `msg` as a read this peer forwards to the peer `to`.
pub fn forwarded<T>(node: &Node, msg: T, to: &PeerId) -> Request<T> {
    let ts = unix_ms();
    let value = format!("{}.{ts}.{}", node.peer_id().to_hex(), hex::encode(node.sign(&proxied_bytes(to, ts))));
    let mut r = Request::new(msg);
    if let Ok(v) = MetadataValue::try_from(value) {
        r.metadata_mut().insert(PROXIED, v);
    }
    r
}

/// Whether a read was forwarded here by a peer (then it is answered here, never forwarded
/// again). A `spare-proxied` header no peer signed for this one is refused.
pub fn proxied<T>(node: &Node, req: &Request<T>) -> Result<bool, Status> {
    let Some(v) = req.metadata().get(PROXIED) else { return Ok(false) };
    let refuse = || Status::permission_denied(format!("{PROXIED} is set only by a peer passing a request on; a client must not send it"));
    let text = v.to_str().map_err(|_| refuse())?;
    let mut parts = text.split('.');
    let (Some(peer), Some(ts), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else { return Err(refuse()) };
    let peer: PeerId = peer.parse().map_err(|_| refuse())?;
    let ts: u64 = ts.parse().map_err(|_| refuse())?;
    let sig = hex::decode(sig).map_err(|_| refuse())?;
    if unix_ms().abs_diff(ts) > LEASE_CLOCK_SKEW_MS || !identity::verify(&peer, &proxied_bytes(&node.peer_id(), ts), &sig) {
        return Err(refuse());
    }
    // And it comes from that peer itself, over TLS: a captured header is worth nothing.
    super::listener::require_peer(req, &peer)?;
    Ok(true)
}
