//! Compiling a module in a short-lived compiler process (`spare compile-module`, hidden), so
//! that Cranelift's code and heap never become resident in the long-running peer: both sides
//! of the hand-off. The peer runs its own binary with the settings that shape the engine and
//! the module bytes on stdin; the compiler process builds the same engine, compiles, and writes
//! the compiled form into the peer's disk cache as the peer would (`DiskCache::store`); the
//! peer then loads it from there.
//!
//! Exit status 0: the file is written. [`REFUSED`]: Cranelift refused the module, which is the
//! module's fault, the same on every peer. Anything else (cannot start, killed at
//! [`COMPILE_TIMEOUT`], crashed, another engine, cannot write): the host's.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use spare_protocol::BlobId;
use wasmtime::Module;

use super::SandboxConfig;
use super::cache::DiskCache;
use super::engine::{self, Metering, Nans};

/// How long a compiler process may take before it is killed. Cranelift compiles the largest
/// module a peer accepts (64 MiB) in well under this on a slow machine; the bound is for a
/// process that hangs.
pub(crate) const COMPILE_TIMEOUT: Duration = Duration::from_secs(120);
/// The exit status of a compiler process whose module Cranelift refused.
pub(crate) const REFUSED: i32 = 3;
/// How much of a compiler process's stderr is kept for the error it becomes.
const STDERR_KEPT: usize = 4 << 10;
/// The longest wait between two looks at a running compiler process.
const POLL_MAX: Duration = Duration::from_millis(20);

/// What the compiler process is told on its command line (the module bytes come on stdin).
#[derive(clap::Args, Debug, Clone)]
pub struct CompileArgs {
    /// The engine's directory of the disk cache of compiled modules.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The module's id (hex): names the file.
    #[arg(long, value_name = "ID")]
    module: BlobId,
    /// The engine hash the peer expects (the file's name); a different one is refused.
    #[arg(long, value_name = "HASH")]
    engine_hash: String,
    /// Whether the engine meters fuel.
    #[arg(long)]
    fuel: bool,
    /// Whether the engine has no checks at all (for slot processes).
    #[arg(long)]
    unchecked: bool,
    /// Whether Cranelift canonicalises NaNs (modules the NaN rewrite does not model).
    #[arg(long)]
    engine_wide_nans: bool,
    /// `SandboxConfig::slots` (sizes the pool, part of the engine hash).
    #[arg(long)]
    slots: usize,
    /// `SandboxConfig::max_memory_bytes` (sizes memory reservations, part of the engine hash).
    #[arg(long)]
    max_memory_bytes: u64,
    /// Exactly how many bytes stdin holds.
    #[arg(long)]
    bytes: usize,
}

/// One engine's part of a compile request: what the compiler process needs to build it.
pub(crate) struct Target<'a> {
    pub(crate) config: &'a SandboxConfig,
    pub(crate) metering: Metering,
    pub(crate) nans: Nans,
    pub(crate) dir: &'a Path,
    pub(crate) engine_hash: &'a str,
}

/// Why a compiler process did not write the compiled module.
#[derive(Debug)]
pub(crate) enum Failed {
    /// Cranelift refused the module (its message).
    Refused(String),
    /// The host failed: nothing is known about the module.
    Host(String),
}

