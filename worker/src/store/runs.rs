//! How many replicas this peer ran each local calendar day, kept in the store so "tasks run
//! today" on the status page survives a restart. One row per day, and at most
//! [`DAYS_KEPT`] of them.

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, Table};

use super::{RUNS, StoreError, db_err};

/// Days of counts kept: a year and a little, the older rows go as new days come.
pub const DAYS_KEPT: usize = 400;

/// The runs a commit's writes count, by day: added to the table once per commit, not once per
/// run (a busy peer ends thousands of runs a second). Days are few in one commit.
#[derive(Default)]
pub(super) struct Counts(Vec<(u32, u64, u64)>);

impl Counts {
    /// One run on `day` (YYYYMMDD); `ok`: it exited 0.
    pub(super) fn add(&mut self, day: u32, ok: bool) {
        let not_ok = u64::from(!ok);
        match self.0.iter_mut().find(|(d, ..)| *d == day) {
            Some((_, all, n)) => {
                *all += 1;
                *n += not_ok;
            }
            None => self.0.push((day, 1, not_ok)),
        }
    }

    /// The runs that `ops` count.
    pub(super) fn add_ops(&mut self, ops: &[super::Op]) {
        for op in ops {
            if let super::Op::CountRun { day, ok } = op {
                self.add(*day, *ok);
            }
        }
    }

    /// Adds the counts to the table, inside the writer's transaction.
    pub(super) fn write(self, t: &mut Table<u32, (u64, u64)>) -> Result<(), StoreError> {
        for (day, runs, failed) in self.0 {
            count(t, day, runs, failed)?;
        }
        Ok(())
    }
}

/// Counts `runs` runs on `day` (YYYYMMDD), `failed` of them not successful.
fn count(t: &mut Table<u32, (u64, u64)>, day: u32, runs: u64, failed: u64) -> Result<(), StoreError> {
    let (all, not_ok) = t.get(day).map_err(db_err)?.map_or((0, 0), |v| v.value());
    let fresh = all == 0;
    t.insert(day, (all + runs, not_ok + failed)).map_err(db_err)?;
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

    /// Run counts sent alone wait for another commit, or at most `RUN_COUNTS_HELD`, and are
    /// never lost at a clean close.
    #[tokio::test]
    async fn held_run_counts_go_with_the_next_commit_by_their_deadline_and_at_close() {
        let dir = tempfile::tempdir().expect("temporary directory");
        {
            let store = Store::open(dir.path()).expect("open");
            store.count_run(20261204, true);
            store.count_run(20261204, false);
            // No other write comes: the held counts are committed by their deadline.
            let deadline = std::time::Instant::now() + super::super::writer::RUN_COUNTS_HELD * 10;
            while store.runs_on(20261204).expect("read") != (2, 1) {
                assert!(std::time::Instant::now() < deadline, "held run counts never committed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            // Another write takes held counts along with it.
            store.count_run(20261204, true);
            store.write(vec![Op::PutFetched(spare_protocol::JobId([7; 32]))]).await.expect("write");
            store.count_run(20261205, true);
        }
        // The store closed before the last count's deadline: it was written at the close.
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.runs_on(20261204).expect("read"), (3, 1));
        assert_eq!(store.runs_on(20261205).expect("read"), (1, 0));
    }
}
