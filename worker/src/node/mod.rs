//! A running peer, the driver of the sans-IO protocol: the store, the sandbox, the coordinator
//! side (`spare_protocol::peer::host::Hosts`, driven by `host.rs` and `transmit.rs`), the
//! worker side (`spare_protocol::peer::work::Work`, driven by `work.rs`) and membership behind
//! their locks, the loops and timers that carry out what they decide, and the channels to other
//! peers. No protocol decision is made here. [`Node::start`] (in `start.rs`) brings one up on a
//! data directory and a listening address and serves gRPC on it.

mod clients;
mod config;
mod core;
pub mod donation;
mod ended;
mod host;
mod journal;
mod load;
pub mod reach;
pub mod relay;
pub mod metrics;
pub mod limits;
pub mod mesh;
mod own_batch;
pub mod remote;
pub mod replay;
pub mod retention;
mod restore;
mod run;
mod submit;
mod transmit;
mod upkeep;
mod work;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use spare_protocol::{Coordinator, CoordinatorConfig, JobId, Millis};
use tokio::sync::{Notify, broadcast, mpsc, watch};

pub use self::core::{Change, Core, Detail, JobMeta};
pub use crate::start::NodeHandle;
#[cfg(feature = "chaos")]
pub use config::Chaos;
pub use config::NodeConfig;
pub use mesh::{MeshState, PeerView};
pub use submit::{MAX_ARGS_BYTES, NewJob, SubmitFailure, digest};

use crate::identity::Identity;
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::store::Store;

/// The peer's background loops.
pub(crate) struct Loops {
    /// Those with work to do at shutdown (the slots hand back unfinished replicas); they end by
    /// themselves once the shutdown begins.
    pub leaving: Vec<tokio::task::JoinHandle<()>>,
    /// The rest, cut at shutdown.
    pub others: Vec<tokio::task::JoinHandle<()>>,
}

/// Changes kept for watchers that fall behind; past it they get a fresh snapshot.
const CHANGE_BUFFER: usize = 4096;

/// A running peer; cheap to clone.
#[derive(Clone)]
pub struct Node(Arc<Shared>);

struct Shared {
    config: NodeConfig,
    identity: Identity,
    store: Store,
    sandbox: Sandbox,
    core: Mutex<Core>,
    changes: broadcast::Sender<Change>,
    /// Wakes the local slots: a job arrived, a lease lapsed, a task needs another replica.
    work: Notify,
    /// Serialises module compiles so two slots never compile the same module at once.
    prepare: tokio::sync::Mutex<()>,
    started: Instant,
    shutdown: watch::Sender<bool>,
    /// Set for a stop that looks like a crash to the others: nothing handed back, no leave.
    crash: std::sync::atomic::AtomicBool,
    running: std::sync::atomic::AtomicUsize,
    /// The coordinator side's writes, to the store in the order it asked (`host.rs`).
    writes: mpsc::UnboundedSender<host::QueuedWrite>,
    /// Every write of the coordinator side up to this id is durable.
    durable: watch::Sender<u64>,
    /// The coordinator side's notices, to be acted on in order.
    notices: mpsc::UnboundedSender<(JobId, spare_protocol::peer::host::Notice)>,
    /// Wakes the coordinator side's timer: a call moved its deadline earlier.
    timer: Notify,
    /// Changed whenever a job held here is announced (a submission waits for its list to
    /// settle, which is announced).
    announced: watch::Sender<()>,
    /// Membership changes seen (a peer up or down): the host timer's view of members is
    /// taken again after one.
    member_changes: std::sync::atomic::AtomicU64,
    /// Jobs whose end is durable: every result they will have is in the store.
    finished: dashmap::DashSet<JobId>,
    /// Membership and what this peer published.
    mesh: Mutex<mesh::MeshState>,
    /// Wakes the mesh loop: something to send.
    mesh_wake: Notify,
    /// Channels to other peers.
    clients: clients::Clients,
    /// How this peer's port speaks TLS.
    tls_server: Arc<rustls::ServerConfig>,
    /// The address other peers dial.
    advertised: String,
    /// Records and attestations dropped for bad signatures.
    invalid_records: std::sync::atomic::AtomicU64,
    /// Submissions being checked and stored now.
    submits: tokio::sync::Semaphore,
    /// What each submitter key's running jobs hold here.
    submitters: Mutex<std::collections::HashMap<spare_protocol::PeerId, limits::Held>>,
    /// Jobs being written at submission: not in the coordinator yet, and no other submission
    /// of the same id may start.
    submitting: dashmap::DashSet<JobId>,
    /// Signed client requests seen lately, so none is taken twice.
    replay: Mutex<replay::ReplayCache>,
    /// Signed mesh requests (lease, report, adopt, replicate) seen lately, likewise.
    mesh_replay: Mutex<replay::ReplayCache>,
    /// Tasks of the unfinished jobs held here.
    held_tasks: std::sync::atomic::AtomicU64,
    /// Requests per peer.
    peer_rate: limits::RateLimiter<spare_protocol::PeerId>,
    /// Whether the volunteer's controls pause this peer now, and the memory gate of its tasks.
    donation: donation::State,
    /// What the peer counts, for its log summary and Prometheus.
    metrics: metrics::Metrics,
    /// Whether others can dial this peer, its relays, and the peers attached to it.
    nat: reach::Nat,
}

