//! The sandbox's public API against hostile and ordinary modules (written as WAT): every typed
//! outcome, validation refusals, determinism, the pool under load, and the disk cache. Run
//! twice: on slot threads (`tests/sandbox.rs`) and in slot processes
//! (`tests/sandbox_processes.rs`), each of which says how its sandboxes are made
//! (`super::isolated`) and the fuel of an ordinary run (`super::FUEL`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use spare_protocol::{BlobId, JobId, Limits, Outcome};
use spare_peer::sandbox::{
    ModuleError, Prepared, RunOutcome, RunReport, RunRequest, Sandbox, SandboxConfig, SandboxError,
    WALL_CLOCK_SECS, task_seed,
};

// ---------------------------------------------------------------------------------------------
// Helpers

fn sandbox() -> Sandbox {
    Sandbox::new(super::isolated(SandboxConfig { slots: 2, queue: 128, ..Default::default() })).expect("sandbox")
}

fn wasm(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).expect("valid WAT")
}

fn prepare(sb: &Sandbox, wat: &str) -> BlobId {
    let bytes = wasm(wat);
    let id = BlobId::of(&bytes);
    sb.prepare(id, &bytes).expect("prepare");
    id
}

fn limits() -> Limits {
    Limits { memory_bytes: 16 << 20, fuel: super::FUEL, timeout_ms: 20_000, output_bytes: 1 << 20 }
}

fn request(id: BlobId) -> RunRequest {
    RunRequest {
        module: id,
        input: Vec::new(),
        args: Vec::new(),
        env: Vec::new(),
        limits: limits(),
        seed: task_seed(&JobId([1; 32]), 0),
    }
}

fn run(sb: &Sandbox, req: &RunRequest) -> RunReport {
    sb.run_blocking(req).expect("host ran the task")
}

fn outcome(r: &RunReport) -> Outcome {
    match &r.outcome {
        RunOutcome::Done { outcome, .. } => *outcome,
        other => panic!("expected a deterministic outcome, got {other:?}"),
    }
}

fn message(r: &RunReport) -> &str {
    match &r.outcome {
        RunOutcome::Done { message, .. } => message,
        other => panic!("expected a deterministic outcome, got {other:?}"),
    }
}

/// WASI imports and an exported memory, shared by most modules below.
const PRELUDE: &str = r#"
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  ;; write(fd, ptr, len): one iovec at 0..8, nwritten at 8; traps on an error.
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (if (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)) (then unreachable)))
"#;

fn module(body: &str) -> String {
    format!("(module {PRELUDE} {body})")
}

const LOOP: &str = r#"(module (func (export "_start") (loop br 0)))"#;
const RETURN: &str = r#"(module (func (export "_start")))"#;

/// Echoes stdin to stdout.
fn echo() -> String {
    module(
        r#"(func (export "_start") (local $n i32)
          (loop $again
            (i32.store (i32.const 16) (i32.const 1024))
            (i32.store (i32.const 20) (i32.const 32768))
            (if (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)) (then unreachable))
            (local.set $n (i32.load (i32.const 24)))
            (if (i32.eqz (local.get $n)) (then return))
            (call $write (i32.const 1) (i32.const 1024) (local.get $n))
            (br $again)))"#,
    )
}

/// Writes `chunks` times 4096 bytes of 'A' to `fd`, then returns.
fn flood(fd: u32, chunks: u32) -> String {
    module(&format!(
        r#"(func (export "_start") (local $i i32)
          (memory.fill (i32.const 1024) (i32.const 65) (i32.const 4096))
          (loop $again
            (call $write (i32.const {fd}) (i32.const 1024) (i32.const 4096))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $again (i32.lt_u (local.get $i) (i32.const {chunks})))))"#
    ))
}

// ---------------------------------------------------------------------------------------------
// Outcomes

#[test]
fn infinite_loop_with_large_fuel_hits_the_deadline() {
    let sb = sandbox();
    let id = prepare(&sb, LOOP);
    let mut req = request(id);
    req.limits.fuel = u64::MAX / 2;
    req.limits.timeout_ms = 100;
    let started = Instant::now();
    let r = run(&sb, &req);
    assert_eq!(r.outcome, RunOutcome::Deadline);
    assert!(started.elapsed() >= Duration::from_millis(100), "deadline came early: {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(5), "deadline came late: {:?}", started.elapsed());
}

#[test]
fn infinite_loop_with_small_fuel_runs_out_deterministically() {
    let sb = sandbox();
    let id = prepare(&sb, LOOP);
    let mut req = request(id);
    req.limits.fuel = 1_000_000;
    let a = run(&sb, &req);
    let b = run(&sb, &req);
    assert_eq!(outcome(&a), Outcome::OutOfFuel);
    assert_eq!(a.fuel_used, b.fuel_used);
    assert!(a.fuel_used > 999_000 && a.fuel_used <= 1_000_000, "fuel_used {}", a.fuel_used);
}

#[test]
fn memory_bomb_is_a_memory_limit() {
    let sb = sandbox();
    // Grows a page at a time; traps when refused.
    let trap = prepare(
        &sb,
        r#"(module (memory 1)
          (func (export "_start")
            (loop
              (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
              (br 0))))"#,
    );
    let r = run(&sb, &request(trap));
    assert_eq!(outcome(&r), Outcome::MemoryLimit, "{r:?}");
    assert!(message(&r).contains("memory limit"));

    // Exits non-zero when refused: still a memory limit.
    let exit = prepare(
        &sb,
        &module(
            r#"(func (export "_start")
              (loop
                (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1)) (then (call $proc_exit (i32.const 1))))
                (br 0)))"#,
        ),
    );
    assert_eq!(outcome(&run(&sb, &request(exit))), Outcome::MemoryLimit);

    // Asks for 4 GiB at once, ignores the refusal and loops until fuel runs out: the limit
    // came first.
    let ignore = prepare(
        &sb,
        r#"(module (memory 1)
          (func (export "_start")
            (drop (memory.grow (i32.const 65535)))
            (loop (br 0))))"#,
    );
    let mut req = request(ignore);
    req.limits.fuel = 100_000;
    assert_eq!(outcome(&run(&sb, &req)), Outcome::MemoryLimit);

    // Copes with the refusal and exits 0: a success (the message says what happened).
    let cope = prepare(
        &sb,
        r#"(module (memory 1)
          (func (export "_start")
            (drop (memory.grow (i32.const 65535)))))"#,
    );
    let r = run(&sb, &request(cope));
    assert_eq!(outcome(&r), Outcome::Exited(0));
    assert!(message(&r).contains("refused memory growth"), "{r:?}");
}

