//! What the operator and the worker share, without the engine (no RocksDB, no Kafka client):
//! the job model ([`job`]), CEL compilation and checking ([`expr`]), the task assignment
//! ([`assignment`]), the Kafka clients' auth settings ([`kafka_auth`]), each step kind's spec side ([`steps`]: what a spec must satisfy for this
//! build to run it), the checkpoint formats and their object-store access ([`checkpoint`]), and
//! the processes' logging ([`logging`]).
//!
//! What does not belong here: anything that runs records (decoding, the steps' runtime, state
//! backends, Kafka I/O) — that is `sluice-worker` — and anything that talks to the Kubernetes
//! API — that is `sluice-operator`. The operator depends on this crate and not on the worker,
//! so its build compiles no RocksDB.

pub mod assignment;
pub mod checkpoint;
pub mod expr;
pub mod job;
pub mod kafka_auth;
pub mod logging;
pub mod steps;
pub mod upgrade;
