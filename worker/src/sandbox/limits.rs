//! Per-run resource limits that are part of the result: the memory/table limiter, the capped
//! stdout (past its cap the run ends as `OutputTooLarge`), and stderr, which keeps its tail. Each
//! records the first limit the run hit, so a refused growth or an overlong write is classified
//! the same way whatever the guest does afterwards (trap, abort or exit).

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use super::engine::{MAX_TABLES_PER_MODULE, TABLE_ELEMENTS};

/// A limit a run ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LimitKind {
    /// Linear memory above `limits.memory_bytes`.
    Memory,
    /// A table above [`TABLE_ELEMENTS`].
    Table,
    /// stdout above `limits.output_bytes`.
    Output,
}

/// The first limit a run hit (later ones are ignored).
pub(crate) type LimitHit = Arc<OnceLock<LimitKind>>;

/// The error a write past the stdout cap traps with.
#[derive(Debug, thiserror::Error)]
#[error("stdout passed its cap of {cap} bytes")]
pub(crate) struct OutputLimitExceeded {
    pub cap: usize,
}

/// Refuses memory above the task's limit and tables above [`TABLE_ELEMENTS`], and records it.
pub(crate) struct Limiter {
    memory_bytes: u64,
    hit: LimitHit,
}

impl Limiter {
    pub(crate) fn new(memory_bytes: u64, hit: LimitHit) -> Limiter {
        Limiter { memory_bytes, hit }
    }
}

/// Whether a growth to `desired` may proceed, and whether refusing it counts as hitting our
/// limit. `maximum` is what wasmtime passes: the module's declared maximum, already clamped
/// by the pool for tables. A growth refused only because of the module's own (smaller)
/// maximum is not our limit: the guest sees the same -1 either way.
fn decide(desired: usize, maximum: Option<usize>, limit: u64) -> (bool, bool) {
    let within_max = maximum.is_none_or(|m| desired <= m);
    if desired as u64 <= limit {
        return (within_max, false);
    }
    let module_refuses_first = maximum.is_some_and(|m| (m as u64) < limit && desired > m);
    (false, !module_refuses_first)
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let (allow, hit) = decide(desired, maximum, self.memory_bytes);
        if hit {
            let _ = self.hit.set(LimitKind::Memory);
        }
        Ok(allow)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let (allow, hit) = decide(desired, maximum, TABLE_ELEMENTS as u64);
        if hit {
            let _ = self.hit.set(LimitKind::Table);
        }
        Ok(allow)
    }

    fn instances(&self) -> usize {
        // One module instance per run; a little room in case wasmtime counts anything else.
        4
    }

    fn memories(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        MAX_TABLES_PER_MODULE as usize
    }
}

/// What happens to bytes past the cap.
#[derive(Clone)]
enum Overflow {
    /// Record [`LimitKind::Output`] and trap (stdout).
    Fail(LimitHit),
    /// Keep the last `cap` bytes, dropping older ones silently (stderr: a failing guest says
    /// why at the end).
    KeepTail,
}

struct PipeState {
    buf: Vec<u8>,
    cap: usize,
    overflow: Overflow,
}

/// An in-memory output stream with a cap. Clones share the buffer.
#[derive(Clone)]
pub(crate) struct CappedPipe(Arc<Mutex<PipeState>>);

/// Most bytes one `check_write` permits (the WASI p1 adapter writes at most 4 KiB at a time).
const PERMIT: usize = 64 << 10;

impl CappedPipe {
    /// stdout: a write past `cap` records [`LimitKind::Output`] in `hit` and traps the guest.
    pub(crate) fn failing(cap: usize, hit: LimitHit) -> CappedPipe {
        CappedPipe::new(cap, Overflow::Fail(hit))
    }

    /// stderr: only the last `cap` bytes are kept.
    pub(crate) fn keeping_tail(cap: usize) -> CappedPipe {
        CappedPipe::new(cap, Overflow::KeepTail)
    }

    fn new(cap: usize, overflow: Overflow) -> CappedPipe {
        CappedPipe(Arc::new(Mutex::new(PipeState { buf: Vec::new(), cap, overflow })))
    }

    fn lock(&self) -> MutexGuard<'_, PipeState> {
        // Nothing panics while holding the lock; if it ever did, the bytes are still fine.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The bytes kept so far.
    pub(crate) fn take(&self) -> Vec<u8> {
        let mut s = self.lock();
        let excess = s.buf.len().saturating_sub(s.cap);
        s.buf.drain(..excess);
        std::mem::take(&mut s.buf)
    }

    /// Appends what fits; `Err` when bytes had to be refused and the stream fails on overflow.
    fn append(&self, bytes: &[u8]) -> Result<(), OutputLimitExceeded> {
        let mut s = self.lock();
        if let Overflow::KeepTail = s.overflow {
            // Up to twice the cap between trims, so dropping old bytes costs O(1) per byte.
            s.buf.extend_from_slice(bytes);
            if s.buf.len() > s.cap.saturating_mul(2) {
                let excess = s.buf.len() - s.cap;
                s.buf.drain(..excess);
            }
            return Ok(());
        }
        let room = s.cap.saturating_sub(s.buf.len());
        if bytes.len() <= room {
            s.buf.extend_from_slice(bytes);
            return Ok(());
        }
        s.buf.extend_from_slice(&bytes[..room]);
        match &s.overflow {
            Overflow::KeepTail => Ok(()),
            Overflow::Fail(hit) => {
                let _ = hit.set(LimitKind::Output);
                Err(OutputLimitExceeded { cap: s.cap })
            }
        }
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes).map_err(|e| StreamError::Trap(wasmtime::Error::new(e)))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always writable: the cap is enforced by `write`, so that the guest's first byte past
        // the cap is what fails (a closed stream would let a guest ignore it and exit 0).
        Ok(PERMIT)
    }
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(match self.append(buf) {
            Ok(()) => Ok(buf.len()),
            Err(e) => Err(std::io::Error::other(e)),
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdout_fails_past_cap_and_records_it() {
        let hit = LimitHit::default();
        let mut p = CappedPipe::failing(5, hit.clone());
        assert!(p.write(Bytes::from_static(b"abc")).is_ok());
        assert!(p.write(Bytes::from_static(b"de")).is_ok());
        assert!(hit.get().is_none());
        assert!(p.write(Bytes::from_static(b"f")).is_err());
        assert_eq!(hit.get(), Some(&LimitKind::Output));
        assert_eq!(p.take(), b"abcde");
    }

    #[test]
    fn limiter_blames_only_its_own_limit() {
        assert_eq!(decide(10, None, 100), (true, false));
        assert_eq!(decide(10, Some(5), 100), (false, false));
        assert_eq!(decide(200, None, 100), (false, true));
        // The module's maximum (50) refuses first.
        assert_eq!(decide(200, Some(50), 100), (false, false));
        // A maximum at or above our limit (e.g. clamped by the pool): ours.
        assert_eq!(decide(200, Some(100), 100), (false, true));
    }

    #[test]
    fn stderr_keeps_its_tail() {
        let mut p = CappedPipe::keeping_tail(3);
        assert!(p.write(Bytes::from_static(b"abcdef")).is_ok());
        assert!(p.write(Bytes::from_static(b"g")).is_ok());
        assert_eq!(p.take(), b"efg");
        let mut p = CappedPipe::keeping_tail(3);
        assert!(p.write(Bytes::from_static(b"ab")).is_ok());
        assert_eq!(p.take(), b"ab");
    }
}
