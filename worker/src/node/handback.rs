//! What the slots hold, by the task running each replica, so that a shutdown hands every
//! unfinished replica back to its coordinator (a release, as for an abandoned run) instead of
//! leaving its lease to lapse: another peer can run it at once (finding 17).

use std::collections::HashMap;

use spare_protocol::{Lease, Release};
use tokio::task::{Id, JoinSet};

use super::Node;
use super::remote::RemoteReplica;

/// A replica a slot task holds.
pub(super) enum Held {
    /// Leased from this peer's own coordinator.
    Own(Lease),
    /// Leased from another peer's coordinator.
    Remote(RemoteReplica),
}

/// The replicas the slot tasks hold, by task. Bounded by the slots: one entry per running task.
#[derive(Default)]
pub(super) struct Holding(HashMap<Id, Held>);

impl Holding {
    /// The task `id` runs `held`.
    pub(super) fn hold(&mut self, id: Id, held: Held) {
        self.0.insert(id, held);
    }

    /// The task `id` ended by itself: it reported or released what it held.
    pub(super) fn done(&mut self, id: Id) {
        self.0.remove(&id);
    }

    /// Stops every slot task and hands back what the stopped ones held: a release to this peer's
    /// coordinator or queued for the remote one's (the reporter sends it before the peer exits).
    pub(super) async fn hand_back<T: 'static>(mut self, node: &Node, mut running: JoinSet<T>) {
        running.abort_all();
        let mut back = Vec::new();
        while let Some(ended) = running.join_next_with_id().await {
            match ended {
                Ok((id, _)) => self.done(id),
                Err(e) => back.extend(self.0.remove(&e.id())),
            }
        }
        if !back.is_empty() {
            tracing::info!(replicas = back.len(), "handing back unfinished replicas");
        }
        for held in back {
            match held {
                Held::Own(lease) => node.release_task(lease.task, lease.peer, Release::Abandoned).await,
                Held::Remote(r) => node.release_remote(&r, Release::Abandoned).await,
            }
        }
    }
}
