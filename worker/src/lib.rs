//! The Sluice worker: partition tasks with keyed state, checkpoints on object storage, Kafka in
//! and out. `main.rs` is the CLI; everything else is here so tests and benchmarks can use it.
//! What the operator shares with it (the job model, CEL, the steps' spec side, the checkpoint
//! formats and store) is in `sluice-core`, re-exported here under its old paths (`job`, `expr`,
//! `assignment`, `checkpoint::{descriptor, layout, store}`).

pub mod checkpoint;
pub mod cli;
pub mod decode;
pub mod event_time;
pub mod failpoint;
pub mod http;
pub mod io;
pub mod kafka;
pub mod keys;
pub mod metrics;
pub mod pipeline;
pub mod state;
pub mod task;
pub mod window;
pub mod worker;

pub use sluice_core::{assignment, expr, job};
