//! The Sluice worker: partition tasks with keyed state, checkpoints on object storage, Kafka in
//! and out. `main.rs` is the CLI; everything else is here so tests and benchmarks can use it.

pub mod assignment;
pub mod checkpoint;
pub mod cli;
pub mod decode;
pub mod event_time;
pub mod expr;
pub mod failpoint;
pub mod http;
pub mod io;
pub mod job;
pub mod kafka;
pub mod keys;
pub mod metrics;
pub mod pipeline;
pub mod state;
pub mod task;
pub mod window;
pub mod worker;
