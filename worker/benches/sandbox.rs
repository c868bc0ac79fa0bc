//! Sandbox cost figures, printed as tables (`cargo bench -p spare-peer --bench sandbox`).
//!
//! - the fixed cost of one task: `prepare` (cached) + instantiate + run + collect, for a WAT
//!   module that just returns and for the `empty` example guest, with the default limits and
//!   with a fuel budget;
//! - the same through a slot process (`spare sandbox-slot`, as `spare peer` runs tasks), one
//!   at a time and queued together (wall time: the work is in another process);
//! - per example kernel (and a tight `f64` loop): the same Rust natively, through the sandbox
//!   with a job's default limits (a wall deadline) as a slot process runs it (no checks in the
//!   code), as slot threads run it (epoch checks), with a `--fuel` budget, and the ratios;
//! - the designs measured for limits: each kernel on a bare engine with the sandbox's
//!   configuration and no limits, epoch checks, fuel, both, and without NaN canonicalization
//!   (without limits, and with epoch checks: what the sandbox's deadline engine runs, with the
//!   module rewritten to canonicalise only observed NaNs, see `sandbox/nan.rs`).
//!
//! Figures are the least of repeated runs, in CPU time of the calling thread (see [`Clock`]). Add a kernel by pushing a [`Kernel`] in `main`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use spare_protocol::{BlobId, JobId, Limits, Outcome};
use spare_peer::sandbox::{
    Isolation, Metering, RunOutcome, RunRequest, Sandbox, SandboxConfig, engine_config, reserved_address_space,
    task_seed,
};
use wasmtime::{Engine, Linker, Module, Store};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};

/// One measured case: a name, how many samples, and a closure timing one sample.
struct Case {
    name: String,
    samples: usize,
    sample: Box<dyn FnMut() -> Duration>,
}

/// The least of the samples: other programs can only slow a run down (caches), never speed it up.
fn least(v: Vec<Duration>) -> Duration {
    v.into_iter().min().unwrap_or_default()
}

/// CPU time of the calling thread. Every case runs on the calling thread (natively, through
/// `run_blocking`, or on a bare engine), and the machines these run on are shared with other
/// builds: wall time there counts the time other processes had the CPU, thread time does not.
#[derive(Clone, Copy)]
struct Clock(Duration);

