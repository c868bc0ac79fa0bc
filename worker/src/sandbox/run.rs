//! One run of a prepared module: a fresh, deterministic WASI context and store, memory and
//! deadline limits (and fuel on the metered engine), `_start`, and the classification of how it
//! ended.

use std::sync::Arc;
use std::time::Instant;

use spare_protocol::Outcome;
use wasmtime::{InstancePre, PoolConcurrencyLimitError, Store, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

use super::determinism::{
    FixedWallClock, SeededRng, Stream, VirtualMonotonicClock, VirtualTime, insecure_seed,
};
use super::engine::EPOCH_TICK;
use super::error::{ModuleError, SandboxError};
use super::flavour::Flavour;
use super::limits::{CappedPipe, LimitHit, LimitKind, Limiter};
use super::{RunOutcome, RunReport, RunRequest};

/// Largest single `random_get` (a bigger one traps, on every peer): bounds the host allocation.
const MAX_RANDOM_BYTES: u64 = 16 << 20;

/// The state of one run's store.
pub(crate) struct StoreData {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) limiter: Limiter,
    /// Virtual time, shared with the monotonic clock inside `wasi`.
    pub(crate) time: Arc<VirtualTime>,
    /// stdin (shared with `wasi`), for the virtual `poll_oneoff`.
    pub(crate) stdin: MemoryInputPipe,
}

impl StoreData {
    /// A store state that is never run (to read the linker's definitions).
    pub(crate) fn placeholder() -> StoreData {
        let time = Arc::new(VirtualTime::default());
        let stdin = MemoryInputPipe::new(Vec::new());
        let wasi = WasiCtxBuilder::new()
            .wall_clock(FixedWallClock)
            .monotonic_clock(VirtualMonotonicClock(time.clone()))
            .secure_random(SeededRng::new(&[0; 32], Stream::Secure))
            .insecure_random(SeededRng::new(&[0; 32], Stream::Insecure))
            .build_p1();
        StoreData { wasi, limiter: Limiter::new(0, LimitHit::default()), time, stdin }
    }
}

/// Epoch ticks for a wall deadline: `ceil(timeout / tick) + 1`, so a run never gets less than
/// its timeout (the first tick may come at once).
pub(crate) fn deadline_ticks(timeout_ms: u64) -> u64 {
    let tick = EPOCH_TICK.as_millis().max(1) as u64;
    timeout_ms.div_ceil(tick).saturating_add(1)
}

/// Runs `req` on the calling thread with `pre`, compiled for `flavour`'s engine; `stderr_bytes`
/// is how much of stderr's tail it keeps.
pub(crate) fn run_one(
    flavour: &Flavour,
    pre: &InstancePre<StoreData>,
    req: &RunRequest,
    stderr_bytes: usize,
) -> Result<RunReport, SandboxError> {
    let started = Instant::now();
    let hit = LimitHit::default();
    let stdout =
        CappedPipe::failing(usize::try_from(req.limits.output_bytes).unwrap_or(usize::MAX), hit.clone());
    let stderr = CappedPipe::keeping_tail(stderr_bytes);
    let stdin = MemoryInputPipe::new(req.input.clone());
    let time = Arc::new(VirtualTime::default());

    let mut args = Vec::with_capacity(req.args.len() + 1);
    args.push(req.module.to_hex());
    args.extend(req.args.iter().cloned());
    let wasi = WasiCtxBuilder::new()
        .stdin(stdin.clone())
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .args(args.as_slice())
        .envs(req.env.as_slice())
        .wall_clock(FixedWallClock)
        .monotonic_clock(VirtualMonotonicClock(time.clone()))
        .secure_random(SeededRng::new(&req.seed, Stream::Secure))
        .insecure_random(SeededRng::new(&req.seed, Stream::Insecure))
        .insecure_random_seed(insecure_seed(&req.seed))
        .max_random_size(MAX_RANDOM_BYTES)
        .build_p1();

    let data = StoreData { wasi, limiter: Limiter::new(req.limits.memory_bytes, hit.clone()), time, stdin };
    let mut store = Store::new(&flavour.engine, data);
    store.limiter(|d| &mut d.limiter);
    let metered = flavour.metering.fuel();
    if metered {
        store.set_fuel(req.limits.fuel).map_err(|e| SandboxError::Host(format!("set_fuel: {e:#}")))?;
    }
    if flavour.metering.epoch() {
        store.set_epoch_deadline(deadline_ticks(req.limits.timeout_ms));
    }

    let ended = match pre.instantiate(&mut store) {
        Err(e) => Ended::Instantiate(e),
        Ok(instance) => match instance.get_typed_func::<(), ()>(&mut store, "_start") {
            Err(e) => Ended::NoStart(format!("{e:#}")),
            Ok(start) => Ended::Call(start.call(&mut store, ())),
        },
    };
    let fuel_used = if metered { req.limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0)) } else { 0 };
    // Free the instance (back to the pool) before the outputs are read.
    drop(store);

    let outcome = classify(ended, hit.get().copied())?;
    Ok(RunReport {
        outcome,
        stdout: stdout.take(),
        stderr: stderr.take(),
        fuel_used,
        elapsed: started.elapsed(),
    })
}

