//! The store's schema version, a row of `meta`: a build refuses a data directory that a newer
//! build wrote, rather than read tables it does not know and serve less (an older build that
//! opened a store moved into the attestation log found no attestations, and said nothing).

use redb::{ReadableTable, Table};

use super::{StoreError, db_err};

/// The version of the tables this build writes. 1: attestations by task (before `log`,
/// implied where no row says); 2: attestations in each job's log (`log.rs`). A build that
/// changes what a table holds, in a way an older build would misread, raises it.
pub const SCHEMA: u64 = 2;
const ROW: &str = "schema";

/// Refuses a store that a newer build wrote; to be called before any migration touches it.
pub(super) fn check(t: &impl ReadableTable<&'static str, u64>, path: &str) -> Result<(), StoreError> {
    match t.get(ROW).map_err(db_err)?.map(|v| v.value()) {
        Some(found) if found > SCHEMA => Err(StoreError::Newer { path: path.to_string(), found, supported: SCHEMA }),
        _ => Ok(()),
    }
}

/// Notes that the store now holds this build's tables (after its migrations).
pub(super) fn stamp(t: &mut Table<&str, u64>) -> Result<(), StoreError> {
    t.insert(ROW, SCHEMA).map_err(db_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use redb::{Database, ReadableDatabase};

    use super::super::commits::META;
    use super::super::{DB_FILE, Store, StoreError};
    use super::*;

    fn schema_in(dir: &std::path::Path) -> Option<u64> {
        let db = Database::create(dir.join(DB_FILE)).expect("database");
        let tx = db.begin_read().expect("read");
        let t = tx.open_table(META).expect("meta");
        t.get(ROW).expect("row").map(|v| v.value())
    }

    #[tokio::test]
    async fn a_store_says_its_schema_and_a_newer_one_is_refused() {
        let dir = tempfile::tempdir().expect("temporary directory");
        drop(Store::open(dir.path()).expect("a fresh store"));
        assert_eq!(schema_in(dir.path()), Some(SCHEMA));
        // As a newer build would leave it.
        {
            let db = Database::create(dir.path().join(DB_FILE)).expect("database");
            let tx = db.begin_write().expect("write");
            tx.open_table(META).expect("meta").insert(ROW, SCHEMA + 1).expect("row");
            tx.commit().expect("commit");
        }
        let err = Store::open(dir.path()).err().expect("refused");
        assert!(matches!(err, StoreError::Newer { found, supported: SCHEMA, .. } if found == SCHEMA + 1), "{err}");
        assert!(err.to_string().contains("written by a newer Spare"), "{err}");
        // Refused before anything was touched: the newer build's mark stays.
        assert_eq!(schema_in(dir.path()), Some(SCHEMA + 1));
    }
}
