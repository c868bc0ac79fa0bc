//! Which signed client requests this peer has seen: (key, nonce) pairs kept for as long as their
//! timestamp can pass the clock check, so a captured Submit or Cancel is refused when sent again.
//! Bounded: when full of live entries, new requests are refused rather than old ones forgotten
//! (forgetting one early would let it be replayed).

use std::collections::{HashSet, VecDeque};

use spare_protocol::{Millis, PeerId};

/// Most (key, nonce) pairs held at once (about 60 bytes each, twice: ~6 MB at the cap).
pub const MAX_SEEN: usize = 50_000;
/// Most pairs of signed mesh requests held at once (~24 MB at the cap): peers lease and report
/// far more often than clients submit (≈330 requests a second over the 10-min window).
pub const MAX_MESH_SEEN: usize = 200_000;

/// Why a signed request is refused here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The same key and nonce came before.
    #[error("this signed request was received before (a replay); sign a new one")]
    Replayed,
    /// Too many requests within the window to remember another.
    #[error("this peer is taking too many signed requests to check another for replay; try again shortly")]
    Full,
}

type Seen = (PeerId, [u8; 16]);

/// The (key, nonce) pairs seen within the window, oldest first.
#[derive(Debug)]
pub struct ReplayCache {
    /// How long a pair is kept after it arrives: a request is accepted within `skew` of its
    /// timestamp, so `2 × skew` after arrival it can no longer pass the clock check.
    keep: Millis,
    cap: usize,
    seen: HashSet<Seen>,
    order: VecDeque<(Millis, Seen)>,
}

impl ReplayCache {
    /// A cache for requests accepted within `skew` of their timestamp, holding at most `cap`.
    pub fn new(skew: Millis, cap: usize) -> ReplayCache {
        ReplayCache { keep: skew.saturating_mul(2), cap, seen: HashSet::new(), order: VecDeque::new() }
    }

    /// Records `key`'s `nonce`, arrived at `now`; refused when it was seen already or the cache
    /// is full of pairs still within the window.
    pub fn check(&mut self, key: PeerId, nonce: [u8; 16], now: Millis) -> Result<(), ReplayError> {
        while let Some((at, old)) = self.order.front() {
            if now < at.saturating_add(self.keep) {
                break;
            }
            self.seen.remove(old);
            self.order.pop_front();
        }
        let pair = (key, nonce);
        if self.seen.contains(&pair) {
            return Err(ReplayError::Replayed);
        }
        if self.seen.len() >= self.cap {
            return Err(ReplayError::Full);
        }
        self.seen.insert(pair);
        self.order.push_back((now, pair));
        Ok(())
    }

    /// Pairs held now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_refused_while_it_could_pass_the_clock_check() {
        let mut c = ReplayCache::new(100, 3);
        let k = PeerId([1; 32]);
        assert_eq!(c.check(k, [1; 16], 0), Ok(()));
        assert_eq!(c.check(k, [1; 16], 199), Err(ReplayError::Replayed));
        assert_eq!(c.check(PeerId([2; 32]), [1; 16], 10), Ok(()), "another key, same nonce");
        assert_eq!(c.check(k, [2; 16], 20), Ok(()));
        assert_eq!(c.check(k, [3; 16], 30), Err(ReplayError::Full), "full of live pairs");
        // At 200 the first pair's window is over: it is forgotten, and room is made.
        assert_eq!(c.check(k, [3; 16], 200), Ok(()));
        assert_eq!(c.len(), 3);
        assert_eq!(c.check(k, [1; 16], 200), Err(ReplayError::Full));
        assert_eq!(c.check(k, [1; 16], 400), Ok(()), "long after, the clock check refuses it instead");
    }
}
