//! Reputation: per-peer counts of attestations that agreed or disagreed with final verdicts, of
//! records dropped for bad signatures and of leases let lapse, as this peer has seen them.
//!
//! The ban rule: a peer gets no more leases once its weighted bad evidence
//! (`disagreed + invalid + lapsed / 2`) reaches [`MIN_EVIDENCE`] and its [`Standing::score`] is below
//! [`BAN_SCORE`]. A lapse weighs half a disagreement: it wastes a replica's time but claims no
//! false result. So a peer that only ever lets its leases lapse is banned at its sixth lapse, a
//! liar at its third disagreement, and an honest peer with a long record of agreement survives
//! the odd crash.
//!
//! Forgiveness: a lost lease answer or report lapses leases of an honest peer, so each agreeing
//! attestation judged after a lapse forgives one lapse still held against the peer (`lapsed`
//! counts the unforgiven ones, `forgiven` the rest). Only lapses are forgiven, and only by
//! agreements that come after them: disagreements and invalid records never are, agreements
//! banked beforehand forgive nothing, and a peer that takes leases and never reports has nothing
//! to forgive them with. So a peer on a lossy link that keeps reporting good results keeps
//! working, a silent peer is banned as before, and a liar is banned no later than if it had never
//! let a lease lapse.
//!
//! The trust rule (adaptive replication, [`Reputation::is_trusted`]): a peer may run a task alone
//! for a job that allows it once it has at least that job's `min_agreed` agreeing attestations,
//! no disagreement and no invalid record. Only quorum verdicts count: a lone replica's result
//! is not evidence of anything, so trust is earned and re-earned only where peers are compared.
//! Lapses do not end trust (they claim no result), but a banned peer is never trusted, and for
//! trust the ban is judged on every lapse, forgiven or not: forgiveness keeps a peer working, it
//! never makes one trusted sooner.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::PeerId;

/// What this peer has seen of another.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standing {
    /// Attestations that matched the verdict.
    pub agreed: u64,
    /// Attestations that contradicted the verdict.
    pub disagreed: u64,
    /// Records dropped because their signature did not check.
    pub invalid: u64,
    /// Leases that lapsed without a report (expired; not when the peer was declared down) and
    /// are not yet forgiven.
    #[serde(default)]
    pub lapsed: u64,
    /// Lapses forgiven, one by each agreeing attestation judged while a lapse was held against
    /// the peer. `lapsed + forgiven` is every lapse.
    #[serde(default)]
    pub forgiven: u64,
}

impl Standing {
    /// Bad evidence against the peer: disagreements and invalid records count one each,
    /// unforgiven lapsed leases half each.
    pub fn bad(&self) -> f64 {
        (self.disagreed + self.invalid) as f64 + self.lapsed as f64 / 2.0
    }

    /// A score in (0, 1): the share of agreeing attestations with a prior of one of each, where
    /// invalid records weigh as much as disagreements and unforgiven lapsed leases half as much.
    pub fn score(&self) -> f64 {
        (self.agreed as f64 + 1.0) / (self.agreed as f64 + self.bad() + 2.0)
    }

    /// Every lease the peer let lapse, forgiven or not.
    pub fn lapses(&self) -> u64 {
        self.lapsed.saturating_add(self.forgiven)
    }

    /// Whether this much evidence bans a peer: a [`Standing::bad`] of at least
    /// [`MIN_EVIDENCE`] and a [`Standing::score`] below [`BAN_SCORE`].
    pub fn is_banned(&self) -> bool {
        self.bad() >= MIN_EVIDENCE as f64 && self.score() < BAN_SCORE
    }

    /// This standing with every lapse held against the peer, as if none had been forgiven.
    pub fn unforgiving(&self) -> Standing {
        Standing { lapsed: self.lapses(), forgiven: 0, ..*self }
    }
}

/// Reputation of every peer seen, at most [`MAX_STANDINGS`].
#[derive(Clone, Debug, Default)]
pub struct Reputation {
    standings: HashMap<PeerId, Standing>,
    /// Peers whose standing changed since [`Reputation::take_changed`] (for a driver that
    /// stores them).
    changed: BTreeSet<PeerId>,
}

/// Most peers whose standing is kept. Past it, a new peer's standing replaces one that is not
/// banned (a ban is never forgotten this way).
pub const MAX_STANDINGS: usize = 100_000;

/// Below this score, with at least [`MIN_EVIDENCE`] of bad evidence, a peer gets no more leases.
pub const BAN_SCORE: f64 = 0.25;
/// Bad evidence ([`Standing::bad`]) needed before a peer can be banned, so one unlucky result bans
/// nobody.
pub const MIN_EVIDENCE: u64 = 3;

impl Reputation {
    /// The standing of `peer` (all zero when unseen).
    pub fn get(&self, peer: &PeerId) -> Standing {
        self.standings.get(peer).copied().unwrap_or_default()
    }

