//! The WebAssembly sandbox (ABI v1): validates, compiles and caches task modules, and runs them
//! deterministically under memory, output and wall-time limits, and fuel when the job sets a
//! budget, on a bounded pool of threads. Everything a module does ends as a [`RunReport`]; only
//! host problems are errors.
//!
//! ```text
//! prepare(id, wasm) ── validate ─┬─ memory cache ── NaN rewrite ── disk cache ── compile ──> InstancePre
//!                                                                  (in a compiler process, if set)
//! run(req) ── bounded queue ── slot thread ─┬─ fresh Store + WASI ctx ── _start ──> RunReport
//!                                           └─ (Isolation::Processes) its slot process, batched:
//!                                              the same, with no deadline checks; killed at a
//!                                              deadline (slot.rs, slot_serve.rs, slot_walls.rs)
//! ```
//!
//! A peer compiles in a short-lived compiler process of its own binary
//! ([`SandboxConfig::compiler`], `compiler.rs`), which writes the disk cache that the peer then
//! loads from: Cranelift's code pages and heap are then never resident in the long-running
//! peer (24 MB resident idle after a job, against 31 MB compiling in process).
//!
//! Fuel metering costs up to ~1.6x on tight loops, so it is compiled only into a second
//! engine's code, used by runs whose job set a fuel budget; `prepare` compiles for the
//! deadline-only engine, and the first run with a budget compiles the metered form.
//!
//! NaN canonicalisation (the other per-operation cost on float code) is done by rewriting the
//! module (`nan.rs`): `prepare` canonicalises only the float results whose bits can be
//! observed and compiles that on a deadline engine without Cranelift's canonicalisation; the
//! rewrite is exactly equivalent to engine-wide canonicalisation (the argument is in `nan.rs`),
//! so results are the same bits on every architecture and as with earlier versions. Modules
//! the rewrite does not model (SIMD) compile on a third engine, with engine-wide
//! canonicalisation, built on the first such module. Metered runs keep engine-wide
//! canonicalisation of the module as submitted: the rewrite's extra instructions would use
//! fuel, and fuel counts are part of a result.
//!
//! What a run can observe is a function of the module, the request and the seed only: argv
//! (`[module hex id] ++ args`), env, stdin, a fixed wall clock (2000-01-01T00:00:00Z), a virtual
//! monotonic clock (0, 1 µs, 2 µs… per reading; sleeping jumps it forward), seeded random bytes,
//! NaN-canonicalized floats, deterministic relaxed SIMD, no threads, no files, no sockets.

mod cache;
mod compiler;
mod config;
mod determinism;
mod engine;
mod error;
mod flavour;
mod limits;
mod nan;
mod poll;
mod pool;
mod priority;
mod report;
mod run;
mod slot;
mod slot_pipes;
mod slot_serve;
mod slot_walls;
mod slot_wire;
mod trim;
mod validate;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, OnceLock};

use spare_protocol::BlobId;
use wasmtime::InstancePre;

pub use compiler::{CompileArgs, serve as compile_module};
pub use config::{Isolation, SandboxConfig};
pub use report::{Prepared, RunOutcome, RunReport, RunRequest, STDERR_TAIL_BYTES, tail_text};
pub use slot_serve::{SlotArgs, serve as serve_slot};
pub use determinism::{MONOTONIC_STEP_NS, WALL_CLOCK_SECS, task_seed};
pub use engine::{Metering, engine_config, reserved_address_space};
pub use error::{ModuleError, SandboxError};
pub use priority::{Priority, current_priority};
pub use validate::initial_memory_bytes;
pub use trim::Trimmed;

use cache::{Compiled, ModuleCache};
use engine::{EpochTicker, Nans};
use flavour::{Compiles, Flavour};
use pool::{Job, Pool};
use run::StoreData;
use slot::{Apart, SlotCommand};
use slot_wire::SlotRequest;
use validate::AllowedImports;

struct Inner {
    /// The engine of runs without a fuel budget, for rewritten modules (no engine NaN
    /// canonicalisation).
    deadline: Flavour,
    /// The engine of runs without a fuel budget for modules the rewrite does not model, with
    /// engine-wide NaN canonicalisation; built on the first such module.
    deadline_engine_wide: OnceLock<Flavour>,
    /// Held while `deadline_engine_wide` is built.
    building: Mutex<()>,
    /// The engine of runs with a fuel budget (engine-wide NaN canonicalisation).
    fueled: Flavour,
    allowed: AllowedImports,
    cache: ModuleCache,
    compiles: Compiles,
    config: SandboxConfig,
    // Dropped in this order: the queue closes (slot threads end), then the ticker stops.
    pool: Pool,
    ticker: EpochTicker,
}

