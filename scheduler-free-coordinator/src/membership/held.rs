//! The records one membership holds, by key, in 8 bytes a slot: each slot is a shared record
//! that carries its own key ([`Keyed`]), found by that key. A map from key to shared record took
//! 48 bytes a slot (the 33-byte key beside the pointer), 6 KB a membership for a cell's hundred
//! adverts: 64 MB across the simulator's 10,300 memberships, for keys every record already
//! names.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::records::{Record, RecordKey};

/// A record with its key, as memberships share it (see [`super::RecordPool`]).
#[derive(Debug)]
pub struct Keyed {
    /// `record.key()`, kept so that a slot is found by it without decoding anything.
    key: RecordKey,
    /// The record.
    pub record: Record,
}

impl Keyed {
    /// `record` with its key.
    pub fn new(record: Record) -> Keyed {
        Keyed { key: record.key(), record }
    }
}

/// One slot: hashed and compared by the record's key alone.
struct Slot(Arc<Keyed>);

impl Borrow<RecordKey> for Slot {
    fn borrow(&self) -> &RecordKey {
        &self.0.key
    }
}

impl Hash for Slot {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.key.hash(state);
    }
}

impl PartialEq for Slot {
    fn eq(&self, other: &Slot) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for Slot {}

/// The records held, at most one per key.
#[derive(Default)]
pub(super) struct Held(HashSet<Slot>);

impl Held {
    /// The record under `key`.
    pub fn get(&self, key: &RecordKey) -> Option<&Record> {
        self.0.get(key).map(|s| &s.0.record)
    }

    /// The shared record under `key`.
    pub fn get_shared(&self, key: &RecordKey) -> Option<&Arc<Keyed>> {
        self.0.get(key).map(|s| &s.0)
    }

    /// Whether a record is held under `key`.
    pub fn contains_key(&self, key: &RecordKey) -> bool {
        self.0.contains(key)
    }

    /// How many records are held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Holds `record` under its key, in place of the one held there.
    pub fn insert(&mut self, record: Arc<Keyed>) {
        self.0.replace(Slot(record));
    }

    /// Lets go of the record under `key`, returning it.
    pub fn remove(&mut self, key: &RecordKey) -> Option<Arc<Keyed>> {
        self.0.take(key).map(|s| s.0)
    }

    /// Every record held with its key, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&RecordKey, &Record)> {
        self.0.iter().map(|s| (&s.0.key, &s.0.record))
    }

    /// Every key held.
    pub fn keys(&self) -> impl Iterator<Item = &RecordKey> {
        self.0.iter().map(|s| &s.0.key)
    }

    /// Every record held.
    pub fn values(&self) -> impl Iterator<Item = &Record> {
        self.0.iter().map(|s| &s.0.record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PeerId;

    fn advert(peer: u8, seq: u64) -> Record {
        crate::records::test_advert(peer, seq, "a:1")
    }

    #[test]
    fn a_record_is_found_by_its_key_and_a_newer_one_replaces_it() {
        let mut held = Held::default();
        held.insert(Arc::new(Keyed::new(advert(1, 1))));
        held.insert(Arc::new(Keyed::new(advert(2, 1))));
        held.insert(Arc::new(Keyed::new(advert(1, 2))));
        assert_eq!(held.len(), 2);
        let key = RecordKey::Advert(PeerId([1; 32]));
        assert_eq!(held.get(&key), Some(&advert(1, 2)));
        assert!(held.remove(&key).is_some_and(|r| r.record == advert(1, 2)));
        assert!(!held.contains_key(&key));
        assert_eq!(held.keys().collect::<Vec<_>>(), vec![&RecordKey::Advert(PeerId([2; 32]))]);
    }
}
