//! Spare's wire format: the `spare.v1` gRPC services (`JobService`, `BlobService`,
//! `PeerService`) and their messages, generated at build time from `proto/spare/v1/*.proto`.

#![allow(clippy::large_enum_variant)]

/// Generated messages, clients (`*_client`) and servers (`*_server`) of package `spare.v1`.
pub mod v1 {
    tonic::include_proto!("spare.v1");
}

pub use v1::*;

/// Encoded `FileDescriptorSet` of every spare.v1 file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/spare_descriptor.bin"));
