//! What a peer and its slot processes say to each other over the child's stdin and stdout:
//! length-prefixed postcard frames, one [`SlotRequest`] per run in, one [`SlotReply`] per run
//! out, in the same order. Both ends are this same binary, so the format needs no version; a
//! frame past [`MAX_FRAME_BYTES`] ends the link.

use std::io::{self, Read, Write};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use spare_protocol::{BlobId, Limits, Outcome};

use super::engine::Nans;
use super::error::{ModuleError, SandboxError};
use super::{RunOutcome, RunReport, RunRequest};

/// The largest frame either end accepts: a run's stdin or stdout and stderr, with room to
/// spare (a job's output cap and a task's input are far below it).
pub(crate) const MAX_FRAME_BYTES: usize = 1 << 30;

/// One run, as the slot process needs it: the request and which compiled form to load.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct SlotRequest {
    pub(crate) module: BlobId,
    /// Whether the module's compiled form is of the rewritten bytes (else engine-wide NaN
    /// canonicalisation): which engine and file the slot process loads.
    pub(crate) engine_wide_nans: bool,
    pub(crate) input: Vec<u8>,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) limits: Limits,
    pub(crate) seed: [u8; 32],
    /// The run is not started past this reading of `CLOCK_MONOTONIC` (ns), which both
    /// processes share: requests wait in the pipe while the ones before them run.
    pub(crate) start_by_ns: Option<u64>,
}

impl SlotRequest {
    pub(crate) fn new(req: RunRequest, nans: Nans, start_by: Option<std::time::Instant>) -> SlotRequest {
        SlotRequest {
            module: req.module,
            engine_wide_nans: nans == Nans::EngineWide,
            input: req.input,
            args: req.args,
            env: req.env,
            limits: req.limits,
            seed: req.seed,
            start_by_ns: start_by.map(|at| {
                let left = at.saturating_duration_since(std::time::Instant::now());
                monotonic_ns().saturating_add(u64::try_from(left.as_nanos()).unwrap_or(u64::MAX))
            }),
        }
    }

    /// Whether its start-by time has passed.
    pub(crate) fn is_stale(&self) -> bool {
        self.start_by_ns.is_some_and(|by| monotonic_ns() > by)
    }

    pub(crate) fn nans(&self) -> Nans {
        if self.engine_wide_nans { Nans::EngineWide } else { Nans::Rewritten }
    }

    pub(crate) fn into_run(self) -> RunRequest {
        RunRequest {
            module: self.module,
            input: self.input,
            args: self.args,
            env: self.env,
            limits: self.limits,
            seed: self.seed,
        }
    }
}

/// How a run in a slot process ended (a [`RunOutcome`] or the slot's host error).
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum SlotOutcome {
    Done { outcome: Outcome, message: String },
    /// `_start` is not a `func() -> ()` (validation should have refused it).
    BadStart(String),
    /// The module cannot run here (`ModuleError::Unsupported`).
    Unsupported(String),
    /// The slot process could not run it: not attestable.
    Host(String),
    /// Not started: its start-by time had passed.
    Stale,
}

/// What one run in a slot process produced.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct SlotReply {
    pub(crate) outcome: SlotOutcome,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    pub(crate) fuel_used: u64,
    pub(crate) elapsed_ns: u64,
}

