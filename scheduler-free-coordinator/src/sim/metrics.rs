//! What the run counts, the convergence check, and the figures the report is built from.
//!
//! **Convergence** is checked at every probe-period boundary (1 s, one SWIM gossip round)
//! until it holds: every live peer that was there at the start sees every other such peer of
//! its cell, and every live coordinator of the job (the bridges), as a live member (`Alive`, or
//! `Suspect`: SWIM treats a suspect as alive until it is declared dead, and with message loss
//! some probe is always failing somewhere) in its real `Membership`, and has heard the job's
//! ad; and each bridge's view of each cell sees that cell's live initial peers and the other
//! bridges likewise. Peers that
//! joined later are not waited for (with churn there is always one still joining), and peers
//! that crashed need not be seen dead yet. Once the job has finished its ad is no longer
//! required: `Membership` stops sending a finished job's ad to newcomers, so a peer the origin
//! only meets after the end never hears of the job, and needs not.

use crate::JobState;
use crate::membership::MemberState;

use super::engine::{Sim, probe_period_ms};
use super::keys;
use super::peer::{View, VirtualPeer};
use super::queue::Event;
use super::report::{Rate, Report};

/// Counters of one run.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Gossip messages sent.
    pub gossip: u64,
    /// When the steady window began (the job done, membership converged), and the gossip bytes
    /// sent by then.
    pub steady_from: Option<(u64, u64)>,
    /// RPC requests and replies sent.
    pub rpcs: u64,
    /// Messages lost.
    pub lost: u64,
    /// Replicas run to the end (by a peer alive when the run ended).
    pub replicas_run: u64,
    /// Report batches given up (refused, or their first lease lapses before another attempt).
    pub reports_dropped: u64,
    /// Tasks verified.
    pub verified: u32,
    /// Tasks verified with a wrong output.
    pub wrong_verified: u32,
    /// Tasks verified by one trusted peer alone (adaptive replication).
    pub lone_verified: u32,
    /// Of those, verified with a wrong output.
    pub wrong_lone: u32,
    /// Tasks inconclusive.
    pub inconclusive: u32,
    /// Tasks failed.
    pub failed: u32,
    /// Leases that lapsed.
    pub lapses: u64,
    /// Peers crashed.
    pub crashes: u32,
    /// Peers joined during the run.
    pub joins: u32,
    /// Crashed peers started again on what they had recorded.
    pub restarts: u32,
    /// When membership converged.
    pub converged_at: Option<u64>,
    /// When the job finished.
    pub done_at: Option<u64>,
    /// How it finished.
    pub job_state: Option<JobState>,
    /// Live peers that had not heard the job's ad when it finished.
    pub unaware_at_end: u32,
    /// Backups that took the job over.
    pub takeovers: u32,
    /// Longest time from the leading coordinator's crash to its successor's first lease.
    pub takeover_ms: u64,
    /// When the leading coordinator crashed, until its successor leases.
    pub leaderless_since: Option<u64>,
    /// Replication batches given up (their jobs were caught up with whole adoptions instead).
    pub replication_dropped: u64,
    /// Tasks a leading coordinator decided again, differently from the first verdict counted
    /// (a verdict that had not reached the backup before its coordinator crashed).
    pub overturned: u32,
}

/// Whether `view` holds exactly `count` live members (alive or suspect) that pass `wanted`.
fn sees_all(view: &View, count: usize, wanted: impl Fn(u32) -> bool) -> bool {
    if view.mesh.membership.active() < count {
        return false;
    }
    let seen = view.mesh.membership.member_states().filter(|(p, s)| *s != MemberState::Dead && wanted(keys::index_of(p))).count();
    seen == count
}

impl Sim {
    pub(super) fn on_check(&mut self) {
        if self.m.converged_at.is_some() {
            return;
        }
        if self.converged() {
            self.m.converged_at = Some(self.now);
        } else {
            self.queue.push(self.now + probe_period_ms(), Event::Check);
        }
    }