    /// Every standing.
    pub fn iter(&self) -> impl Iterator<Item = (&PeerId, &Standing)> {
        self.standings.iter()
    }

    pub(crate) fn set(&mut self, peer: PeerId, standing: Standing) {
        *self.entry(peer) = standing;
        // Set by the driver, from what it stored: not a change to store again.
        self.changed.remove(&peer);
    }

    /// The standings changed since the last call, in PeerId order.
    pub fn take_changed(&mut self) -> Vec<(PeerId, Standing)> {
        std::mem::take(&mut self.changed).into_iter().map(|p| (p, self.get(&p))).collect()
    }

    /// `peer`'s standing, to change: marked changed, and made room for when new.
    fn entry(&mut self, peer: PeerId) -> &mut Standing {
        if self.standings.len() >= MAX_STANDINGS && !self.standings.contains_key(&peer) {
            let evict = self.standings.iter().find(|(_, s)| !s.is_banned()).map(|(p, _)| *p);
            if let Some(p) = evict {
                self.standings.remove(&p);
                self.changed.remove(&p);
            }
        }
        self.changed.insert(peer);
        self.standings.entry(peer).or_default()
    }

    /// Counts an agreeing attestation, which forgives one lapse still held against `peer`.
    pub(crate) fn agreed(&mut self, peer: PeerId) {
        let s = self.entry(peer);
        s.agreed += 1;
        if s.lapsed > 0 {
            s.lapsed -= 1;
            s.forgiven += 1;
        }
    }

    pub(crate) fn disagreed(&mut self, peer: PeerId) {
        self.entry(peer).disagreed += 1;
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
        self.entry(peer).lapsed += 1;
    }

    /// Holds a dropped record (bad signature, forged field) against `peer`.
    pub fn invalid(&mut self, peer: PeerId) {
        self.entry(peer).invalid += 1;
    }