impl Inner {
    /// The deadline engine with engine-wide canonicalisation, built now if it is not yet.
    fn deadline_engine_wide(&self) -> Result<&Flavour, SandboxError> {
        if let Some(f) = self.deadline_engine_wide.get() {
            return Ok(f);
        }
        let _held = self.building.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = self.deadline_engine_wide.get() {
            return Ok(f);
        }
        let f = Flavour::new(&self.config, self.config.isolation.unfueled(), Nans::EngineWide)?;
        self.ticker.add(f.engine.clone());
        Ok(self.deadline_engine_wide.get_or_init(|| f))
    }

    /// The deadline engine a module prepared for `nans` runs on.
    fn deadline_flavour(&self, nans: Nans) -> Result<&Flavour, SandboxError> {
        match nans {
            Nans::Rewritten => Ok(&self.deadline),
            Nans::EngineWide => self.deadline_engine_wide(),
        }
    }
}

/// A peer's sandbox. Cheap to clone (an `Arc` inside); `Send + Sync`.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Builds the two engines and their WASI linkers, the slot threads and the epoch ticker.
    pub fn new(mut config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        config.slots = config.slots.max(1);
        config.queue = config.queue.max(1);
        let (apart, threads) = match (&config.isolation, &config.cache_dir) {
            (Isolation::Threads, _) => (None, config.slots),
            (Isolation::Processes(exe), Some(dir)) => {
                (Some(SlotCommand { exe: exe.clone(), args: slot_serve::SlotArgs::of(&config, dir) }), config.slots)
            }
            (Isolation::Processes(_), None) => {
                return Err(SandboxError::Engine("slot processes need a cache directory".into()));
            }
            // A slot process runs on its calling thread only.
            (Isolation::SlotProcess, _) => (None, 0),
        };
        let deadline = Flavour::new(&config, config.isolation.unfueled(), Nans::Rewritten)?;
        let fueled = Flavour::new(&config, Metering::FuelAndDeadline, Nans::EngineWide)?;
        let allowed = AllowedImports::from_linker(&deadline.engine, &deadline.linker)?;
        let cache = ModuleCache::new(config.cached_modules);
        let slot_process = config.isolation == Isolation::SlotProcess;
        let pool = Pool::start(threads, config.queue, config.idle_priority, apart)?;
        let ticker = EpochTicker::start(vec![deadline.engine.clone(), fueled.engine.clone()])?;
        let sandbox = Sandbox {
            inner: Arc::new(Inner {
                deadline,
                deadline_engine_wide: OnceLock::new(),
                building: Mutex::new(()),
                fueled,
                allowed,
                cache,
                compiles: Compiles::default(),
                config,
                pool,
                ticker,
            }),
        };
        if slot_process {
            // Its walls (`slot_walls.rs`) forbid making the cache directory later.
            sandbox.inner.deadline_engine_wide()?;
        }
        Ok(sandbox)
    }

    /// Validates and compiles, once per module per peer: the memory cache, then the disk cache
    /// (keyed by module hash and engine compatibility hash), then a compile. Idempotent.
    /// `id` must be the BLAKE3 of `wasm`. Compiles for runs without a fuel budget; the first
    /// run with one compiles (or loads) the metered form, from bytes kept until then.
    pub fn prepare(&self, id: BlobId, wasm: &[u8]) -> Result<Prepared, ModuleError> {
        let inner = &self.inner;
        if inner.cache.contains(&id) {
            return Ok(Prepared::InMemory);
        }
        let actual = BlobId::of(wasm);
        if actual != id {
            return Err(ModuleError::WrongId { expected: id, actual });
        }
        self.validate(wasm)?;
        inner.cache.with_inflight(id, || {
            if inner.cache.contains(&id) {
                return Ok(Prepared::InMemory);
            }
            // Planned on every prepare, disk hits too (a validation and a pass over the code,
            // small beside loading): which engine the compiled form is of depends on it.
            let (pre, how, nans) = match nan::plan(wasm) {
                nan::Plan::Rewritten(bytes) => {
                    let (pre, how) = inner.deadline.load_or_compile(&id, &bytes, &inner.compiles)?;
                    (pre, how, Nans::Rewritten)
                }
                nan::Plan::EngineWide(why) => {
                    tracing::debug!(module = %id.short(), %why, "NaNs canonicalised engine-wide");
                    let flavour = inner.deadline_engine_wide().map_err(|e| ModuleError::Compile(e.to_string()))?;
                    let (pre, how) = flavour.load_or_compile(&id, wasm, &inner.compiles)?;
                    (pre, how, Nans::EngineWide)
                }
            };
            inner.cache.insert(id, (pre, nans), wasm, initial_memory_bytes(wasm));
            Ok(how)
        })
    }

    /// The memory prepared module `id` starts with, in bytes (`None`: not prepared here).
    pub fn initial_memory(&self, id: &BlobId) -> Option<u64> {
        self.inner.cache.get(id).map(|c| c.initial_memory)
    }

    /// Whether `id` is prepared (in memory) here.
    pub fn is_prepared(&self, id: &BlobId) -> bool {
        self.inner.cache.contains(id)
    }

    /// Forgets the modules `ids` (blobs that are not modules are no matter): their prepared
    /// forms in memory and their compiled forms on disk (both engines'), as when retention
    /// removed their blobs. Returns the bytes freed on disk.
    pub fn forget_modules(&self, ids: &std::collections::HashSet<BlobId>) -> u64 {
        for id in ids {
            self.inner.cache.remove(id);
        }
        self.inner.deadline.forget(ids) + self.inner.fueled.forget(ids)
    }

    /// Validation only, for submission: size cap, well-formed, `_start: func() -> ()` exported,
    /// every import a `wasi_snapshot_preview1` function of the ABI with its signature (no
    /// `sock_*`), no imported memories, tables, globals or tags, tables within the sandbox's.
    pub fn validate(&self, wasm: &[u8]) -> Result<(), ModuleError> {
        let inner = &self.inner;
        validate::validate(&inner.deadline.engine, &inner.allowed, wasm, inner.config.max_module_bytes)
    }

    /// The WASI preview 1 functions a module may import.
    pub fn allowed_imports(&self) -> Vec<String> {
        self.inner.allowed.names()
    }

    /// Runs one task on the bounded pool (never on the async runtime's threads). Errors only
    /// for host problems (module not prepared, queue full, pool shut down, limit above this
    /// peer's maximum); everything the module does is in the [`RunReport`].
    pub async fn run(&self, req: RunRequest) -> Result<RunReport, SandboxError> {
        self.submit(req, None)?.await.map_err(|_| SandboxError::ShutDown)?
    }

    /// [`Sandbox::run`], unless it cannot start by `start_by` (it waited for a slot that
    /// long): then [`SandboxError::Stale`], and it is not run.
    pub async fn run_before(&self, req: RunRequest, start_by: std::time::Instant) -> Result<RunReport, SandboxError> {
        self.submit(req, Some(start_by))?.await.map_err(|_| SandboxError::ShutDown)?
    }

    /// Queues `req` on the pool: to a slot process, or to run on a slot thread.
    fn submit(
        &self,
        req: RunRequest,
        start_by: Option<std::time::Instant>,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<RunReport, SandboxError>>, SandboxError> {
        let compiled = self.check(&req)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = if self.goes_apart(&req) {
            Job::Apart(Apart { req: SlotRequest::new(req, compiled.deadline_nans, start_by), reply: tx })
        } else {
            let inner = self.inner.clone();
            Job::Here(Box::new(move || {
                let stale = start_by.is_some_and(|by| std::time::Instant::now() > by);
                let _ = tx.send(if stale { Err(SandboxError::Stale) } else { run_guarded(&inner, &req) });
            }))
        };
        self.inner.pool.submit(job)?;
        Ok(rx)
    }

    /// Same as [`Sandbox::run`], on the calling thread (for benchmarks and tools). Must not be
    /// called on a tokio runtime worker thread (WASI's sync bindings block on tokio), and its
    /// calls are not bounded by the pool: more concurrent callers than `slots + 2` minus running
    /// pool tasks get `Busy`.
    ///
    /// With slot processes, a run without a fuel budget goes through the pool's queue to one
    /// and this waits for it.
    pub fn run_blocking(&self, req: &RunRequest) -> Result<RunReport, SandboxError> {
        if self.goes_apart(req) {
            return self.submit(req.clone(), None)?.blocking_recv().map_err(|_| SandboxError::ShutDown)?;
        }
        self.check(req)?;
        run_guarded(&self.inner, req)
    }

    /// Whether `req` runs in a slot process: a sandbox with them, a run without a fuel budget.
    fn goes_apart(&self, req: &RunRequest) -> bool {
        self.inner.config.isolation.apart() && !Metering::metered(&req.limits)
    }

    /// A slot process's run, on the calling thread, with no deadline checks unless the run
    /// is metered (`slot_serve.rs`).
    pub(crate) fn run_here(&self, req: &RunRequest) -> Result<RunReport, SandboxError> {
        self.check(req)?;
        run_guarded(&self.inner, req)
    }

    /// A slot process's prepare: loads module `id`'s compiled form for `nans` from the disk
    /// cache its peer wrote, unless it is in memory already. The peer validated, planned and
    /// compiled it; only the peer's own cache directory is read.
    pub(crate) fn load_compiled(&self, id: BlobId, nans: Nans) -> Result<(), SandboxError> {
        let inner = &self.inner;
        if inner.cache.contains(&id) {
            return Ok(());
        }
        let flavour = inner.deadline_flavour(nans)?;
        let pre = flavour.load(&id)?;
        inner.cache.insert(id, (pre, nans), &[], 0);
        Ok(())
    }

    /// Modules compiled so far, in a compiler process and in this process (loads from the
    /// disk cache are neither).
    pub fn compiled(&self) -> (u64, u64) {
        let c = &self.inner.compiles;
        (c.apart.load(std::sync::atomic::Ordering::Relaxed), c.here.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Number of slot threads.
    pub fn slots(&self) -> usize {
        self.inner.pool.slots()
    }

    /// The process ids of the slot processes running now ([`Isolation::Processes`]; none
    /// before the first run, after 30 s without work, or on threads).
    pub fn slot_processes(&self) -> Vec<u32> {
        self.inner.pool.processes()
    }

    /// Slot processes started so far: one per slot on its first run (and after
    /// 30 s without work), and one after each killed at a deadline or
    /// dead.
    pub fn slot_processes_started(&self) -> u64 {
        self.inner.pool.processes_started()
    }

    /// Address space the engines reserved up front, in bytes.
    pub fn reserved_address_space(&self) -> u64 {
        let lazy = if self.inner.deadline_engine_wide.get().is_some() { 1 } else { 0 };
        engine::reserved_address_space(&self.inner.config)
            + lazy * engine::engine_address_space(&self.inner.config)
    }

    fn check(&self, req: &RunRequest) -> Result<Arc<Compiled>, SandboxError> {
        let max = self.inner.config.max_memory_bytes;
        if req.limits.memory_bytes > max {
            return Err(SandboxError::LimitTooLarge { asked: req.limits.memory_bytes, max });
        }
        self.inner.cache.get(&req.module).ok_or(SandboxError::NotPrepared(req.module))
    }
}

/// The compiled form of `compiled` for the fuel-metered engine, made once.
fn fueled_pre(inner: &Inner, id: BlobId, compiled: &Compiled) -> Result<InstancePre<StoreData>, ModuleError> {
    if let Some(pre) = compiled.fueled.get() {
        return Ok(pre.clone());
    }
    inner.cache.with_inflight(id, || {
        if let Some(pre) = compiled.fueled.get() {
            return Ok(pre.clone());
        }
        // The bytes go only once the metered form is set, which was checked under this lock.
        let wasm = compiled.wasm().ok_or(ModuleError::NotPrepared(id))?;
        let (pre, _) = inner.fueled.load_or_compile(&id, &wasm, &inner.compiles)?;
        Ok(compiled.set_fueled(pre).clone())
    })
}

/// One run with panics turned into errors.
fn run_guarded(inner: &Inner, req: &RunRequest) -> Result<RunReport, SandboxError> {
    let compiled = inner.cache.get(&req.module).ok_or(SandboxError::NotPrepared(req.module))?;
    let ran = catch_unwind(AssertUnwindSafe(|| {
        let started = std::time::Instant::now();
        let (flavour, pre) = match Metering::metered(&req.limits) {
            false => match inner.deadline_flavour(compiled.deadline_nans) {
                Ok(flavour) => (flavour, compiled.deadline.clone()),
                Err(e) => return Err(e),
            },
            true => match fueled_pre(inner, req.module, &compiled) {
                Ok(pre) => (&inner.fueled, pre),
                Err(e) => {
                    return Ok(RunReport {
                        outcome: RunOutcome::Invalid(e),
                        stdout: Vec::new(),
                        stderr: Vec::new(),
                        fuel_used: 0,
                        elapsed: started.elapsed(),
                    });
                }
            },
        };
        run::run_one(flavour, &pre, req, inner.config.stderr_bytes)
    }));
    ran.unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic".into());
        Err(SandboxError::Panicked(msg))
    })
}
