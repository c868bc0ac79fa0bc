//! The durable store: redb in the data directory for jobs, inputs, attestations and results;
//! blobs as files named by hash beside it ([`blobs`]). Writes go through one writer thread that
//! commits whatever has queued up in a single transaction (group commit), so a burst of task
//! results costs one fsync, not one per task.

pub mod blobs;
mod commits;
mod key;
mod log;
pub mod records;
mod retention;
mod runs;
mod schema;
mod writer;

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use spare_protocol::{Attestation, JobId, PeerId, Standing, TaskId};
use std::future::Future;

use tokio::sync::oneshot;

pub use blobs::{BlobError, BlobStore, BlobWriter};
pub use commits::{Rollback, SIDE_FILE};
pub use records::{StoredAttestation, StoredInput, StoredJob, StoredResult};
use key::Fixed;
use log::ATTESTATION_LOG;
use records::{decode, encode, task_key, task_of};

// Keys are `Fixed` byte strings (`key.rs`): a job's 32 bytes, a task's 36, an attestation's 40.
const JOBS: TableDefinition<Fixed<32>, &[u8]> = TableDefinition::new("jobs");
const INPUTS: TableDefinition<Fixed<36>, &[u8]> = TableDefinition::new("inputs");
const RESULTS: TableDefinition<Fixed<36>, &[u8]> = TableDefinition::new("results");
/// When each ended job ended here (Unix ms), for retention.
const FINISHED: TableDefinition<Fixed<32>, u64> = TableDefinition::new("finished");
/// What this peer's coordinator has seen of each peer (postcard `Standing`), so reputation
/// survives a restart.
const STANDINGS: TableDefinition<Fixed<32>, &[u8]> = TableDefinition::new("standings");
/// Ended jobs whose results a submitter fetched from here, beside their end: retention removes
/// them first at the disk cap, also after a restart.
const FETCHED: TableDefinition<Fixed<32>, ()> = TableDefinition::new("fetched");
/// Replicas this peer ran per local calendar day (YYYYMMDD): (all, those that did not succeed).
const RUNS: TableDefinition<u32, (u64, u64)> = TableDefinition::new("runs_per_day");

/// The database file inside the data directory.
pub const DB_FILE: &str = "spare.redb";
/// Most batches folded into one transaction.
const MAX_GROUP: usize = 1024;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (I/O, corruption).
    #[error("database: {0}")]
    Db(String),
    /// A record did not decode.
    #[error("corrupt record in table {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    /// The writer thread is gone (the peer is shutting down).
    #[error("the store is closed")]
    Closed,
    /// Creating the data directory failed.
    #[error("data directory {path}: {source}")]
    Dir { path: String, source: std::io::Error },
    /// A blob operation failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The data directory was written by a newer build, whose tables this one could misread.
    #[error(
        "{path} was written by a newer Spare (store schema {found}; this build reads up to {supported}): run that version, or give this one another data directory"
    )]
    Newer { path: String, found: u64, supported: u64 },
}

/// One change to the store.
// A job carries its content digest now: ops are short-lived and written in small batches, so the
// size of the largest costs little.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Op {
    /// A job, new or updated (cancelled).
    PutJob(JobId, StoredJob),
    /// A stored job's list of coordinators changed, or it was cancelled: changed in place (a
    /// job no longer stored stays so), in the order the coordinator side asked.
    UpdateJob { job: JobId, coordinators: Option<Vec<PeerId>>, cancelled: bool },
    /// Inputs of a job's tasks, from index `first` on.
    PutInputs { job: JobId, first: u32, inputs: Vec<StoredInput> },
    /// An attestation the coordinator recorded, appended to its job's log ([`log`]), and
    /// whether it took it alone (adaptive replication).
    PutAttestation { attestation: Arc<Attestation>, lone: bool },
    /// A task's final verdict.
    PutResult(TaskId, StoredResult),
    /// When a job ended here (Unix ms).
    PutFinished(JobId, u64),
    /// Peers' standings, as they changed.
    PutStandings(Vec<(PeerId, Standing)>),
    /// A submitter fetched every result of an ended job from here.
    PutFetched(JobId),
    /// This peer ran a replica on local day `day` (YYYYMMDD); `ok`: it exited 0.
    CountRun { day: u32, ok: bool },
    /// A job and everything stored of it (inputs, attestations, results), by retention.
    DeleteJob(JobId),
}

