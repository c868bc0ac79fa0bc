//! Reputation: per-peer counts of attestations that agreed or disagreed with final verdicts, and
//! of records dropped for bad signatures, as this peer has seen them.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::PeerId;

/// What this peer has seen of another.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Attestations that matched the verdict.
    pub agreed: u64,
    /// Attestations that contradicted the verdict.
    pub disagreed: u64,
    /// Records dropped because their signature did not check.
    pub invalid: u64,
}

impl Record {
    /// A score in (0, 1): the share of agreeing attestations with a prior of one of each, and
    /// invalid records weighing as much as disagreements.
    pub fn score(&self) -> f64 {
        (self.agreed as f64 + 1.0) / ((self.agreed + self.disagreed + self.invalid) as f64 + 2.0)
    }
}

/// Reputation of every peer seen.
#[derive(Clone, Debug, Default)]
pub struct Reputation {
    records: HashMap<PeerId, Record>,
}

/// Below this score, with at least [`MIN_EVIDENCE`] bad records, a peer gets no more leases.
pub const BAN_SCORE: f64 = 0.25;
/// Bad records needed before a peer can be banned, so one unlucky result bans nobody.
pub const MIN_EVIDENCE: u64 = 3;

impl Reputation {
    /// The record of `peer` (all zero when unseen).
    pub fn get(&self, peer: &PeerId) -> Record {
        self.records.get(peer).copied().unwrap_or_default()
    }

    /// Every record.
    pub fn iter(&self) -> impl Iterator<Item = (&PeerId, &Record)> {
        self.records.iter()
    }

    pub(crate) fn agreed(&mut self, peer: PeerId) {
        self.records.entry(peer).or_default().agreed += 1;
    }

    pub(crate) fn disagreed(&mut self, peer: PeerId) {
        self.records.entry(peer).or_default().disagreed += 1;
    }

    /// Holds a dropped record (bad signature, forged field) against `peer`.
    pub fn invalid(&mut self, peer: PeerId) {
        self.records.entry(peer).or_default().invalid += 1;
    }

    /// Whether `peer` has shown enough bad records to stop getting work.
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        let r = self.get(peer);
        r.disagreed + r.invalid >= MIN_EVIDENCE && r.score() < BAN_SCORE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liars_are_banned_honest_peers_are_not() {
        let mut r = Reputation::default();
        let (liar, honest) = (PeerId([1; 32]), PeerId([2; 32]));
        for _ in 0..5 {
            r.disagreed(liar);
            r.agreed(honest);
        }
        r.disagreed(honest);
        assert!(r.is_banned(&liar));
        assert!(!r.is_banned(&honest));
        assert!(r.get(&liar).score() < r.get(&honest).score());
    }
}
