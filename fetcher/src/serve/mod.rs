//! **Part `serve`: `fetcher serve`, the fetcher as a gRPC service.** Its command line and
//! what is decided before it listens ([`options`]); the `alldocs.v1.Fetcher` service that
//! runs one lease and streams its events ([`service`]), doing its work ([`work`]); who may call it ([`auth`]); health
//! and server reflection beside it ([`grpc`]); plain HTTP on the same port, `/metrics` ([`web`]); logs and signals ([`telemetry`]).
//!
//! Uses: `source`, `store`.

pub mod auth;
pub mod grpc;
pub mod options;
pub mod service;
pub mod telemetry;
pub mod web;
mod work;
