//! The simulation's state and main loop: build the mesh, submit the job at its origin, then
//! handle events in virtual-time order until the job is finished (and membership converged),
//! or the time limit.

use crate::peer::host::Hosts;
use crate::membership::{Member, Membership, MeshEvent, RecordPool};
use crate::peer::mesh::{MeshState, membership_config};
use crate::records::{Record, RecordKey, Verifier};
use crate::rendezvous::{self, DEFAULT_COORDINATORS};
use crate::{JobId, JobSpec, Millis, PeerId, Standing, Verdict, derive_job_id};

use super::config::{SimConfig, SimError};
use super::keys::{self, UNIX_BASE_MS};
use super::metrics::Metrics;
use super::peer::{NEVER, View, VirtualPeer};
use super::net::Packet;
use super::queue::{Event, Queue};
use super::report::Report;
use super::rng::{Rng, mix};
use super::workload::Behaviour;

/// How long the run goes on after the job finished, waiting for membership to converge.
const CONVERGE_GRACE_MS: Millis = 60_000;
/// Once the job is done and membership converged, the run goes on this long (the job's last
/// news, its `done` ad, spreads meanwhile)…
pub const SETTLE_MS: Millis = 5_000;
/// …and then this long, to measure what a settled mesh gossips
/// (`steady_gossip_bytes_per_peer_per_second`).
pub const STEADY_MS: Millis = 10_000;
/// SWIM's probe period in the peers' membership settings: one gossip round.
pub fn probe_period_ms() -> Millis {
    membership_config().probe_period_ms
}

/// One membership cell: the workers whose home it is (the job's coordinators bridge every cell).
pub struct Cell {
    /// Live workers of the cell, by index.
    pub members: Vec<u32>,
    /// The cell's bootstrap peers, greeted by every peer of the cell at start.
    pub bootstrap: Vec<u32>,
}

/// The whole simulated mesh.
pub struct Sim {
    /// What was asked.
    pub cfg: SimConfig,
    /// Virtual time, milliseconds since the start.
    pub now: Millis,
    /// Events to come.
    pub queue: Queue,
    /// Every random choice.
    pub rng: Rng,
    /// Every peer that ever existed, by index.
    pub peers: Vec<VirtualPeer>,
    /// Membership cells.
    pub cells: Vec<Cell>,
    /// Live workers (churn picks among them, and the origin too with `churn_coordinators`).
    pub live_workers: Vec<u32>,
    /// The job's origin (its first coordinator).
    pub origin: u32,
    /// The backups the origin hands the job to at submission.
    pub backups: Vec<u32>,
    /// Every peer that was made a member of every cell (a coordinator of the job), in order.
    pub bridges: Vec<u32>,
    /// The coordinator that last took the lead (the origin first): whose reputation table the
    /// report reads, and whose crash starts a takeover.
    pub active: Option<u32>,
    /// The first final verdict counted for each task (from whichever coordinator led).
    pub decided: Vec<Option<Verdict>>,
    /// The job.
    pub job: JobId,
    /// Its spec.
    pub spec: JobSpec,
    /// The stand-in verifier every membership uses.
    pub verifier: Verifier,
    /// The records every membership takes, one copy of each for all.
    pub pool: RecordPool,
    /// Counters.
    pub m: Metrics,
    /// Buffers the membership driver reuses between calls.
    pub scratch: (Vec<(Member, Vec<u8>)>, Vec<MeshEvent>),
    /// The packet being delivered, copied out of the queue (its buffer reused).
    pub packet: Packet,
}

/// Runs one simulation.
pub fn run(cfg: &SimConfig) -> Result<Report, SimError> {
    cfg.validate()?;
    let mut sim = Sim::new(cfg.clone())?;
    sim.start();
    let mut settled_at = None;
    while let Some((at, event)) = sim.queue.pop() {
        if at > sim.cfg.max_virtual_ms {
            break;
        }
        sim.now = at;
        sim.handle(event);
        match (settled_at, sim.m.steady_from) {
            (_, Some((from, _))) if sim.now >= from + STEADY_MS => break,
            (_, Some(_)) => {}
            (Some(settled), None) if sim.now >= settled + SETTLE_MS => {
                sim.m.steady_from = Some((sim.now, sim.peers.iter().map(|p| p.gossip_sent).sum()));
            }
            (Some(_), None) => {}
            (None, None) => {
                if let Some(done) = sim.m.done_at
                    && (sim.m.converged_at.is_some() || sim.now >= done + CONVERGE_GRACE_MS)
                {
                    settled_at = Some(sim.now);
                }
            }
        }
    }
    sim.count_leader_finals();
    Ok(sim.report())
}

