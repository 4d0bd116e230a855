//! The `alldocs.v1` protocol: messages, the Fetcher and Coordinator services, and the
//! descriptor set that server reflection serves so `grpcurl` needs no `.proto` at hand.

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("alldocs.v1");
}

/// Encoded `FileDescriptorSet` of `alldocs.v1`, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("alldocs_descriptor");

pub use v1::*;

/// Serializes a `RunState` field by its enum name (`RUN_STATE_DONE`), as grpcurl shows it.
pub fn serialize_run_state<S: serde::Serializer>(state: &i32, s: S) -> Result<S::Ok, S::Error> {
    let state = v1::RunState::try_from(*state).unwrap_or(v1::RunState::Unspecified);
    s.serialize_str(state.as_str_name())
}

/// Milliseconds since the Unix epoch: the clock of `Lease.deadline_unix_ms`.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}
