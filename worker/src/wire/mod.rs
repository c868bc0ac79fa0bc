//! Between the wire and the peer: conversions of `spare.v1` messages to the protocol's types,
//! the bytes signatures cover, and the wire's bounds. Both the driver (`node`) and the gRPC
//! services (`service`) use it; neither reaches into the other for these.

pub mod convert;
pub mod signing;
pub mod stream;

pub use spare_protocol::requests::MAX_MESSAGE_BYTES;