impl Clock {
    fn now() -> Clock {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID exists on Linux.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
        Clock(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }

    fn elapsed(self) -> Duration {
        Clock::now().0.saturating_sub(self.0)
    }
}

/// A deterministic budget far above what any case here uses: what `--fuel` turns on.
const FUEL_BUDGET: u64 = 100_000_000_000;

/// A job's default limits (what `spare submit` gives without `--fuel`).
fn default_limits() -> Limits {
    Limits::default()
}

/// The default limits plus a `--fuel` budget.
fn fuel_limits() -> Limits {
    Limits { fuel: FUEL_BUDGET, ..Limits::default() }
}

/// A run of module `id` with `input` and `limits`.
fn request(id: BlobId, input: Vec<u8>, limits: Limits) -> RunRequest {
    RunRequest { module: id, input, args: Vec::new(), env: Vec::new(), limits, seed: task_seed(&JobId([0; 32]), 0) }
}

/// prepare (already cached) + instantiate + run + collect of `wasm` with `input` and `limits`,
/// on the calling thread.
fn sandboxed_case(sb: &Sandbox, name: &str, wasm: Vec<u8>, input: Vec<u8>, limits: Limits, samples: usize) -> Case {
    let sb = sb.clone();
    let id = BlobId::of(&wasm);
    sb.prepare(id, &wasm).expect("prepare");
    let req = request(id, input, limits);
    Case {
        name: name.into(),
        samples,
        sample: Box::new(move || {
            let t = Clock::now();
            sb.prepare(id, &wasm).expect("prepare");
            let r = sb.run_blocking(&req).expect("run");
            let d = t.elapsed();
            assert!(matches!(r.outcome, RunOutcome::Done { outcome: Outcome::Exited(0), .. }), "{r:?}");
            d
        }),
    }
}

/// `batch` runs of `wasm` queued at once on `sb` (slot processes), timed by the wall clock
/// from the first queued to the last answered, per run: what a slot process costs a tiny task
/// with its pipe round trips shared by a batch (`batch` 1: not shared).
fn apart_case(sb: &Sandbox, name: &str, wasm: Vec<u8>, batch: usize, samples: usize) -> Case {
    let sb = sb.clone();
    let id = BlobId::of(&wasm);
    sb.prepare(id, &wasm).expect("prepare");
    let req = request(id, Vec::new(), default_limits());
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    Case {
        name: name.into(),
        samples,
        sample: Box::new(move || {
            let t = std::time::Instant::now();
            let reports = rt.block_on(futures::future::join_all((0..batch).map(|_| sb.run(req.clone()))));
            let d = t.elapsed() / batch as u32;
            for r in reports {
                let r = r.expect("run");
                assert!(matches!(r.outcome, RunOutcome::Done { outcome: Outcome::Exited(0), .. }), "{r:?}");
            }
            d
        }),
    }
}

/// One run of `wasm` through a slot process, by the wall clock (its CPU time is the process's).
fn wall_case(sb: &Sandbox, wasm: Vec<u8>, input: Vec<u8>, samples: usize) -> Case {
    let sb = sb.clone();
    let id = BlobId::of(&wasm);
    sb.prepare(id, &wasm).expect("prepare");
    let req = request(id, input, default_limits());
    Case {
        name: "wall".into(),
        samples,
        sample: Box::new(move || {
            let t = std::time::Instant::now();
            let r = sb.run_blocking(&req).expect("run");
            let d = t.elapsed();
            assert!(matches!(r.outcome, RunOutcome::Done { outcome: Outcome::Exited(0), .. }), "{r:?}");
            d
        }),
    }
}

/// A tight f64 loop (`ITERS` multiply-adds), in WAT: exported `_start`, the result in a global.
const ITERS: u64 = 50_000_000;

fn f64_loop_wat() -> String {
    format!(
        r#"(module
          (global $out (mut f64) (f64.const 0))
          (func (export "_start") (local $i i64) (local $x f64)
            (local.set $x (f64.const 0.5))
            (loop $l
              (local.set $x (f64.add (f64.mul (local.get $x) (f64.const 0.999999)) (f64.const 0.000001)))
              (local.set $i (i64.add (local.get $i) (i64.const 1)))
              (br_if $l (i64.lt_u (local.get $i) (i64.const {ITERS}))))
            (global.set $out (local.get $x))))"#
    )
}

fn native_f64_loop(_: &[u8]) -> Result<Vec<u8>, String> {
    let mut x = black_box(0.5f64);
    let mut i = 0u64;
    while i < black_box(ITERS) {
        x = x * 0.999_999 + 0.000_001;
        i += 1;
    }
    Ok(x.to_le_bytes().to_vec())
}

/// What a bare engine instruments.
#[derive(Clone, Copy)]
struct Instrument {
    fuel: bool,
    epoch: bool,
    nan_canonicalization: bool,
}

/// A guest on a bare engine with the sandbox's configuration and `inst`, and plain
/// wasmtime-wasi (in-memory stdio): what each way of enforcing limits costs on its own.
fn bare_case(name: &str, wasm: &[u8], input: Vec<u8>, inst: Instrument, samples: usize) -> Case {
    let base = SandboxConfig { slots: 1, ..Default::default() };
    let mut config = engine_config(&base, Metering::Deadline);
    config
        .consume_fuel(inst.fuel)
        .epoch_interruption(inst.epoch)
        .cranelift_nan_canonicalization(inst.nan_canonicalization);
    let engine = Engine::new(&config).expect("engine");
    let module = Module::new(&engine, wasm).expect("compile");
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |c| c).expect("linker");
    let pre = linker.instantiate_pre(&module).expect("pre");
    Case {
        name: name.into(),
        samples,
        sample: Box::new(move || {
            let t = Clock::now();
            let ctx = WasiCtxBuilder::new()
                .stdin(MemoryInputPipe::new(input.clone()))
                .stdout(MemoryOutputPipe::new(64 << 20))
                .build_p1();
            let mut store = Store::new(&engine, ctx);
            if inst.fuel {
                store.set_fuel(u64::MAX / 2).expect("fuel");
            }
            if inst.epoch {
                store.set_epoch_deadline(u64::MAX / 2);
            }
            let instance = pre.instantiate(&mut store).expect("instantiate");
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start").expect("_start");
            if let Err(e) = start.call(&mut store, ()) {
                let code = e.downcast_ref::<wasmtime_wasi::I32Exit>().map(|e| e.0);
                assert_eq!(code, Some(0), "{e:#}");
            }
            t.elapsed()
        }),
    }
}

