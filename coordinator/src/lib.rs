//! The alldocs coordinator as a library: the partition plan, the SQLite checkpoint, the
//! scheduler that leases work to fetchers, and the gRPC API. The `coordinator` binary is
//! a thin shell over [`cli`]; tests drive the same pieces directly.

pub mod admin;
pub mod api;
pub mod budget;
pub mod changes;
pub mod checkpoint;
pub mod cli;
pub mod display;
pub mod export;
pub mod fetchers;
pub mod follow;
pub mod health;
pub mod idtoken;
pub mod job;
pub mod lease;
pub mod list;
pub mod lock;
pub mod names;
pub mod plan;
pub mod preflight;
pub mod rates;
pub mod read;
pub mod refusal;
pub mod scheduler;
pub mod schema;
pub mod status;
pub mod stream;
