//! The store's writer thread, the only writer: it takes every batch that has queued up, applies
//! them in one transaction (group commit), commits once, then answers each sender. Run counts
//! sent alone ([`super::Store::count_run`]) are held up to [`RUN_COUNTS_HELD`] and go with the next
//! commit: on a busy peer more than half the commits carried nothing else, each a full commit
//! and `fdatasync` for a figure on the status page.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use redb::{Database, ReadableTable};
use spare_protocol::{PeerId, Standing, TaskId};

use super::{
    Batch, FETCHED, FINISHED, INPUTS, JOBS, MAX_GROUP, Op, RESULTS, RUNS, STANDINGS, StoreError, commits, db_err, encode,
    job_in, log, records, runs, task_key,
};
use log::ATTESTATION_LOG;

/// Longest a run count sent alone waits for another commit to go with: what a crash may lose of
/// "tasks run today", and how far the status page may lag.
pub(super) const RUN_COUNTS_HELD: Duration = Duration::from_secs(1);

/// Whether a batch is only run counts that nobody waits on, which may wait for the next commit.
fn holdable((ops, reply): &Batch) -> bool {
    reply.is_none() && ops.iter().all(|op| matches!(op, Op::CountRun { .. }))
}

pub(super) fn writer(db: Arc<Database>, rx: Receiver<Batch>, side: std::path::PathBuf) {
    let mut side = commits::Side::new(side);
    let mut positions = log::Positions::default();
    let mut held = runs::Counts::default();
    let mut held_since: Option<Instant> = None;
    loop {
        let first = match held_since {
            None => match rx.recv() {
                Ok(b) => b,
                Err(_) => break,
            },
            Some(since) => match rx.recv_timeout(RUN_COUNTS_HELD.saturating_sub(since.elapsed())) {
                Ok(b) => b,
                Err(RecvTimeoutError::Timeout) => {
                    commit(&db, &mut positions, &mut side, Vec::new(), std::mem::take(&mut held));
                    held_since = None;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            },
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(b) => group.push(b),
                Err(_) => break,
            }
        }
        if group.iter().all(holdable) {
            let since = *held_since.get_or_insert_with(Instant::now);
            for (ops, _) in &group {
                held.add_ops(ops);
            }
            if since.elapsed() < RUN_COUNTS_HELD {
                continue;
            }
            group.clear();
        }
        commit(&db, &mut positions, &mut side, group, std::mem::take(&mut held));
        held_since = None;
    }
    // The queue closed: what is held is written before the store closes.
    if held_since.is_some() {
        commit(&db, &mut positions, &mut side, Vec::new(), held);
    }
}

/// Commits `group` with the `held` run counts, records the commit in the side file, and answers
/// each sender.
fn commit(db: &Database, positions: &mut log::Positions, side: &mut commits::Side, group: Vec<Batch>, held: runs::Counts) {
    let result = apply(db, positions, held, group.iter().flat_map(|(ops, _)| ops.iter()));
    if result.is_err() {
        // Positions taken in a transaction that did not commit are free again.
        *positions = log::Positions::default();
    }
    if let Ok(n) = &result {
        side.record(*n);
    }
    for (_, reply) in group {
        if let Some(reply) = reply {
            let _ = reply.send(result.as_ref().map(|_| ()).map_err(|e| StoreError::Db(e.to_string())));
        }
    }
    if let Err(e) = result {
        tracing::error!("store write failed: {e}");
    }
}

