//! A virtual peer: what one simulated peer holds. The protocol state is the real thing: a
//! [`MeshState`] (membership and what the peer published) per membership cell it belongs to, a
//! [`Work`] (its worker side) and, when it coordinates the job, its [`Hosts`] (both from
//! [`crate::peer`]). The rest is the simulator's bookkeeping: its workload, its byte counts
//! and the times its events are scheduled.

use crate::membership::Membership;
use crate::peer::host::{Hosts, Logged};
use crate::peer::mesh::MeshState;
use crate::peer::work::Work;
use crate::{JobId, Millis, PeerId};

use super::workload::Behaviour;

/// "Nothing scheduled" for the per-peer timer fields.
pub const NEVER: Millis = Millis::MAX;

/// One membership cell as this peer belongs to it.
pub struct View {
    /// The cell.
    pub cell: u32,
    /// The real SWIM state machine with its records, and what this peer published there.
    pub mesh: MeshState,
    /// When its next timer event is scheduled ([`NEVER`] if none).
    pub tick_at: Millis,
    /// The addresses greeted at start (the cell's bootstrap peers).
    pub bootstrap: Vec<String>,
}

impl AsRef<Membership> for View {
    fn as_ref(&self) -> &Membership {
        &self.mesh.membership
    }
}

/// One simulated peer.
pub struct VirtualPeer {
    /// Its identity.
    pub id: PeerId,
    /// Its home cell.
    pub cell: u32,
    /// Not crashed.
    pub alive: bool,
    /// Present from the start (not a churn joiner).
    pub initial: bool,
    /// When it started.
    pub born: Millis,
    /// When it crashed.
    pub died: Option<Millis>,
    /// How it answers (a liar answers honestly for its first `liars_honest_for` runs).
    pub behaviour: Behaviour,
    /// Replicas it has run.
    pub runs: u32,
    /// Every byte it sent.
    pub bytes_sent: u64,
    /// The bytes of those that were gossip (`MeshService.Gossip`).
    pub gossip_sent: u64,
    /// Its memberships: one, or one per cell for a peer that bridges cells (a coordinator of
    /// the job), its home cell's first.
    pub views: Vec<View>,
    /// It is a member of every cell (see the module docs of `sim`).
    pub bridge: bool,
    /// Whether it publishes an advert (see the module docs of `sim` for the origin).
    pub advertises: bool,
    /// When its mesh loop next runs.
    pub house_at: Millis,
    /// Whether the run's job ad has reached it.
    pub has_ad: bool,
    /// The real worker side: slots, replicas, modules, report queues, the ads it heard.
    pub work: Work,
    /// When its work timer next runs ([`NEVER`] if not scheduled).
    pub work_at: Millis,
    /// The coordinator side it holds for the job, if any.
    pub hosts: Option<Box<Hosts>>,
    /// When its host's timer next runs ([`NEVER`] if not scheduled).
    pub host_at: Millis,
    /// What a crash left of its coordinator on disk: the list of the job's coordinators and
    /// every attestation recorded (a restart brings them back).
    pub stored: Option<(Vec<PeerId>, Vec<Logged>)>,
    /// Its position in the list of live workers (churn picks from it).
    pub live_pos: Option<u32>,
}

impl VirtualPeer {
    /// A peer that starts at `born` with these memberships.
    pub fn new(id: PeerId, cell: u32, born: Millis, behaviour: Behaviour, views: Vec<View>, initial: bool, slots: u32) -> VirtualPeer {
        VirtualPeer {
            id,
            cell,
            alive: true,
            initial,
            born,
            died: None,
            behaviour,
            runs: 0,
            bytes_sent: 0,
            gossip_sent: 0,
            views,
            bridge: false,
            advertises: true,
            house_at: NEVER,
            has_ad: false,
            work: Work::new(id, slots),
            work_at: NEVER,
            hosts: None,
            host_at: NEVER,
            stored: None,
            live_pos: None,
        }
    }

    /// Whether this peer coordinates `job`.
    pub fn holds(&self, job: &JobId) -> bool {
        self.hosts.as_ref().is_some_and(|h| h.holds(job))
    }

    /// Its view of `cell`.
    pub fn view_of(&self, cell: u32) -> Option<usize> {
        // A bridge holds its home cell's view first and the others by cell (as `Sim::new` and
        // `make_bridge` add them): looked at first, since a scan of a bridge's hundred views
        // (each its own cache line) for every packet was a fiftieth of the simulator's time.
        let home = self.views.first()?.cell;
        let guess = match cell.cmp(&home) {
            std::cmp::Ordering::Equal => 0,
            std::cmp::Ordering::Less => cell as usize + 1,
            std::cmp::Ordering::Greater => cell as usize,
        };
        if self.views.get(guess).is_some_and(|v| v.cell == cell) {
            return Some(guess);
        }
        self.views.iter().position(|v| v.cell == cell)
    }

    /// Forgets everything a crash loses.
    pub fn crash(&mut self, now: Millis) {
        self.alive = false;
        self.died = Some(now);
        self.views.clear();
        self.work.restart();
        self.work_at = NEVER;
        self.stored = self.hosts.take().and_then(|h| h.stored().into_iter().next()).map(|(_, list, log)| (list, log));
        self.host_at = NEVER;
    }

    /// Starts again at `now` with fresh memberships `views`: what was in memory is gone (its
    /// slots, what it heard, its timers), what is on disk (fetched modules) stays.
    pub fn restart(&mut self, now: Millis, views: Vec<View>) {
        self.alive = true;
        self.born = now;
        self.views = views;
        self.work.restart();
        self.house_at = NEVER;
        self.work_at = NEVER;
    }
}
