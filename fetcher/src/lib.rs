//! The alldocs fetcher: turns a lease into stored objects and a stream of events. The
//! coordinator embeds this library to run fetchers in-process through the same service.

pub mod all_docs;
pub mod auth;
pub mod durable;
pub mod events;
pub mod grpc;
pub mod http;
pub mod index;
pub mod keys;
pub mod names;
pub mod npmrc;
pub mod pace;
pub mod packument;
pub mod policy;
pub mod serve;
pub mod service;
pub mod store;
pub mod telemetry;

pub use service::FetchService;
