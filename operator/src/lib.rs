//! The Sluice operator: reconciles StreamJobs into worker StatefulSets.
//!
//! A reconcile is [`observe`] (I/O only) → [`validate`] (pure; a [`validate::ValidJob`] or
//! every reason the spec cannot run) → [`build`] (pure; the desired children) → apply with
//! server-side apply in a fixed order, roll pods of an old revision ([`reconcile`]) →
//! [`status`] (pure; conditions). [`change`] classifies what a spec change requires.

pub mod build;
pub mod change;
pub mod cli;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod plan;
pub mod rbac;
pub mod reconcile;
pub mod savepoint;
pub mod status;
pub mod tasks;
pub mod validate;