#[test]
fn initial_memory_over_the_limit_is_a_memory_limit() {
    let sb = sandbox();
    // 1000 pages = 62.5 MiB, the limit is 16 MiB.
    let id = prepare(&sb, r#"(module (memory 1000) (func (export "_start")))"#);
    let r = run(&sb, &request(id));
    assert_eq!(outcome(&r), Outcome::MemoryLimit, "{r:?}");
    // At the limit exactly it runs.
    let id = prepare(&sb, r#"(module (memory 256) (func (export "_start")))"#);
    assert_eq!(outcome(&run(&sb, &request(id))), Outcome::Exited(0));
}

#[test]
fn table_growth_over_the_cap_is_a_memory_limit() {
    let sb = sandbox();
    let id = prepare(
        &sb,
        r#"(module (table 1 funcref)
          (func (export "_start")
            (if (i32.eq (table.grow (ref.null func) (i32.const 2000000)) (i32.const -1)) (then unreachable))))"#,
    );
    let r = run(&sb, &request(id));
    assert_eq!(outcome(&r), Outcome::MemoryLimit, "{r:?}");
    assert!(message(&r).contains("table"));
}

#[test]
fn deep_recursion_is_a_stack_overflow_trap_and_the_process_survives() {
    let sb = sandbox();
    let id = prepare(
        &sb,
        r#"(module
          (func $f (param i64) (result i64)
            (i64.add (call $f (i64.add (local.get 0) (i64.const 1))) (i64.const 1)))
          (func (export "_start") (drop (call $f (i64.const 0)))))"#,
    );
    for _ in 0..3 {
        let r = run(&sb, &request(id));
        assert_eq!(outcome(&r), Outcome::Trapped);
        assert!(message(&r).contains("call stack exhausted"), "{}", message(&r));
    }
    let ok = prepare(&sb, RETURN);
    assert_eq!(outcome(&run(&sb, &request(ok))), Outcome::Exited(0));
}

#[test]
fn output_flood_is_output_too_large() {
    let sb = sandbox();
    let id = prepare(&sb, &flood(1, 1_000_000));
    let mut req = request(id);
    req.limits.output_bytes = 64 << 10;
    let r = run(&sb, &req);
    assert_eq!(outcome(&r), Outcome::OutputTooLarge, "{r:?}");
    assert_eq!(r.stdout.len(), 64 << 10);
    assert!(r.result_key().is_some());

    // Exactly at the cap is fine.
    let id = prepare(&sb, &flood(1, 16));
    let r = run(&sb, &RunRequest { limits: req.limits, ..request(id) });
    assert_eq!(outcome(&r), Outcome::Exited(0), "{r:?}");
    assert_eq!(r.stdout.len(), 64 << 10);
}

#[test]
fn stderr_flood_is_truncated_not_an_error() {
    let sb = Sandbox::new(super::isolated(SandboxConfig { slots: 1, stderr_bytes: 1000, ..Default::default() })).unwrap();
    let id = prepare(&sb, &flood(2, 100));
    let r = run(&sb, &request(id));
    assert_eq!(outcome(&r), Outcome::Exited(0), "{r:?}");
    assert_eq!(r.stderr.len(), 1000);
    assert!(r.stdout.is_empty());
}

