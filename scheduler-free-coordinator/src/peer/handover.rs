//! A hand-over: the coordinator that loses a meeting of two leaders ([`super::heal`]) steps
//! down to standby, names the winner's list without itself, and sends the winner everything it
//! recorded by an adoption (which names the sender too). An adoption that fails is sent again
//! after a pause that doubles from [`HAND_OVER_PAUSE_MS`], up to [`HAND_OVER_TRIES`] in all
//! (right after a heal the winner's ad often arrives before its address does, so the first
//! tries can fail for want of a way to reach it); then the loser takes the job back with its old
//! list and announces it again, so the two sides meet once more and settle again.
//!
//! Sans-IO: [`HandOver::start`] gives the list to record and the adoption to send; each answer
//! goes to [`HandOver::handle_answer`].

use crate::{Millis, PeerId};

/// Adoptions sent to the winner before the loser takes the job back.
pub const HAND_OVER_TRIES: u32 = 6;

/// The pause before the second adoption; each later one waits twice as long as the one before
/// (in all about 8 s, a few membership probe periods: the winner has rejoined by then).
pub const HAND_OVER_PAUSE_MS: Millis = 250;

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
    /// Send the adoption again after this pause.
    Again {
        /// How long to wait first.
        after_ms: Millis,
    },
    /// Give up: lead again with this list, and announce the job again.
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
            let after_ms = HAND_OVER_PAUSE_MS << (self.tries - 1);
            self.tries += 1;
            HandOverStep::Again { after_ms }
        } else {
            HandOverStep::TakeBack(std::mem::take(&mut self.old))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_over_is_tried_again_after_doubling_pauses_then_taken_back() {
        let (me, a, b) = (PeerId([1; 32]), PeerId([2; 32]), PeerId([3; 32]));
        assert_eq!(HandOver::start(&me, vec![me], &[me, a]), None, "not to itself");
        let (mut ho, list) = HandOver::start(&me, vec![me, b], &[a, me, b]).unwrap();
        assert_eq!((ho.to, list.clone()), (a, vec![a, b]));
        assert_eq!(HandOver::adoption_list(&me, &list), vec![a, b, me]);
        let pauses: Vec<HandOverStep> = (1..HAND_OVER_TRIES).map(|_| ho.handle_answer(false)).collect();
        let want: Vec<HandOverStep> = [250, 500, 1_000, 2_000, 4_000].into_iter().map(|after_ms| HandOverStep::Again { after_ms }).collect();
        assert_eq!(pauses, want);
        assert_eq!(ho.handle_answer(false), HandOverStep::TakeBack(vec![me, b]));
        let (mut ok, _) = HandOver::start(&me, vec![me], &[a]).unwrap();
        assert_eq!(ok.handle_answer(true), HandOverStep::Done);
    }
}
