//! Crash points for tests: `SLUICE_FAILPOINT=<name>:<n>` aborts the process the `n`-th time
//! (default 1st) execution reaches `<name>`, as a SIGKILL at that moment would. Reads the
//! environment once; costs one atomic load where it is unset.
//!
//! The crash points, in the order a checkpoint commit reaches them:
//! - `checkpoint-after-file`: after each state file is uploaded (so `:n` dies mid-upload);
//! - `checkpoint-after-files`: after every file, before the descriptor;
//! - `checkpoint-after-descriptor`: after the descriptor, before HEAD moves (with exactly-once:
//!   before the transaction commits);
//! - `transaction-after-offsets`: exactly-once, after the offsets went into the transaction,
//!   before it commits;
//! - `transaction-after-commit`: exactly-once, after the transaction committed, before HEAD moves;
//! - `transaction-after-timer-commit`: the same, only for a transaction that read no input
//!   since the last one (results fired by time alone).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Armed {
    name: String,
    at: u64,
    seen: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("SLUICE_FAILPOINT").ok()?;
            let (name, at) = match spec.split_once(':') {
                Some((name, n)) => (name.to_string(), n.parse().ok()?),
                None => (spec, 1),
            };
            Some(Armed {
                name,
                at,
                seen: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Aborts the process here, in task `task`, if the failpoint `name` is armed and due.
pub fn hit(name: &str, task: u32) {
    if let Some(armed) = armed().filter(|a| a.name == name)
        && armed.seen.fetch_add(1, Ordering::Relaxed) + 1 == armed.at
    {
        eprintln!("failpoint {name} reached by task {task}: aborting");
        std::process::abort();
    }
}
