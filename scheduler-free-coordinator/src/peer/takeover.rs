//! The sync at a takeover. A verdict is a function of the attestations in recording order, and
//! the backups a dead leader streamed to may each hold a different part of its log: a report is
//! answered once *one* backup holds it, so the backup that takes over may lack what another
//! one recorded (and may even have decided the task from). Before the new active coordinator
//! leases or decides anything, it sends each backup it kept the whole job (an adoption marked
//! `sync`); each answers with what it recorded that the adoption did not carry, in its own
//! order, and the new leader records that after its own log. Its log is then the longest the
//! dead leader's stream left (the backups' logs are prefixes of one stream), so the backups and
//! the new leader go on in one order and reach the same verdicts. A backup that does not answer
//! within [`SYNC_TIMEOUT_MS`] is not waited for (it is likely the one that is dead too).
//!
//! Sans-IO: [`Sync::start`] says whom to ask; each answer goes to [`Sync::handle_answer`], which
//! says when the last one is in; [`Sync::poll_timeout`] says when to stop waiting for the rest;
//! [`missing`] is the backup's side.

use std::collections::HashSet;

use crate::{Attestation, Millis, PeerId};

/// How long a new leader waits for its backups' answers before it leads without them.
pub const SYNC_TIMEOUT_MS: Millis = 2_000;

/// A takeover's sync in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sync {
    /// Backups asked that have not answered.
    waiting: Vec<PeerId>,
    /// When the round stops waiting.
    deadline: Millis,
    /// Attestations the answers brought that the new leader lacked.
    pulled: usize,
    /// The new leader's log length when the sync began: what it records while it waits (the
    /// reports of workers that already follow it, its own replicas) is in no adoption sent and
    /// not streamed either, since it does not lead yet.
    logged_at_start: u64,
}

impl Sync {
    /// A sync for a new leader whose list is `list` (itself first) and whose log holds `logged`
    /// attestations: asks the backups it kept. `None` when there is nobody to ask.
    pub fn start(list: &[PeerId], logged: u64, now: Millis) -> Option<Sync> {
        let waiting: Vec<PeerId> = list.iter().skip(1).copied().collect();
        (!waiting.is_empty()).then_some(Sync { waiting, deadline: now.saturating_add(SYNC_TIMEOUT_MS), pulled: 0, logged_at_start: logged })
    }

    /// The backups to send the job to (marked `sync`).
    pub fn asked(&self) -> &[PeerId] {
        &self.waiting
    }

    /// `from` answered (`Some(n)`: with `n` attestations the new leader did not have, recorded
    /// now) or failed (`None`). True once every backup asked has answered.
    pub fn handle_answer(&mut self, from: PeerId, pulled: Option<usize>) -> bool {
        if let Some(i) = self.waiting.iter().position(|w| *w == from) {
            self.waiting.swap_remove(i);
            self.pulled += pulled.unwrap_or(0);
        }
        self.waiting.is_empty()
    }

    /// When the round stops waiting, whatever is unanswered.
    pub fn poll_timeout(&self) -> Millis {
        self.deadline
    }

    /// Whether the backups may lack what the new leader pulled from another one, or what it
    /// recorded while it waited (its log holds `logged` now): then each is caught up once more
    /// (otherwise the sync's adoption brought each everything already).
    pub fn needs_catch_up(&self, logged: u64) -> bool {
        self.pulled > 0 || logged > self.logged_at_start
    }
}

/// The attestations a sync adoption carried, by task index and worker (a task keeps one
/// attestation per worker, so the pair names it).
#[derive(Clone, Debug, Default)]
pub struct Carried(HashSet<(u32, PeerId)>);

impl Carried {
    /// The set of these `(task index, worker)` pairs.
    pub fn of(pairs: impl IntoIterator<Item = (u32, PeerId)>) -> Carried {
        Carried(pairs.into_iter().collect())
    }

    /// Whether the backup answers with `att`: the adoption did not carry it.
    pub fn lacks(&self, att: &Attestation) -> bool {
        !self.0.contains(&(att.task.index, att.peer))
    }
}

/// The backup's answer: the positions in its `log` (recording order) of the attestations that
/// `carried` lacks.
pub fn missing<'a>(log: impl IntoIterator<Item = &'a Attestation>, carried: &Carried) -> Vec<usize> {
    log.into_iter().enumerate().filter(|(_, a)| carried.lacks(a)).map(|(i, _)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlobId, JobId, Outcome, ResultKey, TaskId};

    fn att(index: u32, worker: u8) -> Attestation {
        Attestation {
            task: TaskId { job: JobId([1; 32]), index },
            peer: PeerId([worker; 32]),
            result: ResultKey { outcome: Outcome::Exited(0), output_hash: BlobId([0; 32]) },
            fuel_used: 0,
            signature: Vec::new(),
        }
    }

    #[test]
    fn a_backup_answers_with_what_the_adoption_lacked_in_its_own_order() {
        let log = [att(0, 1), att(3, 2), att(0, 2), att(1, 1)];
        let carried = Carried::of([(0, PeerId([1; 32])), (1, PeerId([1; 32]))]);
        assert_eq!(missing(&log, &carried), vec![1, 2]);
        assert_eq!(missing(&log[..1], &carried), Vec::<usize>::new());
    }

    #[test]
    fn the_round_ends_with_the_last_answer_or_at_its_deadline() {
        let (me, a, b) = (PeerId([1; 32]), PeerId([2; 32]), PeerId([3; 32]));
        assert_eq!(Sync::start(&[me], 0, 0), None, "no backup kept: nothing to wait for");
        let mut s = Sync::start(&[me, a, b], 7, 100).unwrap();
        assert_eq!(s.asked(), &[a, b]);
        assert_eq!(s.poll_timeout(), 100 + SYNC_TIMEOUT_MS);
        assert!(!s.handle_answer(PeerId([9; 32]), Some(5)), "a stranger's answer counts for nothing");
        assert!(!s.handle_answer(a, None));
        assert!(!s.needs_catch_up(7));
        assert!(s.needs_catch_up(8), "recorded while it waited");
        assert!(s.handle_answer(b, Some(2)));
        assert!(s.needs_catch_up(9));
    }
}
