//! What makes a run reproducible bit for bit: a fixed wall clock, a virtual monotonic clock that
//! advances a fixed step per reading (and by exactly the requested time when the guest sleeps),
//! and random streams derived from the task's seed.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand_core::TryRng;
use spare_protocol::JobId;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// The wall clock every task sees: 2000-01-01T00:00:00Z, forever.
pub const WALL_CLOCK_SECS: u64 = 946_684_800;
/// Resolution reported for the wall clock.
const WALL_RESOLUTION: Duration = Duration::from_millis(1);
/// How far the monotonic clock advances per reading, in nanoseconds (also its resolution).
pub const MONOTONIC_STEP_NS: u64 = 1_000;

/// The seed of a task's random streams: BLAKE3 `derive_key("spare.v1 task random")` over the
/// job id followed by the task index in little endian. Every replica of a task gets the same.
pub fn task_seed(job: &JobId, index: u32) -> [u8; 32] {
    let mut material = [0u8; 36];
    material[..32].copy_from_slice(job.as_bytes());
    material[32..].copy_from_slice(&index.to_le_bytes());
    blake3::derive_key("spare.v1 task random", &material)
}

/// The fixed wall clock.
pub(crate) struct FixedWallClock;

impl HostWallClock for FixedWallClock {
    fn resolution(&self) -> Duration {
        WALL_RESOLUTION
    }
    fn now(&self) -> Duration {
        Duration::from_secs(WALL_CLOCK_SECS)
    }
}

/// Virtual time of one run, in nanoseconds since the run started. Shared by the monotonic
/// clock (which reads it) and the virtual `poll_oneoff` (which advances it when the guest sleeps).
#[derive(Default, Debug)]
pub(crate) struct VirtualTime {
    ns: AtomicU64,
}

impl VirtualTime {
    /// Current time, without advancing.
    pub(crate) fn peek(&self) -> u64 {
        self.ns.load(Ordering::Relaxed)
    }
    /// Moves time forward by `ns` (a sleep), saturating.
    pub(crate) fn advance(&self, ns: u64) {
        let _ = self.ns.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| Some(t.saturating_add(ns)));
    }
    /// One reading: returns the current time, then advances by [`MONOTONIC_STEP_NS`]. Readings are
    /// 0, 1 µs, 2 µs… so elapsed-time arithmetic in guests is never zero nor negative.
    fn read(&self) -> u64 {
        let t = self.peek();
        self.advance(MONOTONIC_STEP_NS);
        t
    }
}

/// The monotonic clock handed to WASI.
pub(crate) struct VirtualMonotonicClock(pub(crate) Arc<VirtualTime>);

impl HostMonotonicClock for VirtualMonotonicClock {
    fn resolution(&self) -> u64 {
        MONOTONIC_STEP_NS
    }
    fn now(&self) -> u64 {
        self.0.read()
    }
}

/// Which random stream of a run.
#[derive(Clone, Copy)]
pub(crate) enum Stream {
    /// `random_get` (WASI's "secure" random).
    Secure,
    /// WASI's insecure random (not reachable from preview 1, kept deterministic anyway).
    Insecure,
}

/// A random stream: the BLAKE3 extendable output keyed by the task seed, with a distinct
/// derived key per stream. Never repeats (unlike `wasmtime_wasi::Deterministic`), and every
/// peer produces the same bytes for the same seed.
pub(crate) struct SeededRng {
    reader: blake3::OutputReader,
    buf: [u8; 256],
    pos: usize,
}

impl SeededRng {
    pub(crate) fn new(seed: &[u8; 32], stream: Stream) -> SeededRng {
        let context = match stream {
            Stream::Secure => "spare.v1 sandbox random_get",
            Stream::Insecure => "spare.v1 sandbox insecure random",
        };
        let key = blake3::derive_key(context, seed);
        let reader = blake3::Hasher::new_keyed(&key).finalize_xof();
        SeededRng { reader, buf: [0; 256], pos: 256 }
    }

    fn take(&mut self, out: &mut [u8]) {
        let mut done = 0;
        while done < out.len() {
            if self.pos == self.buf.len() {
                self.reader.fill(&mut self.buf);
                self.pos = 0;
            }
            let n = (out.len() - done).min(self.buf.len() - self.pos);
            out[done..done + n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            done += n;
        }
    }
}

impl TryRng for SeededRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.take(&mut b);
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.take(&mut b);
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.take(dst);
        Ok(())
    }
}

/// The value of WASI's `insecure_random_seed` for a run.
pub(crate) fn insecure_seed(seed: &[u8; 32]) -> u128 {
    let key = blake3::derive_key("spare.v1 sandbox insecure seed", seed);
    let mut b = [0u8; 16];
    b.copy_from_slice(&key[..16]);
    u128::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::Rng;

    #[test]
    fn streams_are_seeded_and_distinct() {
        let mut a = SeededRng::new(&[1; 32], Stream::Secure);
        let mut b = SeededRng::new(&[1; 32], Stream::Secure);
        let mut c = SeededRng::new(&[2; 32], Stream::Secure);
        let mut d = SeededRng::new(&[1; 32], Stream::Insecure);
        let (x, y, z, w) = (a.next_u64(), b.next_u64(), c.next_u64(), d.next_u64());
        assert_eq!(x, y);
        assert_ne!(x, z);
        assert_ne!(x, w);
        // Mixed reads stay on one stream.
        let mut buf = [0u8; 300];
        a.fill_bytes(&mut buf);
        let mut buf2 = [0u8; 300];
        b.fill_bytes(&mut buf2[..7]);
        b.fill_bytes(&mut buf2[7..]);
        assert_eq!(buf, buf2);
    }

    #[test]
    fn monotonic_clock_steps() {
        let t = Arc::new(VirtualTime::default());
        let c = VirtualMonotonicClock(t.clone());
        assert_eq!(c.now(), 0);
        assert_eq!(c.now(), MONOTONIC_STEP_NS);
        t.advance(5);
        assert_eq!(c.now(), 2 * MONOTONIC_STEP_NS + 5);
    }

    #[test]
    fn task_seeds_differ_by_index() {
        let job = JobId([7; 32]);
        assert_ne!(task_seed(&job, 0), task_seed(&job, 1));
        assert_eq!(task_seed(&job, 3), task_seed(&job, 3));
    }
}