    fn converged(&self) -> bool {
        let need_ad = self.m.done_at.is_none();
        let bridges: Vec<u32> = self.bridges.iter().copied().filter(|&b| self.peers[b as usize].alive).collect();
        for (c, cell) in self.cells.iter().enumerate() {
            let c = c as u32;
            // Who must be seen in this cell: its live initial workers and every live bridge.
            let mut expected: Vec<u32> = cell.members.iter().copied().filter(|&i| self.peers[i as usize].initial).collect();
            expected.extend(bridges.iter().copied());
            expected.sort_unstable();
            expected.dedup();
            let wanted = |i: u32| expected.binary_search(&i).is_ok();
            for &w in &expected {
                let peer = &self.peers[w as usize];
                let Some(v) = peer.view_of(c) else { return false };
                let home = peer.cell == c && w != self.origin;
                if (home && need_ad && !peer.has_ad) || !sees_all(&peer.views[v], expected.len() - 1, |i| i != w && wanted(i)) {
                    return false;
                }
            }
        }
        true
    }

    /// Tasks that two live coordinators hold final with different verdicts (a backup that
    /// decided from an attestation its new leader never had; [`crate::peer::takeover`]).
    fn verdicts_differing(&self) -> u32 {
        let hosts: Vec<&crate::peer::host::Hosts> =
            self.peers.iter().filter(|p| p.alive).filter_map(|p| p.hosts.as_deref()).filter(|h| h.holds(&self.job)).collect();
        (0..self.spec.task_count)
            .filter(|&index| {
                let task = crate::TaskId { job: self.job, index };
                let mut finals = hosts.iter().filter_map(|h| h.coordinator().task(&task)).map(|t| t.verdict).filter(|v| v.is_final());
                finals.next().is_some_and(|first| finals.any(|v| v != first))
            })
            .count() as u32
    }

    /// Tasks that one live coordinator holds final and another does not, among the live peers
    /// that name themselves coordinators of the job: a verdict that never reached a backup (a
    /// new leader's reports taken while its takeover sync was out were once never streamed).
    fn verdicts_missing(&self) -> u32 {
        let hosts: Vec<&crate::peer::host::Hosts> = self
            .peers
            .iter()
            .filter(|p| p.alive)
            .filter_map(|p| p.hosts.as_deref().filter(|h| h.host(&self.job).is_some_and(|j| j.coordinators().contains(&p.id))))
            .collect();
        (0..self.spec.task_count)
            .filter(|&index| {
                let task = crate::TaskId { job: self.job, index };
                let fin = |h: &&crate::peer::host::Hosts| h.coordinator().task(&task).is_some_and(|t| t.verdict.is_final());
                hosts.iter().any(fin) && !hosts.iter().all(fin)
            })
            .count() as u32
    }

