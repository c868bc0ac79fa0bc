//! One task's replicas: the attestations received (one per distinct peer, in arrival order), the
//! leases out, the peers that let a lease lapse, and the verdict they give.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::verdict::{agreeing_peers, best_group, decide};
use crate::{Attestation, Failure, Millis, PeerId, Policy, TaskId, Verdict};

/// A task as status reports show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskState {
    /// Waiting for a replica to start, or for more peers to reach the quorum.
    Pending,
    /// At least one replica is leased.
    Running,
    /// A quorum agreed on a successful run.
    Verified,
    /// Replicas disagreed up to `max_replicas`.
    Inconclusive,
    /// A quorum agreed on a failure, or the replicas kept missing their deadline.
    Failed,
}

impl TaskState {
    /// Whether the task will change no more.
    pub fn is_final(self) -> bool {
        matches!(self, TaskState::Verified | TaskState::Inconclusive | TaskState::Failed)
    }
}

/// A task as a status report shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskView {
    /// Its id.
    pub id: TaskId,
    /// Where it stands.
    pub state: TaskState,
    /// Its verdict.
    pub verdict: Verdict,
    /// The peers whose agreeing attestations make up the quorum, in PeerId order.
    pub verified_by: Vec<PeerId>,
    /// Attestations received so far.
    pub attestations: u32,
    /// The verdict rests on one trusted peer's attestation alone (adaptive replication).
    pub lone: bool,
    /// Why it failed or waits, in words.
    pub note: Option<String>,
}

impl TaskView {
    /// A task of an ended job whose table the coordinator let go (`Coordinator::shed`), as its
    /// stored verdict shows it: the same view the table gave.
    pub fn ended(id: TaskId, verdict: Verdict, verified_by: Vec<PeerId>, attestations: u32, policy: &Policy) -> TaskView {
        let state = match &verdict {
            Verdict::Pending => TaskState::Pending,
            Verdict::Verified(_) => TaskState::Verified,
            Verdict::Inconclusive => TaskState::Inconclusive,
            Verdict::Failed(_) => TaskState::Failed,
        };
        // Only a lone replica's verdict rests on fewer agreeing peers than the quorum.
        let lone = matches!(verdict, Verdict::Verified(_)) && verified_by.len() == 1 && policy.quorum > 1;
        let note = final_note(&verdict, attestations, policy);
        TaskView { id, state, verdict, verified_by, attestations, lone, note }
    }
}

/// Words for a task that failed (`None` for any other).
fn final_note(verdict: &Verdict, attestations: u32, policy: &Policy) -> Option<String> {
    match verdict {
        Verdict::Failed(Failure::Agreed(k)) => Some(k.outcome.describe()),
        Verdict::Failed(Failure::TimedOut(n)) => Some(format!("{n} replicas missed the {} ms deadline", policy.limits.timeout_ms)),
        Verdict::Inconclusive => Some(format!("{attestations} replicas gave no {} agreeing results", policy.quorum)),
        _ => None,
    }
}

/// One task's state inside a job table.
#[derive(Clone, Debug, Default)]
pub(crate) struct TaskEntry {
    /// Shared with the host's log and the streams to its backups, which hold the same ones:
    /// a copy each was 224 bytes an attestation at each coordinator.
    pub attestations: Vec<Arc<Attestation>>,
    /// (peer, lease expiry); never two for one peer, never for a peer that attested.
    pub leases: Vec<(PeerId, Millis)>,
    pub verdict: VerdictSlot,
    /// Replicas that missed their wall deadline.
    pub timeouts: u32,
    /// What few tasks ever have (lapsed peers, a lone lease), boxed: 8 bytes instead of 57 for
    /// the many without it, at each of every task's coordinators. `None` once both are empty.
    rare: Option<Box<Rare>>,
    /// The first attestation was taken alone and decided the task.
    pub lone_verdict: bool,
    /// A trusted peer took this untouched task as a spot check: its further replicas are leased
    /// before other tasks', so a trusted liar is caught before many lone lies of its pass.
    pub check: bool,
}

/// The part of a [`TaskEntry`] few tasks ever need.
#[derive(Clone, Debug, Default)]
struct Rare {
    /// Peers that let a lease on this task lapse, oldest first; they never get it again (while
    /// remembered: only the newest [`TaskEntry::lapse`]'s `bound` are kept).
    lapsed: Vec<PeerId>,
    /// The trusted peer holding this task's only lease as a lone replica (adaptive replication):
    /// no other replica is leased while it lives. Cleared when that lease ends (see
    /// [`TaskEntry::settle_lone`]) or trust in the peer ends.
    lone: Option<PeerId>,
}

