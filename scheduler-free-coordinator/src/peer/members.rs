//! [`MeshMembers`]: what a peer's memberships say of the mesh, as its coordinators ask it
//! ([`Members`]). A peer has one membership; one that bridges several membership cells (the
//! simulator's coordinators) has one per cell, and the first to declare a peer dead stands for
//! a single cluster's first detection, which spreads to everyone.

use std::collections::BTreeSet;

use crate::PeerId;
use crate::membership::{MemberState, Membership};
use crate::peer::host::Members;

/// The mesh as peer `me`'s memberships show it.
pub struct MeshMembers<'a, V> {
    me: PeerId,
    views: &'a [V],
    full_grace: bool,
}

impl<'a, V: AsRef<Membership>> MeshMembers<'a, V> {
    /// What `views`, the memberships of peer `me`, show.
    pub fn new(me: PeerId, views: &'a [V]) -> Self {
        MeshMembers { me, views, full_grace: false }
    }

    /// Counts no member active, so roles wait out their whole start-up grace: for a mesh that
    /// forms at the same moment as its job, when one active member says nothing about who else
    /// is alive.
    pub fn full_grace(self) -> Self {
        MeshMembers { full_grace: true, ..self }
    }

    /// Whether some membership holds `peer` as a live member (alive or suspect).
    pub fn seen_live(&self, peer: &PeerId) -> bool {
        // Its state alone: a copy of every member (address and all) for each look was a
        // sixtieth of the simulator's time.
        self.views.iter().any(|v| v.as_ref().member_state(peer).is_some_and(|s| s != MemberState::Dead))
    }
}

impl<V: AsRef<Membership>> Members for MeshMembers<'_, V> {
    /// Live unless a membership holds it dead: also a peer no membership knows yet.
    fn is_live(&self, peer: &PeerId) -> bool {
        *peer == self.me || !self.views.iter().any(|v| v.as_ref().member_state(peer).is_some_and(|s| s == MemberState::Dead))
    }

    fn live_peers(&self) -> usize {
        // A member of several memberships counts once in each, which only matters against the
        // handful of coordinators a list holds.
        1 + self.views.iter().map(|v| v.as_ref().active()).sum::<usize>()
    }

    fn active_members(&self) -> usize {
        if self.full_grace { 0 } else { self.views.iter().map(|v| v.as_ref().active()).sum() }
    }

    fn live(&self) -> Vec<PeerId> {
        let seen: BTreeSet<PeerId> =
            self.views.iter().flat_map(|v| v.as_ref().member_states()).filter(|(_, s)| *s != MemberState::Dead).map(|(p, _)| *p).collect();
        seen.into_iter().filter(|p| *p != self.me && self.is_live(p)).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::membership::Member;
    use crate::peer::mesh::{MeshState, membership_config};
    use crate::records::Verifier;

    #[test]
    fn a_peer_no_membership_knows_counts_as_live_and_grace_counts_nobody_active() {
        let verifier: Verifier = Arc::new(|_: &PeerId, _: &[u8], _: &[u8]| true);
        let me = PeerId([1; 32]);
        let member = Member { peer: me, addr: "a:1".into(), epoch: 1 };
        let views: Vec<MeshState> =
            (0..2).map(|seed| MeshState::new(Membership::new(member.clone(), membership_config(), seed, verifier.clone()))).collect();
        let m = MeshMembers::new(me, &views);
        assert!(m.is_live(&me) && m.is_live(&PeerId([2; 32])));
        assert!(!m.seen_live(&PeerId([2; 32])), "known to no membership");
        assert_eq!((m.live_peers(), m.active_members()), (1, 0));
        assert!(m.live().is_empty());
        assert_eq!(MeshMembers::new(me, &views).full_grace().active_members(), 0);
    }
}
