//! **Part `run`: one job, `serve` or `run`.** Its options ([`args`]); the checks made before
//! anything is written ([`preflight`]); opening the checkpoint, serving the API (and the HTTP surface beside it) and running
//! the lease loop until the work is done or the job is told to stop ([`job`],
//! [`scheduler`]) with the API and the HTTP surface on its port ([`surface`]); and what a person sees meanwhile and at the end ([`display`]).
//!
//! Uses: `web`, `api`, `follow`, `fleet`, `checkpoint`, `plan`.

pub mod args;
pub mod display;
pub mod job;
pub mod preflight;
pub mod scheduler;
pub mod surface;
