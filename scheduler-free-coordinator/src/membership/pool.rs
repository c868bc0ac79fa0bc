//! One copy of each record for all the memberships of a process that holds many of them (the
//! simulator's thousands of peers): a membership given a [`RecordPool`] keeps the pool's copy
//! of a record it takes instead of its own. A deployed peer has one membership and no pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use super::held::Keyed;
use crate::records::{Record, RecordKey};

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
}

impl RecordPool {
    /// A new, empty pool.
    pub fn new() -> RecordPool {
        RecordPool::default()
    }

    /// The pool's copy of `record` (a new one when it holds no record equal to it).
    pub(super) fn intern(&self, record: &Record) -> Arc<Keyed> {
        let mut pool = self.0.lock().unwrap_or_else(|p| p.into_inner());
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

    #[test]
    fn equal_records_share_one_copy_and_different_ones_do_not() {
        let pool = RecordPool::new();
        let a = pool.intern(&advert(1, "a:1"));
        let b = pool.intern(&advert(1, "a:1"));
        assert!(Arc::ptr_eq(&a, &b));
        // Same key and number, other content (a forgery, or a rival): its own copy.
        let c = pool.intern(&advert(1, "b:1"));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.record, advert(1, "b:1"));
        let d = pool.intern(&advert(2, "a:1"));
        assert!(!Arc::ptr_eq(&a, &d));
    }

    #[test]
    fn records_nobody_holds_are_swept() {
        let pool = RecordPool::new();
        for seq in 0..(MIN_SWEEP as u64 * 3) {
            drop(pool.intern(&advert(seq, "a:1")));
        }
        assert!(pool.len() <= MIN_SWEEP, "{} entries", pool.len());
        let kept = pool.intern(&advert(u64::MAX, "a:1"));
        assert!(Arc::ptr_eq(&kept, &pool.intern(&advert(u64::MAX, "a:1"))));
    }
}
