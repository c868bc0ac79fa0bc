//! Which peers coordinate a job: its origin, then the live peers that rank highest by rendezvous
//! (highest-random-weight) hashing of the job id. Every peer computes the same ranking from the
//! same live set, a peer's rank for one job says nothing about another, and when a coordinator
//! dies only its place moves to the next peer in the ranking.

use crate::{JobId, PeerId};

/// Coordinators a job has when the mesh is large enough.
pub const DEFAULT_COORDINATORS: usize = 3;

/// The weight of `peer` for `job`.
pub fn weight(job: &JobId, peer: &PeerId) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("spare.v1 rendezvous");
    h.update(job.as_bytes());
    h.update(peer.as_bytes());
    *h.finalize().as_bytes()
}

/// `first` (the origin, or the coordinator that is choosing), then the highest-ranked peers of
/// `live` not already in `keep`, up to `k` in all, keeping the order of `keep` first.
pub fn choose(job: &JobId, keep: &[PeerId], live: &[PeerId], k: usize) -> Vec<PeerId> {
    let mut out: Vec<PeerId> = Vec::with_capacity(k);
    for p in keep {
        if out.len() < k && !out.contains(p) {
            out.push(*p);
        }
    }
    let mut ranked: Vec<&PeerId> = live.iter().filter(|p| !out.contains(p)).collect();
    ranked.sort_by_key(|p| std::cmp::Reverse(weight(job, p)));
    ranked.dedup();
    for p in ranked {
        if out.len() >= k {
            break;
        }
        out.push(*p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_first_then_stable_ranking_and_minimal_moves() {
        let job = JobId([7; 32]);
        let peers: Vec<PeerId> = (1..=10u8).map(|i| PeerId([i; 32])).collect();
        let origin = peers[0];
        let c = choose(&job, &[origin], &peers, 3);
        assert_eq!(c.len(), 3);
        assert_eq!(c[0], origin);
        assert_eq!(choose(&job, &[origin], &peers, 3), c, "deterministic");
        // A coordinator dies: the survivors stay, one newcomer fills its place.
        let dead = c[1];
        let live: Vec<PeerId> = peers.iter().copied().filter(|p| *p != dead).collect();
        let kept: Vec<PeerId> = c.iter().copied().filter(|p| *p != dead).collect();
        let c2 = choose(&job, &kept, &live, 3);
        assert_eq!(&c2[..2], &kept[..]);
        assert!(!c2.contains(&dead));
        // A small mesh gives fewer.
        assert_eq!(choose(&job, &[origin], &peers[..2], 3).len(), 2);
        assert_eq!(choose(&job, &[origin], &[], 3), vec![origin]);
    }
}