    /// Whether `peer` has shown enough bad evidence to stop getting work: a [`Standing::bad`] of
    /// at least 3 (`MIN_EVIDENCE`) and a [`Standing::score`] below 0.25 (`BAN_SCORE`), forgiven
    /// lapses left out. A peer that only lets leases lapse is banned at its sixth lapse, a peer
    /// that only lies at its third.
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.get(peer).is_banned()
    }

    /// Whether `peer` may run a task alone for a job asking `min_agreed` agreements: at least
    /// that many, never a disagreement or an invalid record, and not banned even with its
    /// forgiven lapses held against it (so forgiveness never makes a peer trusted sooner).
    pub fn is_trusted(&self, peer: &PeerId, min_agreed: u32) -> bool {
        let r = self.get(peer);
        r.agreed >= u64::from(min_agreed) && r.disagreed == 0 && r.invalid == 0 && !r.unforgiving().is_banned()
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
        let d = Standing { disagreed: 1, ..Standing::default() };
        let l = Standing { lapsed: 2, ..Standing::default() };
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
        let old = Standing::deserialize(MapDeserializer::<_, Error>::new(fields.into_iter()));
        assert_eq!(old, Ok(Standing { agreed: 1, disagreed: 2, invalid: 3, lapsed: 0, forgiven: 0 }));
        let fields = [("agreed", 1u64), ("disagreed", 2), ("invalid", 3), ("lapsed", 4)];
        let old = Standing::deserialize(MapDeserializer::<_, Error>::new(fields.into_iter()));
        assert_eq!(old, Ok(Standing { agreed: 1, disagreed: 2, invalid: 3, lapsed: 4, forgiven: 0 }));
    }

    #[test]
    fn each_later_agreement_forgives_one_lapse() {
        let mut r = Reputation::default();
        let p = PeerId([6; 32]);
        r.agreed(p);
        assert_eq!(r.get(&p), Standing { agreed: 1, ..Standing::default() }, "nothing to forgive yet");
        for _ in 0..3 {
            r.lapsed(p);
        }
        r.agreed(p);
        r.agreed(p);
        assert_eq!(r.get(&p), Standing { agreed: 3, lapsed: 1, forgiven: 2, ..Standing::default() });
        r.judged(p, false);
        assert_eq!(r.get(&p).lapsed, 1, "a disagreement forgives nothing");
        for _ in 0..5 {
            r.agreed(p);
        }
        assert_eq!(r.get(&p), Standing { agreed: 8, disagreed: 1, lapsed: 0, forgiven: 3, invalid: 0 });
        assert_eq!(r.get(&p).lapses(), 3);
        assert_eq!(r.get(&p).unforgiving(), Standing { agreed: 8, disagreed: 1, lapsed: 3, ..Standing::default() });
    }

    #[test]
    fn an_honest_peer_on_a_lossy_link_is_never_banned() {
        // Every other lease answer is lost, lapsing a batch of three; the next batch is run and
        // agrees. Checked after every event: never banned, and at most one batch held against it.
        let mut r = Reputation::default();
        let p = PeerId([7; 32]);
        for _ in 0..1_000 {
            for _ in 0..3 {
                r.lapsed(p);
                assert!(!r.is_banned(&p) && r.get(&p).lapsed <= 3, "{:?}", r.get(&p));
            }
            for _ in 0..3 {
                r.agreed(p);
                assert!(!r.is_banned(&p), "{:?}", r.get(&p));
            }
        }
        assert_eq!(r.get(&p), Standing { agreed: 3_000, lapsed: 0, forgiven: 3_000, ..Standing::default() });
        // Where forgiveness is what saves it: a first batch lost, one result judged, then a lost
        // batch of eight. Without forgiveness 11 lapses outweigh one agreement.
        let q = PeerId([13; 32]);
        for _ in 0..3 {
            r.lapsed(q);
        }
        r.agreed(q);
        for _ in 0..8 {
            r.lapsed(q);
        }
        assert_eq!(r.get(&q), Standing { agreed: 1, lapsed: 10, forgiven: 1, ..Standing::default() });
        assert!(!r.is_banned(&q));
        assert!(r.get(&q).unforgiving().is_banned(), "banned before forgiveness");
    }

    #[test]
    fn a_silent_peer_is_banned_whatever_its_past() {
        let mut r = Reputation::default();
        let (fresh, veteran) = (PeerId([8; 32]), PeerId([9; 32]));
        for n in 1..=6 {
            r.lapsed(fresh);
            assert_eq!(r.is_banned(&fresh), n >= 6, "after {n} lapses");
        }
        // Agreements earned before the peer fell silent forgive none of its lapses: it is banned
        // exactly where it was before forgiveness existed (bad > 3 × agreed + 2).
        for _ in 0..20 {
            r.agreed(veteran);
        }
        for n in 1..=200 {
            r.lapsed(veteran);
            assert_eq!(r.is_banned(&veteran), n > 2 * (3 * 20 + 2), "after {n} lapses");
        }
        assert_eq!(r.get(&veteran).forgiven, 0);
    }

    #[test]
    fn agreements_never_wash_away_a_liars_disagreements() {
        // A sleeper: ten honest answers (forgiving the three lapses before them), then lies. It is
        // banned at the same disagreement as the same liar without lapses: bad > 3 × 10 + 2.
        let mut r = Reputation::default();
        let liar = PeerId([10; 32]);
        for _ in 0..3 {
            r.lapsed(liar);
        }
        for _ in 0..10 {
            r.agreed(liar);
        }
        for n in 1..=40 {
            r.disagreed(liar);
            assert_eq!(r.is_banned(&liar), n >= 33, "after {n} lies: {:?}", r.get(&liar));
        }
        // Any mix of agreements, lies and lapses: the liar keeps every disagreement, never has
        // less bad evidence than its twin that never lapses (so it is banned no later), and the
        // record without forgiveness is the old rule's.
        let (mut r, mut twin, mut old) = (Reputation::default(), Reputation::default(), Standing::default());
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for step in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly honest for a while, then mostly lying.
            let agrees = if step < 1_000 { 4 } else { 1 };
            match x % 10 {
                k if k < agrees => {
                    r.agreed(liar);
                    twin.agreed(liar);
                    old.agreed += 1;
                }
                k if k < 6 => {
                    r.disagreed(liar);
                    twin.disagreed(liar);
                    old.disagreed += 1;
                }
                _ => {
                    r.lapsed(liar);
                    old.lapsed += 1;
                }
            }
            let (s, t) = (r.get(&liar), twin.get(&liar));
            assert_eq!(s.disagreed, t.disagreed);
            assert!(s.bad() >= t.bad(), "{s:?} against {t:?}");
            assert!(!twin.is_banned(&liar) || r.is_banned(&liar), "{s:?} against {t:?}");
            assert_eq!(s.unforgiving(), old);
        }
        assert!(r.is_banned(&liar) && twin.is_banned(&liar));
    }

    #[test]
    fn forgiven_lapses_do_not_make_a_peer_trusted_sooner() {
        let mut r = Reputation::default();
        let p = PeerId([12; 32]);
        // 70 lapses first (a bad 35 that bans a peer with fewer than 11 agreements), then
        // agreements, which forgive them as they come.
        for _ in 0..70 {
            r.lapsed(p);
        }
        for n in 1..=20 {
            r.agreed(p);
            let before = r.get(&p).unforgiving();
            assert_eq!(r.is_trusted(&p, 10), n >= 11, "after {n} agreements: {:?}", r.get(&p));
            assert_eq!(r.is_trusted(&p, 10), !before.is_banned() && n >= 10, "as without forgiveness");
            if n == 10 {
                assert!(!r.is_banned(&p), "forgiveness lifted the ban: it may work…");
                assert!(!r.is_trusted(&p, 10), "…but not alone yet");
            }
        }
    }
}