impl Node {
    /// Opens the data directory, restores the jobs it holds, binds the listening address and
    /// starts the peer's loops; serving gRPC on the listener is the caller's (`crate::start`).
    pub(crate) async fn open(mut config: NodeConfig) -> anyhow::Result<(Node, tokio::net::TcpListener, Loops)> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create data directory {}", dir.display()))?;
        let identity = Identity::load_or_create(dir)?;
        let (cert, tls_key) = identity.tls_certificate()?;
        let clients = clients::Clients::new(cert.clone(), tls_key.clone());
        // `--bootstrap ADDR@PEERID` pins the first contact's identity.
        let mut bootstrap = Vec::with_capacity(config.bootstrap.len());
        for b in &config.bootstrap {
            match b.rsplit_once('@') {
                Some((addr, id)) => {
                    let peer: spare_protocol::PeerId =
                        id.parse().with_context(|| format!("--bootstrap {b}: {id:?} is not a PeerId (64 hex characters)"))?;
                    clients.expect(addr, peer);
                    bootstrap.push(addr.to_string());
                }
                None => bootstrap.push(b.clone()),
            }
        }
        config.bootstrap = bootstrap;
        let tls_server = Arc::new(
            crate::identity::server_config(cert, tls_key).map_err(|e| anyhow::anyhow!("TLS server configuration: {e}"))?,
        );
        let store = Store::open(dir)?;
        let sandbox = Sandbox::new(SandboxConfig {
            slots: config.cpus.max(1),
            cache_dir: Some(dir.join("modules")),
            max_module_bytes: config.max_module_bytes,
            max_memory_bytes: config.caps.limits.memory_bytes,
            idle_priority: config.donation.task_priority == donation::TaskPriority::Idle,
            compiler: config.compiler.clone(),
            isolation: config.isolation.clone(),
            ..SandboxConfig::default()
        })
        .context("cannot start the sandbox")?;
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let coord = Coordinator::new(CoordinatorConfig {
            caps: config.caps,
            secret,
            max_leases_per_peer: config.bounds.max_leases_per_peer,
            max_jobs: config.bounds.max_unfinished_jobs,
            diversity: config.diversity,
            ..CoordinatorConfig::default()
        });
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let advertised = config.advertise.clone().unwrap_or_else(|| addr.to_string());
        let membership = mesh::new_membership(&identity, advertised.clone(), u64::from_le_bytes(secret[..8].try_into().unwrap_or_default()));
        let (writes, queued) = mpsc::unbounded_channel();
        let (notices, noticed) = mpsc::unbounded_channel();
        let hosts = host::hosts_of(&identity, coord);
        let node = Node(Arc::new(Shared {
            identity,
            store,
            sandbox,
            core: Mutex::new(Core::new(hosts)),
            changes,
            work: Notify::new(),
            prepare: tokio::sync::Mutex::new(()),
            started: Instant::now(),
            shutdown: watch::channel(false).0,
            crash: std::sync::atomic::AtomicBool::new(false),
            running: Default::default(),
            writes,
            durable: watch::channel(0).0,
            notices,
            timer: Notify::new(),
            announced: watch::channel(()).0,
            member_changes: Default::default(),
            finished: Default::default(),
            mesh: Mutex::new(mesh::MeshState::new(membership)),
            mesh_wake: Notify::new(),
            clients,
            tls_server,
            advertised,
            invalid_records: Default::default(),
            submits: tokio::sync::Semaphore::new(config.bounds.max_pending_submits.max(1)),
            submitters: Default::default(),
            submitting: Default::default(),
            replay: Mutex::new(replay::ReplayCache::new(crate::wire::signing::LEASE_CLOCK_SKEW_MS, replay::MAX_SEEN)),
            mesh_replay: Mutex::new(replay::ReplayCache::new(crate::wire::signing::LEASE_CLOCK_SKEW_MS, replay::MAX_MESH_SEEN)),
            held_tasks: Default::default(),
            peer_rate: limits::RateLimiter::new(config.bounds.peer_rate, config.bounds.peer_burst),
            donation: donation::State::new(&config.donation),
            metrics: Default::default(),
            nat: Default::default(),
            config,
        }));
        let restored = node.restore()?;
        tracing::info!(peer = %node.peer_id(), %addr, restored, "peer started");
        let loops = Loops {
            leaving: vec![tokio::spawn(work::run(node.clone())), tokio::spawn(node.clone().host_timer())],
            others: vec![
                tokio::spawn(node.clone().mesh_loop()),
                tokio::spawn(node.clone().writer(queued)),
                tokio::spawn(node.clone().noticer(noticed)),
                tokio::spawn(node.clone().reach_loop()),
                tokio::spawn(upkeep::run(node.clone())),
                tokio::spawn(journal::summaries(node.clone())),
            ],
        };
        Ok((node, listener, loops))
    }

    /// The protocol state, locked. Never held across an await.
    pub fn core(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock is a bug; the state is still the best there is.
        self.0.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This peer's id.
    pub fn peer_id(&self) -> spare_protocol::PeerId {
        self.0.identity.peer_id()
    }

    /// This peer's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.0.config
    }

    /// The durable store.
    pub fn store(&self) -> &Store {
        &self.0.store
    }

    /// The sandbox.
    pub fn sandbox(&self) -> &Sandbox {
        &self.0.sandbox
    }

    /// Durable changes, as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.0.changes.subscribe()
    }

    /// Gives back what a running job counted against the bounds.
    fn job_ended(&self, job: &JobId) {
        let (tasks, submitter, input_bytes) = {
            let core = self.core();
            core.jobs.get(job).map_or((0, None, 0), |m| (m.spec.task_count, m.submitter, m.input_bytes))
        };
        let _ = self.0.held_tasks.fetch_update(std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed, |h| {
            Some(h.saturating_sub(u64::from(tasks)))
        });
        if let Some(key) = submitter {
            limits::give_back(&mut self.0.submitters.lock().unwrap_or_else(|p| p.into_inner()), key, input_bytes);
        }
    }

    /// Counts the tasks of a job taken on (adopted) against the bound on tasks held; false (and
    /// nothing counted) when it would pass it.
    pub(crate) fn hold_tasks(&self, n: u64) -> bool {
        let max = self.config().bounds.max_held_tasks;
        self.0
            .held_tasks
            .fetch_update(std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed, |h| {
                (h + n <= max).then_some(h + n)
            })
            .is_ok()
    }

    /// Gives back tasks counted by [`Node::hold_tasks`] for a job that was not taken after all.
    pub(crate) fn unhold_tasks(&self, n: u64) {
        let _ = self.0.held_tasks.fetch_update(std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed, |h| {
            Some(h.saturating_sub(n))
        });
    }

    /// Takes one request's worth of `peer`'s rate; false when it sends too much.
    pub fn peer_allowed(&self, peer: spare_protocol::PeerId) -> bool {
        self.0.peer_rate.allow(peer)
    }

    /// Counts a record or attestation dropped for a bad signature.
    pub fn count_invalid(&self) {
        self.0.invalid_records.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records and attestations dropped for bad signatures so far.
    pub fn invalid_count(&self) -> u64 {
        self.0.invalid_records.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a job has ended and all its results are durable.
    pub fn is_finished(&self, id: &JobId) -> bool {
        self.0.finished.contains(id)
    }

    /// Replicas running on this peer now.
    pub fn running(&self) -> usize {
        self.0.running.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Why this peer takes no new work now (`None`: it does).
    pub fn paused(&self) -> Option<donation::Pause> {
        self.0.donation.pause_reason()
    }

    /// Bytes of memory the tasks running here may use together now (their limits summed).
    pub fn task_memory_held(&self) -> u64 {
        self.0.donation.memory_held()
    }

    /// The most memory the tasks running here ever held together (their limits summed).
    pub fn task_memory_peak(&self) -> u64 {
        self.0.donation.memory_peak()
    }

    /// How long this peer has been up.
    pub fn uptime(&self) -> Duration {
        self.0.started.elapsed()
    }

    /// Milliseconds on this peer's monotonic protocol clock.
    pub fn now(&self) -> Millis {
        self.0.started.elapsed().as_millis() as Millis
    }

    /// Resolves to `true` once the peer is shutting down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.0.shutdown.subscribe()
    }

    /// Makes the coming stop look like a crash (for tests of restarts and takeovers).
    pub(crate) fn set_crash(&self) {
        self.0.crash.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the stop hands work back and leaves the mesh (not when it plays a crash).
    pub(crate) fn stops_cleanly(&self) -> bool {
        !self.0.crash.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Tells every loop to stop, and wakes the ones that wait for work.
    pub(crate) fn begin_shutdown(&self) {
        let _ = self.0.shutdown.send(true);
        self.0.work.notify_one();
    }

    /// Handles to this peer still held (requests in flight hold one each).
    pub(crate) fn handles(&self) -> usize {
        Arc::strong_count(&self.0)
    }

    /// The TLS configuration of this peer's port.
    pub fn tls_server_config(&self) -> Arc<rustls::ServerConfig> {
        self.0.tls_server.clone()
    }

    /// Signs `bytes` with this peer's key.
    pub fn sign(&self, bytes: &[u8]) -> [u8; 64] {
        self.0.identity.sign(bytes)
    }

    /// Records a signed client request's (key, nonce) at `now`; refused when seen before.
    pub fn check_replay(&self, key: spare_protocol::PeerId, nonce: [u8; 16]) -> Result<(), replay::ReplayError> {
        self.0.replay.lock().unwrap_or_else(|p| p.into_inner()).check(key, nonce, unix_ms())
    }

    /// Records a signed mesh request's (sender, nonce); refused when seen before.
    pub fn check_mesh_replay(&self, sender: spare_protocol::PeerId, nonce: [u8; 16]) -> Result<(), replay::ReplayError> {
        self.0.mesh_replay.lock().unwrap_or_else(|p| p.into_inner()).check(sender, nonce, unix_ms())
    }

    /// The submitter key that owns a job held here (`None`: unknown job, or one accepted before
    /// jobs had owners).
    pub fn owner_of(&self, id: &JobId) -> Option<spare_protocol::PeerId> {
        self.core().jobs.get(id).and_then(|m| m.owner)
    }

    /// Cancels a job; false when unknown. Durable before it returns. A job that has ended keeps
    /// its final state: nothing is stored, so a restart cannot turn it into a cancelled one.
    /// The backups hear of it from the coordinator side (without it, a failover would run it
    /// again).
    pub async fn cancel(&self, id: &JobId) -> anyhow::Result<bool> {
        let (cancelled, written) = self.with_hosts(|c, now| (c.hosts.cancel(id, now), c.hosts.written()));
        match cancelled {
            None => Ok(false),
            Some(false) => Ok(true),
            Some(true) => {
                self.durable(written).await.map_err(|_| anyhow::anyhow!("the cancellation could not be stored"))?;
                Ok(true)
            }
        }
    }
}

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
