//! The tables' fixed-width byte keys (a job, a task, an attestation, a peer), compared as byte
//! strings, and the one-time move of tables written before with redb's own `[u8; N]` keys.
//!
//! redb compares a `[u8; N]` key one byte at a time through `u8`'s comparison, and keys of one
//! job share their first 32 bytes: that comparison was the store thread's largest cost of its
//! own (3.3 % of a busy peer's CPU). [`Fixed`] orders the same bytes the same way with one
//! `memcmp`, so a moved table holds the same rows in the same order.

use std::cmp::Ordering;

use redb::{Key, ReadableTable, TableDefinition, TableError, TableHandle, TypeName, Value, WriteTransaction};

use super::{StoreError, db_err};

/// A key of exactly `N` bytes, ordered as a byte string.
#[derive(Debug)]
pub struct Fixed<const N: usize>;

impl<const N: usize> Value for Fixed<N> {
    type SelfType<'a> = [u8; N];
    type AsBytes<'a> = [u8; N];

    fn fixed_width() -> Option<usize> {
        Some(N)
    }

    fn from_bytes<'a>(data: &'a [u8]) -> [u8; N]
    where
        Self: 'a,
    {
        // redb hands back exactly the `N` bytes it was given; anything else reads as zeros
        // rather than panicking on a damaged page.
        let mut k = [0u8; N];
        if data.len() == N {
            k.copy_from_slice(data);
        }
        k
    }

    fn as_bytes<'a, 'b: 'a>(value: &'a [u8; N]) -> [u8; N]
    where
        Self: 'b,
    {
        *value
    }

    fn type_name() -> TypeName {
        TypeName::new(&format!("spare::Fixed<{N}>"))
    }
}

impl<const N: usize> Key for Fixed<N> {
    fn compare(data1: &[u8], data2: &[u8]) -> Ordering {
        data1.cmp(data2)
    }
}

/// Moves table `def` from `[u8; N]` keys to [`Fixed`] ones, inside the open's transaction, when
/// an earlier version wrote it: the rows are copied to a new table in key order, the old one is
/// deleted and the new one takes its name. Returns the rows moved (0 for a table already moved or
/// not there yet).
pub(super) fn migrate<const N: usize, V: Value + 'static>(tx: &WriteTransaction, def: TableDefinition<Fixed<N>, V>) -> Result<u64, StoreError> {
    let name = def.name();
    let exists = tx.list_tables().map_err(db_err)?.any(|t| t.name() == name);
    if !exists {
        return Ok(0);
    }
    let old_def: TableDefinition<[u8; N], V> = TableDefinition::new(name);
    let old = match tx.open_table(old_def) {
        Ok(t) => t,
        // Already keyed by `Fixed` (or of some other type, which the open then reports).
        Err(TableError::TableTypeMismatch { .. }) => return Ok(0),
        Err(e) => return Err(db_err(e)),
    };
    let moving = format!("{name}.moving");
    let new_def: TableDefinition<Fixed<N>, V> = TableDefinition::new(&moving);
    let mut rows = 0;
    {
        let mut new = tx.open_table(new_def).map_err(db_err)?;
        for row in old.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            new.insert(k.value(), v.value()).map_err(db_err)?;
            rows += 1;
        }
    }
    drop(old);
    tx.delete_table(old_def).map_err(db_err)?;
    tx.rename_table(new_def, def).map_err(db_err)?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

    use super::super::{DB_FILE, INPUTS, JOBS, RESULTS, Store};
    use super::Fixed;

    /// Rows of a table keyed by `[u8; N]`, as an earlier version wrote them: deliberately
    /// inserted out of order, with keys that differ only late (one job's tasks).
    fn rows<const N: usize>(seed: u8) -> Vec<([u8; N], Vec<u8>)> {
        [7u8, 1, 255, 0, 128]
            .iter()
            .map(|last| {
                let mut k = [seed; N];
                k[N - 1] = *last;
                (k, vec![seed, *last])
            })
            .collect()
    }

    #[test]
    fn tables_with_array_keys_move_to_fixed_keys_with_every_row_in_order() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join(DB_FILE);
        let (jobs, inputs, results) = (rows::<32>(1), rows::<36>(2), rows::<36>(3));
        {
            let db = Database::create(&path).expect("create");
            let tx = db.begin_write().expect("write");
            let mut t = tx.open_table(TableDefinition::<[u8; 32], &[u8]>::new("jobs")).expect("old table");
            for (k, v) in &jobs {
                t.insert(k, v.as_slice()).expect("insert");
            }
            drop(t);
            for (name, table) in [("inputs", &inputs[..]), ("results", &results[..])] {
                let mut t = tx.open_table(TableDefinition::<[u8; 36], &[u8]>::new(name)).expect("old table");
                for (k, v) in table {
                    t.insert(k, v.as_slice()).expect("insert");
                }
            }
            tx.commit().expect("commit");
        }
        // Opened twice: the first moves the tables, the second finds them moved.
        drop(Store::open(dir.path()).expect("open an old store"));
        drop(Store::open(dir.path()).expect("open it again"));

        let db = Database::open(&path).expect("reopen");
        let tx = db.begin_read().expect("read");
        let read = |t: &redb::ReadOnlyTable<Fixed<36>, &[u8]>| -> Vec<([u8; 36], Vec<u8>)> {
            t.iter().expect("iter").map(|r| r.map(|(k, v)| (k.value(), v.value().to_vec())).expect("row")).collect()
        };
        let mut want_inputs = inputs.clone();
        want_inputs.sort();
        assert_eq!(read(&tx.open_table(INPUTS).expect("inputs")), want_inputs);
        let mut want_results = results.clone();
        want_results.sort();
        assert_eq!(read(&tx.open_table(RESULTS).expect("results")), want_results);
        let got_jobs: Vec<([u8; 32], Vec<u8>)> = tx
            .open_table(JOBS)
            .expect("jobs")
            .iter()
            .expect("iter")
            .map(|r| r.map(|(k, v)| (k.value(), v.value().to_vec())).expect("row"))
            .collect();
        let mut want_jobs = jobs.clone();
        want_jobs.sort();
        assert_eq!(got_jobs, want_jobs);
        let names: Vec<String> = tx.list_tables().expect("tables").map(|t| redb::TableHandle::name(&t).to_string()).collect();
        assert!(!names.iter().any(|n| n.ends_with(".moving")), "no half-moved table is left: {names:?}");
    }

    #[test]
    fn fixed_keys_order_as_byte_strings() {
        use redb::Key;
        use std::cmp::Ordering;
        let (a, b) = ([0u8, 0, 1], [0u8, 1, 0]);
        assert_eq!(Fixed::<3>::compare(&a, &b), Ordering::Less);
        assert_eq!(Fixed::<3>::compare(&b, &a), Ordering::Greater);
        assert_eq!(Fixed::<3>::compare(&a, &a), Ordering::Equal);
    }
}
