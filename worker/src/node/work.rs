//! The worker side of this peer: one task owns its [`Work`] (the protocol's sans-IO worker
//! machine: slots, puller, stale leases, module fetches, report batches) and only carries out
//! what it decides. Inputs: the ads and members the mesh knows, the donor's controls, answers to
//! its calls, runs ending. Outputs: lease, report and fetch calls over gRPC, runs in the sandbox
//! (see `run.rs`), outcomes of this peer's own replicas to its coordinator.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use spare_proto as pb;
use spare_protocol::peer::host::ReportItem;
use spare_protocol::peer::reports::Delivery;
use spare_protocol::peer::slots::LOOK_AGAIN_MS;
use spare_protocol::peer::work::{Notice, Own, Replica, Transmit, Work};
use spare_protocol::{Attestation, BlobId, JobId, Millis, PeerId, Release, TaskId};
use tokio::task::{Id, JoinSet};

use super::own_batch::{OwnBatch, OwnItem};
use super::remote::Payload;
use super::run::Ended;
use super::{Node, donation, unix_ms};
use crate::wire::signing;

/// Replicas handed to the sandbox pool per slot at most: as many as a slot may hold leased
/// (`peer::slots::leases_per_slot` of quick replicas).
const RUN_AHEAD_PER_SLOT: usize = 32;

/// The answer to one call [`Work`] asked for.
enum Answer {
    /// A lease request: when it was asked, and the replicas granted (with their payloads).
    Leased { from: PeerId, job: JobId, asked_at: Millis, granted: anyhow::Result<super::remote::Granted> },
    /// A report batch.
    Reported { to: PeerId, delivery: Delivery },
    /// A module fetch.
    Fetched { module: BlobId, ok: bool },
}

/// What a call answers if its task panics. Kept apart from [`Answer`] so that no error is made
/// for calls that end well: an `anyhow` error captures a backtrace when `RUST_BACKTRACE` is set,
/// which cost a lease call tens of microseconds.
enum Fallback {
    Leased { from: PeerId, job: JobId, asked_at: Millis },
    Reported { to: PeerId },
    Fetched { module: BlobId },
}

impl Fallback {
    fn answer(self) -> Answer {
        match self {
            Fallback::Leased { from, job, asked_at } => {
                Answer::Leased { from, job, asked_at, granted: Err(anyhow::anyhow!("lease call ended abnormally")) }
            }
            Fallback::Reported { to } => Answer::Reported { to, delivery: Delivery::Unreachable },
            Fallback::Fetched { module } => Answer::Fetched { module, ok: false },
        }
    }
}

/// What the driver keeps beside [`Work`], by task: the payload of a remote replica until it runs
/// (the lease reply's input, args, env, limits: `Work` needs none of it to decide). Bounded by
/// the replicas held (bounded by the protocol); an entry whose lease lapsed goes.
#[derive(Default)]
struct Table {
    payloads: HashMap<TaskId, Payload>,
}

impl Table {
    /// Forgets what belongs to leases lapsed before `now`.
    fn sweep(&mut self, now: Millis) {
        self.payloads.retain(|_, p| p.expires_at >= now);
    }
}

/// The one owner of this peer's [`Work`] and what carries out its decisions.
struct Driver {
    node: Node,
    work: Work,
    table: Table,
    /// Calls out, each with what it answers if its task panics.
    calls: JoinSet<Answer>,
    failed: HashMap<Id, Fallback>,
    /// Runs, by the task running each.
    runs: JoinSet<(TaskId, Ended)>,
    running: HashMap<Id, TaskId>,
    /// The donor's limit last given to `work`.
    allowance: Option<usize>,
    /// Stopping: replicas given a slot are handed back instead of run.
    stopping: bool,
    /// Attestations of replicas the own coordinator leased, unsigned until they are handed over
    /// together (`own_batch.rs`).
    own: OwnBatch,
}

