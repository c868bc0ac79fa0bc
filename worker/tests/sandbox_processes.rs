//! The sandbox suite (`sandbox/cases.rs`) with slot processes (`spare sandbox-slot`, this
//! package's binary), as `spare peer` runs tasks: ordinary runs have no fuel budget, so they run
//! in the slot processes, whose code has no checks and which are killed at a deadline. Then
//! what only slot processes do: a kill in the middle of a batch, a slot process that dies, and
//! the limits a slot process gives itself.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use spare_peer::sandbox::{Isolation, RunOutcome, RunRequest, Sandbox, SandboxConfig, SandboxError, task_seed};
use spare_protocol::{BlobId, JobId, Limits, Outcome};

#[path = "sandbox/cases.rs"]
mod cases;

/// The fuel budget of an ordinary run in the suite: none, as for most jobs.
const FUEL: u64 = Limits::NO_FUEL_BUDGET;

fn spare() -> PathBuf {
    env!("CARGO_BIN_EXE_spare").into()
}

/// Sandboxes as the suite asks for them, with slot processes (which need a disk cache: one
/// under cargo's scratch directory when the test gives none).
fn isolated(config: SandboxConfig) -> SandboxConfig {
    let cache_dir = config.cache_dir.clone().or_else(|| Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("slot-modules")));
    SandboxConfig { isolation: Isolation::Processes(spare()), cache_dir, ..config }
}

const LOOP: &str = r#"(module (func (export "_start") (loop (br 0))))"#;

/// Echoes stdin to stdout.
const ECHO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 1024))
    (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 4) (i32.load (i32.const 8)))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

fn prepared(sb: &Sandbox, wat: &str) -> BlobId {
    let bytes = wat::parse_str(wat).expect("valid WAT");
    let id = BlobId::of(&bytes);
    sb.prepare(id, &bytes).expect("prepare");
    id
}

fn request(module: BlobId, input: &[u8], timeout_ms: u64) -> RunRequest {
    RunRequest {
        module,
        input: input.to_vec(),
        args: Vec::new(),
        env: Vec::new(),
        limits: Limits { memory_bytes: 16 << 20, fuel: Limits::NO_FUEL_BUDGET, timeout_ms, output_bytes: 1 << 20 },
        seed: task_seed(&JobId([7; 32]), 0),
    }
}

/// Runs queued together go to one slot process as a batch; one that would run forever in the
/// middle is stopped at its deadline (its process killed) and the runs behind it still run, in
/// a new process, with their own results.
#[test]
fn a_run_killed_at_its_deadline_does_not_take_the_rest_of_its_batch() {
    let sb = Sandbox::new(isolated(SandboxConfig { slots: 1, queue: 64, ..Default::default() })).expect("sandbox");
    let (echo, forever) = (prepared(&sb, ECHO), prepared(&sb, LOOP));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let started = Instant::now();
    let reports = rt.block_on(async {
        let runs = (0..12u8).map(|i| {
            let req = if i == 5 { request(forever, b"", 200) } else { request(echo, &[b'a' + i], 20_000) };
            sb.run(req)
        });
        futures::future::join_all(runs).await
    });
    for (i, r) in reports.into_iter().enumerate() {
        let r = r.expect("the host ran it");
        if i == 5 {
            assert_eq!(r.outcome, RunOutcome::Deadline);
        } else {
            assert_eq!(r.outcome.outcome(), Some(Outcome::Exited(0)), "run {i}: {r:?}");
            assert_eq!(r.stdout, [b'a' + i as u8], "run {i}");
        }
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(10), "{took:?}");
}

/// A batch whose inputs overfill the pipe to the slot process while it runs a loop: the slot
/// thread never blocks writing, so the loop is still stopped at its deadline, and the runs
/// behind it get their whole inputs.
#[test]
fn a_batch_larger_than_the_pipe_does_not_hold_up_a_deadline() {
    let sb = Sandbox::new(isolated(SandboxConfig { slots: 1, queue: 64, ..Default::default() })).expect("sandbox");
    let (echo, forever) = (prepared(&sb, ECHO), prepared(&sb, LOOP));
    let input = |i: u8| (0..256 << 10).map(|j: u32| (j as u8).wrapping_add(i)).collect::<Vec<u8>>();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let started = Instant::now();
    let reports = rt.block_on(async {
        let runs = (0..9u8).map(|i| if i == 0 { sb.run(request(forever, b"", 200)) } else { sb.run(request(echo, &input(i), 20_000)) });
        futures::future::join_all(runs).await
    });
    let took = started.elapsed();
    for (i, r) in reports.into_iter().enumerate() {
        let r = r.expect("the host ran it");
        if i == 0 {
            assert_eq!(r.outcome, RunOutcome::Deadline);
        } else {
            assert_eq!(r.stdout, input(i as u8)[..1024], "run {i}");
        }
    }
    assert!(took < Duration::from_secs(10), "{took:?}");
}

