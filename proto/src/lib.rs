//! The `alldocs.v1` protocol: messages, the Fetcher and Coordinator services, and the
//! descriptor set that server reflection serves so `grpcurl` needs no `.proto` at hand.

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("alldocs.v1");
}

/// Encoded `FileDescriptorSet` of `alldocs.v1`, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("alldocs_descriptor");

pub use v1::*;
