//! Sandbox cost figures, printed as a table (`cargo bench -p spare-peer --bench sandbox`).
//!
//! - the fixed cost of one task: `prepare` (cached) + instantiate + run, for a WAT module that
//!   just returns and for the `empty` example guest;
//! - what fuel and epoch interruption cost on a tight `f64` loop: the sandbox's engine against
//!   the same engine configuration without them (and each alone), with a native baseline;
//! - each example guest's kernel natively, as plain wasm, and through the sandbox.
//!
//! Figures are medians over repeated runs. Add a case by pushing a [`Case`] in `main`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use spare_protocol::{BlobId, JobId, Limits, Outcome};
use spare_peer::sandbox::{
    RunOutcome, RunRequest, Sandbox, SandboxConfig, engine_config, reserved_address_space, task_seed,
};
use wasmtime::{Engine, Instance, Module, Store};

/// One measured case: a name, how many samples, and a closure timing one sample.
struct Case {
    name: String,
    samples: usize,
    sample: Box<dyn FnMut() -> Duration>,
    /// Name of the case this one is compared to (ratio column), if any.
    baseline: Option<String>,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn limits() -> Limits {
    Limits { memory_bytes: 64 << 20, fuel: u64::MAX / 2, timeout_ms: 600_000, output_bytes: 1 << 20 }
}

fn request(module: BlobId) -> RunRequest {
    RunRequest {
        module,
        input: Vec::new(),
        args: Vec::new(),
        env: Vec::new(),
        limits: limits(),
        seed: task_seed(&JobId([0; 32]), 0),
    }
}

/// prepare (already cached) + instantiate + run of `wasm`, on the calling thread.
fn task_case(sb: &Sandbox, name: &str, wasm: Vec<u8>, samples: usize) -> Case {
    sandboxed_case(sb, name, wasm, Vec::new(), samples)
}

/// Like [`task_case`], with stdin.
fn sandboxed_case(sb: &Sandbox, name: &str, wasm: Vec<u8>, input: Vec<u8>, samples: usize) -> Case {
    let sb = sb.clone();
    let id = BlobId::of(&wasm);
    sb.prepare(id, &wasm).expect("prepare");
    let req = RunRequest { input, ..request(id) };
    Case {
        name: name.into(),
        samples,
        sample: Box::new(move || {
            let t = Instant::now();
            sb.prepare(id, &wasm).expect("prepare");
            let r = sb.run_blocking(&req).expect("run");
            let d = t.elapsed();
            assert!(matches!(r.outcome, RunOutcome::Done { outcome: Outcome::Exited(0), .. }), "{r:?}");
            d
        }),
        baseline: None,
    }
}

/// A tight f64 loop (`ITERS` multiply-adds), in WAT: exported `_start` and `result`.
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

fn native_f64_loop() -> f64 {
    let mut x = black_box(0.5f64);
    let mut i = 0u64;
    while i < black_box(ITERS) {
        x = x * 0.999_999 + 0.000_001;
        i += 1;
    }
    x
}

#[derive(Clone, Copy)]
enum Metering {
    None,
    Fuel,
    Epoch,
    Both,
}

/// The f64 loop on a bare wasmtime engine with the sandbox's configuration and the given
/// metering (no WASI: the module imports nothing).
fn engine_case(name: &str, metering: Metering, samples: usize) -> Case {
    let base = SandboxConfig { slots: 1, ..Default::default() };
    let mut config = engine_config(&base, false);
    let (fuel, epoch) = match metering {
        Metering::None => (false, false),
        Metering::Fuel => (true, false),
        Metering::Epoch => (false, true),
        Metering::Both => (true, true),
    };
    config.consume_fuel(fuel).epoch_interruption(epoch);
    let engine = Engine::new(&config).expect("engine");
    let module = Module::new(&engine, wat::parse_str(f64_loop_wat()).expect("wat")).expect("compile");
    Case {
        name: name.into(),
        samples,
        sample: Box::new(move || {
            let mut store = Store::new(&engine, ());
            if fuel {
                store.set_fuel(u64::MAX / 2).expect("fuel");
            }
            if epoch {
                store.set_epoch_deadline(u64::MAX / 2);
            }
            let t = Instant::now();
            let instance = Instance::new(&mut store, &module, &[]).expect("instantiate");
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start").expect("_start");
            start.call(&mut store, ()).expect("run");
            t.elapsed()
        }),
        baseline: Some("f64 loop: wasm, no fuel/epoch".into()),
    }
}

/// A WASI guest on a bare engine with the sandbox's configuration minus fuel and epochs, and
/// plain wasmtime-wasi (in-memory stdio): what the guest costs without the sandbox's metering.
fn unmetered_guest_case(name: &str, wasm: &[u8], input: Vec<u8>, samples: usize) -> Case {
    use wasmtime::Linker;
    use wasmtime_wasi::WasiCtxBuilder;
    use wasmtime_wasi::p1::WasiP1Ctx;
    use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};

