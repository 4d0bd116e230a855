//! Test support for alldocs: the npm registry simulator, the pouchdb-server peer, the
//! real fixture packuments, and helpers to run fetchers over real sockets.

pub mod browser;
pub mod coord;
pub mod fixtures;
pub mod gcs;
pub mod hostile_origin;
pub mod hostile_registry;
pub mod loopback;
pub mod pouch;
pub mod procs;
pub mod prom;
pub mod proxy;
pub mod py;
pub mod recording;
pub mod s3;
pub mod sim;
pub mod support;