/// Compiles `wasm` (module `id`) in a compiler process run from `exe`, into `target.dir`; the
/// process's id on success.
pub(crate) fn compile(exe: &Path, target: &Target<'_>, id: &BlobId, wasm: &[u8]) -> Result<u32, Failed> {
    let mut cmd = Command::new(exe);
    cmd.arg("compile-module")
        .arg("--dir")
        .arg(target.dir)
        .args(["--module", &id.to_hex(), "--engine-hash", target.engine_hash])
        .args(["--slots", &target.config.slots.to_string()])
        .args(["--max-memory-bytes", &target.config.max_memory_bytes.to_string()])
        .args(["--bytes", &wasm.len().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match target.metering {
        Metering::FuelAndDeadline => {
            cmd.arg("--fuel");
        }
        Metering::Unchecked => {
            cmd.arg("--unchecked");
        }
        Metering::Deadline => {}
    }
    if target.nans == Nans::EngineWide {
        cmd.arg("--engine-wide-nans");
    }
    let mut child = cmd.spawn().map_err(|e| Failed::Host(format!("cannot start {}: {e}", exe.display())))?;
    let pid = child.id();
    let (stdin, stderr) = (child.stdin.take(), child.stderr.take());
    let waited = std::thread::scope(|s| {
        // Fed and drained on their own threads, so that neither a child that stops reading nor
        // one that writes much can block the wait, which alone enforces the timeout.
        let feeder = s.spawn(move || stdin.map_or(Ok(()), |mut i| i.write_all(wasm)));
        let drainer = s.spawn(move || stderr.map(bounded_read).unwrap_or_default());
        let status = wait_until(&mut child, Instant::now() + COMPILE_TIMEOUT);
        // After the wait the child is gone, so both pipes are closed at its end.
        let fed = feeder.join().unwrap_or(Ok(()));
        let said = drainer.join().unwrap_or_default();
        (status, fed, said)
    });
    let (status, fed, said) = waited;
    let said = said.trim();
    match status {
        Ok(Some(s)) if s.success() => match fed {
            Ok(()) => Ok(pid),
            Err(e) => Err(Failed::Host(format!("exited 0 without reading the module: {e}"))),
        },
        Ok(Some(s)) if s.code() == Some(REFUSED) => Err(Failed::Refused(said.to_string())),
        Ok(Some(s)) => Err(Failed::Host(format!("compiler process {pid} {}: {said}", ended(s)))),
        Ok(None) => Err(Failed::Host(format!("compiler process {pid} killed after {COMPILE_TIMEOUT:?}: {said}"))),
        Err(e) => Err(Failed::Host(format!("compiler process {pid}: wait: {e}"))),
    }
}

/// Waits for `child` until `deadline`, then kills it (`None`). Polls, backing off to
/// [`POLL_MAX`]: std has no wait with a timeout, and one built on SIGCHLD would fight the async
/// runtime's own handler.
fn wait_until(child: &mut std::process::Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            // Killed and reaped; an error here means it ended on its own meanwhile.
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// How a process ended, for people.
fn ended(s: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(code), _) => format!("exited {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => format!("ended ({s})"),
    }
}

/// Everything `r` gives until its end, keeping the first [`STDERR_KEPT`] bytes as text.
fn bounded_read(mut r: impl Read) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = STDERR_KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// The compiler process: `spare compile-module`. Returns its exit status; says why on stderr.
pub fn serve(args: &CompileArgs) -> std::process::ExitCode {
    match serve_inner(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(Failed::Refused(why)) => {
            eprintln!("{why}");
            std::process::ExitCode::from(REFUSED as u8)
        }
        Err(Failed::Host(why)) => {
            eprintln!("error: {why}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve_inner(args: &CompileArgs) -> Result<(), Failed> {
    // One byte more than announced shows a longer stdin without reading all of it.
    let mut wasm = Vec::with_capacity(args.bytes);
    let limit = u64::try_from(args.bytes).unwrap_or(u64::MAX).saturating_add(1);
    std::io::stdin().lock().take(limit).read_to_end(&mut wasm).map_err(|e| Failed::Host(format!("read stdin: {e}")))?;
    if wasm.len() != args.bytes {
        let got = if wasm.len() > args.bytes { "more".to_string() } else { wasm.len().to_string() };
        return Err(Failed::Host(format!("stdin held {got} bytes, not the {} announced", args.bytes)));
    }
    // The same engine as the peer's: built by the same code from the settings that shape it.
    let config = SandboxConfig { slots: args.slots.max(1), max_memory_bytes: args.max_memory_bytes, ..SandboxConfig::default() };
    let metering = match (args.fuel, args.unchecked) {
        (true, _) => Metering::FuelAndDeadline,
        (false, true) => Metering::Unchecked,
        (false, false) => Metering::Deadline,
    };
    let nans = if args.engine_wide_nans { Nans::EngineWide } else { Nans::Rewritten };
    let engine = engine::build_engine(&config, metering, nans).map_err(|e| Failed::Host(e.to_string()))?;
    let hash = engine::engine_hash(&engine, metering, nans);
    if hash != args.engine_hash {
        // Another build of `spare` (replaced on disk under a running peer), or a setting that
        // shapes the engine and is not passed here: its file would never be loaded.
        return Err(Failed::Host(format!("this binary builds engine {hash}, not the peer's {}", args.engine_hash)));
    }
    let module = Module::new(&engine, &wasm).map_err(|e| Failed::Refused(format!("{e:#}")))?;
    let disk = DiskCache::new(&args.dir, hash).map_err(|e| Failed::Host(format!("{}: {e}", args.dir.display())))?;
    disk.store(&args.module, &module).map_err(Failed::Host)
}