/// How a run stopped, before classification.
enum Ended {
    /// Instantiation failed (a limit at creation, a trap in the start function or data
    /// segments, or the pool).
    Instantiate(wasmtime::Error),
    /// `_start` was not a `func() -> ()` after all (validation should have refused it).
    NoStart(String),
    /// `_start` ran: `Ok` is a normal return.
    Call(wasmtime::Result<()>),
}

fn done(outcome: Outcome, message: impl Into<String>) -> RunOutcome {
    RunOutcome::Done { outcome, message: message.into() }
}

/// The deterministic classification:
/// - stdout past its cap → `OutputTooLarge` (the write trapped, so this is how the run ended);
/// - a missed wall deadline (`Trap::Interrupt`) → `Deadline`, whatever happened before;
/// - a refused memory/table growth → `MemoryLimit` unless the guest coped and exited 0;
/// - `proc_exit(n)` → `Exited(n)`, a return from `_start` → `Exited(0)`;
/// - fuel exhausted → `OutOfFuel`; any other trap or error raised by the guest's own actions
///   (the host functions are deterministic: no files, no network, virtual clocks) → `Trapped`.
fn classify(ended: Ended, hit: Option<LimitKind>) -> Result<RunOutcome, SandboxError> {
    let result = match ended {
        Ended::NoStart(msg) => return Ok(RunOutcome::Invalid(ModuleError::BadStart(msg))),
        Ended::Instantiate(e) => {
            if e.is::<PoolConcurrencyLimitError>() {
                return Err(SandboxError::Busy(format!("{e:#}")));
            }
            match hit {
                Some(k) => return Ok(limit_outcome(k, &e)),
                None if e.is::<Trap>() => Err(e),
                None => return Ok(RunOutcome::Invalid(ModuleError::Unsupported(format!("{e:#}")))),
            }
        }
        Ended::Call(r) => r,
    };

    let err = match result {
        Ok(()) => {
            return Ok(match hit {
                Some(LimitKind::Output) => done(Outcome::OutputTooLarge, "stdout passed its cap"),
                Some(k @ (LimitKind::Memory | LimitKind::Table)) => {
                    done(Outcome::Exited(0), format!("exited 0 after a refused {} growth", kind_name(k)))
                }
                None => done(Outcome::Exited(0), ""),
            });
        }
        Err(e) => e,
    };
    if let Some(Trap::Interrupt) = err.downcast_ref::<Trap>() {
        return Ok(RunOutcome::Deadline);
    }
    let exit = err.downcast_ref::<I32Exit>().map(|e| e.0);
    match (hit, exit) {
        (Some(LimitKind::Memory | LimitKind::Table), Some(0)) => {
            let k = hit.map_or("memory", kind_name);
            return Ok(done(Outcome::Exited(0), format!("exited 0 after a refused {k} growth")));
        }
        (Some(k), _) => return Ok(limit_outcome(k, &err)),
        (None, Some(code)) => return Ok(done(Outcome::Exited(code), "")),
        (None, None) => {}
    }
    if let Some(trap) = err.downcast_ref::<Trap>() {
        return Ok(match trap {
            Trap::OutOfFuel => done(Outcome::OutOfFuel, trap.to_string()),
            other => done(Outcome::Trapped, other.to_string()),
        });
    }
    Ok(done(Outcome::Trapped, err.root_cause().to_string()))
}

fn kind_name(k: LimitKind) -> &'static str {
    match k {
        LimitKind::Memory => "memory",
        LimitKind::Table => "table",
        LimitKind::Output => "output",
    }
}

fn limit_outcome(k: LimitKind, err: &wasmtime::Error) -> RunOutcome {
    let cause = err.root_cause().to_string();
    match k {
        LimitKind::Output => done(Outcome::OutputTooLarge, cause),
        LimitKind::Memory => done(Outcome::MemoryLimit, format!("memory limit: {cause}")),
        LimitKind::Table => done(Outcome::MemoryLimit, format!("table limit: {cause}")),
    }
}
