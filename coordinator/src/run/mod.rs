//! **Part `run`: one job, `serve` or `run`.** Its options ([`args`]); the checks made before
//! anything is written ([`preflight`]); opening the checkpoint, serving the API and running
//! the lease loop until the work is done or the job is told to stop ([`job`],
//! [`scheduler`]); and what a person sees meanwhile and at the end ([`display`]).
//!
//! Uses: `api`, `follow`, `fleet`, `checkpoint`, `plan`.

pub mod args;
pub mod display;
pub mod job;
pub mod preflight;
pub mod scheduler;
