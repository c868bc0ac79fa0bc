//! One copy of each record for all the memberships of a process that holds many of them (the
//! simulator's thousands of peers): a membership given a [`RecordPool`] keeps the pool's copy
//! of a record it takes instead of its own. A deployed peer has one membership and no pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use super::held::Keyed;
use crate::records::{Record, RecordKey, Verifier};

/// Fewest entries the pool holds before it sweeps out records nobody holds any more.
const MIN_SWEEP: usize = 4_096;

/// Records shared between memberships, by key and sequence number. Holds them weakly: a record
/// lives as long as a membership holds it, and the pool is swept of the dead ones each time it
/// doubles, so it never holds more than twice the records alive (or [`MIN_SWEEP`]).
#[derive(Clone, Default)]
pub struct RecordPool(Arc<Mutex<Pool>>);

#[derive(Default)]
struct Pool {
    records: HashMap<(RecordKey, u64), Weak<Keyed>>,
    sweep_at: usize,
    /// The verifier that checked every record put in the pool, while there is only one.
    verifier: Option<Verifier>,
    /// Records were put in by memberships with different verifiers: none vouches for another.
    mixed: bool,
}

impl RecordPool {
    /// A new, empty pool.
    pub fn new() -> RecordPool {
        RecordPool::default()
    }

    /// The pool's copy of `record`, which `verifier` checked (a new one when it holds no record
    /// equal to it).
    pub(super) fn intern(&self, record: &Record, verifier: &Verifier) -> Arc<Keyed> {
        let mut pool = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &pool.verifier {
            None => pool.verifier = Some(verifier.clone()),
            Some(v) if !Arc::ptr_eq(v, verifier) => pool.mixed = true,
            Some(_) => {}
        }
        let key = (record.key(), record.seq());
        if let Some(held) = pool.records.get(&key).and_then(Weak::upgrade)
            && held.record == *record
        {
            return held;
        }
        let fresh = Arc::new(Keyed::new(record.clone()));
        pool.records.insert(key, Arc::downgrade(&fresh));
        if pool.records.len() >= pool.sweep_at.max(MIN_SWEEP) {
            pool.records.retain(|_, r| r.strong_count() > 0);
            pool.sweep_at = pool.records.len() * 2;
        }
        fresh
    }

    /// The pool's copy of `record` if it holds one equal to it, checked by `verifier`: a copy
    /// of a record checked needs no second check (at 10,000 simulated peers each advert was
    /// checked a hundred times). `None` once memberships with other verifiers put records in.
    pub(super) fn checked(&self, record: &Record, verifier: &Verifier) -> Option<Arc<Keyed>> {
        let pool = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if pool.mixed || !pool.verifier.as_ref().is_some_and(|v| Arc::ptr_eq(v, verifier)) {
            return None;
        }
        pool.records.get(&(record.key(), record.seq())).and_then(Weak::upgrade).filter(|held| held.record == *record)
    }

    /// Records the pool holds an entry for (alive or not yet swept).
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).records.len()
    }

    /// Whether the pool holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advert(seq: u64, addr: &str) -> Record {
        crate::records::test_advert(1, seq, addr)
    }

    fn verifier() -> Verifier {
        Arc::new(|_: &crate::PeerId, _: &[u8], _: &[u8]| true)
    }

    #[test]
    fn a_copy_of_a_checked_record_is_vouched_for_only_under_the_same_verifier() {
        let pool = RecordPool::new();
        let (v, other) = (verifier(), verifier());
        assert!(pool.checked(&advert(1, "a:1"), &v).is_none(), "nothing checked yet");
        let held = pool.intern(&advert(1, "a:1"), &v);
        assert!(pool.checked(&advert(1, "a:1"), &v).is_some_and(|h| Arc::ptr_eq(&h, &held)));
        assert!(pool.checked(&advert(1, "b:1"), &v).is_none(), "other content, same key and number");
        assert!(pool.checked(&advert(1, "a:1"), &other).is_none(), "another verifier");
        // Once two verifiers put records in, none vouches.
        let _b = pool.intern(&advert(2, "a:1"), &other);
        assert!(pool.checked(&advert(1, "a:1"), &v).is_none());
    }

    #[test]
    fn equal_records_share_one_copy_and_different_ones_do_not() {
        let (pool, v) = (RecordPool::new(), verifier());
        let a = pool.intern(&advert(1, "a:1"), &v);
        let b = pool.intern(&advert(1, "a:1"), &v);
        assert!(Arc::ptr_eq(&a, &b));
        // Same key and number, other content (a forgery, or a rival): its own copy.
        let c = pool.intern(&advert(1, "b:1"), &v);
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.record, advert(1, "b:1"));
        let d = pool.intern(&advert(2, "a:1"), &v);
        assert!(!Arc::ptr_eq(&a, &d));
    }

    #[test]
    fn records_nobody_holds_are_swept() {
        let (pool, v) = (RecordPool::new(), verifier());
        for seq in 0..(MIN_SWEEP as u64 * 3) {
            drop(pool.intern(&advert(seq, "a:1"), &v));
        }
        assert!(pool.len() <= MIN_SWEEP, "{} entries", pool.len());
        let kept = pool.intern(&advert(u64::MAX, "a:1"), &v);
        assert!(Arc::ptr_eq(&kept, &pool.intern(&advert(u64::MAX, "a:1"), &v)));
    }
}