/// Pulls and runs work until the peer shuts down, then hands back what it holds and sends the
/// reports still queued.
pub(super) async fn run(node: Node) {
    let memory = node.config().caps.limits.memory_bytes;
    let slots = node.sandbox().slots();
    // Every replica held may go to the sandbox pool, which queues them for its slots.
    let work = Work::new(node.peer_id(), u32::try_from(slots).unwrap_or(u32::MAX))
        .with_memory_cap(memory)
        .with_run_ahead(slots.saturating_mul(RUN_AHEAD_PER_SLOT));
    let mut d = Driver {
        node,
        work,
        table: Table::default(),
        calls: JoinSet::new(),
        failed: HashMap::new(),
        runs: JoinSet::new(),
        running: HashMap::new(),
        allowance: None,
        stopping: false,
        own: OwnBatch::default(),
    };
    let mut stop = d.node.shutdown_signal();
    // Whether the mesh's ads and members are read again on this pass: at first, on a work notice
    // (an ad heard, membership changed) and when the loop wakes by itself; not after each run or
    // answer, which `Work` itself turns into its next pass.
    let mut look = true;
    loop {
        let now = d.node.now();
        d.sync(now, look);
        d.timeout(now);
        d.drain();
        // New work, a freed slot or an answer wakes the loop; announced jobs are looked at again
        // now and then anyway.
        let at = d.work.poll_timeout().map_or(now + LOOK_AGAIN_MS, |at| at.min(now + LOOK_AGAIN_MS));
        let nap = Duration::from_millis(at.saturating_sub(now));
        let own_due = d.own.deadline().map(tokio::time::Instant::from_std);
        look = false;
        tokio::select! {
            _ = d.node.0.work.notified() => look = true,
            Some(a) = d.calls.join_next_with_id(), if !d.calls.is_empty() => d.answered(a),
            Some(e) = d.runs.join_next_with_id(), if !d.runs.is_empty() => {
                d.ended(e);
                // Every run that ended meanwhile too, so that their attestations are signed
                // together.
                while let Some(e) = d.runs.try_join_next_with_id() {
                    d.ended(e);
                }
            }
            _ = tokio::time::sleep(nap) => look = true,
            _ = tokio::time::sleep_until(own_due.unwrap_or_else(tokio::time::Instant::now)), if own_due.is_some() => {}
            _ = stop.changed() => break,
        }
    }
    if !d.node.stops_cleanly() {
        // A crash as the other peers see it: nothing handed back, nothing more sent.
        d.runs.shutdown().await;
        d.calls.shutdown().await;
        return;
    }
    d.hand_back().await;
    // The reports still queued (the hand-backs among them) go out apart from the leaving loops,
    // holding the node, as the shutdown's flush expects.
    tokio::spawn(d.flush());
}

impl Driver {
    /// Gives `work` what changed outside it: the donor's controls, and when `look`, the ads
    /// heard (of jobs the donor serves) and the liveness of the coordinators they name.
    fn sync(&mut self, now: Millis, look: bool) {
        let node = &self.node;
        let held_back = donation::held_back(node.0.donation.paused(), node.0.donation.waiting_for_memory());
        let allowance = held_back.then_some(0);
        if allowance != self.allowance || self.stopping {
            self.allowance = if self.stopping { Some(0) } else { allowance };
            self.work.set_allowance(self.allowance, now);
        }
        if !look {
            return;
        }
        let d = &node.config().donation;
        let ads = node.mesh().membership.job_ads();
        for ad in ads.into_iter().filter(|a| donation::serves(d, &a.module, &a.policy).is_ok()) {
            for c in &ad.coordinators {
                let up = node.addr_of(c).is_some();
                self.work.handle_peer(*c, up, now);
            }
            self.work.handle_ad(ad, |c| node.addr_of(c).is_some(), now);
        }
        self.table.sweep(now);
    }

    /// The slot pass and the report batches, when due.
    fn timeout(&mut self, now: Millis) {
        if self.work.poll_timeout().is_some_and(|at| at <= now) {
            let mut own = OwnCore { node: &self.node };
            self.work.handle_timeout(now, &mut own);
        }
    }

    /// Carries out everything `work` emitted.
    fn drain(&mut self) {
        loop {
            if let Some(t) = self.work.poll_transmit() {
                self.transmit(t);
            } else if let Some(n) = self.work.poll_notice() {
                self.notice(n);
            } else {
                break;
            }
        }
        if let Some(own) = self.own.poll_due(!self.runs.is_empty(), self.stopping, std::time::Instant::now()) {
            self.report_own(own);
        }
    }

    /// Hands the own coordinator the attestations of its replicas that ended, signed together
    /// (one signature over a batch, as a report batch is): its backups then check one signature
    /// for the batch too.
    fn report_own(&mut self, own: Vec<OwnItem>) {
        let (mut atts, rest): (Vec<Attestation>, Vec<_>) = own.into_iter().map(|(a, output, detail)| (a, (output, detail))).unzip();
        if !self.forging() {
            self.node.0.identity.sign_attestations(&mut atts);
        }
        for (att, (output, detail)) in atts.into_iter().zip(rest) {
            self.node.report(att, output, detail);
        }
    }

    /// Whether this peer forges its signatures (a chaos test's liar).
    fn forging(&self) -> bool {
        #[cfg(feature = "chaos")]
        return self.node.config().chaos == Some(super::Chaos::Forge);
        #[cfg(not(feature = "chaos"))]
        false
    }

