//! Reputation: per-peer counts of attestations that agreed or disagreed with final verdicts, of
//! records dropped for bad signatures and of leases let lapse, as this peer has seen them.
//!
//! The ban rule: a peer gets no more leases once its weighted bad evidence
//! (`disagreed + invalid + lapsed / 2`) reaches [`MIN_EVIDENCE`] and its [`Record::score`] is below
//! [`BAN_SCORE`]. A lapse weighs half a disagreement: it wastes a replica's time but claims no
//! false result. So a peer that only ever lets its leases lapse is banned at its sixth lapse, a
//! liar at its third disagreement, and an honest peer with a long record of agreement survives
//! the odd crash.
//!
//! The trust rule (adaptive replication, [`Reputation::is_trusted`]): a peer may run a task alone
//! for a job that allows it once it has at least that job's `min_agreed` agreeing attestations,
//! no disagreement and no invalid record. Only quorum verdicts count: a lone replica's result
//! is not evidence of anything, so trust is earned and re-earned only where peers are compared.
//! Lapses do not end trust (they claim no result), but a banned peer is never trusted.

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
    /// Leases that lapsed without a report (expired, or the peer was declared down).
    #[serde(default)]
    pub lapsed: u64,
}

impl Record {
    /// Bad evidence against the peer: disagreements and invalid records count one each, lapsed
    /// leases half each.
    pub fn bad(&self) -> f64 {
        (self.disagreed + self.invalid) as f64 + self.lapsed as f64 / 2.0
    }

    /// A score in (0, 1): the share of agreeing attestations with a prior of one of each, where
    /// invalid records weigh as much as disagreements and lapsed leases half as much.
    pub fn score(&self) -> f64 {
        (self.agreed as f64 + 1.0) / (self.agreed as f64 + self.bad() + 2.0)
    }
}

/// Reputation of every peer seen.
#[derive(Clone, Debug, Default)]
pub struct Reputation {
    records: HashMap<PeerId, Record>,
}

/// Below this score, with at least [`MIN_EVIDENCE`] of bad evidence, a peer gets no more leases.
pub const BAN_SCORE: f64 = 0.25;
/// Bad evidence ([`Record::bad`]) needed before a peer can be banned, so one unlucky result bans
/// nobody.
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

    pub(crate) fn set(&mut self, peer: PeerId, record: Record) {
        self.records.insert(peer, record);
    }

    pub(crate) fn agreed(&mut self, peer: PeerId) {
        self.records.entry(peer).or_default().agreed += 1;
    }

    pub(crate) fn disagreed(&mut self, peer: PeerId) {
        self.records.entry(peer).or_default().disagreed += 1;
    }

    /// Counts an attestation of `peer` against a final verdict it agreed with or not.
    pub(crate) fn judged(&mut self, peer: PeerId, agrees: bool) {
        if agrees {
            self.agreed(peer);
        } else {
            self.disagreed(peer);
        }
    }

    pub(crate) fn lapsed(&mut self, peer: PeerId) {
        self.records.entry(peer).or_default().lapsed += 1;
    }

    /// Holds a dropped record (bad signature, forged field) against `peer`.
    pub fn invalid(&mut self, peer: PeerId) {
        self.records.entry(peer).or_default().invalid += 1;
    }

    /// Whether `peer` has shown enough bad evidence to stop getting work: a [`Record::bad`] of
    /// at least 3 (`MIN_EVIDENCE`) and a [`Record::score`] below 0.25 (`BAN_SCORE`). A peer that
    /// only lets leases lapse is banned at its sixth lapse, a peer that only lies at its third.
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        let r = self.get(peer);
        r.bad() >= MIN_EVIDENCE as f64 && r.score() < BAN_SCORE
    }

    /// Whether `peer` may run a task alone for a job asking `min_agreed` agreements: at least
    /// that many, never a disagreement or an invalid record, and not banned.
    pub fn is_trusted(&self, peer: &PeerId, min_agreed: u32) -> bool {
        let r = self.get(peer);
        r.agreed >= u64::from(min_agreed) && r.disagreed == 0 && r.invalid == 0 && !self.is_banned(peer)
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

    #[test]
    fn lapses_weigh_half_and_a_pure_lapser_is_banned() {
        let mut r = Reputation::default();
        let (idle, busy) = (PeerId([3; 32]), PeerId([4; 32]));
        for n in 1..=6 {
            r.lapsed(idle);
            assert_eq!(r.is_banned(&idle), n >= 6, "after {n} lapses");
        }
        for _ in 0..20 {
            r.agreed(busy);
        }
        for _ in 0..8 {
            r.lapsed(busy);
        }
        assert!(!r.is_banned(&busy), "an honest peer survives a crash that lapses a batch");
        let d = Record { disagreed: 1, ..Record::default() };
        let l = Record { lapsed: 2, ..Record::default() };
        assert_eq!(d.score(), l.score());
    }

    #[test]
    fn trust_needs_agreements_and_any_disagreement_ends_it() {
        let mut r = Reputation::default();
        let p = PeerId([5; 32]);
        for n in 1..=10 {
            r.agreed(p);
            assert_eq!(r.is_trusted(&p, 10), n >= 10, "after {n} agreements");
        }
        r.lapsed(p);
        assert!(r.is_trusted(&p, 10), "a lapse claims no result");
        let mut d = r.clone();
        d.disagreed(p);
        assert!(!d.is_trusted(&p, 10), "one disagreement ends trust");
        for _ in 0..1_000 {
            d.agreed(p);
        }
        assert!(!d.is_trusted(&p, 10), "and it is not earned back");
        r.invalid(p);
        assert!(!r.is_trusted(&p, 10), "nor is an invalid record forgiven");
    }

    #[test]
    fn old_records_without_lapsed_still_parse() {
        use serde::de::value::{Error, MapDeserializer};
        let fields = [("agreed", 1u64), ("disagreed", 2), ("invalid", 3)];
        let old = Record::deserialize(MapDeserializer::<_, Error>::new(fields.into_iter()));
        assert_eq!(old, Ok(Record { agreed: 1, disagreed: 2, invalid: 3, lapsed: 0 }));
    }
}