/// Applies `ops` and the `held` run counts in one transaction; returns the commit's number ([`commits`]).
fn apply<'a>(
    db: &Database,
    positions: &mut log::Positions,
    held: runs::Counts,
    ops: impl Iterator<Item = &'a Op>,
) -> Result<u64, StoreError> {
    let tx = db.begin_write().map_err(db_err)?;
    let n = commits::bump(&mut tx.open_table(commits::META).map_err(db_err)?)?;
    {
        let mut jobs = tx.open_table(JOBS).map_err(db_err)?;
        let mut inputs = tx.open_table(INPUTS).map_err(db_err)?;
        let mut atts = tx.open_table(ATTESTATION_LOG).map_err(db_err)?;
        let mut results = tx.open_table(RESULTS).map_err(db_err)?;
        let mut finished = tx.open_table(FINISHED).map_err(db_err)?;
        let mut standings = tx.open_table(STANDINGS).map_err(db_err)?;
        let mut fetched = tx.open_table(FETCHED).map_err(db_err)?;
        let mut runs = tx.open_table(RUNS).map_err(db_err)?;
        let enc = |e: postcard::Error| StoreError::Db(format!("encode: {e}"));
        // Run counts are summed over the commit (with those held for it) and written once; no
        // other write reads them.
        let mut counted = held;
        // Standings are whole values, and a commit carries a peer's many times (every verdict
        // judges its peers): only the last of each is written, once, in key order.
        let mut standing_of: BTreeMap<PeerId, &Standing> = BTreeMap::new();
        for op in ops {
            match op {
                Op::PutJob(id, job) => {
                    jobs.insert(id.0, records::encode_job(job).map_err(enc)?.as_slice()).map_err(db_err)?;
                }
                Op::UpdateJob { job, coordinators, cancelled } => {
                    let stored = jobs.get(job.0).map_err(db_err)?.map(|v| job_in(v.value())).transpose()?;
                    if let Some(mut stored) = stored {
                        if let Some(list) = coordinators {
                            stored.coordinators = list.clone();
                        }
                        stored.cancelled |= *cancelled;
                        jobs.insert(job.0, records::encode_job(&stored).map_err(enc)?.as_slice()).map_err(db_err)?;
                    }
                }
                Op::PutInputs { job, first, inputs: list } => {
                    for (i, input) in list.iter().enumerate() {
                        let task = TaskId { job: *job, index: first + i as u32 };
                        inputs.insert(task_key(&task), encode(input).map_err(enc)?.as_slice()).map_err(db_err)?;
                    }
                }
                Op::PutAttestation { attestation, lone } => {
                    let k = log::key(&attestation.task.job, positions.take(&atts, &attestation.task.job)?);
                    let rec = records::StoredAttestationRef { attestation: attestation.as_ref(), lone: *lone };
                    atts.insert(k, encode(&rec).map_err(enc)?.as_slice()).map_err(db_err)?;
                }
                Op::PutResult(task, result) => {
                    results.insert(task_key(task), encode(result).map_err(enc)?.as_slice()).map_err(db_err)?;
                }
                Op::PutFinished(job, at) => {
                    finished.insert(job.0, at).map_err(db_err)?;
                }
                Op::PutStandings(list) => standing_of.extend(list.iter().map(|(peer, standing)| (*peer, standing))),
                Op::PutFetched(job) => {
                    fetched.insert(job.0, ()).map_err(db_err)?;
                }
                Op::CountRun { day, ok } => counted.add(*day, *ok),
                Op::DeleteJob(job) => {
                    let (first, last) = (TaskId { job: *job, index: 0 }, TaskId { job: *job, index: u32::MAX });
                    inputs.retain_in(task_key(&first)..=task_key(&last), |_, _| false).map_err(db_err)?;
                    results.retain_in(task_key(&first)..=task_key(&last), |_, _| false).map_err(db_err)?;
                    atts.retain_in(log::range(job), |_, _| false).map_err(db_err)?;
                    positions.forget(job);
                    finished.remove(job.0).map_err(db_err)?;
                    fetched.remove(job.0).map_err(db_err)?;
                    jobs.remove(job.0).map_err(db_err)?;
                }
            }
        }
        counted.write(&mut runs)?;
        for (peer, standing) in standing_of {
            standings.insert(peer.0, encode(standing).map_err(enc)?.as_slice()).map_err(db_err)?;
        }
    }
    tx.commit().map_err(db_err)?;
    Ok(n)
}