    fn transmit(&mut self, t: Transmit) {
        let node = self.node.clone();
        match t {
            Transmit::Lease { to, job, max } => {
                let asked_at = node.now();
                let h = self.calls.spawn(async move {
                    let granted = node.lease_from(to, job, max).await;
                    Answer::Leased { from: to, job, asked_at, granted }
                });
                self.failed.insert(h.id(), Fallback::Leased { from: to, job, asked_at });
            }
            Transmit::Report { to, items } => {
                #[cfg(feature = "chaos")]
                if node.config().chaos == Some(super::Chaos::Silent) {
                    // Holds its leases and never reports.
                    self.work.handle_report_sent(to, Delivery::Taken, node.now());
                    return;
                }
                let req = self.report_request(to, &items);
                let h = self.calls.spawn(async move { Answer::Reported { to, delivery: node.deliver_report(to, req).await } });
                self.failed.insert(h.id(), Fallback::Reported { to });
            }
            Transmit::Fetch { from, module } => {
                let h = self.calls.spawn(async move {
                    let max = node.config().max_module_bytes as u64;
                    let fetched = match node.addr_of(&from) {
                        Some(addr) => node.fetch_blob(&addr, &module, max).await,
                        None => Err(anyhow::anyhow!("no address for {}", from.short())),
                    };
                    if let Err(e) = &fetched {
                        tracing::warn!(module = %module.short(), "module fetch failed: {e:#}");
                    }
                    Answer::Fetched { module, ok: fetched.is_ok() }
                });
                self.failed.insert(h.id(), Fallback::Fetched { module });
            }
        }
    }

    fn notice(&mut self, n: Notice) {
        match n {
            Notice::Run(r) if self.stopping => self.work.handle_not_run(r.task, false, self.node.now()),
            Notice::Run(r) => self.start(r),
            Notice::Own(ReportItem::Attest(att, output, detail)) => {
                #[cfg(feature = "chaos")]
                if self.node.config().chaos == Some(super::Chaos::Silent) {
                    return;
                }
                self.own.push((att, output, detail));
            }
            Notice::Own(ReportItem::Release(task, why)) => self.node.release_own(task, why),
            Notice::Held => self.node.0.running.store(self.work.held(), Ordering::Relaxed),
            Notice::Stale => tracing::debug!("a lease too close to lapsing was handed back"),
            Notice::ReportDropped => tracing::warn!("report given up: its lease lapses at the coordinator"),
        }
    }

    /// Runs a replica given a slot, with its payload.
    fn start(&mut self, r: Replica) {
        let node = self.node.clone();
        let task = r.task;
        let payload = self.table.payloads.remove(&task);
        let h = self.runs.spawn(async move { (task, node.run(r, payload).await) });
        self.running.insert(h.id(), task);
    }

    fn answered(&mut self, a: Result<(Id, Answer), tokio::task::JoinError>) {
        let answer = match a {
            Ok((id, answer)) => {
                self.failed.remove(&id);
                answer
            }
            Err(e) => match self.failed.remove(&e.id()) {
                Some(fallback) => fallback.answer(),
                None => return,
            },
        };
        let now = self.node.now();
        match answer {
            Answer::Leased { from, job, asked_at, granted: Ok(g) } => {
                let tasks: Vec<(u32, u64)> = g.tasks.iter().map(|(index, expires_in, _)| (*index, *expires_in)).collect();
                for (index, expires_in, payload) in g.tasks {
                    let payload = Payload { expires_at: asked_at + expires_in, ..payload };
                    self.table.payloads.insert(TaskId { job, index }, payload);
                }
                self.work.handle_leased(from, job, g.module, g.timeout_ms, &tasks, asked_at, now);
            }
            Answer::Leased { job, granted: Err(e), .. } => {
                tracing::debug!(job = %job.short(), "lease request failed: {e:#}");
                self.work.handle_lease_failed(job, now);
            }
            Answer::Reported { to, delivery } => {
                if delivery != Delivery::Taken {
                    tracing::debug!(to = %to.short(), ?delivery, "report failed");
                }
                self.work.handle_report_sent(to, delivery, now);
            }
            Answer::Fetched { module, ok: true } => self.work.handle_fetched(module),
            Answer::Fetched { module, ok: false } => self.work.handle_fetch_failed(module, now),
        }
    }

