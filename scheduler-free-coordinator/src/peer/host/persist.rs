//! What a host asks its driver to store: each attestation it records (with its place among its
//! task's), each verdict with the bytes and detail it keeps, and each change of the job's list.
//! A verdict gets the agreed output from the attestation that completed the quorum when it came
//! with it, else from an agreeing one recorded earlier ([`PendingOutputs`]), which also brings
//! a replayed attestation's verdict its bytes (known gaps 14 and 15).
//!
//! [`PendingOutputs`]: crate::peer::outputs::PendingOutputs

use std::sync::Arc;

use crate::peer::outputs::PendingOutputs;
use crate::{Attestation, Coordinator, Detail, Millis, TaskId, Verdict};

use super::{Host, Shared, Write};

/// The output and detail of an attestation being recorded, so a verdict it completes keeps the
/// agreed bytes and says why.
#[derive(Clone, Copy, Debug)]
pub struct Evidence<'a> {
    /// Shared: the log entry made of it holds the same one.
    pub att: &'a Arc<Attestation>,
    pub output: &'a [u8],
    pub detail: &'a Detail,
}

/// What the store keeps of `task`'s `verdict` ([`Write::Verdict`]): who verified it and how many
/// attestations it took (from `coord`), the agreed output — from the attestation of `evidence`
/// that completed the quorum when it came with it, else from an agreeing one kept in
/// `outputs` — and the detail of the run that decided it.
pub fn verdict_write(coord: &Coordinator, outputs: &PendingOutputs, task: TaskId, verdict: &Verdict, evidence: &[Evidence<'_>]) -> Write {
    let (verified_by, attestations) = coord.task(&task).map(|v| (v.verified_by, v.attestations)).unwrap_or_default();
    // The attestation that completes a quorum carries the agreed result.
    // The index first: a batch's evidence is all of one job, and this runs for every verdict.
    let from = evidence
        .iter()
        .rev()
        .find(|e| e.att.task.index == task.index && e.att.task == task && verdict.agreed() == Some(&e.att.result));
    let output = match verdict {
        Verdict::Verified(key) => from
            .map(|e| e.output)
            .filter(|o| !o.is_empty())
            .or_else(|| outputs.get(&task, &key.output_hash))
            .map(<[u8]>::to_vec)
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let detail = from.map(|e| e.detail.clone()).unwrap_or_default();
    Write::Verdict { task, verdict: verdict.clone(), verified_by, attestations, output, detail }
}

impl super::Recorded {
    /// As evidence for the verdict it may complete.
    pub(super) fn evidence(&self) -> Evidence<'_> {
        Evidence { att: &self.logged.att, output: &self.output, detail: &self.detail }
    }
}

impl Host {
    /// `task` reached `verdict`: its write, with the outputs of the task let go.
    pub(super) fn write_verdict(&mut self, cx: &mut Shared, task: TaskId, verdict: &Verdict, evidence: &[Evidence<'_>]) {
        let write = verdict_write(&cx.coord, &cx.outputs, task, verdict, evidence);
        cx.outputs.forget(&task);
        self.writes.push(write);
    }

    /// Cancels the job (false: it had ended already, and keeps its final state); the backups,
    /// when this peer leads, get the whole job again, which says it is cancelled.
    pub(super) fn cancel(&mut self, cx: &mut Shared, now: Millis) -> bool {
        self.clock = now;
        if self.is_done(cx) {
            return false;
        }
        cx.coord.cancel(&self.job);
        self.writes.push(Write::Cancelled { job: self.job });
        self.drain(cx, &[]);
        self.catch_up_backups(cx, now);
        true
    }

    /// The writes asked since the last call.
    pub(super) fn take_writes(&mut self) -> Vec<Write> {
        std::mem::take(&mut self.writes)
    }
}
