//! A hand-over: the coordinator that loses a meeting of two leaders ([`super::heal`]) steps
//! down to standby, names the winner's list without itself, and sends the winner everything it
//! recorded by an adoption (which names the sender too). An adoption that fails is sent again,
//! up to [`HAND_OVER_TRIES`] in all; then the loser takes the job back with its old list.
//!
//! Sans-IO: [`HandOver::start`] gives the list to record and the adoption to send; each answer
//! goes to [`HandOver::handle_answer`].

use crate::PeerId;

/// Adoptions sent to the winner before the loser takes the job back.
pub const HAND_OVER_TRIES: u32 = 2;

/// A hand-over in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandOver {
    /// The winner.
    pub to: PeerId,
    /// The list before stepping down, taken back if the winner never takes the job.
    old: Vec<PeerId>,
    /// Adoptions sent.
    tries: u32,
}

/// What to do after an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandOverStep {
    /// The winner took the job: announce its list.
    Done,
    /// Send the adoption again.
    Again,
    /// Give up: lead again with this list.
    TakeBack(Vec<PeerId>),
}

impl HandOver {
    /// `me`, leading with `old`, steps down for the first of `theirs`. Gives the hand-over and
    /// the list to record now (`theirs` without `me`); `None` when there is nobody else to hand
    /// the job to.
    pub fn start(me: &PeerId, old: Vec<PeerId>, theirs: &[PeerId]) -> Option<(HandOver, Vec<PeerId>)> {
        let to = *theirs.first().filter(|t| *t != me)?;
        let list: Vec<PeerId> = theirs.iter().copied().filter(|p| p != me).collect();
        Some((HandOver { to, old, tries: 1 }, list))
    }

    /// The list the adoption names: `list` and `me`, since an adoption names its sender (also
    /// when the winner's list is full).
    pub fn adoption_list(me: &PeerId, list: &[PeerId]) -> Vec<PeerId> {
        let mut names = list.to_vec();
        if !names.contains(me) {
            names.push(*me);
        }
        names
    }

    /// The winner answered the adoption: it took the job (`ok`) or the call failed.
    pub fn handle_answer(&mut self, ok: bool) -> HandOverStep {
        if ok {
            HandOverStep::Done
        } else if self.tries < HAND_OVER_TRIES {
            self.tries += 1;
            HandOverStep::Again
        } else {
            HandOverStep::TakeBack(std::mem::take(&mut self.old))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_over_is_tried_twice_then_taken_back() {
        let (me, a, b) = (PeerId([1; 32]), PeerId([2; 32]), PeerId([3; 32]));
        assert_eq!(HandOver::start(&me, vec![me], &[me, a]), None, "not to itself");
        let (mut ho, list) = HandOver::start(&me, vec![me, b], &[a, me, b]).unwrap();
        assert_eq!((ho.to, list.clone()), (a, vec![a, b]));
        assert_eq!(HandOver::adoption_list(&me, &list), vec![a, b, me]);
        assert_eq!(ho.handle_answer(false), HandOverStep::Again);
        assert_eq!(ho.handle_answer(false), HandOverStep::TakeBack(vec![me, b]));
        let (mut ok, _) = HandOver::start(&me, vec![me], &[a]).unwrap();
        assert_eq!(ok.handle_answer(true), HandOverStep::Done);
    }
}