impl Sim {
    fn new(cfg: SimConfig) -> Result<Sim, SimError> {
        let n = cfg.peers;
        let k = if n <= cfg.cell_size { 1 } else { (n - 1).div_ceil(cfg.cell_size - 1) };
        let mut rng = Rng::new(cfg.seed);
        // Exactly round(liars × peers) liars, chosen among the workers.
        let mut workers: Vec<u32> = (1..n).collect();
        let liars = ((cfg.liars * f64::from(n)).round() as usize).min(workers.len());
        for i in 0..liars {
            let j = i + rng.below((workers.len() - i) as u64) as usize;
            workers.swap(i, j);
        }
        let lying = if cfg.collude { Behaviour::Colluder } else { Behaviour::Liar };
        let mut behaviour = vec![Behaviour::Honest; n as usize];
        for &w in &workers[..liars] {
            behaviour[w as usize] = lying;
        }
        let mut cells: Vec<Cell> = (0..k).map(|_| Cell { members: Vec::new(), bootstrap: Vec::new() }).collect();
        for i in 1..n {
            cells[((i - 1) % k) as usize].members.push(i);
        }
        for c in &mut cells {
            c.bootstrap = c.members.iter().take(cfg.bootstrap_peers as usize).copied().collect();
        }
        let verifier = keys::verifier();
        // The origin hands the job to the live peers that rank highest for it, taken from every
        // worker: the mesh it sees formed before the job (with a cold start, as if it had).
        let origin = keys::peer_id(cfg.seed, 0);
        let job = derive_job_id(&origin, &job_digest(cfg.seed), JOB_NONCE);
        let all: Vec<PeerId> = (1..n).map(|i| keys::peer_id(cfg.seed, i)).collect();
        let backups: Vec<u32> = rendezvous::choose(&job, &[origin], &all, DEFAULT_COORDINATORS)
            .iter()
            .skip(1)
            .map(keys::index_of)
            .collect();
        let mut sim = Sim {
            rng,
            peers: Vec::with_capacity(n as usize),
            live_workers: Vec::with_capacity(n as usize),
            origin: 0,
            bridges: std::iter::once(0).chain(backups.iter().copied()).collect(),
            backups,
            active: Some(0),
            decided: vec![None; cfg.tasks as usize],
            job,
            spec: JobSpec {
                module: crate::BlobId(*blake3::keyed_hash(&[7; 32], &cfg.seed.to_le_bytes()).as_bytes()),
                task_count: cfg.tasks,
                policy: cfg.policy(),
                origin,
                submitted_at_ms: UNIX_BASE_MS,
                label: "spare sim".into(),
            },
            verifier,
            pool: RecordPool::new(),
            m: Metrics::default(),
            scratch: Default::default(),
            packet: Packet::default(),
            queue: Queue::default(),
            now: 0,
            cells,
            cfg,
        };
        for i in 0..n {
            let cell = if i == 0 { 0 } else { (i - 1) % k };
            // A bridge's home cell comes first.
            let bridge = sim.bridges.contains(&i);
            let in_cells: Vec<u32> =
                if bridge { std::iter::once(cell).chain((0..k).filter(|&c| c != cell)).collect() } else { vec![cell] };
            let views = in_cells.into_iter().map(|c| sim.view(i, c, 0, &sim.cells[c as usize].bootstrap)).collect();
            let mut peer = VirtualPeer::new(keys::peer_id(sim.cfg.seed, i), cell, 0, behaviour[i as usize], views, true, sim.cfg.slots);
            peer.bridge = bridge;
            if i > 0 {
                peer.live_pos = Some(sim.live_workers.len() as u32);
                sim.live_workers.push(i);
            }
            sim.peers.push(peer);
        }
        sim.submit()?;
        Ok(sim)
    }

    /// A fresh membership of peer `index` for `cell`, started at `born`.
    pub(super) fn view(&self, index: u32, cell: u32, born: Millis, bootstrap: &[u32]) -> View {
        let me = Member { peer: keys::peer_id(self.cfg.seed, index), addr: keys::addr(index).into(), epoch: UNIX_BASE_MS + born };
        let seed = mix(self.cfg.seed ^ (u64::from(index) << 20) ^ u64::from(cell));
        let mut m = Membership::new(me, membership_config(), seed, self.verifier.clone());
        m.share_records(self.pool.clone());
        View { cell, mesh: MeshState::new(m), tick_at: NEVER, bootstrap: bootstrap.iter().map(|&b| keys::addr(b)).collect() }
    }

    /// The origin accepts the job: its coordinator holds it, with itself as the only coordinator
    /// until its backups have adopted the job.
    fn submit(&mut self) -> Result<(), SimError> {
        let origin = self.spec.origin;
        let mut coord = self.new_coordinator(self.origin);
        if self.cfg.history > 0 {
            for p in self.peers.iter().skip(1) {
                coord.set_standing(p.id, Standing { agreed: u64::from(self.cfg.history), ..Standing::default() });
            }
        }
        coord.submit(self.job, self.spec.clone()).map_err(|e| SimError::Submit(e.to_string()))?;
        let mut hosts = Hosts::new(origin, coord, self.verifier.clone());
        hosts.coordinate(self.job, vec![origin], 0);
        self.peers[self.origin as usize].hosts = Some(Box::new(hosts));
        Ok(())
    }

