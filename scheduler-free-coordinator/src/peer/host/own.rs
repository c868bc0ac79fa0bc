//! [`OwnHost`]: a peer's coordinator side as the same peer's worker side leases from it.

use crate::peer::work::{Own, Replica};
use crate::{BlobId, JobId, Millis};

use super::Hosts;

/// The peer's own [`Hosts`], if it coordinates anything, as its
/// [`Work`](crate::peer::work::Work) leases from them ([`Own`]): replicas of the jobs it leads,
/// with no coordinator named.
pub struct OwnHost<'a> {
    hosts: Option<&'a mut Hosts>,
    leased: bool,
}

impl<'a> OwnHost<'a> {
    /// The peer's hosts, or `None` when it coordinates nothing.
    pub fn new(hosts: Option<&'a mut Hosts>) -> Self {
        OwnHost { hosts, leased: false }
    }

    /// Whether it gave any lease.
    pub fn leased(&self) -> bool {
        self.leased
    }
}

impl Own for OwnHost<'_> {
    fn serves(&self, job: &JobId) -> bool {
        self.hosts.as_ref().is_some_and(|h| h.is_active(job))
    }

    fn lease(&mut self, max: usize, now: Millis) -> Vec<Replica> {
        let Some(h) = self.hosts.as_mut() else { return Vec::new() };
        let leases = h.lease_own(max, now);
        self.leased |= !leases.is_empty();
        let coord = h.coordinator();
        leases
            .into_iter()
            .map(|l| {
                let timeout_ms = coord.limits(&l.task.job).map_or(0, |l| l.timeout_ms);
                let module = coord.job(&l.task.job).map_or(BlobId([0; 32]), |j| j.spec.module);
                Replica { task: l.task, coordinator: None, expires_at: l.expires_at, timeout_ms, module }
            })
            .collect()
    }
}
