//! The store's commit counter, kept both inside the database and in a side file written after
//! each durable commit, so an open that finds the database behind the side file knows redb fell
//! back to an older commit (a damaged page: redb then silently uses the previous root) or that
//! an older copy of the file was put back, and says so loudly instead of serving less.

use std::path::{Path, PathBuf};

use redb::{ReadableTable, Table, TableDefinition};

use super::{StoreError, db_err};

/// One row: how many writer commits this database holds.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const COMMITS: &str = "commits";
/// The side file beside the database (decimal text, the last commit made durable).
pub const SIDE_FILE: &str = "spare.redb.commits";

/// What an open found: the database holds fewer commits than this peer made durable before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rollback {
    /// The commit the side file says was made durable last.
    pub expected: u64,
    /// The commit the database holds.
    pub found: u64,
}

impl Rollback {
    /// Commits lost.
    pub fn lost(&self) -> u64 {
        self.expected - self.found
    }
}

/// The side file of the database in `dir`.
pub(super) fn side_file(dir: &Path) -> PathBuf {
    dir.join(SIDE_FILE)
}

/// Counts one commit inside the writer's transaction; returns the new count.
pub(super) fn bump(t: &mut Table<&str, u64>) -> Result<u64, StoreError> {
    let n = read(t)? + 1;
    t.insert(COMMITS, n).map_err(db_err)?;
    Ok(n)
}

/// The side file, kept open by the writer thread: a commit's count is written in place, the
/// same 20 digits each time, because opening and truncating the file per commit took 3 % of a
/// busy peer's CPU.
pub(super) struct Side {
    path: PathBuf,
    file: Option<std::fs::File>,
    /// Whether a longer file left by an earlier version has been cut to the 20 digits.
    cut: bool,
}

impl Side {
    pub(super) fn new(path: PathBuf) -> Side {
        Side { path, file: None, cut: false }
    }

    /// Records `n` as made durable. Not fsynced: a crash may leave the side file behind the
    /// database (no warning then, which is right) but never ahead of it, since it is written
    /// only after the commit returned. A torn write reads as unreadable: a warning, no error.
    pub(super) fn record(&mut self, n: u64) {
        if let Err(e) = self.write(n) {
            tracing::warn!("cannot write {}: {e} (a rollback of the store would go unnoticed)", self.path.display());
        }
    }

    /// Writes `n` over the file's 20 digits; a file that failed is opened again next time.
    fn write(&mut self, n: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let file = match self.file.take() {
            Some(file) => file,
            None => std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&self.path)?,
        };
        file.write_all_at(format!("{n:020}").as_bytes(), 0)?;
        if !self.cut {
            file.set_len(20)?;
            self.cut = true;
        }
        self.file = Some(file);
        Ok(())
    }
}

/// Compares the database's count with the side file's at open, and logs an error on a rollback.
pub(super) fn check(db_file: &Path, side: &Path, found: u64) -> Option<Rollback> {
    let text = match std::fs::read_to_string(side) {
        Ok(t) => t,
        // A new data directory, or one from before the side file.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("cannot read {}: {e}; a rollback of the store cannot be checked", side.display());
            return None;
        }
    };
    let Ok(expected) = text.trim().parse::<u64>() else {
        // A crash while it was written; the next commit rewrites it.
        tracing::warn!("{} is unreadable ({text:?}); a rollback of the store cannot be checked", side.display());
        return None;
    };
    if expected <= found {
        return None;
    }
    let r = Rollback { expected, found };
    tracing::error!(
        file = %db_file.display(),
        expected,
        found,
        lost = r.lost(),
        "the store rolled back: {} holds commit {found} but commit {expected} was made durable before, so {} \
         commit(s) are lost (the file was damaged and redb fell back to an older commit, or an older copy was put back). \
         Jobs, results and attestations written in them are gone here: results this peer verified since may be \
         served again by other coordinators or run again. Check the disk.",
        db_file.display(),
        r.lost(),
    );
    Some(r)
}

/// The count the database holds now.
pub(super) fn read(t: &impl ReadableTable<&'static str, u64>) -> Result<u64, StoreError> {
    Ok(t.get(COMMITS).map_err(db_err)?.map_or(0, |v| v.value()))
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};
    use std::sync::{Arc, Mutex};

    use spare_protocol::{JobId, PeerId, Standing};

    use super::super::{DB_FILE, Op, Store};

    /// Commits written before the damage.
    const COMMITS: u8 = 20;

    /// Collects what the store logs, to assert on the warning.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);

    impl Write for Log {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Writes commits, takes a copy of the files as a crash would leave them (the peer killed,
    /// redb not closed), damages the copy at `offset` and opens it: redb repairs it, and the
    /// open says loudly that commits were lost when it fell back to an older one.
    async fn damaged_at(offset: u64) -> (Option<super::Rollback>, String, usize) {
        let (live, dir) = (tempfile::tempdir().expect("temporary directory"), tempfile::tempdir().expect("temporary directory"));
        {
            let store = Store::open(live.path()).expect("open");
            for i in 0..COMMITS {
                let standing = Standing { agreed: u64::from(i), ..Standing::default() };
                store.write(vec![Op::PutStandings(vec![(PeerId([i; 32]), standing)]), Op::PutFetched(JobId([i; 32]))]).await.expect("write");
            }
            for f in [DB_FILE, super::SIDE_FILE] {
                std::fs::copy(live.path().join(f), dir.path().join(f)).expect("copy");
            }
        }
        let mut f = std::fs::OpenOptions::new().write(true).open(dir.path().join(DB_FILE)).expect("the database file");
        f.seek(SeekFrom::Start(offset)).expect("seek");
        f.write_all(&[0xa5; 8]).expect("damage");
        drop(f);
        let log = Log::default();
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || sink.clone()).with_ansi(false).finish();
        let opened = tracing::subscriber::with_default(subscriber, || Store::open(dir.path()));
        let text = String::from_utf8_lossy(&log.0.lock().expect("log lock")).into_owned();
        match opened {
            Ok(store) => {
                let kept = store.standings().expect("read").len();
                (store.rollback(), text, kept)
            }
            Err(e) => panic!("offset {offset}: redb refused the file ({e}); the test expects it to fall back\n{text}"),
        }
    }

    /// Finding 16: damage at 4096, 4200 or 8192 made redb fall back to an older commit with no
    /// word. Now an open that loses commits logs an error naming the file and how many were lost,
    /// and the store reports it; one that loses none says nothing of a rollback. Which offsets
    /// roll back depends on the file's layout: since the open writes the schema row, this file's
    /// last commit lies at 16384 and 24576 (a probe of every KiB up to 40 KiB), and damage at the
    /// finding's offsets loses nothing.
    #[tokio::test]
    async fn a_rolled_back_store_says_so() {
        let mut rolled_back = 0;
        for offset in [4096, 4200, 8192, 16384, 16500, 24576] {
            let (rollback, log, kept) = damaged_at(offset).await;
            let lost = u64::from(COMMITS) - kept as u64;
            match rollback {
                Some(r) => {
                    rolled_back += 1;
                    assert_eq!((r.expected, r.lost()), (u64::from(COMMITS), lost), "offset {offset}");
                    assert!(log.contains("ERROR") && log.contains("the store rolled back") && log.contains(DB_FILE), "offset {offset}: {log}");
                }
                None => assert_eq!((lost, log.contains("rolled back")), (0, false), "offset {offset}: rows lost silently: {log}"),
            }
        }
        assert!(rolled_back >= 2, "the damage at 16384, 16500 and 24576 rolls this file back");
    }
}
