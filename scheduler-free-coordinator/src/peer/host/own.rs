//! [`OwnHost`]: a peer's host as the same peer's worker side leases from it.

use crate::peer::work::{Own, Replica};
use crate::{JobId, Millis};

use super::Host;

/// The peer's own host, if it holds one, as its [`Work`](crate::peer::work::Work) leases from
/// it ([`Own`]): replicas of its job while it is active, with no coordinator named.
pub struct OwnHost<'a> {
    host: Option<&'a mut Host>,
    leased: bool,
}

impl<'a> OwnHost<'a> {
    /// The peer's host, or `None` when it coordinates nothing.
    pub fn new(host: Option<&'a mut Host>) -> Self {
        OwnHost { host, leased: false }
    }

    /// Whether it gave any lease.
    pub fn leased(&self) -> bool {
        self.leased
    }
}

impl Own for OwnHost<'_> {
    fn serves(&self, job: &JobId) -> bool {
        self.host.as_ref().is_some_and(|h| h.job == *job && h.is_active())
    }

    fn lease(&mut self, max: usize, now: Millis) -> Vec<Replica> {
        let Some(h) = self.host.as_mut() else { return Vec::new() };
        let leases = h.lease_own(max, now);
        self.leased |= !leases.is_empty();
        let (timeout_ms, module) = (h.coord.limits(&h.job).map_or(0, |l| l.timeout_ms), h.module);
        leases.into_iter().map(|l| Replica { task: l.task, coordinator: None, expires_at: l.expires_at, timeout_ms, module }).collect()
    }
}
