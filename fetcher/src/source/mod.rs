//! **Part `source`: reading the origins.** One pooled HTTP client with retries, redirects
//! followed by hand and per-hop tokens ([`http`]), each lease paced on the run's request
//! grid ([`pace`]); the registry and tokens as npm reads them ([`npmrc`]); what a lease may
//! name ([`policy`]); paging `_all_docs` exactly ([`all_docs`], [`pager`], [`index`]); fetching and
//! storing packuments ([`packument`]), many to a pack with `--layout packs` ([`packs`]); and the channel a lease's events go out on
//! ([`events`]); what the process asked the origins and its leases did, as Prometheus
//! metrics ([`metrics`]).
//!
//! Uses: `store`.

pub mod all_docs;
pub mod events;
pub mod http;
pub mod index;
pub mod metrics;
pub mod npmrc;
pub mod pace;
pub mod packs;
pub mod packument;
pub mod pager;
pub mod policy;
