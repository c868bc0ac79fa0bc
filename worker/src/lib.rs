//! A Spare peer: the driver of the sans-IO protocol (`spare-protocol`) with everything that does
//! I/O: the WebAssembly sandbox ([`sandbox`]), the durable store ([`store`]), the peer's identity
//! ([`identity`]), the loops that drive the protocol ([`node`]), the gRPC servers ([`service`]),
//! the wire conversions both use ([`wire`]) and the `spare` command line ([`cli`]).

pub mod cli;
pub mod config;
pub mod identity;
pub mod node;
pub mod sandbox;
pub mod service;
mod start;
pub mod store;
pub mod wire;

pub use node::{Node, NodeConfig, NodeHandle};