    /// The report of the run so far.
    pub(super) fn report(&self) -> Report {
        let end = self.now.max(1);
        // A peer's life in seconds, at least one.
        let life = |p: &VirtualPeer| (p.died.unwrap_or(end).saturating_sub(p.born)).max(1_000) as f64 / 1_000.0;
        let (mut bytes, mut life_s, mut max, mut liars) = (0u64, 0f64, 0f64, 0);
        let (mut gossip, mut gossip_max) = (0u64, 0f64);
        for p in &self.peers {
            bytes += p.bytes_sent;
            life_s += life(p);
            max = max.max(p.bytes_sent as f64 / life(p));
            gossip += p.gossip_sent;
            gossip_max = gossip_max.max(p.gossip_sent as f64 / life(p));
            liars += u32::from(p.behaviour.lies());
        }
        let origin = &self.peers[self.origin as usize];
        let origin_rate = origin.bytes_sent as f64 / life(origin);
        let (mut banned_liars, mut banned_honest, mut trusted_liars) = (0, 0, 0);
        // The reputation table of the coordinator leading at the end.
        if let Some(r) = self.lead_host().map(|(_, c)| c.reputation()) {
            let min_agreed = self.cfg.adaptive.unwrap_or(u32::MAX);
            for p in &self.peers {
                let lies = p.behaviour.lies();
                trusted_liars += u32::from(lies && r.is_trusted(&p.id, min_agreed));
                if r.is_banned(&p.id) {
                    *(if lies { &mut banned_liars } else { &mut banned_honest }) += 1;
                }
            }
        }
        let round1 = |x: f64| (x * 10.0).round() / 10.0;
        let state = match self.m.job_state {
            None => "running",
            Some(JobState::Completed) => "completed",
            Some(JobState::Failed) => "failed",
            Some(JobState::Cancelled) => "cancelled",
            Some(JobState::Queued | JobState::Running) => "running",
        };
        Report {
            peers: self.cfg.peers,
            tasks: self.cfg.tasks,
            quorum: self.cfg.quorum,
            max_replicas: self.cfg.max_replicas,
            liars,
            collude: self.cfg.collude,
            cold_start: self.cfg.cold_start,
            liars_honest_for: self.cfg.liars_honest_for,
            liar_networks: self.cfg.liar_networks,
            diversity: self.cfg.diversity,
            history: self.cfg.history,
            adaptive: self.cfg.adaptive,
            spot_check_per_mille: self.cfg.spot_check_per_mille,
            loss: self.cfg.loss,
            churn: self.cfg.churn,
            seed: self.cfg.seed,
            completed: self.m.done_at.is_some(),
            job_state: state.to_string(),
            virtual_seconds: end as f64 / 1_000.0,
            job_seconds: self.m.done_at.map(|t| t as f64 / 1_000.0),
            gossip_rounds_to_converge: self.m.converged_at.map(|t| t / probe_period_ms()),
            bytes_per_peer_per_second: Rate { mean: round1(bytes as f64 / life_s.max(1.0)), max: round1(max) },
            gossip_bytes_per_peer_per_second: Rate { mean: round1(gossip as f64 / life_s.max(1.0)), max: round1(gossip_max) },
            steady_gossip_bytes_per_peer_per_second: self.m.steady_from.filter(|(from, _)| end > *from).map(|(from, before)| {
                let live = self.peers.iter().filter(|p| p.alive).count().max(1) as f64;
                round1(gossip.saturating_sub(before) as f64 / live / ((end - from) as f64 / 1_000.0))
            }),
            origin_bytes_per_second: round1(origin_rate),
            never_heard_job: self.m.unaware_at_end,
            replicas_per_task: (self.m.replicas_run as f64 / f64::from(self.cfg.tasks) * 1_000.0).round() / 1_000.0,
            verified: self.m.verified,
            wrong_verified: self.m.wrong_verified,
            lone_verified: self.m.lone_verified,
            wrong_lone: self.m.wrong_lone,
            trusted_liars,
            inconclusive: self.m.inconclusive,
            failed: self.m.failed,
            lease_lapses: self.m.lapses,
            reports_dropped: self.m.reports_dropped,
            banned_liars,
            banned_honest,
            crashes: self.m.crashes,
            joins: self.m.joins,
            restarts: self.m.restarts,
            messages: self.m.gossip + self.m.rpcs,
            messages_lost: self.m.lost,
            events: self.queue.handled(),
            membership_cell_size: self.cfg.cell_size.min(self.cfg.peers),
            membership_cells: self.cells.len() as u32,
            origin_protected: !self.cfg.origin_may_crash(),
            coordinator_takeovers: self.m.takeovers,
            takeover_ms: (self.m.takeovers > 0).then_some(self.m.takeover_ms),
            leaders_at_end: self.peers.iter().filter(|p| p.alive && p.hosts.as_ref().is_some_and(|h| h.leads(&self.job))).count() as u32,
            verdicts_overturned: self.m.overturned,
            verdicts_differing: self.verdicts_differing(),
            verdicts_missing: self.verdicts_missing(),
            replication_dropped: self.m.replication_dropped,
        }
    }
}
