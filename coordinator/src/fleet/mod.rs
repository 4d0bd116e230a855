//! **Part `fleet`: the fetchers a coordinator leases work to.** In-process or remote over
//! gRPC ([`fetchers`]), each call carrying the coordinator's identity ([`bearer`],
//! [`idtoken`]); which of them answer ([`health`]); the run's request budget, its grid
//! slots and current rate ([`budget`]); what a lease says ([`lease`]); following one lease's
//! event stream into the checkpoint ([`stream`]) and what a fetcher's error answer means
//! ([`refusal`]); and this process's live figures ([`rates`]) and Prometheus instruments
//! ([`metrics`]).
//!
//! Uses: `checkpoint`.

pub mod bearer;
pub mod budget;
pub mod fetchers;
pub mod health;
pub mod idtoken;
pub mod lease;
pub mod metrics;
pub mod rates;
pub mod refusal;
pub mod stream;