    fn ended(&mut self, e: Result<(Id, (TaskId, Ended)), tokio::task::JoinError>) {
        let now = self.node.now();
        let (task, ended) = match e {
            Ok((id, ended)) => {
                self.running.remove(&id);
                ended
            }
            Err(e) => {
                // A run panicked or was cut: what it held goes back.
                tracing::error!("run ended abnormally: {e}");
                let Some(task) = self.running.remove(&e.id()) else { return };
                (task, Ended::NotRun { abandoned: !e.is_cancelled() })
            }
        };
        match ended {
            Ended::Ran { ran_us, att, output, detail } => {
                self.work.handle_ran(task, ran_us, ReportItem::Attest(*att, output, detail), now);
            }
            Ended::Deadline { ran_us } => self.work.handle_ran(task, ran_us, ReportItem::Release(task, Release::Deadline), now),
            Ended::NotRun { abandoned } => self.work.handle_not_run(task, abandoned, now),
        }
    }

    /// Stops every run and hands back what each held (finding 17: another peer can run it at
    /// once rather than wait for its lease to lapse); replicas still waiting go back too.
    async fn hand_back(&mut self) {
        self.stopping = true;
        self.sync(self.node.now(), true);
        self.runs.abort_all();
        let mut back = 0;
        while let Some(e) = self.runs.join_next_with_id().await {
            if matches!(&e, Err(e) if e.is_cancelled()) {
                back += 1;
            }
            self.ended(e);
            self.drain();
        }
        if back > 0 {
            tracing::info!(replicas = back, "handing back unfinished replicas");
        }
    }

    /// Sends the reports still queued, until none waits.
    async fn flush(mut self) {
        loop {
            let now = self.node.now();
            self.timeout(now);
            self.drain();
            if self.work.reports_idle() && self.calls.is_empty() {
                return;
            }
            let nap = self.work.poll_timeout().map(|at| Duration::from_millis(at.saturating_sub(now)));
            tokio::select! {
                Some(a) = self.calls.join_next_with_id(), if !self.calls.is_empty() => self.answered(a),
                _ = tokio::time::sleep(nap.unwrap_or(Duration::from_millis(LOOK_AGAIN_MS))) => {}
            }
        }
    }

    /// The signed report request of one batch for coordinator `to`.
    fn report_request(&self, to: PeerId, items: &[ReportItem]) -> pb::ReportRequest {
        let node = &self.node;
        let mut req = pb::ReportRequest { peer_id: node.peer_id().to_hex(), ..Default::default() };
        // The batch's attestations signed once, together: the coordinator and its backups then
        // check one signature for the batch instead of one each. A batch sent again is signed
        // again (its copies are kept unsigned).
        let mut atts: Vec<Attestation> =
            items.iter().filter_map(|i| if let ReportItem::Attest(a, ..) = i { Some(a.clone()) } else { None }).collect();
        if !self.forging() {
            node.0.identity.sign_attestations(&mut atts);
        }
        let mut atts = atts.into_iter();
        for item in items {
            match item {
                ReportItem::Attest(_, output, detail) => {
                    let Some(att) = atts.next() else { continue };
                    req.items.push(pb::ReportItem {
                        attestation: Some(crate::wire::convert::attestation_pb(&att)),
                        output: output.clone(),
                        message: detail.message.clone(),
                        stderr: detail.stderr.clone(),
                    });
                }
                ReportItem::Release(task, why) => req.released.push(pb::Release {
                    job_id: task.job.to_hex(),
                    index: task.index,
                    deadline: *why == Release::Deadline,
                }),
            }
        }
        req.timestamp_ms = unix_ms();
        req.receiver = to.to_hex();
        req.request_nonce = signing::request_nonce();
        let bytes = signing::report(&mut req);
        req.signature = node.0.identity.sign(&bytes).to_vec();
        req
    }
}

/// This peer's own coordinator as [`Work`] leases from it: the jobs it leads actively, filtered
/// by what the donor serves.
struct OwnCore<'a> {
    node: &'a Node,
}

impl Own for OwnCore<'_> {
    fn serves(&self, job: &JobId) -> bool {
        let core = self.node.core();
        core.jobs.contains_key(job) && core.hosts.is_active(job)
    }

    fn lease(&mut self, max: usize, now: Millis) -> Vec<Replica> {
        // Jobs this peer coordinates but its volunteer does not serve (taken over, or held from
        // before the filters changed) are left to other peers' slots.
        let d = &self.node.config().donation;
        let serves = |spec: &spare_protocol::JobSpec| donation::serves(d, &spec.module, &spec.policy).is_ok();
        self.node.with_hosts(|c, _| {
            let leases = c.hosts.lease_own_where(max, now, serves);
            let coord = c.hosts.coordinator();
            leases
                .into_iter()
                .filter_map(|l| {
                    let spec = &coord.job(&l.task.job)?.spec;
                    let (timeout_ms, module) = (spec.policy.limits.timeout_ms, spec.module);
                    Some(Replica { task: l.task, coordinator: None, expires_at: l.expires_at, timeout_ms, module })
                })
                .collect()
        })
    }
}
