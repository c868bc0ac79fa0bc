//! The wasmtime `Config` of the sandbox (determinism switches, limits, a pooling allocator sized
//! to the peer's slots), the engine compatibility hash that names cached compiled modules, and
//! the epoch ticker thread behind wall deadlines.
//!
//! A sandbox has two engines ([`Metering`]): one without fuel metering, for jobs with only a wall
//! deadline (the default), and one with it, for jobs that set a deterministic budget
//! (`--fuel`). Fuel is compiled into the code (a counter updated in every basic block), so the
//! two cannot share compiled modules. The deadline is an epoch check in both on slot threads;
//! with slot processes the first has no checks at all ([`Metering::Unchecked`]): the peer
//! kills the process instead.
//!
//! Address space: with `n = slots + 2`, the pool reserves per engine `n` linear-memory slots of
//! `memory_reservation` (4 GiB, or `max_memory_bytes` if larger) plus a 32 MiB guard each,
//! `n * MAX_TABLES_PER_MODULE` tables of `TABLE_ELEMENTS` pointers (8 MiB each) and `n` fiber
//! stacks of 2 MiB (never used). All of it is inaccessible or untouched until used, so it costs
//! address space, not memory: about 12.2 GiB per engine for 1 slot, 16.2 GiB for 2, 24.3 GiB
//! for 4, twice that for the sandbox's two engines ([`reserved_address_space`]; wasmtime's
//! defaults would reserve about 4 TiB per engine), three times once a module needed the
//! engine-wide NaN canonicalisation engine (built then, see `nan.rs`). The 4 GiB
//! reservation is kept because it lets Cranelift drop bounds checks on 32-bit memories, which
//! is much of the speed of sandboxed code.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, WasmBacktraceDetails, WasmFeatures,
};

use super::SandboxConfig;
use super::error::SandboxError;

/// One epoch tick: the granularity of wall deadlines.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Native stack a module may use; deeper recursion is a `StackOverflow` trap. Sandbox threads
/// get [`THREAD_STACK`] so that host frames always fit beside it.
pub(crate) const MAX_WASM_STACK: usize = 1 << 20;
/// Stack of the pool's threads.
pub(crate) const THREAD_STACK: usize = 8 << 20;
/// Most elements a table may have (initially or by growing). Same on every peer.
pub(crate) const TABLE_ELEMENTS: usize = 1 << 20;
/// Most tables a module may define.
pub(crate) const MAX_TABLES_PER_MODULE: u32 = 2;
/// Largest `VMContext` of an instance (grows with functions, globals, tables of a module).
const CORE_INSTANCE_SIZE: usize = 16 << 20;
/// Reservation of one linear memory: 4 GiB covers every 32-bit memory without bounds checks.
const MEMORY_RESERVATION: u64 = 4 << 30;
/// Guard after each linear memory (wasmtime's default on 64-bit hosts).
const MEMORY_GUARD: u64 = 32 << 20;
/// wasmtime's default fiber stack size (see `total_stacks` below).
const ASYNC_STACK: u64 = 2 << 20;
/// Bumped whenever the sandbox changes what a compiled module means (its config, its ABI),
/// so that cached compiled modules of an older sandbox are never loaded.
const SANDBOX_ABI_VERSION: &str = "spare.v1 sandbox abi 1";

/// How an engine makes NaNs deterministic (see `nan.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Nans {
    /// Cranelift canonicalises every float arithmetic result (modules as submitted).
    EngineWide,
    /// No engine canonicalisation: the engine runs modules rewritten by `nan::plan`, which
    /// canonicalise the results whose bits can be observed.
    Rewritten,
}

impl Nans {
    /// A short name, part of the compiled-module cache key (with the rewrite's version).
    fn name(self) -> &'static str {
        match self {
            Nans::EngineWide => "nan engine-wide",
            Nans::Rewritten => super::nan::REWRITE_VERSION,
        }
    }
}

/// Which of the sandbox's two engines: what its compiled code counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metering {
    /// Epoch checks only (the wall deadline): jobs without a fuel budget.
    Deadline,
    /// Fuel and epoch checks: jobs with a deterministic budget (`--fuel`).
    FuelAndDeadline,
    /// No checks in the code at all: jobs without a fuel budget run in a slot process
    /// (`slot.rs`), which the peer kills at the deadline.
    Unchecked,
}

