//! How many replicas this peer ran each local calendar day, kept in the store so "tasks run
//! today" on the status page survives a restart. One row per day, and at most
//! [`DAYS_KEPT`] of them.

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, Table};

use super::{RUNS, StoreError, db_err};

/// Days of counts kept: a year and a little, the older rows go as new days come.
pub const DAYS_KEPT: usize = 400;

/// Counts one run on `day` (YYYYMMDD), inside the writer's transaction.
pub(super) fn count(t: &mut Table<u32, (u64, u64)>, day: u32, ok: bool) -> Result<(), StoreError> {
    let (all, not_ok) = t.get(day).map_err(db_err)?.map_or((0, 0), |v| v.value());
    let fresh = all == 0;
    t.insert(day, (all + 1, not_ok + u64::from(!ok))).map_err(db_err)?;
    // A new day's first run trims the oldest rows past the bound.
    if fresh {
        let rows = t.len().map_err(db_err)? as usize;
        for _ in DAYS_KEPT..rows {
            t.pop_first().map_err(db_err)?;
        }
    }
    Ok(())
}

impl super::Store {
    /// Replicas run on `day` (YYYYMMDD) and how many of them did not succeed.
    pub fn runs_on(&self, day: u32) -> Result<(u64, u64), StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(RUNS).map_err(db_err)?;
        Ok(t.get(day).map_err(db_err)?.map_or((0, 0), |v| v.value()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Op, Store};
    use super::DAYS_KEPT;

    #[tokio::test]
    async fn runs_count_per_day_survive_a_reopen_and_old_days_go() {
        let dir = tempfile::tempdir().expect("temporary directory");
        {
            let store = Store::open(dir.path()).expect("open");
            let ops = vec![
                Op::CountRun { day: 20261130, ok: true },
                Op::CountRun { day: 20261130, ok: false },
                Op::CountRun { day: 20261201, ok: true },
            ];
            store.write(ops).await.expect("write");
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.runs_on(20261130).expect("read"), (2, 1));
        assert_eq!(store.runs_on(20261201).expect("read"), (1, 0));
        assert_eq!(store.runs_on(20261202).expect("read"), (0, 0));
        let later: Vec<Op> = (0..DAYS_KEPT as u32).map(|d| Op::CountRun { day: 20270000 + d, ok: true }).collect();
        store.write(later).await.expect("write");
        assert_eq!(store.runs_on(20261130).expect("read"), (0, 0), "the oldest day went");
        assert_eq!(store.runs_on(20270000).expect("read"), (1, 0));
    }
}
