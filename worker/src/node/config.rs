//! What a peer is started with: [`NodeConfig`], and how a `chaos` peer misbehaves.

use std::net::SocketAddr;
use std::path::PathBuf;

use spare_protocol::PolicyCaps;

use super::{donation, limits};

/// What a peer is started with.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Address to serve gRPC on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Where the store, blobs, compiled modules and key live.
    pub data_dir: PathBuf,
    /// Tasks run at once (sandbox threads).
    pub cpus: usize,
    /// Peers to join through (used by the mesh).
    pub bootstrap: Vec<String>,
    /// What submitters may ask for.
    pub caps: PolicyCaps,
    /// Largest module accepted.
    pub max_module_bytes: usize,
    /// Largest blob accepted by an upload.
    pub max_blob_bytes: u64,
    /// The address other peers dial (default: the listening address).
    pub advertise: Option<String>,
    /// Back-pressure: what one submitter or one peer may make this peer hold or do.
    pub bounds: limits::Bounds,
    /// The volunteer's controls: pausing, memory and disk caps, retention, whom to serve.
    pub donation: donation::Donation,
    /// Network diversity of the jobs submitted here that do not ask for one (they then carry
    /// it), and of jobs stored before jobs could ask.
    pub diversity: spare_protocol::Diversity,
    /// Where to serve Prometheus metrics (`None`: nowhere).
    pub metrics: Option<SocketAddr>,
    /// Where to serve the status page (`None`: nowhere).
    pub web: Option<SocketAddr>,
    /// The executable that compiles modules in a compiler process (`SandboxConfig::compiler`;
    /// `spare peer` sets its own binary). `None`: compile in the peer's process.
    pub compiler: Option<PathBuf>,
    /// Where tasks run (`SandboxConfig::isolation`; `spare peer` runs them in slot processes
    /// of its own binary). Default: the sandbox's threads.
    pub isolation: crate::sandbox::Isolation,
    /// Misbehaviour, for testing how the mesh copes with it.
    #[cfg(feature = "chaos")]
    pub chaos: Option<Chaos>,
}

/// How a `chaos` peer misbehaves.
#[cfg(feature = "chaos")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Chaos {
    /// Reports a wrong output (and its hash) for every task.
    Lie,
    /// Signs its attestations wrongly.
    Forge,
    /// Takes leases and never reports.
    Silent,
}

impl NodeConfig {
    /// Compiles modules in compiler processes, and runs tasks in slot processes, of `exe`
    /// (`spare peer` and `spare demo` give their own binary).
    pub fn with_helpers_from(mut self, exe: PathBuf) -> NodeConfig {
        self.compiler = Some(exe.clone());
        self.isolation = crate::sandbox::Isolation::Processes(exe);
        self
    }

    /// Defaults for a peer on `listen` with data in `data_dir`, one slot per CPU.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> NodeConfig {
        NodeConfig {
            listen,
            data_dir,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            bootstrap: Vec::new(),
            caps: PolicyCaps::default(),
            max_module_bytes: 64 << 20,
            max_blob_bytes: 1 << 30,
            advertise: None,
            bounds: limits::Bounds::default(),
            donation: donation::Donation::default(),
            diversity: spare_protocol::Diversity::default(),
            metrics: None,
            web: None,
            compiler: None,
            isolation: crate::sandbox::Isolation::Threads,
            #[cfg(feature = "chaos")]
            chaos: None,
        }
    }
}

