//! Driving the coordinator side: this peer's [`Hosts`] (`spare_protocol::peer::host`, the
//! sans-IO machine that decides everything about the jobs it coordinates) lives in [`Core`]
//! behind the core lock, and this file carries out what it emits, as its contract asks: after
//! every call ([`Node::with_hosts`]) its writes are queued to the store in order (under the
//! lock, so in the order it asked), its messages go out (`transmit.rs`), its notices go to one
//! loop that acts on them in order, and its timer is re-armed. A write made durable is told back
//! ([`Hosts::handle_durable`]), which lets out what waited for it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use spare_protocol::membership::MemberState;
use spare_protocol::peer::host::{Hosts, Members, Notice, Transmit, Write};
use spare_protocol::peer::roles::Roles;
use spare_protocol::{Event, JobId, Millis, PeerId};
use tokio::sync::mpsc;

use super::core::{Change, Core};
use super::Node;
use crate::store::{Op, StoredResult};

/// A queued store write and the id of the last [`Write`] it holds.
pub(crate) type QueuedWrite = (std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), crate::store::StoreError>> + Send>>, u64);

/// The longest the host timer sleeps without looking (its deadline can only move earlier by a
/// call, which wakes it).
const MAX_NAP: Duration = Duration::from_secs(60);

/// How long the timer uses one view of membership.
const MEMBERS_FRESH: Duration = Duration::from_millis(100);

/// How often a dropped replication stream is warned of, at most.
const DROPPED_WARN_EVERY: Duration = Duration::from_secs(10);

impl Node {
    /// Runs `f` on the coordinator side under the core lock, with `now`, then carries out what
    /// it emitted. `f` must not lock the core itself.
    pub(crate) fn with_hosts<R>(&self, f: impl FnOnce(&mut Core, Millis) -> R) -> R {
        let now = self.now();
        let mut core = self.core();
        let r = f(&mut core, now);
        self.drain_hosts(&mut core);
        r
    }

    /// Carries out everything the hosts emitted (see the module docs). Called with the core lock
    /// held: writes queue, and notices line up, in the order the hosts made them.
    fn drain_hosts(&self, core: &mut Core) {
        let mut ops = Vec::new();
        let mut last = None;
        while let Some((id, w)) = core.hosts.poll_persist() {
            last = Some(id);
            ops.push(op_of(core, w));
        }
        if let Some(id) = last {
            let _ = self.0.writes.send((Box::pin(self.0.store.write(ops)), id));
        }
        while let Some(t) = core.hosts.poll_transmit() {
            match t {
                Transmit::ReportAnswer { batch, accepted, rejected, .. } => {
                    if let Some(answer) = core.answers.remove(&batch) {
                        let _ = answer.send((accepted, rejected));
                    }
                }
                Transmit::Replicate { to, job, items } => self.send_replicate(to, job, items),
                Transmit::Adopt { to, job, coordinators, log, kind, shed } => {
                    self.send_adopt(core, to, job, coordinators, (!shed).then_some(log), kind)
                }
            }
        }
        while let Some(n) = core.hosts.poll_notice() {
            let _ = self.0.notices.send(n);
        }
        if let Some(at) = core.hosts.poll_timeout()
            && core.armed.is_none_or(|armed| at < armed)
        {
            self.0.timer.notify_one();
        }
    }

    /// What membership says of the mesh now, as the role rules ask it.
    pub(crate) fn members(&self) -> MemberView {
        let me = self.peer_id();
        // Peers whose adverts say unreachable, this one too when it found itself so: one look
        // at the mesh for all of them.
        let mut barred: HashSet<PeerId> = HashSet::new();
        if !self.may_coordinate_self() {
            barred.insert(me);
        }
        let (states, active): (HashMap<PeerId, MemberState>, usize) = {
            let mesh = self.mesh();
            let states: HashMap<PeerId, MemberState> = mesh.membership.member_states().map(|(p, s)| (*p, s)).collect();
            barred.extend(states.keys().filter(|p| **p != me && !super::reach::advert_allows(&mesh, p)));
            (states, mesh.membership.active())
        };
        // A peer with nobody to join through has nothing to wait for before it looks at roles
        // (`Roles::ready`): it counts as having heard from the mesh.
        let active = if self.config().bootstrap.is_empty() { active.max(1) } else { active };
        MemberView { me, now: self.now(), clock: Roles::new(0), states, barred, active }
    }