/// `Verdict` with a `Default`, so a fresh table is cheap to build.
#[derive(Clone, Debug)]
pub(crate) struct VerdictSlot(pub Verdict);

impl Default for VerdictSlot {
    fn default() -> Self {
        VerdictSlot(Verdict::Pending)
    }
}

impl TaskEntry {
    pub fn verdict(&self) -> &Verdict {
        &self.verdict.0
    }

    pub fn state(&self) -> TaskState {
        match &self.verdict.0 {
            Verdict::Pending if self.leases.is_empty() => TaskState::Pending,
            Verdict::Pending => TaskState::Running,
            Verdict::Verified(_) => TaskState::Verified,
            Verdict::Inconclusive => TaskState::Inconclusive,
            Verdict::Failed(_) => TaskState::Failed,
        }
    }

    /// Peers that let a lease on this task lapse (the newest few), oldest first.
    pub fn lapsed(&self) -> &[PeerId] {
        self.rare.as_ref().map_or(&[], |r| &r.lapsed)
    }

    /// The peer holding this task's lone lease, if one does.
    pub fn lone(&self) -> Option<PeerId> {
        self.rare.as_ref().and_then(|r| r.lone)
    }

    /// Marks `peer`'s lease as the task's lone replica, or (`None`) ends the mark.
    pub fn set_lone(&mut self, peer: Option<PeerId>) {
        if peer.is_none() && self.rare.is_none() {
            return;
        }
        self.rare.get_or_insert_default().lone = peer;
        self.tidy_rare();
    }

    /// Forgets that `peer` let a lease lapse (its late report was judged).
    pub fn forget_lapse(&mut self, peer: &PeerId) {
        if let Some(r) = self.rare.as_mut() {
            r.lapsed.retain(|p| p != peer);
        }
        self.tidy_rare();
    }

    /// Lets go of the box once it holds nothing.
    fn tidy_rare(&mut self) {
        if self.rare.as_ref().is_some_and(|r| r.lapsed.is_empty() && r.lone.is_none()) {
            self.rare = None;
        }
    }

    /// Whether `peer` already holds or ran a replica of this task, or let a lease on it lapse.
    pub fn involves(&self, peer: &PeerId) -> bool {
        self.leases.iter().any(|(p, _)| p == peer)
            || self.attestations.iter().any(|a| &a.peer == peer)
            || self.lapsed().contains(peer)
    }

    /// Records an attestation from a peer that holds no other (checked by the caller): ends its
    /// lease, and recomputes the verdict; a final verdict voids the replicas still out (their
    /// reports will be late). With `lone` (the caller checked it is the first attestation), it
    /// decides the task alone, as with a quorum of one. Returns the verdict.
    pub fn attest(&mut self, att: Arc<Attestation>, policy: &Policy, lone: bool) -> Verdict {
        self.leases.retain(|(p, _)| *p != att.peer);
        self.let_go_of_leases_if_none();
        // Whoever held a lone lease, it is lone no more: the task has an attestation now.
        self.set_lone(None);
        let lone = lone && self.attestations.is_empty();
        self.lone_verdict = lone;
        // Room for a quorum, not the 4 a first push makes: a coordinator holds every task's.
        if self.attestations.capacity() == 0 {
            self.attestations.reserve_exact(usize::try_from(policy.quorum).unwrap_or(1).clamp(1, 8));
        }
        self.attestations.push(att);
        self.verdict.0 = if lone {
            decide(&self.attestations, &Policy { quorum: 1, max_replicas: 1, ..*policy })
        } else {
            decide(&self.attestations, policy)
        };
        if self.verdict.0.is_final() {
            self.end_leases();
        }
        self.verdict.0.clone()
    }

    /// Notes `peer`'s lease expiring at `expiry`. Room for two leases at first, not the 4 a
    /// first push makes: a coordinator holds every task's, most hold one or two at a time, and
    /// 160 bytes a task were 48 MB across the three coordinators of `spare sim --peers 10000`.
    pub fn lease(&mut self, peer: PeerId, expiry: Millis) {
        if self.leases.capacity() == 0 {
            self.leases.reserve_exact(2);
        }
        self.leases.push((peer, expiry));
    }

    /// Voids every lease, and lets go of their room (see [`TaskEntry::lease`]).
    pub fn end_leases(&mut self) {
        self.leases = Vec::new();
    }

    /// Lets go of the room of the leases once none is left (see [`TaskEntry::lease`]).
    pub fn let_go_of_leases_if_none(&mut self) {
        if self.leases.is_empty() {
            self.leases = Vec::new();
        }
    }