    let base = SandboxConfig { slots: 1, ..Default::default() };
    let engine = Engine::new(&engine_config(&base, false)).expect("engine");
    let module = Module::new(&engine, wasm).expect("compile");
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |c| c).expect("linker");
    let pre = linker.instantiate_pre(&module).expect("pre");
    Case {
        name: name.into(),
        samples,
        sample: Box::new(move || {
            let t = Instant::now();
            let ctx = WasiCtxBuilder::new()
                .stdin(MemoryInputPipe::new(input.clone()))
                .stdout(MemoryOutputPipe::new(64 << 20))
                .build_p1();
            let mut store = Store::new(&engine, ctx);
            let instance = pre.instantiate(&mut store).expect("instantiate");
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start").expect("_start");
            if let Err(e) = start.call(&mut store, ()) {
                let code = e.downcast_ref::<wasmtime_wasi::I32Exit>().map(|e| e.0);
                assert_eq!(code, Some(0), "{e:#}");
            }
            t.elapsed()
        }),
        baseline: None,
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

fn main() {
    let config = SandboxConfig { slots: 1, ..Default::default() };
    // Measured address-space reservation of whole sandboxes (engine, pool, threads).
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

    let mut cases = vec![task_case(
        &sb,
        "task: trivial WAT (prepare+instantiate+run)",
        wat::parse_str(r#"(module (func (export "_start")))"#).expect("wat"),
        3000,
    )];
    cases.push(task_case(&sb, "task: empty guest (prepare+instantiate+run)", example("empty"), 3000));
    cases.push(Case {
        name: "f64 loop: native".into(),
        samples: 7,
        sample: Box::new(|| {
            let t = Instant::now();
            black_box(native_f64_loop());
            t.elapsed()
        }),
        baseline: Some("f64 loop: wasm, no fuel/epoch".into()),
    });
    cases.push(engine_case("f64 loop: wasm, no fuel/epoch", Metering::None, 7));
    cases.push(engine_case("f64 loop: wasm, epoch only", Metering::Epoch, 7));
    cases.push(engine_case("f64 loop: wasm, fuel only", Metering::Fuel, 7));
    cases.push(engine_case("f64 loop: wasm, fuel + epoch", Metering::Both, 7));
    {
        // The same loop through the whole sandbox (WASI context, limiter, pool-sized engine).
        let mut c =
            task_case(&sb, "f64 loop: sandbox run_blocking", wat::parse_str(f64_loop_wat()).expect("wat"), 7);
        c.baseline = Some("f64 loop: wasm, no fuel/epoch".into());
        cases.push(c);
    }

    // The example guests: the same Rust kernel natively, as plain wasm, and through the sandbox
    // (fuel, epochs, limiter, WASI), both wasm figures compared with native.
    type Kernel = fn(&[u8]) -> Result<Vec<u8>, String>;
    let guests: [(&str, &[u8], Kernel); 3] = [
        ("primes", b"0 20000000\n", spare_example_primes::task),
        ("mandelbrot", b"-2 1.5 1 -1.5 800 600 1000", spare_example_mandelbrot::task),
        ("sha256", b"1000000\nspare\n", spare_example_sha256::task),
    ];
    for (guest, input, kernel) in guests {
        let wasm = example(guest);
        let native = format!("{guest}: native");
        let owned = input.to_vec();
        cases.push(Case {
            name: native.clone(),
            samples: 5,
            sample: Box::new(move || {
                let t = Instant::now();
                black_box(kernel(black_box(&owned)).expect("kernel accepts its input"));
                t.elapsed()
            }),
            baseline: None,
        });
        let mut plain = unmetered_guest_case(&format!("{guest}: wasm, no fuel/epoch"), &wasm, input.to_vec(), 5);
        plain.baseline = Some(native.clone());
        cases.push(plain);
        let mut c = sandboxed_case(&sb, &format!("{guest}: sandbox"), wasm, input.to_vec(), 5);
        c.baseline = Some(native);
        cases.push(c);
    }

    let mut results: Vec<(String, Duration, Option<String>)> = Vec::new();
    for case in &mut cases {
        // Warm up (first instantiation of a pool slot, page faults, caches).
        let warmup = (case.samples / 10).clamp(1, 100);
        for _ in 0..warmup {
            (case.sample)();
        }
        let times: Vec<Duration> = (0..case.samples).map(|_| (case.sample)()).collect();
        results.push((case.name.clone(), median(times), case.baseline.clone()));
    }

    println!();
    println!("sandbox benchmark ({} f64 iterations per loop run; medians)", ITERS);
    for (slots, vm) in &measured {
        let computed = reserved_address_space(&SandboxConfig { slots: *slots, ..config.clone() });
        let vm = vm.map_or("n/a".to_string(), |v| format!("{:.2} GiB", gib(v)));
        println!(
            "address space of a {slots}-slot sandbox: computed {:.2} GiB, measured (VmSize) {vm}",
            gib(computed)
        );
    }
    println!();
    println!("| case | median | vs baseline |");
    println!("| --- | ---: | ---: |");
    for (name, d, base) in &results {
        let ratio = base
            .as_ref()
            .and_then(|b| results.iter().find(|(n, ..)| n == b))
            .map(|(_, bd, _)| format!("{:.2}x", d.as_secs_f64() / bd.as_secs_f64()))
            .unwrap_or_default();
        println!("| {name} | {} | {ratio} |", fmt(*d));
    }
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

fn fmt(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}