#[test]
fn unreachable_traps_with_a_message() {
    let sb = sandbox();
    let id = prepare(&sb, r#"(module (func (export "_start") unreachable))"#);
    let r = run(&sb, &request(id));
    assert_eq!(outcome(&r), Outcome::Trapped);
    assert!(message(&r).contains("unreachable"), "{}", message(&r));

    let id =
        prepare(&sb, r#"(module (func (export "_start") (drop (i32.div_u (i32.const 1) (i32.const 0)))))"#);
    let r = run(&sb, &request(id));
    assert_eq!(outcome(&r), Outcome::Trapped);
    assert!(message(&r).contains("divide by zero"), "{}", message(&r));

    let id =
        prepare(&sb, r#"(module (memory 1) (func (export "_start") (drop (i32.load (i32.const 70000)))))"#);
    let r = run(&sb, &request(id));
    assert_eq!(outcome(&r), Outcome::Trapped);
    assert!(message(&r).contains("out of bounds"), "{}", message(&r));
}

#[test]
fn proc_exit_and_return_are_exit_codes() {
    let sb = sandbox();
    let id = prepare(&sb, &module(r#"(func (export "_start") (call $proc_exit (i32.const 3)))"#));
    let r = run(&sb, &request(id));
    assert_eq!(outcome(&r), Outcome::Exited(3));
    let id = prepare(&sb, RETURN);
    assert_eq!(outcome(&run(&sb, &request(id))), Outcome::Exited(0));
}

#[test]
fn echo_returns_stdin() {
    let sb = sandbox();
    let id = prepare(&sb, &echo());
    let input: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let r = run(&sb, &RunRequest { input: input.clone(), ..request(id) });
    assert_eq!(outcome(&r), Outcome::Exited(0), "{r:?}");
    assert_eq!(r.stdout, input);
    // Empty stdin.
    let r = run(&sb, &request(id));
    assert_eq!(outcome(&r), Outcome::Exited(0));
    assert!(r.stdout.is_empty());
}

/// Writes 64 bytes of `random_get` to stdout.
fn random_module() -> String {
    module(
        r#"(func (export "_start")
          (if (call $random_get (i32.const 1024) (i32.const 64)) (then unreachable))
          (call $write (i32.const 1) (i32.const 1024) (i32.const 64)))"#,
    )
}

#[test]
fn random_is_seeded() {
    let sb = sandbox();
    let id = prepare(&sb, &random_module());
    let a = run(&sb, &request(id));
    let b = run(&sb, &request(id));
    let other = run(&sb, &RunRequest { seed: task_seed(&JobId([1; 32]), 1), ..request(id) });
    assert_eq!(outcome(&a), Outcome::Exited(0));
    assert_eq!(a.stdout.len(), 64);
    assert_eq!(a.stdout, b.stdout);
    assert_ne!(a.stdout, other.stdout);
    assert_ne!(a.stdout, vec![0u8; 64]);
}

#[test]
fn clocks_are_virtual() {
    let sb = sandbox();
    // realtime, monotonic, monotonic, sleep 5 s (poll_oneoff on a relative monotonic clock),
    // monotonic; then the four u64 readings and the event count to stdout.
    let id = prepare(
        &sb,
        &module(
            r#"(func (export "_start")
              (if (call $clock_time_get (i32.const 0) (i64.const 0) (i32.const 1024)) (then unreachable))
              (if (call $clock_time_get (i32.const 1) (i64.const 0) (i32.const 1032)) (then unreachable))
              (if (call $clock_time_get (i32.const 1) (i64.const 0) (i32.const 1040)) (then unreachable))
              ;; subscription at 2048: userdata 7, tag 0 (clock), id 1, timeout 5e9, flags 0
              (i64.store (i32.const 2048) (i64.const 7))
              (i32.store8 (i32.const 2056) (i32.const 0))
              (i32.store (i32.const 2064) (i32.const 1))
              (i64.store (i32.const 2072) (i64.const 5000000000))
              (i64.store (i32.const 2080) (i64.const 0))
              (i32.store16 (i32.const 2088) (i32.const 0))
              (if (call $poll_oneoff (i32.const 2048) (i32.const 3072) (i32.const 1) (i32.const 1056)) (then unreachable))
              (if (call $clock_time_get (i32.const 1) (i64.const 0) (i32.const 1048)) (then unreachable))
              (call $write (i32.const 1) (i32.const 1024) (i32.const 36))
              ;; the event: userdata and type
              (call $write (i32.const 1) (i32.const 3072) (i32.const 11)))"#,
        ),
    );
    let started = Instant::now();
    let r = run(&sb, &request(id));
    assert!(started.elapsed() < Duration::from_secs(4), "a virtual sleep took real time");
    assert_eq!(outcome(&r), Outcome::Exited(0), "{r:?}");
    let u64_at = |i: usize| u64::from_le_bytes(r.stdout[i..i + 8].try_into().unwrap());
    assert_eq!(u64_at(0), WALL_CLOCK_SECS * 1_000_000_000);
    assert_eq!(u64_at(8), 0);
    assert_eq!(u64_at(16), 1_000);
    assert_eq!(u64_at(24), 2_000 + 5_000_000_000);
    assert_eq!(u32::from_le_bytes(r.stdout[32..36].try_into().unwrap()), 1);
    assert_eq!(u64_at(36), 7);
    assert_eq!(r.stdout[36 + 10], 0, "clock event");
    assert_eq!(run(&sb, &request(id)).stdout, r.stdout);
}

#[test]
fn odd_wasi_calls_are_deterministic_errors_not_host_failures() {
    let sb = sandbox();
    // poll_oneoff with no subscriptions (EINVAL = 28), with too many (28), out of bounds
    // (EFAULT = 21), and on stdin + a clock (stdin is ready: one event, time does not move);
    // the four errnos / counts go to stdout.
    let id = prepare(
        &sb,
        &module(
            r#"(func (export "_start")
              (i32.store (i32.const 1024) (call $poll_oneoff (i32.const 2048) (i32.const 3072) (i32.const 0) (i32.const 1100)))
              (i32.store (i32.const 1028) (call $poll_oneoff (i32.const 2048) (i32.const 3072) (i32.const 100000) (i32.const 1100)))
              (i32.store (i32.const 1032) (call $poll_oneoff (i32.const 131000) (i32.const 3072) (i32.const 2) (i32.const 1100)))
              ;; fd_read on fd 0 (tag 1), and a 1 s monotonic clock
              (i32.store8 (i32.const 2056) (i32.const 1))
              (i32.store (i32.const 2064) (i32.const 0))
              (i32.store8 (i32.const 2104) (i32.const 0))
              (i32.store (i32.const 2112) (i32.const 1))
              (i64.store (i32.const 2120) (i64.const 1000000000))
              (drop (call $poll_oneoff (i32.const 2048) (i32.const 3072) (i32.const 2) (i32.const 1100)))
              (i32.store (i32.const 1036) (i32.load (i32.const 1100)))
              (call $write (i32.const 1) (i32.const 1024) (i32.const 16)))"#,
        ),
    );
    let r = run(&sb, &RunRequest { input: b"x".to_vec(), ..request(id) });
    assert_eq!(outcome(&r), Outcome::Exited(0), "{r:?}");
    let words: Vec<u32> = r.stdout.chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(words, [28, 28, 21, 1]);

    // random_get above the per-call cap, and proc_exit outside WASI's range: traps.
    let id = prepare(
        &sb,
        &module(r#"(func (export "_start") (drop (call $random_get (i32.const 0) (i32.const 33554432))))"#),
    );
    let r = run(&sb, &request(id));
    assert_eq!(outcome(&r), Outcome::Trapped);
    assert!(message(&r).contains("exceeds limit"), "{}", message(&r));
    let id = prepare(&sb, &module(r#"(func (export "_start") (call $proc_exit (i32.const 200)))"#));
    assert_eq!(outcome(&run(&sb, &request(id))), Outcome::Trapped);
}

#[test]
fn args_and_env_are_exactly_as_given() {
    let sb = sandbox();
    let id = prepare(
        &sb,
        &module(
            r#"(func (export "_start")
              (drop (call $args_sizes_get (i32.const 100) (i32.const 104)))
              (drop (call $args_get (i32.const 2048) (i32.const 4096)))
              (call $write (i32.const 1) (i32.const 4096) (i32.load (i32.const 104)))
              (drop (call $environ_sizes_get (i32.const 100) (i32.const 104)))
              (drop (call $environ_get (i32.const 2048) (i32.const 8192)))
              (call $write (i32.const 1) (i32.const 8192) (i32.load (i32.const 104))))"#,
        ),
    );
    let req = RunRequest {
        args: vec!["one".into(), "two words".into()],
        env: vec![("K".into(), "v".into()), ("EMPTY".into(), String::new())],
        ..request(id)
    };
    let r = run(&sb, &req);
    assert_eq!(outcome(&r), Outcome::Exited(0), "{r:?}");
    let expected = format!("{}\0one\0two words\0K=v\0EMPTY=\0", id.to_hex());
    assert_eq!(String::from_utf8_lossy(&r.stdout), expected);
}

// ---------------------------------------------------------------------------------------------
// Validation

#[test]
fn validation_refusals_are_typed() {
    let sb = Sandbox::new(super::isolated(SandboxConfig { slots: 1, max_module_bytes: 4096, ..Default::default() })).unwrap();
    let forbidden =
        |module: &str, name: &str| ModuleError::ForbiddenImport { module: module.into(), name: name.into() };
    let check = |wat: &str| sb.validate(&wasm(wat));

    assert_eq!(
        check(r#"(module (import "env" "foo" (func)) (func (export "_start")))"#),
        Err(forbidden("env", "foo"))
    );
    for name in ["sock_open", "sock_recv", "made_up"] {
        let wat = format!(
            r#"(module (import "wasi_snapshot_preview1" "{name}" (func (param i32) (result i32))) (func (export "_start")))"#
        );
        assert_eq!(check(&wat), Err(forbidden("wasi_snapshot_preview1", name)));
    }
    assert_eq!(
        check(r#"(module (import "wasi_snapshot_preview1" "memory" (memory 1)) (func (export "_start")))"#),
        Err(forbidden("wasi_snapshot_preview1", "memory"))
    );
    assert_eq!(
        check(r#"(module (import "wasi_snapshot_preview1" "g" (global i32)) (func (export "_start")))"#),
        Err(forbidden("wasi_snapshot_preview1", "g"))
    );
    assert!(matches!(
        check(
            r#"(module (import "wasi_snapshot_preview1" "proc_exit" (func (param i64))) (func (export "_start")))"#
        ),
        Err(ModuleError::ImportSignature { .. })
    ));

    assert!(matches!(sb.validate(b"hello, world"), Err(ModuleError::NotWasm(_))));
    assert!(matches!(sb.validate(b""), Err(ModuleError::NotWasm(_))));
    assert!(matches!(sb.validate(b"\0asm\x01\0\0\0\x01"), Err(ModuleError::NotWasm(_))));
    assert_eq!(check("(module)"), Err(ModuleError::NoStart));
    assert!(matches!(
        check(r#"(module (func (export "_start") (param i32)))"#),
        Err(ModuleError::BadStart(_))
    ));
    assert!(matches!(
        check(r#"(module (global (export "_start") i32 (i32.const 0)))"#),
        Err(ModuleError::BadStart(_))
    ));
    // Threads and multi-memory are off.
    assert!(matches!(
        check(r#"(module (memory 1 1 shared) (func (export "_start")))"#),
        Err(ModuleError::NotWasm(_))
    ));
    assert!(matches!(
        check(r#"(module (memory 1) (memory 1) (func (export "_start")))"#),
        Err(ModuleError::NotWasm(_))
    ));
    // Tables beyond the sandbox's.
    assert!(matches!(
        check(r#"(module (table 2000000 funcref) (func (export "_start")))"#),
        Err(ModuleError::Unsupported(_))
    ));
    // Size cap.
    let big = format!(
        r#"(module (memory 1) (data (i32.const 0) "{}") (func (export "_start")))"#,
        "x".repeat(5000)
    );
    assert!(matches!(check(&big), Err(ModuleError::TooLarge { max: 4096, .. })));

    // What the real WASI guests import is allowed.
    assert!(check(&echo()).is_ok());
    let allowed = sb.allowed_imports();
    assert!(allowed.contains(&"fd_write".to_string()) && allowed.contains(&"poll_oneoff".to_string()));
    assert!(!allowed.iter().any(|n| n.starts_with("sock_")));

    // prepare validates too, and checks the id.
    let bytes = wasm(r#"(module (import "env" "foo" (func)) (func (export "_start")))"#);
    assert_eq!(sb.prepare(BlobId::of(&bytes), &bytes), Err(forbidden("env", "foo")));
    let ok = wasm(RETURN);
    assert!(matches!(sb.prepare(BlobId::of(b"other"), &ok), Err(ModuleError::WrongId { .. })));
}

#[test]
fn host_errors_are_errors() {
    let sb =
        Sandbox::new(super::isolated(SandboxConfig { slots: 1, max_memory_bytes: 64 << 20, ..Default::default() })).unwrap();
    let missing = BlobId::of(b"never prepared");
    assert_eq!(sb.run_blocking(&request(missing)), Err(SandboxError::NotPrepared(missing)));
    let id = prepare(&sb, RETURN);
    let mut req = request(id);
    req.limits.memory_bytes = 1 << 30;
    assert!(matches!(sb.run_blocking(&req), Err(SandboxError::LimitTooLarge { .. })));
}

// ---------------------------------------------------------------------------------------------
// The whole hostile suite on one sandbox, then an ordinary run.

#[test]
fn sandbox_survives_the_hostile_suite() {
    let sb = sandbox();
    let hostile = [
        LOOP.to_string(),
        r#"(module (memory 1) (func (export "_start") (loop (drop (memory.grow (i32.const 1))) (br 0))))"#
            .into(),
        r#"(module (memory 1000) (func (export "_start")))"#.into(),
        r#"(module (func $f (export "_start") (call $f)))"#.into(),
        flood(1, 1_000_000),
        flood(2, 1_000),
        r#"(module (func (export "_start") unreachable))"#.into(),
    ];
    for wat in &hostile {
        let id = prepare(&sb, wat);
        let mut req = request(id);
        // A budget where ordinary runs have one: the loop then ends either way.
        if super::FUEL < Limits::NO_FUEL_BUDGET {
            req.limits.fuel = 50_000_000;
        }
        req.limits.timeout_ms = 2_000;
        let r = run(&sb, &req);
        assert!(matches!(r.outcome, RunOutcome::Done { .. } | RunOutcome::Deadline), "{r:?}");
    }
    let id = prepare(&sb, &echo());
    let r = run(&sb, &RunRequest { input: b"still alive".to_vec(), ..request(id) });
    assert_eq!(outcome(&r), Outcome::Exited(0));
    assert_eq!(r.stdout, b"still alive");
}

// ---------------------------------------------------------------------------------------------
// Determinism

/// f64 work (sqrt, division, NaN-producing operations), random bytes and clocks, all folded
/// into the output.
fn compute_module() -> String {
    module(
        r#"(func (export "_start") (local $i i32) (local $x f64) (local $acc f64) (local $nan f32)
          (local.set $x (f64.const 1.5))
          (loop $again
            (local.set $x (f64.add (f64.sqrt (f64.mul (local.get $x) (f64.const 1.000001))) (f64.const 0.25)))
            (local.set $acc (f64.add (local.get $acc) (f64.div (f64.const 1) (local.get $x))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $again (i32.lt_u (local.get $i) (i32.const 100000))))
          (f64.store (i32.const 1024) (local.get $acc))
          ;; a NaN whose bits must be canonical
          (f32.store (i32.const 1032) (f32.div (f32.const 0) (f32.const 0)))
          (f64.store (i32.const 1036) (f64.sqrt (f64.const -1)))
          (drop (call $random_get (i32.const 1044) (i32.const 16)))
          (drop (call $clock_time_get (i32.const 1) (i64.const 0) (i32.const 1064)))
          (call $write (i32.const 1) (i32.const 1024) (i32.const 48)))"#,
    )
}

#[test]
fn runs_are_identical_across_runs_and_sandboxes() {
    let wat = compute_module();
    let a = sandbox();
    let b = sandbox();
    let ia = prepare(&a, &wat);
    let ib = prepare(&b, &wat);
    assert_eq!(ia, ib);
    let r1 = run(&a, &request(ia));
    let r2 = run(&a, &request(ia));
    let r3 = run(&b, &request(ib));
    assert_eq!(outcome(&r1), Outcome::Exited(0), "{r1:?}");
    for r in [&r2, &r3] {
        assert_eq!(r.stdout, r1.stdout);
        assert_eq!(r.fuel_used, r1.fuel_used);
        assert_eq!(r.result_key(), r1.result_key());
    }
    // Canonical NaNs: f32 0x7fc00000, f64 0x7ff8000000000000.
    assert_eq!(&r1.stdout[8..12], &0x7fc0_0000u32.to_le_bytes());
    assert_eq!(&r1.stdout[12..20], &0x7ff8_0000_0000_0000u64.to_le_bytes());
}

/// A job without a fuel budget runs on the engine without fuel metering: the same bytes as a
/// metered run, on every sandbox, with no fuel counted.
#[test]
fn runs_without_a_fuel_budget_are_unmetered_and_identical() {
    let wat = compute_module();
    let a = sandbox();
    let b = sandbox();
    let id = prepare(&a, &wat);
    prepare(&b, &wat);
    let unmetered = RunRequest { limits: Limits { fuel: Limits::NO_FUEL_BUDGET, ..limits() }, ..request(id) };
    assert!(!unmetered.limits.has_fuel_budget());
    let metered = run(&a, &RunRequest { limits: Limits { fuel: 1_000_000_000, ..limits() }, ..request(id) });
    assert!(metered.fuel_used > 0);
    for r in [run(&a, &unmetered), run(&b, &unmetered), run(&a, &unmetered)] {
        assert_eq!(outcome(&r), Outcome::Exited(0), "{r:?}");
        assert_eq!(r.stdout, metered.stdout);
        assert_eq!(r.result_key(), metered.result_key());
        assert_eq!(r.fuel_used, 0);
    }
    // A job's default limits have no fuel budget.
    assert!(!Limits::default().has_fuel_budget());
}

/// NaNs made by arithmetic, loads, neg/abs/copysign, through locals, calls, globals and
/// branches, stored to memory and written to stdout (8 bytes each).
fn nan_bits_module() -> String {
    module(
        r#"(global $g (mut f64) (f64.const 0))
        (func $zero (result f64) f64.const 0)
        (func $pass (param f64) (result f64) local.get 0)
        (func (export "_start") (local $n f64) (local $p f64) (local $i i32)
          call $zero call $zero f64.div local.set $n
          i64.const 0xfff4000000000001 f64.reinterpret_i64 local.set $p
          i32.const 1024 local.get $n f64.store
          i32.const 1032 local.get $n f64.neg f64.store
          i32.const 1040 local.get $n f64.neg f64.abs f64.store
          i32.const 1048 f64.const 1 local.get $n f64.copysign f64.store
          i32.const 1056 local.get $p f64.neg f64.store
          i32.const 1064 local.get $p f64.const 0 f64.add f64.store
          i32.const 1072 local.get $p f32.demote_f64 f32.store
          i32.const 1080 local.get $n f64.const 2 f64.mul call $pass f64.neg f64.store
          local.get $n f64.const 3 f64.sub global.set $g
          i32.const 1088 global.get $g f64.neg f64.store
          i32.const 1096 local.get $n f64.floor i64.reinterpret_f64 i64.store
          i32.const 1104
          f64.const 0 local.get $n f64.div
          (loop $l (param f64) (result f64)
            f64.neg
            local.get $i i32.const 1 i32.add local.tee $i i32.const 3 i32.lt_u br_if $l)
          f64.store
          (call $write (i32.const 1) (i32.const 1024) (i32.const 88)))"#,
    )
}

#[test]
fn nan_bits_are_the_same_rewritten_and_canonicalised_engine_wide() {
    // Without a fuel budget the module runs rewritten on an engine without NaN
    // canonicalisation; with one, as submitted on an engine that canonicalises every float
    // operation (today's semantics). Every stored bit must agree.
    let sb = sandbox();
    let id = prepare(&sb, &nan_bits_module());
    let metered = run(&sb, &request(id));
    let unmetered =
        run(&sb, &RunRequest { limits: Limits { fuel: Limits::NO_FUEL_BUDGET, ..limits() }, ..request(id) });
    assert_eq!(outcome(&metered), Outcome::Exited(0), "{metered:?}");
    assert_eq!(unmetered.stdout, metered.stdout);
    let at = |i: usize| u64::from_le_bytes(metered.stdout[i..i + 8].try_into().expect("8 bytes"));
    assert_eq!(at(0), 0x7ff8_0000_0000_0000, "an arithmetic NaN is canonical");
    assert_eq!(at(8), 0xfff8_0000_0000_0000, "negating it flips the sign bit");
    assert_eq!(at(24), 1f64.to_bits(), "copysign from a canonical NaN is positive");
    assert_eq!(at(32), 0x7ff4_0000_0000_0001, "a NaN's payload survives neg");
}

#[test]
fn simd_float_modules_run_with_engine_wide_canonicalisation() {
    // f32x4 lanes of 0/0: the rewrite does not model SIMD, so the module compiles on the
    // engine-wide engine (built on first use), and its NaNs are canonical.
    let wat = module(
        r#"(func (export "_start")
          (v128.store (i32.const 1024)
            (f32x4.div (v128.load (i32.const 2048)) (v128.load (i32.const 2048))))
          (call $write (i32.const 1) (i32.const 1024) (i32.const 16)))"#,
    );
    let sb = sandbox();
    let before = sb.reserved_address_space();
    let id = prepare(&sb, &wat);
    assert!(sb.reserved_address_space() > before, "a third engine was built");
    let r = run(&sb, &RunRequest { limits: Limits { fuel: Limits::NO_FUEL_BUDGET, ..limits() }, ..request(id) });
    assert_eq!(outcome(&r), Outcome::Exited(0), "{r:?}");
    assert_eq!(r.stdout, 0x7fc0_0000u32.to_le_bytes().repeat(4));
    assert_eq!(run(&sb, &request(id)).stdout, r.stdout);
}

// ---------------------------------------------------------------------------------------------
// Pool

#[test]
fn fifty_runs_through_a_two_slot_pool() {
    let sb = sandbox();
    let id = prepare(&sb, &echo());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let reports = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..50u32 {
            let sb = sb.clone();
            let req = RunRequest { input: format!("task {i}").into_bytes(), ..request(id) };
            set.spawn(async move { (i, sb.run(req).await) });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.push(r.unwrap());
        }
        out
    });
    assert_eq!(reports.len(), 50);
    for (i, r) in reports {
        let r = r.expect("ran");
        assert_eq!(r.stdout, format!("task {i}").into_bytes());
    }
    assert_eq!(sb.slots(), 2);
}

/// A run that waits for its slot past its start-by time is not started (`Stale`), and one
/// behind it with time left still runs.
#[test]
fn a_run_that_cannot_start_in_time_is_not_started() {
    let sb = Sandbox::new(super::isolated(SandboxConfig { slots: 1, queue: 8, ..Default::default() })).unwrap();
    let (forever, echo) = (prepare(&sb, LOOP), prepare(&sb, &echo()));
    let mut busy = request(forever);
    busy.limits.fuel = Limits::NO_FUEL_BUDGET;
    busy.limits.timeout_ms = 300;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (a, b, c) = rt.block_on(async {
        let now = Instant::now();
        tokio::join!(
            sb.run(busy),
            sb.run_before(RunRequest { input: b"late".to_vec(), ..request(echo) }, now + Duration::from_millis(100)),
            sb.run_before(RunRequest { input: b"in time".to_vec(), ..request(echo) }, now + Duration::from_secs(60)),
        )
    });
    assert_eq!(a.expect("ran").outcome, RunOutcome::Deadline);
    assert_eq!(b, Err(SandboxError::Stale));
    assert_eq!(c.expect("ran").stdout, b"in time");
    // Already past: not started either.
    let past = rt.block_on(sb.run_before(request(echo), Instant::now() - Duration::from_millis(1)));
    assert_eq!(past, Err(SandboxError::Stale));
}

#[test]
fn a_full_queue_is_refused() {
    let sb = Sandbox::new(super::isolated(SandboxConfig { slots: 1, queue: 1, ..Default::default() })).unwrap();
    let id = prepare(&sb, LOOP);
    let mut req = request(id);
    req.limits.fuel = u64::MAX / 2;
    req.limits.timeout_ms = 300;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let results = rt.block_on(async {
        let (a, b, c) = tokio::join!(sb.run(req.clone()), sb.run(req.clone()), sb.run(req.clone()));
        [a, b, c]
    });
    assert!(results.iter().any(|r| r == &Err(SandboxError::QueueFull)), "{results:?}");
    assert!(results.iter().any(|r| matches!(r, Ok(RunReport { outcome: RunOutcome::Deadline, .. }))));
}

// ---------------------------------------------------------------------------------------------
// Cache

#[test]
fn compiled_modules_are_cached_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        || super::isolated(SandboxConfig { slots: 1, cache_dir: Some(dir.path().join("modules")), ..Default::default() });
    let bytes = wasm(&echo());
    let id = BlobId::of(&bytes);

    let a = Sandbox::new(config()).unwrap();
    assert!(!a.is_prepared(&id));
    assert_eq!(a.prepare(id, &bytes), Ok(Prepared::Compiled));
    assert_eq!(a.prepare(id, &bytes), Ok(Prepared::InMemory));
    assert!(a.is_prepared(&id));

    let b = Sandbox::new(config()).unwrap();
    assert_eq!(b.prepare(id, &bytes), Ok(Prepared::FromDisk));
    let r = run(&b, &RunRequest { input: b"from disk".to_vec(), ..request(id) });
    assert_eq!(r.stdout, b"from disk");

    // A corrupted file is detected, recompiled and rewritten.
    let files: Vec<PathBuf> = std::fs::read_dir(dir.path().join("modules"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let mut content = std::fs::read(&files[0]).unwrap();
    let mid = content.len() / 2;
    content[mid] ^= 0xff;
    std::fs::write(&files[0], &content).unwrap();
    let c = Sandbox::new(config()).unwrap();
    assert_eq!(c.prepare(id, &bytes), Ok(Prepared::Compiled));
    let d = Sandbox::new(config()).unwrap();
    assert_eq!(d.prepare(id, &bytes), Ok(Prepared::FromDisk));
    assert_eq!(run(&d, &RunRequest { input: b"x".to_vec(), ..request(id) }).stdout, b"x");
}

/// With a compiler process, a module is compiled there and loaded from the disk cache it wrote;
/// a compiler process that fails for the host's reasons leaves the compile to this process
/// (nothing is known against the module), one that says the module was refused refuses it.
#[test]
fn a_compiler_process_compiles_into_the_disk_cache() {
    let dir = tempfile::tempdir().unwrap();
    let config = |compiler: PathBuf| {
        super::isolated(SandboxConfig {
            slots: 1,
            cache_dir: Some(dir.path().join("modules")),
            compiler: Some(compiler),
            ..Default::default()
        })
    };
    let bytes = wasm(&echo());
    let id = BlobId::of(&bytes);

    let a = Sandbox::new(config(env!("CARGO_BIN_EXE_spare").into())).unwrap();
    assert_eq!(a.prepare(id, &bytes), Ok(Prepared::CompiledApart));
    assert_eq!(a.compiled(), (1, 0));
    let unmetered = Limits { fuel: Limits::NO_FUEL_BUDGET, ..limits() };
    assert_eq!(run(&a, &RunRequest { input: b"apart".to_vec(), limits: unmetered, ..request(id) }).stdout, b"apart");
    // The metered form too, on the first run with a fuel budget.
    let budget = Limits { fuel: 1_000_000_000, ..limits() };
    let fueled = run(&a, &RunRequest { input: b"fuel".to_vec(), limits: budget, ..request(id) });
    assert_eq!(fueled.stdout, b"fuel");
    assert!(fueled.fuel_used > 0);
    assert_eq!(a.compiled(), (2, 0));
    let b = Sandbox::new(config(env!("CARGO_BIN_EXE_spare").into())).unwrap();
    assert_eq!(b.prepare(id, &bytes), Ok(Prepared::FromDisk));
    assert_eq!(b.compiled(), (0, 0));

    // Stand-in compilers: one that cannot start, one that fails, one that refuses the module.
    let script = |name: &str, body: &str| {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    };
    // The failing one leaves a partial file behind, as one killed mid-write would.
    let fails = script(
        "fails",
        r#"while [ $# -gt 0 ]; do case $1 in --dir) d=$2;; --module) m=$2;; --engine-hash) h=$2;; esac; shift; done
echo partial > "$d/.$m-$h.999.0.tmp"; echo broken >&2; exit 1"#,
    );
    for compiler in [dir.path().join("missing"), fails] {
        let _ = std::fs::remove_dir_all(dir.path().join("modules"));
        let sb = Sandbox::new(config(compiler)).unwrap();
        assert_eq!(sb.prepare(id, &bytes), Ok(Prepared::Compiled), "compiled here");
        assert_eq!(sb.compiled(), (0, 1));
        assert_eq!(run(&sb, &RunRequest { input: b"here".to_vec(), limits: unmetered, ..request(id) }).stdout, b"here");
        let files: Vec<String> = std::fs::read_dir(dir.path().join("modules"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "fuel")
            .collect();
        assert!(files.len() == 1 && files[0].starts_with(&id.to_hex()) && files[0].ends_with(".cwasm"), "{files:?}");
    }
    let _ = std::fs::remove_dir_all(dir.path().join("modules"));
    let sb = Sandbox::new(config(script("refuses", "cat >/dev/null; echo 'too big to compile' >&2; exit 3"))).unwrap();
    match sb.prepare(id, &bytes) {
        Err(ModuleError::Compile(why)) => assert_eq!(why, "too big to compile"),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The example guests (examples/wasm), when built.

fn guest(name: &str) -> Option<Vec<u8>> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/wasm").join(format!("{name}.wasm"));
    match std::fs::read(&path) {
        Ok(b) => Some(b),
        Err(_) => {
            eprintln!("skipping: {} not built", path.display());
            None
        }
    }
}

fn run_guest(sbs: &[&Sandbox], name: &str, input: &[u8]) -> Option<RunReport> {
    let bytes = guest(name)?;
    let id = BlobId::of(&bytes);
    let mut first: Option<RunReport> = None;
    for sb in sbs {
        sb.prepare(id, &bytes).expect("guest prepares");
        for _ in 0..2 {
            let r = run(sb, &RunRequest { input: input.to_vec(), ..request(id) });
            match &first {
                None => first = Some(r),
                Some(f) => {
                    assert_eq!(r.stdout, f.stdout, "{name}: stdout differs");
                    assert_eq!(r.fuel_used, f.fuel_used, "{name}: fuel differs");
                    assert_eq!(r.outcome, f.outcome, "{name}: outcome differs");
                }
            }
        }
    }
    first
}

#[test]
fn example_guests_are_deterministic() {
    let a = sandbox();
    let b = sandbox();
    let sbs = [&a, &b];
    if let Some(r) = run_guest(&sbs, "primes", b"0 100000\n") {
        assert_eq!(outcome(&r), Outcome::Exited(0), "{r:?}");
        assert_eq!(r.stdout, b"9592\n");
    }
    if let Some(r) = run_guest(&sbs, "sha256", b"0\nabc") {
        assert_eq!(outcome(&r), Outcome::Exited(0), "{r:?}");
        assert_eq!(r.stdout, b"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n");
    }
    if let Some(r) = run_guest(&sbs, "mandelbrot", b"-2 1.5 1 -1.5 80 60 200") {
        assert_eq!(outcome(&r), Outcome::Exited(0), "{r:?}");
        assert!(r.stdout.starts_with(b"P5\n80 60\n255\n"));
        assert_eq!(r.stdout.len(), "P5\n80 60\n255\n".len() + 80 * 60);
    }
    if let Some(r) = run_guest(&sbs, "empty", b"ignored") {
        assert_eq!(outcome(&r), Outcome::Exited(0), "{r:?}");
        assert!(r.stdout.is_empty());
    }
    // A malformed input is exit 2, deterministically.
    if let Some(r) = run_guest(&sbs, "primes", b"ten twenty") {
        assert_eq!(outcome(&r), Outcome::Exited(2), "{r:?}");
        assert!(!r.stderr.is_empty());
    }
    // The output cap reached inside a real guest: OutputTooLarge, whatever it does next.
    if let Some(bytes) = guest("mandelbrot") {
        let id = BlobId::of(&bytes);
        a.prepare(id, &bytes).unwrap();
        let mut req = RunRequest { input: b"-2 1.5 1 -1.5 400 300 100".to_vec(), ..request(id) };
        req.limits.output_bytes = 1000;
        assert_eq!(outcome(&run(&a, &req)), Outcome::OutputTooLarge);
    }
}
