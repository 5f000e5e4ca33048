//! The Sluice worker: partition tasks with keyed state, checkpoints on object storage, Kafka in
//! and out. `main.rs` is the CLI; everything else is here so tests and benchmarks can use it.
//!
//! Rooms, from the outside in:
//! - [`cli`], [`worker`], [`http`], [`metrics`]: the process: which tasks it runs, its
//!   endpoints, its figures.
//! - [`task`]: one partition task's loop, poll → steps → sink → maybe checkpoint; [`kafka`] and
//!   [`io`] are its input and output, [`checkpoint`] its checkpoints on object storage.
//! - [`pipeline`]: the job's steps compiled into a chain and driven record by record, with the
//!   chain's clock ([`event_time`]).
//! - [`steps`]: one module per step kind behind one operator trait (`filter`, `map`,
//!   `materialize`, `dedupe`, `aggregate` with its windows), each with its contract and tests;
//!   a step kind is added there. [`decode`] reads Debezium and JSON values.
//! - [`state`]: keyed state behind a small trait, RocksDB and in memory; [`keys`] reads its keys
//!   from outside the chain.
//!
//! What the operator shares with it (the job model, CEL, each step kind's spec side, the
//! checkpoint formats and store) is in `sluice-core`, re-exported here under its old paths
//! (`job`, `expr`, `assignment`, `checkpoint::{descriptor, layout, store}`).

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
pub mod steps;
pub mod task;
pub mod worker;

pub use sluice_core::{assignment, expr, job};