    /// Membership changed: `down` was declared dead (its leases come back, roles are looked at).
    pub(crate) fn members_changed(&self, down: Option<PeerId>) {
        self.0.member_changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let live = self.live_peers();
        self.with_hosts(|c, now| c.hosts.handle_members(live, down, now));
        self.0.work.notify_one();
    }

    /// Resolves once every write up to `id` is durable (at once for 0).
    pub(crate) async fn durable(&self, id: u64) -> Result<(), tonic::Status> {
        let mut rx = self.0.durable.subscribe();
        rx.wait_for(|d| *d >= id).await.map(|_| ()).map_err(|_| tonic::Status::unavailable("this peer is stopping"))
    }

    /// Makes the hosts' writes durable in the order they were queued, and tells the hosts.
    pub(crate) async fn writer(self, mut rx: mpsc::UnboundedReceiver<QueuedWrite>) {
        while let Some((write, upto)) = rx.recv().await {
            let queued = std::time::Instant::now();
            match write.await {
                Ok(()) => {
                    self.0.metrics.store_writes.inc();
                    self.0.metrics.store_write_seconds.observe(queued.elapsed().as_secs_f64());
                    self.with_hosts(|c, _| c.hosts.handle_durable(upto));
                    self.0.durable.send_replace(upto);
                }
                // Nothing after it is told: what waits for it waits on.
                Err(e) => tracing::error!("could not store what the coordinator recorded: {e}"),
            }
        }
    }

    /// Acts on the hosts' notices in the order they came (each after the writes before it are
    /// durable).
    pub(crate) async fn noticer(self, mut rx: mpsc::UnboundedReceiver<(JobId, Notice)>) {
        // When a dropped replication stream was last warned of: once the backups are
        // unreachable every batch is, so it is said once in a while.
        let mut warned: Option<std::time::Instant> = None;
        while let Some((job, n)) = rx.recv().await {
            if n == Notice::ReplicationDropped {
                if warned.is_none_or(|t| t.elapsed() >= DROPPED_WARN_EVERY) {
                    tracing::warn!(job = %job.short(), "a backup coordinator did not take the replication stream: verdicts are announced from this peer alone until it is caught up");
                    warned = Some(std::time::Instant::now());
                }
                continue;
            }
            self.on_notice(job, n);
        }
    }

    fn on_notice(&self, job: JobId, n: Notice) {
        match n {
            Notice::Coordinator { event: Event::TaskFinal { task, .. }, .. } => {
                let state = {
                    let mut core = self.core();
                    core.undurable.remove(&task);
                    core.coord().task(&task).map(|t| t.state)
                };
                if let Some(state) = state {
                    self.0.metrics.decided(state);
                }
                let _ = self.0.changes.send(Change::TaskFinal(task));
            }
            Notice::Coordinator { event: Event::JobFinished { job, .. }, .. } => {
                // What the write made true first, then who hears of it: a job whose end is
                // durable is finished before anyone hears of it (a Results stream that sent
                // every result asks then whether the job has ended).
                if self.0.finished.insert(job) {
                    self.job_ended(&job);
                    self.note_ended(job);
                    self.log_job_end(&job);
                    // Every verdict is durable now: they are read from the store.
                    self.shed(&job);
                }
                let _ = self.0.changes.send(Change::JobFinished(job));
            }
            Notice::Coordinator { event: Event::LeaseExpired { task, peer }, .. } => {
                tracing::debug!(%task, peer = %peer.short(), "lease expired; replica back in the pool");
            }
            Notice::Announce { done } => {
                let list = self.core().coordinators(&job).map(<[PeerId]>::to_vec);
                if let Some(list) = list {
                    self.publish_job_ad(job, list, done);
                }
                self.0.announced.send_replace(());
            }
            Notice::Wake => self.0.work.notify_one(),
            Notice::TookOver => tracing::info!(job = %job.short(), "took the job over from a coordinator found dead: active coordinator of the job"),
            Notice::HandedOver { to } => tracing::info!(job = %job.short(), to = %to.short(), "handed the job over to the other leader"),
            Notice::ReplicationDropped => {}
        }
    }

