//! The simulation's state and main loop: build the mesh, submit the job at its origin, then
//! handle events in virtual-time order until the job is finished (and membership converged),
//! or the time limit.

use crate::membership::{Member, Membership, MembershipConfig, MeshEvent};
use crate::records::Verifier;
use crate::{Adaptive, Coordinator, CoordinatorConfig, Record, JobId, JobSpec, Limits, Millis, Policy, derive_job_id};

use super::config::{SimConfig, SimError};
use super::keys::{self, UNIX_BASE_MS};
use super::metrics::Metrics;
use super::peer::{Host, NEVER, View, VirtualPeer};
use super::queue::{Event, Queue};
use super::report::Report;
use super::rng::{Rng, mix};
use super::workload::Behaviour;

/// How long the run goes on after the job finished, waiting for membership to converge.
const CONVERGE_GRACE_MS: Millis = 60_000;
/// SWIM's probe period (`MembershipConfig::lan`): one gossip round.
pub const PROBE_PERIOD_MS: Millis = 1_000;

/// One membership cell: the workers in it (the origin bridges every cell).
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
    /// Live workers (churn picks among them; the origin is never picked).
    pub live_workers: Vec<u32>,
    /// The job's origin (and coordinator).
    pub origin: u32,
    /// The job.
    pub job: JobId,
    /// Its spec.
    pub spec: JobSpec,
    /// The stand-in verifier every membership uses.
    pub verifier: Verifier,
    /// Counters.
    pub m: Metrics,
    /// Sequence number of the job's last ad.
    pub job_seq: u64,
    /// Buffers the membership driver reuses between calls.
    pub scratch: (Vec<(Member, Vec<u8>)>, Vec<MeshEvent>),
}

/// Runs one simulation.
pub fn run(cfg: &SimConfig) -> Result<Report, SimError> {
    cfg.validate()?;
    let mut sim = Sim::new(cfg.clone())?;
    sim.start();
    while let Some((at, event)) = sim.queue.pop() {
        if at > sim.cfg.max_virtual_ms {
            break;
        }
        sim.now = at;
        sim.handle(event);
        if let Some(done) = sim.m.done_at
            && (sim.m.converged_at.is_some() || sim.now >= done + CONVERGE_GRACE_MS)
        {
            break;
        }
    }
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
        let mut sim = Sim {
            rng,
            peers: Vec::with_capacity(n as usize),
            live_workers: Vec::with_capacity(n as usize),
            origin: 0,
            job: JobId([0; 32]),
            spec: JobSpec {
                module: crate::BlobId([0; 32]),
                task_count: cfg.tasks,
                policy: Policy::default(),
                origin: keys::peer_id(cfg.seed, 0),
                submitted_at_ms: UNIX_BASE_MS,
                label: String::new(),
            },
            verifier,
            m: Metrics::default(),
            job_seq: 0,
            scratch: Default::default(),
            queue: Queue::default(),
            now: 0,
            cells,
            cfg,
        };
        for i in 0..n {
            let cell = if i == 0 { 0 } else { (i - 1) % k };
            let in_cells: Vec<u32> = if i == 0 { (0..k).collect() } else { vec![cell] };
            let views = in_cells.into_iter().map(|c| sim.view(i, c, 0, sim.cells[c as usize].bootstrap.clone())).collect();
            let mut peer = VirtualPeer::new(keys::peer_id(sim.cfg.seed, i), cell, 0, behaviour[i as usize], views, true);
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
    pub(super) fn view(&self, index: u32, cell: u32, born: Millis, bootstrap: Vec<u32>) -> View {
        let me = Member { peer: keys::peer_id(self.cfg.seed, index), addr: keys::addr(index), epoch: UNIX_BASE_MS + born };
        let seed = mix(self.cfg.seed ^ (u64::from(index) << 20) ^ u64::from(cell));
        // The real peer's settings (`worker/src/node/mesh.rs:membership_config`).
        let m = Membership::new(me, MembershipConfig::lan(16), seed, self.verifier.clone());
        View { cell, m, tick_at: NEVER, last_join: born, bootstrap }
    }

    /// The origin accepts the job: its coordinator holds it.
    fn submit(&mut self) -> Result<(), SimError> {
        let origin = self.peers[self.origin as usize].id;
        let seed = self.cfg.seed.to_le_bytes();
        self.spec.module = crate::BlobId(*blake3::keyed_hash(&[7; 32], &seed).as_bytes());
        self.spec.policy = Policy {
            quorum: self.cfg.quorum,
            max_replicas: self.cfg.max_replicas,
            limits: Limits { timeout_ms: self.cfg.task_timeout_ms, ..Limits::default() },
            priority: 0,
            adaptive: self
                .cfg
                .adaptive
                .map(|min_agreed| Adaptive { min_agreed, spot_check_per_mille: self.cfg.spot_check_per_mille }),
        };
        self.spec.origin = origin;
        self.spec.label = "spare sim".into();
        self.job = derive_job_id(&origin, blake3::hash(&seed).as_bytes(), b"sim");
        let secret = *blake3::keyed_hash(&[9; 32], &seed).as_bytes();
        let mut coord = Coordinator::new(CoordinatorConfig { secret, ..CoordinatorConfig::default() });
        if self.cfg.history > 0 {
            for p in self.peers.iter().skip(1) {
                coord.set_record(p.id, Record { agreed: u64::from(self.cfg.history), ..Record::default() });
            }
        }
        coord.submit(self.job, self.spec.clone()).map_err(|e| SimError::Submit(e.to_string()))?;
        self.peers[self.origin as usize].host = Some(Box::new(Host { coord, jobs: vec![self.job], tick_at: NEVER }));
        Ok(())
    }

    /// Every peer starts at once: greets its bootstrap peers and publishes its advert; the origin
    /// announces the job and its own slots start on it.
    fn start(&mut self) {
        let origin = self.origin;
        // The origin publishes no advert: see the module docs.
        self.peers[origin as usize].advertises = false;
        for p in 0..self.peers.len() as u32 {
            self.boot(p);
        }
        self.publish_job(false);
        self.wake(origin);
        self.queue.push(PROBE_PERIOD_MS, Event::Check);
        self.schedule_churn();
    }

    /// A peer's first moments: greet, advertise, start its mesh loop.
    pub(super) fn boot(&mut self, p: u32) {
        for v in 0..self.peers[p as usize].views.len() {
            self.greet(p, v);
        }
        self.publish_advert(p, true);
        self.schedule_house(p);
    }

    /// The simulated Unix clock.
    pub(super) fn unix(&self) -> u64 {
        UNIX_BASE_MS + self.now
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::MeshTick { peer, view } => self.on_mesh_tick(peer, view as usize),
            Event::Gossip(pkt) => self.on_gossip(*pkt),
            Event::Rpc(msg) => self.on_rpc(*msg),
            Event::RpcFailed { peer, kind } => self.on_rpc_failed(peer, kind),
            Event::House { peer } => self.on_house(peer),
            Event::Slots { peer } => self.on_slots(peer),
            Event::RunDone { peer, ran_ms, replica } => self.on_run_done(peer, u64::from(ran_ms), *replica),
            Event::Flush { peer, coordinator } => self.on_flush(peer, coordinator),
            Event::CoordTick { peer } => self.on_coord_tick(peer),
            Event::Churn => self.on_churn(),
            Event::Check => self.on_check(),
        }
    }
}
