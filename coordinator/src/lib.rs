//! The alldocs coordinator as a library: the partition plan, the SQLite checkpoint, the
//! fetchers it leases work to, the `_changes` follower, the gRPC API, one job's run, and the
//! command line. The `coordinator` binary is a thin shell over [`cli`]; tests drive the same
//! pieces directly.
//!
//! The parts, from the bottom up; each may use only the parts below it (its `mod.rs` says
//! which), and `tests/tests/layout.rs` fails on an import between parts that goes up:
//!
//! | part | owns |
//! |---|---|
//! | [`plan`] | pivots → half-open partitions, the `--pivots` and `--names` lists |
//! | [`checkpoint`] | the SQLite checkpoint: schema, runs, partitions, packages, leases, counts, the feed's position, group commit, the lock |
//! | [`fleet`] | the fetchers work is leased to: connections, identities, health, the request budget, one lease's event stream |
//! | [`follow`] | `serve --follow`: the `_changes` feed, applied page by page |
//! | [`api`] | the `alldocs.v1.Coordinator` gRPC service and its admin token |
//! | [`web`] | plain HTTP on the API's port: `/metrics`, the live status page and its JSON, the admin token's login |
//! | [`run`] | one job (`serve` or `run`): its options, checks, the scheduler, what a person sees |
//! | [`cli`] | the command line: subcommands, exit codes, `status`, `index`, `show`, `export` |

pub mod plan;

pub mod checkpoint;

pub mod fleet;

pub mod follow;

pub mod api;

pub mod web;

pub mod run;

pub mod cli;