/// A committed example guest (`examples/wasm/<name>.wasm`).
fn example(name: &str) -> Vec<u8> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/wasm").join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-guests)", path.display()))
}

/// Virtual size of this process (Linux), in bytes.
fn vm_size() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmSize:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Runs a case: warm-up (first instantiation of a pool slot, page faults, caches), then the
/// least of its samples.
fn measure(mut case: Case) -> (String, Duration) {
    let warmup = (case.samples / 10).clamp(1, 100);
    for _ in 0..warmup {
        (case.sample)();
    }
    let times: Vec<Duration> = (0..case.samples).map(|_| (case.sample)()).collect();
    (case.name, least(times))
}

type KernelFn = fn(&[u8]) -> Result<Vec<u8>, String>;

/// An example kernel: its wasm, its input, and the same code natively.
struct Kernel {
    name: &'static str,
    wasm: Vec<u8>,
    input: Vec<u8>,
    native: KernelFn,
    samples: usize,
}

/// The rows of the designs table: what each bare engine instruments.
const DESIGNS: [(&str, Instrument); 6] = [
    ("no limits", Instrument { fuel: false, epoch: false, nan_canonicalization: true }),
    ("epoch checks", Instrument { fuel: false, epoch: true, nan_canonicalization: true }),
    ("fuel", Instrument { fuel: true, epoch: false, nan_canonicalization: true }),
    ("fuel + epoch", Instrument { fuel: true, epoch: true, nan_canonicalization: true }),
    ("no limits, no NaN canon.", Instrument { fuel: false, epoch: false, nan_canonicalization: false }),
    ("epoch checks, no NaN canon.", Instrument { fuel: false, epoch: true, nan_canonicalization: false }),
];

