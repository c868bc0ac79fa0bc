//! Identities and the signature stand-in. Virtual peers get PeerIds that look like public keys
//! but carry their index in the first four bytes (so a message is routed without a lookup), and
//! addresses `10.a.b.c:7070` that encode the same index.
//!
//! **Signatures are not real.** The [`Signer`]/[`Verifier`] that records and attestations use are
//! injected (`records.rs`), and the simulator injects a cheap keyed hash: 64 bytes (an ed25519
//! signature's size) computed from the signer's PeerId and the message with a 64-bit mixer. It
//! is not cryptography: anyone could compute it. No simulated peer forges anything, so every
//! check passes; the stand-in keeps the real code paths (sign, encode, verify, compare) and the
//! real sizes at a small fraction of ed25519's cost.

use std::sync::Arc;

use crate::records::{Signer, Verifier};
use crate::PeerId;

use super::rng::mix;

/// Base of the simulated Unix clock (2023-11-14), so timestamps, sequence numbers and epochs
/// have realistic sizes on the wire.
pub const UNIX_BASE_MS: u64 = 1_700_000_000_000;

/// The PeerId of virtual peer `index` in a run seeded `seed`.
pub fn peer_id(seed: u64, index: u32) -> PeerId {
    let mut b = [0u8; 32];
    for (i, chunk) in b.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&mix(seed ^ (u64::from(index) << 8) ^ i as u64).to_le_bytes());
    }
    b[..4].copy_from_slice(&index.to_le_bytes());
    PeerId(b)
}

/// The index a PeerId of this run carries.
pub fn index_of(peer: &PeerId) -> u32 {
    u32::from_le_bytes([peer.0[0], peer.0[1], peer.0[2], peer.0[3]])
}

/// The gRPC address of virtual peer `index`.
pub fn addr(index: u32) -> String {
    format!("10.{}.{}.{}:7070", (index >> 16) & 255, (index >> 8) & 255, index & 255)
}

/// The index an address made by [`addr`] names.
pub fn index_of_addr(addr: &str) -> Option<u32> {
    let host = addr.strip_suffix(":7070")?.strip_prefix("10.")?;
    let mut parts = host.split('.').map(|p| p.parse::<u32>().ok());
    let (a, b, c) = (parts.next()??, parts.next()??, parts.next()??);
    Some((a << 16) | (b << 8) | c)
}

/// The stand-in signature of `msg` by `peer`: 64 bytes of a keyed 64-bit hash.
pub fn tag(peer: &PeerId, msg: &[u8]) -> [u8; 64] {
    let mut h = u64::from_le_bytes([peer.0[8], peer.0[9], peer.0[10], peer.0[11], peer.0[12], peer.0[13], peer.0[14], peer.0[15]]);
    h ^= u64::from(index_of(peer));
    let mut words = msg.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }
    for &byte in words.remainder() {
        h = (h ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
    }
    h = mix(h ^ msg.len() as u64);
    let mut out = [0u8; 64];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&mix(h.wrapping_add(i as u64)).to_le_bytes());
    }
    out
}

/// The stand-in signer of `peer`.
pub fn signer(peer: PeerId) -> Signer {
    Arc::new(move |m: &[u8]| tag(&peer, m).to_vec())
}

/// The stand-in verifier every virtual peer shares.
pub fn verifier() -> Verifier {
    Arc::new(|p: &PeerId, m: &[u8], s: &[u8]| s == tag(p, m).as_slice())
}