impl Metering {
    /// Both, in a fixed order.
    pub const ALL: [Metering; 2] = [Metering::Deadline, Metering::FuelAndDeadline];

    /// Whether a run with `limits` needs the metered engine (else the sandbox's deadline
    /// engine: [`Metering::Deadline`], or [`Metering::Unchecked`] with slot processes).
    pub fn metered(limits: &spare_protocol::Limits) -> bool {
        limits.has_fuel_budget()
    }

    /// Whether the engine's code checks the epoch (the wall deadline in threads).
    pub fn epoch(self) -> bool {
        !matches!(self, Metering::Unchecked)
    }

    /// Whether the engine's code counts fuel.
    pub fn fuel(self) -> bool {
        matches!(self, Metering::FuelAndDeadline)
    }

    /// A short name, part of the disk cache's file names.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Metering::Deadline => "deadline",
            Metering::FuelAndDeadline => "fuel",
            Metering::Unchecked => "unchecked",
        }
    }
}

/// How many instances (and memories) the pool holds: one per slot plus a little room for
/// `run_blocking` callers and instances still being torn down.
pub(crate) fn pool_instances(slots: usize) -> u32 {
    u32::try_from(slots.saturating_add(2)).unwrap_or(u32::MAX)
}

/// The reservation per linear memory, in bytes.
fn memory_reservation(config: &SandboxConfig) -> u64 {
    let wanted = config.max_memory_bytes.max(MEMORY_RESERVATION);
    // Round up to whole 64 KiB wasm pages.
    wanted.div_ceil(1 << 16).saturating_mul(1 << 16)
}

/// Address space a sandbox (its two engines) reserves up front, in bytes (see the module docs).
pub fn reserved_address_space(config: &SandboxConfig) -> u64 {
    engine_address_space(config) * Metering::ALL.len() as u64
}

/// Address space one engine's pool reserves, in bytes.
pub(crate) fn engine_address_space(config: &SandboxConfig) -> u64 {
    let n = u64::from(pool_instances(config.slots.max(1)));
    let memories = n * (memory_reservation(config) + MEMORY_GUARD) + MEMORY_GUARD;
    let tables = n * u64::from(MAX_TABLES_PER_MODULE) * (TABLE_ELEMENTS as u64) * 8;
    let stacks = n * (ASYNC_STACK + 4096);
    memories + tables + stacks
}

/// Bytes of each pooled memory kept resident between tasks (reset by memset, not madvise).
const KEEP_RESIDENT: usize = 4 << 20;

/// The configuration of the sandbox's engine for `metering`. Benchmarks turn its switches
/// (`consume_fuel`, `epoch_interruption`, NaN canonicalization) to measure what each costs.
pub fn engine_config(config: &SandboxConfig, metering: Metering) -> Config {
    let slots = config.slots.max(1);
    let n = pool_instances(slots);
    let reservation = memory_reservation(config);

    let mut pool = PoolingAllocationConfig::new();
    pool.total_core_instances(n)
        .total_memories(n)
        .total_tables(n.saturating_mul(MAX_TABLES_PER_MODULE))
        .total_gc_heaps(n)
        // Fiber stacks exist because wasmtime-wasi turns wasmtime's `async` feature on; the
        // sandbox never runs async. The default (1000 stacks of 2 MiB, each with a guard page)
        // would reserve 2 GiB and split the mapping into ~2000 areas per engine.
        .total_stacks(n)
        .max_memories_per_module(1)
        .max_tables_per_module(MAX_TABLES_PER_MODULE)
        .table_elements(TABLE_ELEMENTS)
        .max_core_instance_size(CORE_INSTANCE_SIZE)
        // Every 32-bit memory fits, on every peer: the per-task limit is the resource
        // limiter's job, so whether a module can be instantiated never depends on this peer's
        // `max_memory_bytes`.
        .max_memory_size(usize::try_from(reservation).unwrap_or(usize::MAX))
        .max_unused_warm_slots(n)
        // Reset a slot's memory with memset rather than madvise when little was touched: a
        // madvise in a multi-threaded process costs TLB shootdowns on every core, and the next
        // task page-faults its memory back in. Only touched pages are reset where the kernel
        // can say which (PAGEMAP_SCAN, Linux 6.7+).
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(64 << 10)
        .pagemap_scan(wasmtime::Enabled::Auto);

    let mut c = Config::new();
    c.cache(None)
        .consume_fuel(metering.fuel())
        .epoch_interruption(metering.epoch())
        .cranelift_nan_canonicalization(true)
        .relaxed_simd_deterministic(true)
        .shared_memory(false)
        .max_wasm_stack(MAX_WASM_STACK)
        .async_stack_size(ASYNC_STACK as usize)
        .wasm_backtrace_details(WasmBacktraceDetails::Disable)
        .memory_reservation(reservation)
        .memory_guard_size(MEMORY_GUARD)
        .memory_may_move(false)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // Proposals the ABI leaves out: threads (not deterministic), and what would make instances
    // need more than one pooled memory/table slot or a GC heap. Set through `wasm_features` so
    // this holds whichever wasmtime cargo features are compiled in (`wasm_threads` only exists
    // with the `threads` feature, which this build leaves out: threads cannot be enabled).
    for off in [
        WasmFeatures::THREADS,
        WasmFeatures::SHARED_EVERYTHING_THREADS,
        WasmFeatures::MEMORY64,
        WasmFeatures::MULTI_MEMORY,
        WasmFeatures::CUSTOM_PAGE_SIZES,
        WasmFeatures::GC,
        WasmFeatures::EXCEPTIONS,
        WasmFeatures::LEGACY_EXCEPTIONS,
        WasmFeatures::STACK_SWITCHING,
        WasmFeatures::COMPONENT_MODEL,
    ] {
        c.wasm_features(off, false);
    }
    c
}