    /// Drops `peer`'s lease as lapsed (only the one expiring at `expiry`, when given) and
    /// remembers the peer, keeping the newest `bound` lapsed peers. Returns whether a lease was
    /// dropped.
    pub fn lapse(&mut self, peer: &PeerId, expiry: Option<Millis>, bound: usize) -> bool {
        let Some(i) = self.leases.iter().position(|(p, e)| p == peer && expiry.is_none_or(|x| x == *e)) else {
            return false;
        };
        self.leases.remove(i);
        self.let_go_of_leases_if_none();
        let lapsed = &mut self.rare.get_or_insert_default().lapsed;
        if !lapsed.contains(peer) {
            if lapsed.len() >= bound.max(1) {
                lapsed.remove(0);
            }
            lapsed.push(*peer);
        }
        true
    }

    /// Drops the lone-lease mark once its peer's lease is gone or the task has an attestation,
    /// so a lapsed or released lone replica sends the task back to normal replication.
    pub fn settle_lone(&mut self) {
        if let Some(p) = self.lone()
            && (!self.attestations.is_empty() || !self.leases.iter().any(|(q, _)| *q == p))
        {
            self.set_lone(None);
        }
    }

    /// Replicas held or done: the order in which tasks are handed out (fewest first).
    pub fn load(&self) -> u32 {
        (self.attestations.len() + self.leases.len()) as u32
    }

    /// How many more replicas should be leased now: enough to reach the quorum if the running
    /// ones agree with the best group, never past `max_replicas`.
    pub fn wanted(&self, policy: &Policy) -> u32 {
        if self.verdict.0.is_final() || self.lone().is_some() {
            return 0;
        }
        let best = best_group(&self.attestations).map_or(0, |(_, n)| n);
        let in_flight = self.leases.len() as u32;
        let room = policy.max_replicas.saturating_sub(self.load());
        policy.quorum.saturating_sub(best).saturating_sub(in_flight).min(room)
    }

    /// The task as a status report shows it.
    pub fn view(&self, id: TaskId, policy: &Policy, live_peers: usize) -> TaskView {
        TaskView {
            id,
            state: self.state(),
            verdict: self.verdict().clone(),
            verified_by: self.verified_by(),
            attestations: self.attestations.len() as u32,
            lone: self.lone_verdict,
            note: self.note(policy, live_peers),
        }
    }

    /// Peers whose attestations carry the agreed result, in PeerId order: a set, the same at
    /// every coordinator whatever order the attestations reached each in.
    pub fn verified_by(&self) -> Vec<PeerId> {
        match self.verdict.0.agreed() {
            Some(k) => {
                let mut peers = agreeing_peers(&self.attestations, k);
                peers.sort_unstable();
                peers
            }
            None => Vec::new(),
        }
    }

    /// Words for a task that failed or waits.
    pub fn note(&self, policy: &Policy, live_peers: usize) -> Option<String> {
        match &self.verdict.0 {
            Verdict::Pending if (policy.quorum as usize) > live_peers && !self.attestations.is_empty() => {
                Some(needs_peers(policy.quorum, live_peers))
            }
            v => final_note(v, self.attestations.len() as u32, policy),
        }
    }
}

/// The message shown while a quorum cannot be reached for lack of distinct peers.
pub(crate) fn needs_peers(quorum: u32, live_peers: usize) -> String {
    format!("waiting for more peers: quorum {quorum} needs {quorum} distinct peers, {live_peers} known")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A coordinator holds one entry for every task of every job it coordinates (the simulator's
    /// 10,000 peers hold ~300,000): the rare fields stay out of line.
    #[test]
    fn a_task_entry_stays_small() {
        assert!(std::mem::size_of::<TaskEntry>() <= 112, "{} bytes", std::mem::size_of::<TaskEntry>());
    }

    #[test]
    fn the_rare_part_is_let_go_once_empty() {
        let (a, b) = (PeerId([1; 32]), PeerId([2; 32]));
        let mut t = TaskEntry::default();
        t.set_lone(None);
        assert!(t.rare.is_none());
        t.lease(a, 10);
        t.set_lone(Some(a));
        assert_eq!(t.lone(), Some(a));
        assert!(t.lapse(&a, None, 2));
        t.settle_lone();
        assert_eq!((t.lone(), t.lapsed()), (None, &[a][..]), "the lone lease lapsed; its peer is remembered");
        t.lease(b, 20);
        assert!(t.lapse(&b, Some(20), 2));
        assert_eq!(t.lapsed(), &[a, b]);
        t.forget_lapse(&a);
        t.forget_lapse(&b);
        assert!(t.rare.is_none(), "nothing rare left: the box is gone");
        assert!(!t.involves(&a));
    }
}