type Batch = (Vec<Op>, Option<oneshot::Sender<Result<(), StoreError>>>);

/// A handle on the store; cheap to clone. When the last handle is dropped, the writer thread
/// finishes what is queued and the database file is closed before the drop returns, so the same
/// directory can be opened again at once.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    blobs: BlobStore,
    writer: std::sync::mpsc::Sender<Batch>,
    /// Set when the open found the database behind the commits made durable before.
    rollback: Option<Rollback>,
    _closer: Arc<Closer>,
}

/// Joins the writer thread when the last [`Store`] handle goes. Declared last in [`Store`], so
/// by then that handle's sender is dropped and the writer sees its queue close.
struct Closer {
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Closer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

impl Store {
    /// Opens (or creates) the store in `dir` and starts its writer thread.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir { path: dir.display().to_string(), source })?;
        let path = dir.join(DB_FILE);
        let shown = path.display().to_string();
        let named = shown.clone();
        let db = Database::builder()
            .set_repair_callback(move |s| {
                // A repair follows an unclean shutdown or damage; a rollback it causes is reported
                // below, by the commit counter.
                if s.progress() == 0.0 {
                    tracing::warn!("{shown} was not closed cleanly or is damaged: redb is repairing it");
                }
            })
            .create(&path)
            .map_err(db_err)?;
        let db = Arc::new(db);
        let found = {
            let tx = db.begin_write().map_err(db_err)?;
            // A newer build's store is left as it is (the transaction is dropped, not committed).
            schema::check(&tx.open_table(commits::META).map_err(db_err)?, &named)?;
            // Tables an earlier version keyed by `[u8; N]` move to `Fixed` keys first, once.
            let moved = key::migrate(&tx, JOBS)?
                + key::migrate(&tx, INPUTS)?
                + key::migrate(&tx, log::BY_TASK)?
                + key::migrate(&tx, RESULTS)?
                + key::migrate(&tx, FINISHED)?
                + key::migrate(&tx, STANDINGS)?
                + key::migrate(&tx, FETCHED)?;
            if moved > 0 {
                tracing::info!(rows = moved, "moved the store's tables to byte-string keys");
            }
            let logged = log::migrate(&tx)?;
            if logged > 0 {
                tracing::info!(rows = logged, "moved the store's attestations into the attestation log");
            }
            // Make every table exist, so readers never meet a missing one.
            tx.open_table(JOBS).map_err(db_err)?;
            tx.open_table(INPUTS).map_err(db_err)?;
            tx.open_table(ATTESTATION_LOG).map_err(db_err)?;
            tx.open_table(RESULTS).map_err(db_err)?;
            tx.open_table(FINISHED).map_err(db_err)?;
            tx.open_table(STANDINGS).map_err(db_err)?;
            tx.open_table(FETCHED).map_err(db_err)?;
            tx.open_table(RUNS).map_err(db_err)?;
            let found = {
                let mut meta = tx.open_table(commits::META).map_err(db_err)?;
                schema::stamp(&mut meta)?;
                commits::read(&meta)?
            };
            tx.commit().map_err(db_err)?;
            found
        };
        let side = commits::side_file(dir);
        let rollback = commits::check(&path, &side, found);
        let blobs = BlobStore::open(&dir.join("blobs"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        // The writer owns the database's other handle; it drops it when the queue closes.
        let wdb = db.clone();
        let thread = std::thread::Builder::new()
            .name("spare-store".into())
            .spawn(move || writer::writer(wdb, rx, side))
            .map_err(|e| StoreError::Db(format!("cannot start the writer thread: {e}")))?;
        let closer = Closer { thread: std::sync::Mutex::new(Some(thread)) };
        Ok(Store { db, blobs, writer: tx, rollback, _closer: Arc::new(closer) })
    }

    /// Whether the open found the database rolled back (logged then as an error).
    pub fn rollback(&self) -> Option<Rollback> {
        self.rollback
    }

    /// The blob store beside the database.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Queues `ops` to be applied atomically, in call order with every other write, and returns
    /// a future that resolves once they are durable. The queue itself is unbounded so that it can
    /// be fed while a caller holds a lock (which keeps writes in the order the coordinator made
    /// them); its length is bounded by the callers: one batch per report or submission in flight.
    pub fn write(&self, ops: Vec<Op>) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let sent = self.writer.send((ops, Some(tx))).is_ok();
        async move {
            if !sent {
                return Err(StoreError::Closed);
            }
            rx.await.map_err(|_| StoreError::Closed)?
        }
    }