/// Builds the sandbox's engine for `metering`, canonicalising NaNs as `nans` says.
pub(crate) fn build_engine(config: &SandboxConfig, metering: Metering, nans: Nans) -> Result<Engine, SandboxError> {
    let mut c = engine_config(config, metering);
    c.cranelift_nan_canonicalization(nans == Nans::EngineWide);
    Engine::new(&c).map_err(|e| SandboxError::Engine(format!("{e:#}")))
}

/// A short, stable name of everything that makes a compiled module loadable by this engine:
/// wasmtime's own compatibility hash plus [`SANDBOX_ABI_VERSION`], the metering and the NaN
/// handling (with the rewrite's version: a compiled module is of rewritten bytes), through
/// BLAKE3 (std's hashers are not stable across Rust releases). 16 hex characters.
pub(crate) fn engine_hash(engine: &Engine, metering: Metering, nans: Nans) -> String {
    let mut h = Blake3Hasher(blake3::Hasher::new());
    SANDBOX_ABI_VERSION.hash(&mut h);
    metering.name().hash(&mut h);
    nans.name().hash(&mut h);
    engine.precompile_compatibility_hash().hash(&mut h);
    let digest = h.0.finalize();
    hex::encode(&digest.as_bytes()[..8])
}

struct Blake3Hasher(blake3::Hasher);

impl Hasher for Blake3Hasher {
    fn finish(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0.finalize().as_bytes()[..8]);
        u64::from_le_bytes(b)
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The thread that advances the engines' epochs every [`EPOCH_TICK`]. Stops (and is joined) when
/// dropped, which happens when the last clone of the `Sandbox` goes.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
    /// The engines it ticks (one may be added later: the engine-wide deadline engine is built
    /// on the first module that needs it).
    engines: Arc<Mutex<Vec<Engine>>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Ticks `engine` too from now on.
    pub(crate) fn add(&self, engine: Engine) {
        self.engines.lock().unwrap_or_else(|p| p.into_inner()).push(engine);
    }

    pub(crate) fn start(engines: Vec<Engine>) -> Result<EpochTicker, SandboxError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let engines = Arc::new(Mutex::new(engines));
        let ticked = engines.clone();
        let thread = std::thread::Builder::new()
            .name("spare-sandbox-epoch".into())
            .spawn(move || {
                let mut next = Instant::now() + EPOCH_TICK;
                while !flag.load(Ordering::Acquire) {
                    let now = Instant::now();
                    if now < next {
                        // park_timeout may wake early (or by `unpark` on drop): re-check.
                        std::thread::park_timeout(next - now);
                        continue;
                    }
                    for engine in ticked.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                        engine.increment_epoch();
                    }
                    next += EPOCH_TICK;
                    if next < now {
                        // We were descheduled for several ticks: do not burst to catch up.
                        next = now + EPOCH_TICK;
                    }
                }
            })
            .map_err(|e| SandboxError::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(EpochTicker { stop, engines, thread: Some(thread) })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            // The ticker never holds a `Sandbox`, so this cannot wait on ourselves.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}
