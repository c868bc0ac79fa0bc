//! A sandbox slot's process, from the peer's side: `spare sandbox-slot` (this same binary,
//! `slot_serve.rs`) started per slot, fed runs over its stdin, killed at a run's wall
//! deadline and started again for the runs after it.
//!
//! Why a process: the only ways wasmtime has to stop guest code in its own thread are fuel
//! and epoch checks compiled into every loop, which cost up to 1.6× on tight kernels. A process
//! can be stopped from outside, so the code it runs has no checks at all
//! ([`Metering::Unchecked`](super::Metering::Unchecked)), and it is a second wall around a
//! stranger's code (rlimits, a seccomp filter: `slot_walls.rs`).
//!
//! Runs go in batches: a slot thread hands its process every run queued for it at once, and
//! the process answers each as it ends, in order. Run `i` starts when the answer to `i - 1`
//! arrives (or when the batch was sent), so its deadline is known without the process saying
//! when it started.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::engine::EPOCH_TICK;
use super::error::SandboxError;
use super::slot_pipes::Pipes;
use super::slot_wire::{SlotRequest, write_frame};
use super::{RunOutcome, RunReport};

/// Given to a run past its timeout before its process is killed, as the epoch deadline gives
/// up to a tick more than the timeout.
const DEADLINE_SLACK: Duration = EPOCH_TICK;
/// Most runs a slot hands its process at once (the pool's queue is the bound on the rest).
pub(crate) const MAX_BATCH: usize = 32;

/// Where the answer to one run goes.
pub(crate) type Reply = tokio::sync::oneshot::Sender<Result<RunReport, SandboxError>>;

/// A run for a slot process.
pub(crate) struct Apart {
    pub(crate) req: SlotRequest,
    pub(crate) reply: Reply,
}

/// How to start a slot process: the executable and the settings its sandbox is built from.
#[derive(Clone, Debug)]
pub(crate) struct SlotCommand {
    pub(crate) exe: PathBuf,
    pub(crate) args: Vec<std::ffi::OsString>,
}

/// A running slot process and its pipes (`slot_pipes.rs`: driven from the slot thread, which
/// so never blocks on a pipe and always sees a deadline pass).
pub(crate) struct SlotProcess {
    child: Child,
    pipes: Pipes,
}

impl SlotProcess {
    pub(crate) fn start(cmd: &SlotCommand) -> Result<SlotProcess, SandboxError> {
        let mut child = Command::new(&cmd.exe)
            .arg("sandbox-slot")
            .args(&cmd.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| SandboxError::Engine(format!("cannot start a slot process ({}): {e}", cmd.exe.display())))?;
        let pipes = match (child.stdin.take(), child.stdout.take()) {
            (Some(stdin), Some(stdout)) => Pipes::new(stdin, stdout).map_err(|e| e.to_string()),
            _ => Err("no pipes".to_string()),
        };
        match pipes {
            Ok(pipes) => Ok(SlotProcess { child, pipes }),
            Err(why) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(SandboxError::Engine(format!("a slot process's pipes: {why}")))
            }
        }
    }

    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    fn send(&mut self, req: &SlotRequest) -> Result<(), SandboxError> {
        let mut frame = Vec::new();
        write_frame(&mut frame, req).map_err(|e| SandboxError::Host(format!("slot request: {e}")))?;
        self.pipes.send(&frame);
        Ok(())
    }

    /// Kills the process and says how it ended.
    fn end(mut self) -> String {
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => status.to_string(),
            Err(e) => format!("cannot be waited for: {e}"),
        }
    }
}

impl Drop for SlotProcess {
    fn drop(&mut self) {
        // Only a process still running when its slot ends (idle, or the sandbox shut down).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `batch` in order in the slot's process, starting one when there is none and again
/// after each kill, and answers every run. A run past its deadline is answered
/// [`RunOutcome::Deadline`]; a run its process died under is a host error (not attestable).
/// `pid` is kept as the process running (0: none) before any run is answered; `started`
/// counts the processes started.
pub(crate) fn run_batch(
    slot: &mut Option<SlotProcess>,
    cmd: &SlotCommand,
    batch: Vec<Apart>,
    pid: &AtomicU32,
    started: &AtomicU64,
) {
    let mut pending: VecDeque<Apart> = batch.into();
    while !pending.is_empty() {
        let mut process = match slot.take() {
            Some(p) => p,
            None => match SlotProcess::start(cmd) {
                Ok(p) => {
                    pid.store(p.id(), Ordering::Relaxed);
                    started.fetch_add(1, Ordering::Relaxed);
                    p
                }
                Err(e) => {
                    for a in pending {
                        let _ = a.reply.send(Err(e.clone()));
                    }
                    return;
                }
            },
        };
        let mut unsent = Vec::new();
        for (i, a) in pending.iter().enumerate() {
            if let Err(e) = process.send(&a.req) {
                unsent.push((i, e));
            }
        }
        // Requests that cannot be encoded never went: answer them now, keep the order of the rest.
        for (i, e) in unsent.into_iter().rev() {
            if let Some(a) = pending.remove(i) {
                let _ = a.reply.send(Err(e));
            }
        }
        // When the run at the front started: when the one before it was answered.
        let mut since = Instant::now();
        let mut alive = Some(process);
        while let (Some(a), Some(p)) = (pending.front(), alive.as_mut()) {
            let timeout = Duration::from_millis(a.req.limits.timeout_ms).saturating_add(DEADLINE_SLACK);
            let answer = match p.pipes.next(since + timeout) {
                Ok(Some(reply)) => reply.into_report(),
                Ok(None) => {
                    let how = alive.take().map(SlotProcess::end).unwrap_or_default();
                    tracing::debug!(module = %a.req.module.short(), %how, "a slot process killed at a run's deadline");
                    Ok(RunReport {
                        outcome: RunOutcome::Deadline,
                        stdout: Vec::new(),
                        stderr: Vec::new(),
                        fuel_used: 0,
                        elapsed: since.elapsed(),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    let how = alive.take().map(SlotProcess::end).unwrap_or_default();
                    Err(SandboxError::Panicked(format!("the slot process running this task ended: {how}")))
                }
                Err(e) => {
                    let how = alive.take().map(SlotProcess::end).unwrap_or_default();
                    Err(SandboxError::Host(format!("a slot process's answer cannot be read ({e}); it was killed: {how}")))
                }
            };
            if alive.is_none() {
                pid.store(0, Ordering::Relaxed);
            }
            if let Some(a) = pending.pop_front() {
                let _ = a.reply.send(answer);
            }
            since = Instant::now();
        }
        // The rest (if the process was killed) go to a new one.
        *slot = alive;
    }
}
