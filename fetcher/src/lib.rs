//! The alldocs fetcher: turns a lease into stored objects and a stream of events. The
//! coordinator embeds this library to run fetchers in-process through the same service.
//!
//! The parts, from the bottom up; each may use only the parts below it (its `mod.rs` says
//! which), and `tests/tests/layout.rs` fails on an import between parts that goes up:
//!
//! | part | owns |
//! |---|---|
//! | [`store`] | object stores by URL, durable local writes, the name → object-key mapping, partition names |
//! | [`source`] | reading the origins: HTTP with retries, pacing and tokens, `.npmrc`, what a lease may name, `_all_docs` paging, packuments, a lease's event channel |
//! | [`serve`] | `fetcher serve`: its options, the `Fetcher` gRPC service, caller authentication, health and reflection, logs |

pub mod store;

pub mod source;

pub mod serve;

pub use serve::service::FetchService;