    /// Counts one replica run on local day `day` (YYYYMMDD; `ok`: it exited 0) for "tasks run
    /// today". Not awaited: sent alone, it waits up to [`writer::RUN_COUNTS_HELD`] for another
    /// commit to go with, so a crash may lose that last second of counts.
    pub fn count_run(&self, day: u32, ok: bool) {
        let _ = self.writer.send((vec![Op::CountRun { day, ok }], None));
    }

    /// Every stored standing, for a restart.
    pub fn standings(&self) -> Result<Vec<(PeerId, Standing)>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(STANDINGS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push((PeerId(k.value()), decode_in("standings", v.value())?));
        }
        Ok(out)
    }

    /// Every job, for a restart.
    pub fn jobs(&self) -> Result<Vec<(JobId, StoredJob)>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(JOBS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push((JobId(k.value()), job_in(v.value())?));
        }
        Ok(out)
    }

    /// One job.
    pub fn job(&self, id: &JobId) -> Result<Option<StoredJob>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(JOBS).map_err(db_err)?;
        t.get(id.0).map_err(db_err)?.map(|v| job_in(v.value())).transpose()
    }

    /// One task's input.
    pub fn input(&self, task: &TaskId) -> Result<Option<StoredInput>, StoreError> {
        Ok(self.inputs(std::slice::from_ref(task))?.pop().flatten())
    }

    /// The inputs of several tasks, in order, read in one transaction (a lease grants many).
    pub fn inputs(&self, tasks: &[TaskId]) -> Result<Vec<Option<StoredInput>>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(INPUTS).map_err(db_err)?;
        tasks.iter().map(|task| t.get(task_key(task)).map_err(db_err)?.map(|v| decode_in("inputs", v.value())).transpose()).collect()
    }

    /// Every attestation of a job, in the order the coordinator recorded them.
    pub fn attestations(&self, job: &JobId) -> Result<Vec<StoredAttestation>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(ATTESTATION_LOG).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.range(log::range(job)).map_err(db_err)? {
            let (_, v) = row.map_err(db_err)?;
            out.push(decode_in("attestations", v.value())?);
        }
        Ok(out)
    }

    /// One task's final result, if it has one.
    pub fn result(&self, task: &TaskId) -> Result<Option<StoredResult>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(RESULTS).map_err(db_err)?;
        t.get(task_key(task)).map_err(db_err)?.map(|v| result_in(v.value())).transpose()
    }

    /// Up to `limit` final results of a job with index >= `from`, in index order.
    pub fn results(&self, job: &JobId, from: u32, limit: usize) -> Result<Vec<(u32, StoredResult)>, StoreError> {
        self.results_read(job, from, limit, result_in)
    }

    /// Up to `limit` rows of a job's results from index `from`, each read by `read`.
    fn results_read(
        &self,
        job: &JobId,
        from: u32,
        limit: usize,
        read: impl Fn(&[u8]) -> Result<StoredResult, StoreError>,
    ) -> Result<Vec<(u32, StoredResult)>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(RESULTS).map_err(db_err)?;
        let lo = task_key(&TaskId { job: *job, index: from });
        let hi = task_key(&TaskId { job: *job, index: u32::MAX });
        let mut out = Vec::new();
        for row in t.range(lo..=hi).map_err(db_err)?.take(limit) {
            let (k, v) = row.map_err(db_err)?;
            out.push((task_of(&k.value()).index, read(v.value())?));
        }
        Ok(out)
    }
}