/// A slot process killed from outside (as the kernel's OOM killer would) fails only the run it
/// held, as the host's error, never as a result; the next run gets a new process.
#[test]
fn a_slot_process_that_dies_fails_its_run_as_the_hosts_error() {
    let sb = Sandbox::new(isolated(SandboxConfig { slots: 1, ..Default::default() })).expect("sandbox");
    let (echo, forever) = (prepared(&sb, ECHO), prepared(&sb, LOOP));
    // A first run starts the slot's process.
    assert_eq!(sb.run_blocking(&request(echo, b"x", 20_000)).expect("ran").stdout, b"x");
    let pids = sb.slot_processes();
    assert_eq!(pids.len(), 1, "one slot, one process: {pids:?}");
    let runner = {
        let sb = sb.clone();
        std::thread::spawn(move || sb.run_blocking(&request(forever, b"", 60_000)))
    };
    // Once the process is running the loop (state R, where waiting for a request is S), kill it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let state = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string))
    };
    while state(pids[0]).as_deref() != Some("R") {
        assert!(Instant::now() < deadline, "the slot process never ran the loop");
        std::thread::yield_now();
    }
    // SAFETY: kill(2) on a pid of our own child.
    unsafe { libc::kill(pids[0] as i32, libc::SIGKILL) };
    let r = runner.join().expect("runner");
    assert!(matches!(r, Err(SandboxError::Panicked(_))), "{r:?}");
    assert_eq!(sb.run_blocking(&request(echo, b"y", 20_000)).expect("ran").stdout, b"y");
}

/// A slot process gives itself no core files, few descriptors, no new privileges and a seccomp
/// filter.
#[test]
fn a_slot_process_narrows_what_it_may_do() {
    let sb = Sandbox::new(isolated(SandboxConfig { slots: 1, ..Default::default() })).expect("sandbox");
    let echo = prepared(&sb, ECHO);
    assert_eq!(sb.run_blocking(&request(echo, b"x", 20_000)).expect("ran").stdout, b"x");
    let pids = sb.slot_processes();
    assert_eq!(pids.len(), 1, "{pids:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", pids[0])).expect("status");
    assert!(status.lines().any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')), "{status}");
    // 2: a seccomp filter is installed.
    assert!(status.lines().any(|l| l.starts_with("Seccomp:") && l.ends_with('2')), "{status}");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", pids[0])).expect("limits");
    let line = |name: &str| limits.lines().find(|l| l.starts_with(name)).unwrap_or_default().split_whitespace().rev().nth(1).map(str::to_string);
    assert_eq!(line("Max core file size").as_deref(), Some("0"), "{limits}");
    let files: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .expect("a limit of open files");
    assert!(files <= 1024, "{limits}");
}

/// What the slot process's seccomp filter forbids is refused once its walls are up, and what it
/// needs (signalling itself, as `abort` does) is not: `spare sandbox-slot --check-walls` tries
/// each in the real binary.
#[test]
fn a_slot_process_cannot_reach_past_itself() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = std::process::Command::new(spare())
        .args(["sandbox-slot", "--cache-dir"])
        .arg(dir.path())
        .args(["--slots", "1", "--max-memory-bytes", "16777216", "--stderr-bytes", "1024", "--cached-modules", "4"])
        .arg("--check-walls")
        .output()
        .expect("spare runs");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}\n{}", String::from_utf8_lossy(&out.stderr));
    for refused in ["socket", "open a file for writing", "fork", "execve", "signal the parent"] {
        assert!(said.lines().any(|l| l == format!("{refused}: refused")), "{refused}: {said}");
    }
    assert!(said.lines().any(|l| l == "signal itself: allowed"), "{said}");
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").filter_map(Result::ok).filter(|e| e.file_name() == "walls-check").count(), 0);
}
