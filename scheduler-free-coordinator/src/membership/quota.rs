//! Who may add records to this peer's map, and how many: a record is admitted only when its
//! signer is this peer, the peer that delivered it (authenticated by the link), or a member
//! SWIM knows; each signer holds at most [`MAX_RECORDS_PER_SIGNER`]; and the adverts of peers
//! SWIM has forgotten (dead for longer than `remove_down_after`) expire. So adverts signed by
//! fresh keys, sent in bulk by one peer, cannot fill the map (once a known gap).

use std::collections::{HashMap, HashSet};

use crate::PeerId;
use crate::records::{Record, RecordKey};

/// Most records one signer holds in the map (a peer holds at most this many jobs).
pub const MAX_RECORDS_PER_SIGNER: usize = 10_000;
/// How often the adverts of forgotten peers are swept.
pub const EXPIRE_EVERY_MS: crate::Millis = 60_000;

/// Who may add records, and how many each signer holds.
#[derive(Default)]
pub(super) struct Admission {
    /// This peer and the members SWIM knows (any state), as of the last sweep or arrival.
    known: HashSet<PeerId>,
    /// Job ads held per signer. A signer's advert is the one keyed by it, so what it holds is
    /// that advert, if the map has it, and these: a count per peer of the view was 5 KB a
    /// membership (50 MB across the simulator's 10,000 peers).
    ads_held: HashMap<PeerId, usize>,
}

impl Admission {
    /// Notes a member SWIM knows.
    pub(super) fn know(&mut self, peer: PeerId) {
        self.known.insert(peer);
    }

    /// Replaces the set of known members (at a sweep).
    pub(super) fn set_known(&mut self, known: HashSet<PeerId>) {
        self.known = known;
    }

    /// Whether `peer` is known.
    pub(super) fn knows(&self, peer: &PeerId) -> bool {
        self.known.contains(peer)
    }

    /// Whether `record` may take a new place in the map (`replacing`: the signer of the version
    /// it replaces, if any), delivered by `sender`; `has_advert`: the map holds the signer's
    /// advert.
    pub(super) fn admits(&self, record: &Record, replacing: Option<PeerId>, sender: Option<PeerId>, has_advert: bool) -> bool {
        let signer = record.signer();
        let who = sender.is_none() || sender == Some(signer) || self.known.contains(&signer);
        let held = usize::from(has_advert) + self.ads_held.get(&signer).copied().unwrap_or(0);
        let room = replacing == Some(signer) || held < MAX_RECORDS_PER_SIGNER;
        who && room
    }

    /// Counts a record stored, in place of one by `replaced` (if any, of the same key).
    pub(super) fn stored(&mut self, record: &Record, replaced: Option<PeerId>) {
        if let Record::JobAd(ad) = record {
            if let Some(old) = replaced {
                self.ad_removed(old);
            }
            *self.ads_held.entry(ad.announcer).or_insert(0) += 1;
        }
    }

    /// Counts a record removed.
    pub(super) fn removed(&mut self, record: &Record) {
        if let Record::JobAd(ad) = record {
            self.ad_removed(ad.announcer);
        }
    }

    fn ad_removed(&mut self, signer: PeerId) {
        if let Some(n) = self.ads_held.get_mut(&signer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.ads_held.remove(&signer);
            }
        }
    }
}

/// The keys of the adverts of peers not in `known`.
pub(super) fn expired<'a>(keys: impl Iterator<Item = &'a RecordKey>, admission: &Admission) -> Vec<RecordKey> {
    keys.filter(|k| matches!(k, RecordKey::Advert(p) if !admission.knows(p))).copied().collect()
}