    /// The mesh is there (formed before, or with `cold_start` every peer starts at once: greets
    /// its bootstrap peers and publishes its advert); the origin hands the job to its backups
    /// (and announces it once they answered), and its own slots start on it.
    fn start(&mut self) {
        let origin = self.origin;
        // The origin publishes no advert: see the module docs.
        self.peers[origin as usize].advertises = false;
        if self.cfg.cold_start {
            for p in 0..self.peers.len() as u32 {
                self.boot(p);
            }
        } else {
            self.form_mesh();
        }
        let backups: Vec<PeerId> = self.backups.iter().map(|&b| self.peers[b as usize].id).collect();
        let job = self.job;
        self.with_hosts(origin, |h, _| {
            h.offer(&job, &backups);
            h.look_at_roles(&job, 0);
        });
        self.wake(origin);
        self.queue.push(probe_period_ms(), Event::Check);
        self.schedule_churn();
        if let Some(at) = self.cfg.crash_origin_at_ms {
            self.queue.push(at, Event::CrashOrigin);
        }
        if let Some(at) = self.cfg.restart_origin_at_ms {
            self.queue.push(at, Event::RestartOrigin);
        }
    }

    /// The mesh as gossip left it before the job came: every peer publishes its advert (alone,
    /// so to nobody), then each of its views takes the cell's members, the bridges among them,
    /// and their adverts as known ([`MeshState::restore`]), and its mesh loop starts. What the
    /// join wave of a cold start sends (every peer checks every member it hears of before its
    /// advert: half a million pings and acks at 10,000 peers) is then never simulated, and the
    /// job meets the mesh the origin chose its backups from.
    fn form_mesh(&mut self) {
        let n = self.peers.len() as u32;
        for p in 0..n {
            self.publish_advert(p);
        }
        for c in 0..self.cells.len() as u32 {
            let mut members = self.cells[c as usize].members.clone();
            members.extend(self.bridges.iter().copied());
            members.sort_unstable();
            members.dedup();
            // Each member as its own membership names it, and its advert (the origin has none).
            let (mut ids, mut adverts): (Vec<Member>, Vec<Record>) = (Vec::new(), Vec::new());
            for &i in &members {
                let peer = &self.peers[i as usize];
                let Some(own) = peer.views.first().map(|v| &v.mesh.membership) else { continue };
                ids.push(own.me().clone());
                adverts.extend(own.record(&RecordKey::Advert(peer.id)));
            }
            for &i in &members {
                let Some(v) = self.peers[i as usize].view_of(c) else { continue };
                self.peers[i as usize].views[v].mesh.restore(ids.iter().cloned(), &adverts, self.now);
                self.after_mesh(i, v);
            }
        }
        for p in 0..n {
            self.schedule_house(p);
        }
    }

    /// A peer's first moments: greet, advertise, start its mesh loop.
    pub(super) fn boot(&mut self, p: u32) {
        for v in 0..self.peers[p as usize].views.len() {
            self.greet(p, v);
        }
        self.publish_advert(p);
        self.schedule_house(p);
    }

    /// The simulated Unix clock.
    pub(super) fn unix(&self) -> u64 {
        UNIX_BASE_MS + self.now
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::MeshTick { peer, view } => self.on_mesh_tick(peer, view as usize),
            Event::Gossip(offset) => {
                // The packet's bytes are copied out of the queue into a buffer kept for it.
                let mut pkt = std::mem::take(&mut self.packet);
                (pkt.from, pkt.to, pkt.cell) = self.queue.take_packet(offset, &mut pkt.data);
                self.on_gossip(&pkt);
                self.packet = pkt;
            }
            Event::FarGossip(pkt) => self.on_gossip(&pkt),
            Event::Rpc(msg) => self.on_rpc(*msg),
            Event::RpcFailed { peer, kind } => self.answered(peer, *kind, Err(false)),
            Event::House { peer } => self.on_house(peer),
            Event::Work { peer } => self.on_work_timer(peer),
            Event::RunDone { peer, run } => self.on_run_done(peer, u64::from(run.1), run.0),
            Event::Host { peer } => self.on_host_timer(peer),
            Event::Churn => self.on_churn(),
            Event::CrashOrigin => self.on_crash_origin(),
            Event::RestartOrigin => self.on_restart_origin(),
            Event::Check => self.on_check(),
        }
    }
}

/// The nonce the simulated job's id is derived with.
pub(super) const JOB_NONCE: &[u8] = b"sim";

/// The digest of the simulated job's content, which its id is derived from.
pub(super) fn job_digest(seed: u64) -> [u8; 32] {
    *blake3::hash(&seed.to_le_bytes()).as_bytes()
}
