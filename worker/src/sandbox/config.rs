//! How a sandbox is sized and where it runs tasks: [`SandboxConfig`] and [`Isolation`].

use std::path::PathBuf;

use super::STDERR_TAIL_BYTES;
use super::engine::Metering;

/// How a sandbox is sized. Build with `SandboxConfig { slots: 4, ..Default::default() }`.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Threads that run tasks (the peer's `--cpus`). At least 1.
    pub slots: usize,
    /// On-disk cache of compiled modules (`None`: memory only). Created if missing; must be
    /// private to this peer.
    pub cache_dir: Option<PathBuf>,
    /// Modules above this size are refused. Default 64 MiB.
    pub max_module_bytes: usize,
    /// Largest per-task memory limit this peer accepts. Default 4 GiB.
    pub max_memory_bytes: u64,
    /// The tail of stderr kept per run (older bytes are dropped, never an error). Default
    /// [`STDERR_TAIL_BYTES`].
    pub stderr_bytes: usize,
    /// Runs that may wait for a slot before `run` refuses with `QueueFull`. Default `slots * 64`
    /// (computed from the default `slots`: set it when you set `slots`).
    pub queue: usize,
    /// Compiled modules kept in memory (least recently used evicted; a later `prepare`
    /// reloads from disk). Default 256.
    pub cached_modules: usize,
    /// Run the slot threads at the lowest scheduling priority (`SCHED_IDLE`, else nice 19), so
    /// the machine's own programs always come first. Default true.
    pub idle_priority: bool,
    /// The executable to compile modules with, as a compiler process (`spare compile-module`,
    /// this same binary: see `compiler.rs`), so that the compiler's memory is never this
    /// process's. Only with a `cache_dir`, through which the compiled module comes back.
    /// Default `None`: compile in this process.
    pub compiler: Option<PathBuf>,
    /// Where runs without a fuel budget run, and so how their wall deadline is enforced.
    /// Default [`Isolation::Threads`].
    pub isolation: Isolation,
}

/// Where a sandbox runs tasks without a fuel budget (runs with one always run on the slot
/// threads: fuel and epoch checks are compiled into their code anyway).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Isolation {
    /// On the slot threads of this process; the wall deadline is an epoch check compiled into
    /// every loop and function (up to ~1.5× on tight loops).
    #[default]
    Threads,
    /// In a slot process per slot (`spare sandbox-slot`, run from this executable), which is
    /// killed at a run's deadline, so the code has no checks; modules pass to it through the
    /// disk cache, so this needs a [`SandboxConfig::cache_dir`]. The process is a second wall:
    /// rlimits, a seccomp filter (`slot_walls.rs`).
    Processes(PathBuf),
    /// This process is a slot process: runs go on the calling thread with no deadline checks
    /// at all (its peer kills it). For `spare sandbox-slot`, and benchmarks of what it runs.
    SlotProcess,
}

impl Isolation {
    /// What the code of runs without a fuel budget checks: epoch checks on threads, nothing
    /// where a process is killed instead.
    pub(crate) fn unfueled(&self) -> Metering {
        match self {
            Isolation::Threads => Metering::Deadline,
            Isolation::Processes(_) | Isolation::SlotProcess => Metering::Unchecked,
        }
    }

    /// Whether runs without a fuel budget go to slot processes.
    pub(crate) fn apart(&self) -> bool {
        matches!(self, Isolation::Processes(_))
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        let slots = std::thread::available_parallelism().map_or(1, |n| n.get());
        SandboxConfig {
            slots,
            cache_dir: None,
            max_module_bytes: 64 << 20,
            max_memory_bytes: 4 << 30,
            stderr_bytes: STDERR_TAIL_BYTES,
            queue: slots * 64,
            cached_modules: 256,
            idle_priority: true,
            compiler: None,
            isolation: Isolation::Threads,
        }
    }
}
