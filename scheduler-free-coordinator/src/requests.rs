//! What every request between peers and from clients must respect, whoever drives the protocol:
//! the clock window and nonce of a signed request, how far a request may be forwarded, and the
//! sizes the wire carries. The peer's services check them; the simulator counts with them.

use crate::Millis;

/// A signed request whose `timestamp_ms` is further than this from the receiver's clock is
/// refused (a replay is refused within it by its nonce).
pub const LEASE_CLOCK_SKEW_MS: Millis = 5 * 60 * 1000;

/// Length of the random `request_nonce` of a signed mesh request.
pub const REQUEST_NONCE_BYTES: usize = 16;

/// Most peers a Cancel passes through on its way to the job's active coordinator (a peer
/// without the job, then a backup coordinator).
pub const MAX_FORWARDS: usize = 2;

/// Largest gRPC message accepted or sent (a submission with many inline inputs).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Inputs up to this size travel inside a lease answer; larger ones are fetched as blobs.
pub const INLINE_INPUT_BYTES: usize = 64 << 10;

/// How often an active coordinator looks for lapsed leases (`Coordinator::tick`).
pub const TICK_MS: Millis = 200;
