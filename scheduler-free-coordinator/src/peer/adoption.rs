//! Adoption rounds: a coordinator that leads a job brings its list of coordinators up to
//! [`DEFAULT_COORDINATORS`] by handing the whole job (`Adopt`) to the live peers that rank
//! highest by [`rendezvous`]. The list settles once every new one has answered: the kept
//! coordinators, then those that adopted, by rank; the driver records it (durably) and only then
//! announces it and sends each new coordinator a second adoption with what was recorded before
//! it joined the stream.
//!
//! Sans-IO: [`AdoptRound::new`] says whom to ask ([`AdoptRound::asked`], each with
//! [`AdoptRound::list_for`]); every answer goes to [`AdoptRound::handle_answer`], which gives the
//! [`Settled`] list with the last one.

use crate::rendezvous::{self, DEFAULT_COORDINATORS};
use crate::{JobId, PeerId};

/// A round of adoptions of one job in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdoptRound {
    job: JobId,
    /// The coordinators kept, the leader first.
    keep: Vec<PeerId>,
    /// New ones asked that have not answered.
    waiting: Vec<PeerId>,
    /// New ones that adopted the job.
    adopted: Vec<PeerId>,
}

/// How a round ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    /// The new list: the kept coordinators, then the new ones that adopted, by rank.
    pub coordinators: Vec<PeerId>,
    /// The new ones, owed a second adoption once the new list is durable (what was recorded
    /// before they were in the list did not stream to them).
    pub catch_up: Vec<PeerId>,
}

impl AdoptRound {
    /// A round for `job` keeping `keep` (the leader first) and asking the highest-ranked of
    /// `candidates` for the places left.
    pub fn new(job: JobId, keep: Vec<PeerId>, candidates: &[PeerId]) -> AdoptRound {
        let wanted = rendezvous::choose(&job, &keep, candidates, DEFAULT_COORDINATORS);
        let waiting = wanted.into_iter().filter(|p| !keep.contains(p)).collect();
        AdoptRound { job, keep, waiting, adopted: Vec::new() }
    }

    /// The peers to send the job to.
    pub fn asked(&self) -> &[PeerId] {
        &self.waiting
    }

    /// The list the adoption sent to `to` names: the kept coordinators and `to`.
    pub fn list_for(&self, to: PeerId) -> Vec<PeerId> {
        let mut list = self.keep.clone();
        list.push(to);
        list
    }

    /// The list as it stands when nobody new is asked (nothing to wait for).
    pub fn settle_now(&self) -> Option<Settled> {
        self.waiting.is_empty().then(|| self.settled())
    }

    /// `from` answered: it adopted the job (`ok`) or not (refused, unreachable). The last answer
    /// settles the list.
    pub fn handle_answer(&mut self, from: PeerId, ok: bool) -> Option<Settled> {
        let i = self.waiting.iter().position(|w| *w == from)?;
        self.waiting.swap_remove(i);
        if ok {
            self.adopted.push(from);
        }
        self.settle_now()
    }

    fn settled(&self) -> Settled {
        let mut adopted = self.adopted.clone();
        adopted.sort_unstable_by_key(|p| std::cmp::Reverse(rendezvous::weight(&self.job, p)));
        let mut coordinators = self.keep.clone();
        coordinators.extend(adopted.iter().copied());
        Settled { coordinators, catch_up: adopted }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: u8) -> Vec<PeerId> {
        (1..=n).map(|i| PeerId([i; 32])).collect()
    }

    #[test]
    fn the_list_settles_once_every_new_coordinator_answered() {
        let job = JobId([5; 32]);
        let p = peers(6);
        let mut round = AdoptRound::new(job, vec![p[0]], &p[1..]);
        let asked = round.asked().to_vec();
        assert_eq!(asked, rendezvous::choose(&job, &[p[0]], &p[1..], DEFAULT_COORDINATORS)[1..].to_vec());
        assert_eq!(round.list_for(asked[1]), vec![p[0], asked[1]]);
        assert_eq!(round.settle_now(), None);
        assert_eq!(round.handle_answer(PeerId([99; 32]), true), None, "a stranger's answer is no answer");
        assert_eq!(round.handle_answer(asked[1], true), None);
        let settled = round.handle_answer(asked[0], true).unwrap();
        assert_eq!(settled.coordinators, vec![p[0], asked[0], asked[1]], "by rank, whatever the order of answers");
        assert_eq!(settled.catch_up, vec![asked[0], asked[1]]);
    }

    #[test]
    fn a_refusal_leaves_its_place_empty_and_a_full_list_asks_nobody() {
        let job = JobId([5; 32]);
        let p = peers(6);
        let mut round = AdoptRound::new(job, vec![p[0], p[1]], &p[2..]);
        let asked = round.asked().to_vec();
        assert_eq!(asked.len(), 1);
        let settled = round.handle_answer(asked[0], false).unwrap();
        assert_eq!(settled, Settled { coordinators: vec![p[0], p[1]], catch_up: vec![] });
        let full = AdoptRound::new(job, p[..3].to_vec(), &p[3..]);
        assert!(full.asked().is_empty());
        assert_eq!(full.settle_now().map(|s| s.coordinators), Some(p[..3].to_vec()));
    }
}
