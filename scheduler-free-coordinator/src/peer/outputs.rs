//! The outputs of attestations whose task is not final yet, held by a coordinator so that a
//! verdict is stored with its bytes whichever attestation completes it: one replayed from
//! another coordinator without its output (`Replicate`, `Adopt`) finds the bytes of an agreeing
//! one recorded earlier (known gaps 14 and 15). Only the hash is attested, so any output that
//! hashes to the agreed result is the agreed output.
//!
//! Sans-IO and bounded: at most [`PENDING_OUTPUT_BYTES`] are held; past that the outputs of the
//! tasks kept longest ago go first (their verdict then falls back to the deciding attestation's
//! own output, as before).

use std::collections::{HashMap, VecDeque};

use crate::{BlobId, TaskId};

/// Most bytes held for tasks not yet final: outputs and their bookkeeping ([`ENTRY_BYTES`]).
pub const PENDING_OUTPUT_BYTES: usize = 64 << 20;
/// What holding one output costs beyond its bytes (its map slot, hash, vectors and place in the
/// order), counted against the bound so a flood of tiny outputs cannot hold several times it.
pub const ENTRY_BYTES: usize = 192;

/// Outputs by task, each under its hash.
#[derive(Debug, Default)]
pub struct PendingOutputs {
    tasks: HashMap<TaskId, Vec<(BlobId, Vec<u8>)>>,
    /// Tasks in the order their first output was kept (may name tasks since forgotten).
    order: VecDeque<TaskId>,
    bytes: usize,
}

impl PendingOutputs {
    /// Holds `output` for `task` under `hash`, which the caller checked it hashes to. Empty
    /// outputs (every failed run's) and a second output of one hash are not held.
    pub fn keep(&mut self, task: TaskId, hash: BlobId, output: &[u8]) {
        if output.is_empty() || output.len() > PENDING_OUTPUT_BYTES {
            return;
        }
        // Room for one: most tasks hold one output (a first push would make room for four).
        let held = self.tasks.entry(task).or_insert_with(|| Vec::with_capacity(1));
        if held.iter().any(|(h, _)| *h == hash) {
            return;
        }
        if held.is_empty() {
            self.order.push_back(task);
        }
        held.push((hash, output.to_vec()));
        self.bytes += output.len() + ENTRY_BYTES;
        while self.bytes > PENDING_OUTPUT_BYTES {
            let Some(oldest) = self.order.pop_front() else { break };
            self.forget(&oldest);
        }
        // Forgotten tasks linger in `order`; drop them once they outnumber the held ones.
        if self.order.len() > 2 * self.tasks.len() + 1_024 {
            let tasks = &self.tasks;
            self.order.retain(|t| tasks.contains_key(t));
        }
    }

    /// The output held for `task` that hashes to `hash`.
    pub fn get(&self, task: &TaskId, hash: &BlobId) -> Option<&[u8]> {
        self.tasks.get(task)?.iter().find(|(h, _)| h == hash).map(|(_, o)| o.as_slice())
    }

    /// Drops what is held for `task` (it is final, or its job is gone).
    pub fn forget(&mut self, task: &TaskId) {
        if let Some(held) = self.tasks.remove(task) {
            self.bytes -= held.iter().map(|(_, o)| o.len() + ENTRY_BYTES).sum::<usize>();
        }
    }

    /// Bytes held: outputs and their bookkeeping.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JobId;

    fn task(i: u32) -> TaskId {
        TaskId { job: JobId([1; 32]), index: i }
    }

    #[test]
    fn an_output_is_found_by_its_hash_until_its_task_is_forgotten() {
        let mut p = PendingOutputs::default();
        let (a, b) = (BlobId::of(b"42"), BlobId::of(b"41"));
        p.keep(task(0), a, b"42");
        p.keep(task(0), a, b"42");
        p.keep(task(0), b, b"41");
        p.keep(task(1), BlobId::of(b""), b"");
        assert_eq!(p.get(&task(0), &a), Some(&b"42"[..]));
        assert_eq!(p.get(&task(0), &b), Some(&b"41"[..]));
        assert_eq!(p.get(&task(1), &BlobId::of(b"")), None, "empty outputs are not held");
        assert_eq!(p.bytes(), 4 + 2 * ENTRY_BYTES, "one copy per hash, each with its bookkeeping");
        p.forget(&task(0));
        assert_eq!((p.get(&task(0), &a), p.bytes()), (None, 0));
    }

    #[test]
    fn past_the_bound_the_oldest_tasks_go_first() {
        let mut p = PendingOutputs::default();
        let big = vec![7u8; PENDING_OUTPUT_BYTES / 4 - ENTRY_BYTES];
        let h = BlobId::of(&big);
        for i in 0..5 {
            p.keep(task(i), h, &big);
        }
        assert!(p.bytes() <= PENDING_OUTPUT_BYTES);
        assert_eq!(p.get(&task(0), &h), None, "the oldest went");
        assert!((1..5).all(|i| p.get(&task(i), &h).is_some()));
    }

    #[test]
    fn tiny_outputs_count_their_bookkeeping_against_the_bound() {
        let mut p = PendingOutputs::default();
        let fits = PENDING_OUTPUT_BYTES / (1 + ENTRY_BYTES);
        for i in 0..fits as u32 + 10 {
            p.keep(task(i), BlobId::of(b"x"), b"x");
        }
        assert!(p.bytes() <= PENDING_OUTPUT_BYTES);
        assert_eq!(p.get(&task(0), &BlobId::of(b"x")), None, "one-byte outputs are bounded by count too");
    }
}
