//! A slot process: `spare sandbox-slot` (hidden), started by a peer's sandbox per slot
//! (`slot.rs`). It builds the peer's sandbox engine without deadline checks
//! ([`Metering::Unchecked`](super::Metering::Unchecked)), loads each module's compiled form
//! from the peer's disk cache (the peer compiled and checked it), and runs what comes on stdin,
//! answering each run on stdout. The peer kills it at a run's deadline.
//!
//! Before it reads anything, it narrows what it may do (a second wall behind the sandbox's
//! own: `slot_walls.rs`).

use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use super::slot_walls;
use super::slot_wire::{SlotReply, SlotRequest, read_frame, write_frame};
use super::{Isolation, Sandbox, SandboxConfig, SandboxError};

/// What a slot process is told on its command line: the settings that shape the peer's engine
/// (so that the compiled forms it wrote load here).
#[derive(clap::Args, Debug, Clone)]
pub struct SlotArgs {
    /// The peer's disk cache of compiled modules.
    #[arg(long, value_name = "DIR")]
    cache_dir: PathBuf,
    /// `SandboxConfig::slots` (sizes the pool, part of the engine hash).
    #[arg(long)]
    slots: usize,
    /// `SandboxConfig::max_memory_bytes`.
    #[arg(long)]
    max_memory_bytes: u64,
    /// `SandboxConfig::stderr_bytes`.
    #[arg(long)]
    stderr_bytes: usize,
    /// `SandboxConfig::cached_modules`.
    #[arg(long)]
    cached_modules: usize,
    /// Run at the lowest scheduling priority.
    #[arg(long)]
    idle_priority: bool,
    /// Put the walls up, try what they forbid, say how that went and exit (0: all refused).
    #[arg(long, hide = true)]
    check_walls: bool,
}

impl SlotArgs {
    /// The arguments that start a slot process of a sandbox with `config`.
    pub(crate) fn of(config: &SandboxConfig, cache_dir: &std::path::Path) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec!["--cache-dir".into(), cache_dir.into()];
        for (flag, value) in [
            ("--slots", config.slots.to_string()),
            ("--max-memory-bytes", config.max_memory_bytes.to_string()),
            ("--stderr-bytes", config.stderr_bytes.to_string()),
            ("--cached-modules", config.cached_modules.to_string()),
        ] {
            args.push(flag.into());
            args.push(value.into());
        }
        if config.idle_priority {
            args.push("--idle-priority".into());
        }
        args
    }
}

/// The slot process's main: runs until its stdin closes (exit 0) or it cannot go on (1).
pub fn serve(args: &SlotArgs) -> ExitCode {
    if args.idle_priority {
        super::priority::lower_this_thread();
    }
    let config = SandboxConfig {
        slots: args.slots.max(1),
        cache_dir: Some(args.cache_dir.clone()),
        max_memory_bytes: args.max_memory_bytes,
        stderr_bytes: args.stderr_bytes,
        cached_modules: args.cached_modules,
        idle_priority: false,
        isolation: Isolation::SlotProcess,
        ..SandboxConfig::default()
    };
    let sandbox = match Sandbox::new(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: slot process: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Up once the engines and their threads are: nothing after needs what they forbid.
    let files = slot_walls::SLOT_FILES.saturating_add(args.cached_modules as u64);
    if let Err(e) = slot_walls::put_up(files) {
        // The sandbox is still the first wall; the peer's log says the second is thinner.
        eprintln!("warning: slot process: {e}");
    }
    if args.check_walls {
        let (lines, all) = slot_walls::check(&args.cache_dir);
        println!("{}", lines.join("\n"));
        return if all { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    let mut input = BufReader::new(std::io::stdin().lock());
    let mut output = BufWriter::new(std::io::stdout().lock());
    loop {
        let req: SlotRequest = match read_frame(&mut input) {
            Ok(Some(r)) => r,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: slot process: a request cannot be read: {e}");
                return ExitCode::FAILURE;
            }
        };
        let reply = if req.is_stale() {
            SlotReply::of(Err(SandboxError::Stale))
        } else {
            match sandbox.load_compiled(req.module, req.nans()) {
                Ok(()) => SlotReply::of(sandbox.run_here(&req.into_run())),
                Err(e) => SlotReply::host(e.to_string()),
            }
        };
        if let Err(e) = write_frame(&mut output, &reply).and_then(|()| output.flush()) {
            eprintln!("error: slot process: an answer cannot be written: {e}");
            return ExitCode::FAILURE;
        }
    }
}