impl Store {
    /// [`Store::results`] without the outputs (left empty): what a status shows.
    pub fn result_heads(&self, job: &JobId, from: u32, limit: usize) -> Result<Vec<(u32, StoredResult)>, StoreError> {
        self.results_read(job, from, limit, |v| {
            records::decode_result_head(v).map_err(|e| StoreError::Corrupt { table: "results", detail: e.to_string() })
        })
    }
}

fn job_in(bytes: &[u8]) -> Result<StoredJob, StoreError> {
    records::decode_job(bytes).map_err(|e| StoreError::Corrupt { table: "jobs", detail: e.to_string() })
}

fn result_in(bytes: &[u8]) -> Result<StoredResult, StoreError> {
    records::decode_result(bytes).map_err(|e| StoreError::Corrupt { table: "results", detail: e.to_string() })
}

fn decode_in<'a, T: serde::Deserialize<'a>>(table: &'static str, bytes: &'a [u8]) -> Result<T, StoreError> {
    decode(bytes).map_err(|e| StoreError::Corrupt { table, detail: e.to_string() })
}

fn db_err<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use spare_protocol::{BlobId, Outcome, PeerId, ResultKey};

    /// Reputation survives a restart: the last standing written for each peer is read back.
    #[tokio::test]
    async fn standings_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (liar, honest) = (PeerId([1; 32]), PeerId([2; 32]));
        {
            let store = Store::open(dir.path()).expect("open");
            let first = Standing { agreed: 3, ..Standing::default() };
            store.write(vec![Op::PutStandings(vec![(honest, first)])]).await.expect("write");
            let later = vec![(liar, Standing { disagreed: 4, ..Standing::default() }), (honest, Standing { agreed: 9, ..first })];
            store.write(vec![Op::PutStandings(later)]).await.expect("write");
        }
        let store = Store::open(dir.path()).expect("reopen");
        let got = store.standings().expect("read");
        assert_eq!(got, vec![(liar, Standing { disagreed: 4, ..Standing::default() }), (honest, Standing { agreed: 9, ..Standing::default() })]);
        assert!(got[0].1.is_banned(), "a banned liar stays banned after a restart");
    }

    /// A commit that carries a peer's standing several times keeps the last.
    #[tokio::test]
    async fn the_last_standing_of_a_commit_wins() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(dir.path()).expect("open");
        let (a, b) = (PeerId([1; 32]), PeerId([2; 32]));
        let s = |agreed| Standing { agreed, ..Standing::default() };
        let ops = vec![
            Op::PutStandings(vec![(a, s(1)), (b, s(1))]),
            Op::PutStandings(vec![(a, s(2))]),
            Op::PutFetched(JobId([3; 32])),
            Op::PutStandings(vec![(a, s(3))]),
        ];
        store.write(ops).await.expect("write");
        assert_eq!(store.standings().expect("read"), vec![(a, s(3)), (b, s(1))]);
    }

    #[tokio::test]
    async fn attestations_keep_their_lone_mark_across_a_reopen() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let job = JobId([3; 32]);
        let att = |index: u32, peer: u8| Attestation {
            task: TaskId { job, index },
            peer: PeerId([peer; 32]),
            result: ResultKey { outcome: Outcome::Exited(0), output_hash: BlobId([index as u8; 32]) },
            fuel_used: 1,
            signature: vec![peer; 64],
        };
        {
            let store = Store::open(dir.path()).expect("open");
            let ops = vec![
                Op::PutAttestation { attestation: Arc::new(att(0, 1)), lone: true },
                Op::PutAttestation { attestation: Arc::new(att(1, 1)), lone: false },
                Op::PutAttestation { attestation: Arc::new(att(1, 2)), lone: false },
            ];
            store.write(ops).await.expect("write");
        }
        let store = Store::open(dir.path()).expect("reopen");
        let got = store.attestations(&job).expect("read");
        let want = vec![
            StoredAttestation { attestation: att(0, 1), lone: true },
            StoredAttestation { attestation: att(1, 1), lone: false },
            StoredAttestation { attestation: att(1, 2), lone: false },
        ];
        assert_eq!(got, want);
    }
}
