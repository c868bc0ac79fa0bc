//! A Spare peer: the WebAssembly sandbox ([`sandbox`]), the durable store ([`store`]), the
//! peer's identity ([`identity`]), the event loop that drives the sans-IO coordinator
//! ([`node`]), the gRPC servers ([`service`]) and the `spare` command line ([`cli`]).

pub mod cli;
pub mod identity;
pub mod node;
pub mod sandbox;
pub mod service;
pub mod store;

pub use node::{Node, NodeConfig, NodeHandle};