impl SlotReply {
    pub(crate) fn of(ran: Result<RunReport, SandboxError>) -> SlotReply {
        let report = match ran {
            Ok(r) => r,
            Err(SandboxError::Stale) => return SlotReply::not_run(SlotOutcome::Stale),
            Err(e) => return SlotReply::host(e.to_string()),
        };
        let outcome = match report.outcome {
            RunOutcome::Done { outcome, message } => SlotOutcome::Done { outcome, message },
            RunOutcome::Invalid(ModuleError::BadStart(m)) => SlotOutcome::BadStart(m),
            RunOutcome::Invalid(e) => SlotOutcome::Unsupported(e.to_string()),
            // The slot's engine has no epoch checks; a fuel run's deadline is still the epoch's.
            RunOutcome::Deadline => SlotOutcome::Host("the wall deadline passed".into()),
        };
        SlotReply {
            outcome,
            stdout: report.stdout,
            stderr: report.stderr,
            fuel_used: report.fuel_used,
            elapsed_ns: u64::try_from(report.elapsed.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    pub(crate) fn host(why: String) -> SlotReply {
        SlotReply::not_run(SlotOutcome::Host(why))
    }

    /// A reply with nothing run.
    fn not_run(outcome: SlotOutcome) -> SlotReply {
        SlotReply { outcome, stdout: Vec::new(), stderr: Vec::new(), fuel_used: 0, elapsed_ns: 0 }
    }

    pub(crate) fn into_report(self) -> Result<RunReport, SandboxError> {
        let outcome = match self.outcome {
            SlotOutcome::Done { outcome, message } => RunOutcome::Done { outcome, message },
            SlotOutcome::BadStart(m) => RunOutcome::Invalid(ModuleError::BadStart(m)),
            SlotOutcome::Unsupported(m) => RunOutcome::Invalid(ModuleError::Unsupported(m)),
            SlotOutcome::Host(why) => return Err(SandboxError::Host(format!("slot process: {why}"))),
            SlotOutcome::Stale => return Err(SandboxError::Stale),
        };
        Ok(RunReport {
            outcome,
            stdout: self.stdout,
            stderr: self.stderr,
            fuel_used: self.fuel_used,
            elapsed: Duration::from_nanos(self.elapsed_ns),
        })
    }
}

/// `CLOCK_MONOTONIC` now, in ns: the same clock in every process of this machine (Rust's
/// `Instant` is that clock on Linux, but cannot be sent to another process).
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec on this stack.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0).saturating_mul(1_000_000_000).saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// Writes one frame (not flushed).
pub(crate) fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    let bytes = postcard::to_stdvec(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a frame of {} bytes", bytes.len())));
    }
    let len = u32::try_from(bytes.len()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&bytes)
}

/// The length a frame's 4-byte head announces, refused past [`MAX_FRAME_BYTES`].
pub(crate) fn frame_len(head: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_le_bytes(head) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a frame of {len} bytes announced")));
    }
    Ok(len)
}

/// A frame's body decoded.
pub(crate) fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> io::Result<T> {
    postcard::from_bytes(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Reads one frame; `None` at a clean end of stream (between frames).
pub(crate) fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> io::Result<Option<T>> {
    let mut head = [0u8; 4];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut bytes = vec![0u8; frame_len(head)?];
    r.read_exact(&mut bytes)?;
    decode(&bytes).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_goes_through_a_frame_unchanged() {
        let reply = SlotReply {
            outcome: SlotOutcome::Done { outcome: Outcome::Exited(3), message: "m".into() },
            stdout: b"out".to_vec(),
            stderr: b"err".to_vec(),
            fuel_used: 7,
            elapsed_ns: 9,
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &reply).expect("written");
        write_frame(&mut buf, &SlotReply::host("gone".into())).expect("written");
        let mut r = buf.as_slice();
        let back: SlotReply = read_frame(&mut r).expect("read").expect("a frame");
        let report = back.into_report().expect("a report");
        assert_eq!(report.outcome, RunOutcome::Done { outcome: Outcome::Exited(3), message: "m".into() });
        assert_eq!((report.stdout.as_slice(), report.stderr.as_slice(), report.fuel_used), (&b"out"[..], &b"err"[..], 7));
        let host: SlotReply = read_frame(&mut r).expect("read").expect("a frame");
        assert!(matches!(host.into_report(), Err(SandboxError::Host(m)) if m.contains("gone")));
        assert!(read_frame::<SlotReply>(&mut r).expect("clean end").is_none());
    }

    #[test]
    fn an_oversized_frame_is_refused_before_it_is_read() {
        let mut bytes = u32::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 16]);
        let err = read_frame::<SlotReply>(&mut bytes.as_slice()).expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