    /// Runs the hosts' timer: sleeps until it is due (or a call moved it earlier), then runs it.
    /// At a clean stop it runs on until the replication streams are sent (the backups must hold
    /// what this peer recorded before they hear it left); the stop's grace bounds that.
    pub(crate) async fn host_timer(self) {
        let mut stop = self.shutdown_signal();
        // Membership changes on gossip's time scale: a view a moment old serves the timers that
        // fire many times a second (replication batches) without copying every member each time.
        // A view taken before the last membership change is never used.
        let mut view: Option<(std::time::Instant, u64, MemberView)> = None;
        loop {
            if *stop.borrow() && (!self.stops_cleanly() || !self.core().hosts.is_streaming()) {
                return;
            }
            let at = {
                let mut core = self.core();
                core.armed = core.hosts.poll_timeout();
                core.armed
            };
            let now = self.now();
            if at.is_none_or(|at| at > now) {
                let nap = at.map_or(MAX_NAP, |at| Duration::from_millis(at - now)).min(MAX_NAP);
                tokio::select! {
                    _ = tokio::time::sleep(nap) => {}
                    _ = self.0.timer.notified() => {}
                    _ = stop.changed(), if !*stop.borrow() => {}
                }
                continue;
            }
            let changes = self.0.member_changes.load(std::sync::atomic::Ordering::Relaxed);
            let members = match view.take() {
                Some((at, seen, mut v)) if seen == changes && at.elapsed() < MEMBERS_FRESH => {
                    v.now = self.now();
                    (at, seen, v)
                }
                _ => (std::time::Instant::now(), changes, self.members()),
            };
            self.with_hosts(|c, now| c.hosts.handle_timeout(now, &members.2));
            view = Some(members);
        }
    }
}

/// The store's record of one [`Write`].
fn op_of(core: &mut Core, w: Write) -> Op {
    match w {
        // The store appends it to its job's log.
        Write::Attestation { logged } => Op::PutAttestation { attestation: logged.att, lone: logged.lone },
        Write::Verdict { task, verdict, verified_by, attestations, output, detail } => {
            core.undurable.insert(task);
            // Known gap 15: completed by an attestation replayed without its output, none held.
            if output.is_empty() && verdict.agreed().is_some_and(|a| a.output_hash != spare_protocol::BlobId::of(&[])) {
                tracing::warn!(%task, "a verdict was replayed without its output");
            }
            Op::PutResult(task, StoredResult { verdict, verified_by, output, message: detail.message, attestations, stderr: detail.stderr })
        }
        Write::Coordinators { job, list } => Op::UpdateJob { job, coordinators: Some(list), cancelled: false },
        Write::Cancelled { job } => Op::UpdateJob { job, coordinators: None, cancelled: true },
        Write::Standings(list) => Op::PutStandings(list),
    }
}

/// The mesh as this peer's membership shows it at one moment, for the role rules.
pub(crate) struct MemberView {
    me: PeerId,
    now: Millis,
    /// The peer's start, for how long a peer membership does not know yet counts as live.
    clock: Roles,
    states: HashMap<PeerId, MemberState>,
    barred: HashSet<PeerId>,
    active: usize,
}

impl Members for MemberView {
    fn is_live(&self, peer: &PeerId) -> bool {
        *peer == self.me || self.clock.counts_as_live(self.states.get(peer).copied(), self.now)
    }

    fn live_peers(&self) -> usize {
        1 + self.states.iter().filter(|(p, s)| **p != self.me && **s != MemberState::Dead).count()
    }

    fn active_members(&self) -> usize {
        self.active
    }

    fn live(&self) -> Vec<PeerId> {
        let mut live: Vec<PeerId> = self.states.iter().filter(|(p, s)| **p != self.me && **s != MemberState::Dead).map(|(p, _)| *p).collect();
        live.sort();
        live
    }

    fn may_coordinate(&self, peer: &PeerId) -> bool {
        !self.barred.contains(peer)
    }
}

/// The coordinator side of peer `identity`, around `coord`: workers' signatures checked with
/// Ed25519, a report's in one batch.
pub(crate) fn hosts_of(identity: &crate::identity::Identity, coord: spare_protocol::Coordinator) -> Hosts {
    let verifier = super::mesh::crypto(identity).1;
    Hosts::new(identity.peer_id(), coord, verifier).with_batch_verifier(std::sync::Arc::new(crate::identity::verify_attestations))
}