fn main() {
    let config = SandboxConfig { slots: 1, ..Default::default() };
    // Measured address-space reservation of whole sandboxes (engines, pools, threads).
    let measured: Vec<(usize, Option<u64>)> = [1usize, 4]
        .into_iter()
        .map(|slots| {
            let before = vm_size();
            let sb = Sandbox::new(SandboxConfig { slots, ..Default::default() }).expect("sandbox");
            let after = vm_size();
            drop(sb);
            (slots, before.zip(after).map(|(b, a)| a.saturating_sub(b)))
        })
        .collect();
    let sb = Sandbox::new(config.clone()).expect("sandbox");
    // What a slot process runs (no checks in the code), here on the calling thread; and a
    // sandbox of slot processes as `spare peer` has, with the disk cache they load from.
    let in_slot = Sandbox::new(SandboxConfig { isolation: Isolation::SlotProcess, ..config.clone() }).expect("sandbox");
    let cache = tempfile::tempdir().expect("a cache directory");
    let apart = Sandbox::new(SandboxConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        isolation: Isolation::Processes(PathBuf::from(env!("CARGO_BIN_EXE_spare"))),
        ..config.clone()
    })
    .expect("sandbox");

    println!();
    println!("sandbox benchmark (least of repeated runs, thread CPU time unless said; release build)");
    for (slots, vm) in &measured {
        let computed = reserved_address_space(&SandboxConfig { slots: *slots, ..config.clone() });
        let vm = vm.map_or("n/a".to_string(), |v| format!("{:.2} GiB", gib(v)));
        println!(
            "address space of a {slots}-slot sandbox: computed {:.2} GiB, measured (VmSize) {vm}",
            gib(computed)
        );
    }

    // The fixed cost of one task.
    let trivial = wat::parse_str(r#"(module (func (export "_start")))"#).expect("wat");
    let empty = example("empty");
    let fixed = [
        sandboxed_case(&sb, "trivial WAT module, default limits (threads)", trivial.clone(), Vec::new(), default_limits(), 3000),
        sandboxed_case(&sb, "trivial WAT module, --fuel budget", trivial, Vec::new(), fuel_limits(), 3000),
        sandboxed_case(&sb, "empty guest, default limits (threads)", empty.clone(), Vec::new(), default_limits(), 3000),
        sandboxed_case(&in_slot, "empty guest, default limits, as a slot process runs it", empty.clone(), Vec::new(), default_limits(), 3000),
        sandboxed_case(&sb, "empty guest, --fuel budget", empty.clone(), Vec::new(), fuel_limits(), 3000),
        apart_case(&apart, "empty guest through a slot process, one at a time (wall)", empty.clone(), 1, 2000),
        apart_case(&apart, "empty guest through a slot process, 32 queued (wall, per task)", empty, 32, 200),
    ];
    println!();
    println!("| one task: prepare (cached) + instantiate + run + collect | time |");
    println!("| --- | ---: |");
    for case in fixed {
        let (name, d) = measure(case);
        println!("| {name} | {} |", fmt(d));
    }

    let kernels = vec![
        Kernel {
            name: "primes 0..2e7",
            wasm: example("primes"),
            input: b"0 20000000\n".to_vec(),
            native: spare_example_primes::task,
            samples: 15,
        },
        Kernel {
            name: "mandelbrot 800x600x1000",
            wasm: example("mandelbrot"),
            input: b"-2 1.5 1 -1.5 800 600 1000".to_vec(),
            native: spare_example_mandelbrot::task,
            samples: 5,
        },
        Kernel {
            name: "sha256 1e6 rounds",
            wasm: example("sha256"),
            input: b"1000000\nspare\n".to_vec(),
            native: spare_example_sha256::task,
            samples: 5,
        },
        Kernel {
            name: "tight f64 loop 5e7",
            wasm: wat::parse_str(f64_loop_wat()).expect("wat"),
            input: Vec::new(),
            native: native_f64_loop,
            samples: 7,
        },
    ];

    // Per kernel: native, the sandbox with the default limits and with a fuel budget.
    let mut designs: Vec<(&str, Duration, Vec<Duration>)> = Vec::new();
    println!();
    println!(
        "| kernel | native | sandbox, default limits (slot process) | ratio | through a slot process (wall) | ratio | slot threads (epoch checks) | ratio | sandbox, --fuel budget | ratio |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for k in &kernels {
        let (input, native_fn) = (k.input.clone(), k.native);
        let (_, native) = measure(Case {
            name: "native".into(),
            samples: k.samples,
            sample: Box::new(move || {
                let t = Clock::now();
                black_box(native_fn(black_box(&input)).expect("kernel accepts its input"));
                t.elapsed()
            }),
        });
        let (_, limited) =
            measure(sandboxed_case(&in_slot, "default", k.wasm.clone(), k.input.clone(), default_limits(), k.samples));
        let (_, wall) = measure(wall_case(&apart, k.wasm.clone(), k.input.clone(), k.samples));
        let (_, threads) =
            measure(sandboxed_case(&sb, "threads", k.wasm.clone(), k.input.clone(), default_limits(), k.samples));
        let (_, fueled) =
            measure(sandboxed_case(&sb, "fuel", k.wasm.clone(), k.input.clone(), fuel_limits(), k.samples));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            k.name,
            fmt(native),
            fmt(limited),
            ratio(limited, native),
            fmt(wall),
            ratio(wall, native),
            fmt(threads),
            ratio(threads, native),
            fmt(fueled),
            ratio(fueled, native)
        );
        let bare = DESIGNS
            .iter()
            .map(|(what, inst)| measure(bare_case(what, &k.wasm, k.input.clone(), *inst, k.samples)).1)
            .collect();
        designs.push((k.name, native, bare));
    }

    // What each way of enforcing limits costs, on a bare engine (no sandbox around it).
    println!();
    print!("| kernel on a bare engine, vs native |");
    for (what, _) in DESIGNS {
        print!(" {what} |");
    }
    println!();
    println!("| --- |{}", " ---: |".repeat(DESIGNS.len()));
    for (name, native, bare) in &designs {
        print!("| {name} |");
        for d in bare {
            print!(" {} ({}) |", fmt(*d), ratio(*d, *native));
        }
        println!();
    }
}

fn ratio(d: Duration, base: Duration) -> String {
    format!("{:.2}x", d.as_secs_f64() / base.as_secs_f64())
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

fn fmt(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }
}
