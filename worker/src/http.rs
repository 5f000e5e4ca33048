//! The worker's HTTP endpoints: `/metrics` (Prometheus), `/healthz` (the process serves),
//! `/readyz` (every task restored and running; otherwise a line per task that is not, saying
//! why), and the [`TaskStatus`] each task reports there and in its report to the operator.
//! Network I/O.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::checkpoint::descriptor::{Decision, Epoch, ReportedState, TaskReport};
use crate::metrics::Metrics;

/// Serves the endpoints until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    tasks: Arc<Vec<TaskStatus>>,
) {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let tasks = tasks.clone();
                async move {
                    let not_running: Vec<String> =
                        tasks.iter().filter_map(TaskStatus::not_running).collect();
                    if not_running.is_empty() {
                        (StatusCode::OK, "ready".to_string()).into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, not_running.join("\n")).into_response()
                    }
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "HTTP server stopped");
    }
}

/// What one task of a worker is doing, as `/readyz` tells it and the task's
/// [`TaskReport`](crate::checkpoint::descriptor::TaskReport) tells the operator.
#[derive(Debug)]
pub struct TaskStatus {
    task: u32,
    state: AtomicU8,
    /// Why the task is not running, when it is not.
    reason: Mutex<String>,
    /// The owner epoch the task holds (0: none yet).
    epoch: AtomicU64,
    /// Bumped on every change, so a reporter writes only what changed.
    version: AtomicU64,
    /// The latest decisions, newest last.
    decisions: Mutex<VecDeque<Decision>>,
    /// Decisions made so far, for their ids.
    decided: AtomicU64,
    /// Where its state came from at its last start.
    restored: Mutex<Option<String>>,
    /// Since when (Unix ms) it has been failing without running a full minute; 0 before
    /// its first failure.
    failing_since: AtomicI64,
    /// When it last started running (Unix ms).
    running_since: AtomicI64,
}

/// The states of a [`TaskStatus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TaskState {
    /// Taking the task over and restoring its state.
    Starting = 0,
    /// Processing records.
    Running = 1,
    /// Failed; restarting from its last checkpoint after a backoff.
    Restarting = 2,
    /// Another owner took it: this worker no longer runs it, and will not take it back.
    Fenced = 3,
    /// Stopped for good on an error a restart cannot mend; the reason says what to do.
    Failed = 4,
    /// Not taken: its owner runs a newer rollout of the job, and this worker waits to be
    /// replaced.
    Stale = 5,
}

impl TaskStatus {
    /// A task that is starting.
    pub fn new(task: u32) -> Self {
        Self {
            task,
            state: AtomicU8::new(TaskState::Starting as u8),
            reason: Mutex::new(String::new()),
            epoch: AtomicU64::new(0),
            version: AtomicU64::new(1),
            decisions: Mutex::new(VecDeque::new()),
            decided: AtomicU64::new(0),
            restored: Mutex::new(None),
            failing_since: AtomicI64::new(0),
            running_since: AtomicI64::new(0),
        }
    }

    /// Its state.
    pub fn state(&self) -> TaskState {
        match self.state.load(Ordering::Relaxed) {
            0 => TaskState::Starting,
            1 => TaskState::Running,
            2 => TaskState::Restarting,
            3 => TaskState::Fenced,
            4 => TaskState::Failed,
            _ => TaskState::Stale,
        }
    }

    /// Records a new state and why.
    pub fn set(&self, state: TaskState, reason: impl Into<String>) {
        if let Ok(mut r) = self.reason.lock() {
            *r = reason.into();
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as i64);
        match state {
            TaskState::Running => self.running_since.store(now, Ordering::Relaxed),
            TaskState::Restarting => {
                // A failure starts a new failing spell unless the task failed before and has
                // not run a full minute since: one that starts, runs briefly and fails again
                // keeps failing.
                let since = self.failing_since.load(Ordering::Relaxed);
                let ran = self.running_since.load(Ordering::Relaxed);
                if since == 0 || (ran > since && now - ran >= 60_000) {
                    self.failing_since.store(now, Ordering::Relaxed);
                }
            }
            _ => {}
        }
        self.state.store(state as u8, Ordering::Relaxed);
        self.version.fetch_add(1, Ordering::Release);
    }

    /// The task processes records.
    pub fn running(&self) {
        self.set(TaskState::Running, "");
    }

    /// The task holds owner epoch `epoch`.
    pub fn holds(&self, epoch: Epoch) {
        self.epoch.store(epoch.0, Ordering::Relaxed);
        self.version.fetch_add(1, Ordering::Release);
    }

    /// The task gave something up by a rule of the job (`reason` in CamelCase): reported to
    /// the operator, which publishes it as an Event.
    pub fn decided(&self, owner: &str, reason: &str, message: String, at_ms: i64) {
        let n = self.decided.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut decisions) = self.decisions.lock() {
            decisions.push_back(Decision {
                // Pod names repeat across restarts; the epoch does not.
                id: format!("{owner}/{}/{n}", self.epoch.load(Ordering::Relaxed)),
                reason: reason.to_string(),
                message,
                at_ms,
            });
            while decisions.len() > TaskReport::DECISIONS {
                decisions.pop_front();
            }
        }
        self.version.fetch_add(1, Ordering::Release);
    }

    /// The task restored its state: from where (`volume`, `store`, `savepoint <id>`, `empty`).
    pub fn restored(&self, from: String) {
        if let Ok(mut r) = self.restored.lock() {
            *r = Some(from);
        }
        self.version.fetch_add(1, Ordering::Release);
    }

    /// The version of what the task would report; it changes with every state and decision.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The report for the operator, written by `owner` at `at_ms`; none for a fenced task
    /// or one left to a newer rollout (the task is another owner's, and so is its report).
    pub fn report(&self, owner: &str, at_ms: i64) -> Option<TaskReport> {
        let state = match self.state() {
            TaskState::Fenced | TaskState::Stale => return None,
            TaskState::Starting => ReportedState::Starting,
            TaskState::Running => ReportedState::Running,
            TaskState::Restarting => ReportedState::Restarting,
            TaskState::Failed => ReportedState::Failed,
        };
        let epoch = self.epoch.load(Ordering::Relaxed);
        Some(TaskReport {
            task: self.task,
            owner: owner.to_string(),
            epoch: (epoch > 0).then_some(Epoch(epoch)),
            state,
            message: self.reason.lock().map(|r| r.clone()).unwrap_or_default(),
            at_ms,
            decisions: self
                .decisions
                .lock()
                .map(|d| d.iter().cloned().collect())
                .unwrap_or_default(),
            restored: self.restored.lock().ok().and_then(|r| r.clone()),
            // Reported while it is not running.
            failing_since_ms: Some(self.failing_since.load(Ordering::Relaxed))
                .filter(|t| *t > 0 && state != ReportedState::Running),
        })
    }

    /// `/readyz`'s line for the task when it is not running.
    fn not_running(&self) -> Option<String> {
        let reason = self.reason.lock().map(|r| r.clone()).unwrap_or_default();
        let what = match self.state() {
            TaskState::Running => return None,
            TaskState::Starting => "starting",
            TaskState::Restarting => "restarting after a failure",
            TaskState::Fenced => "taken over by another owner; this worker no longer runs it",
            TaskState::Failed => "failed; not restarting",
            TaskState::Stale => "left to its owner; this pod waits to be replaced",
        };
        Some(if reason.is_empty() {
            format!("task {}: {what}", self.task)
        } else {
            format!("task {}: {what}: {reason}", self.task)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_says_since_when_a_task_fails_until_it_runs_again() {
        let status = TaskStatus::new(1);
        let report = |s: &TaskStatus| s.report("orders-0", 0).expect("report");
        assert_eq!(report(&status).failing_since_ms, None);
        status.set(TaskState::Restarting, "broker down");
        let since = report(&status).failing_since_ms.expect("failing");
        std::thread::sleep(std::time::Duration::from_millis(5));
        status.set(TaskState::Restarting, "broker still down");
        let again = report(&status);
        assert_eq!(
            again.failing_since_ms,
            Some(since),
            "the first failure counts"
        );
        assert_eq!(again.message, "broker still down", "the last error is said");
        status.running();
        assert_eq!(report(&status).failing_since_ms, None, "not while it runs");
        // It ran a moment and failed again: the same spell goes on.
        status.set(TaskState::Restarting, "broker down again");
        assert_eq!(report(&status).failing_since_ms, Some(since));
        status.restored("store".into());
        assert_eq!(report(&status).restored.as_deref(), Some("store"));
    }

    #[test]
    fn a_task_that_is_not_running_says_why() {
        let status = TaskStatus::new(3);
        assert_eq!(status.not_running().as_deref(), Some("task 3: starting"));
        status.running();
        assert_eq!(status.not_running(), None);
        status.set(TaskState::Fenced, "HEAD epoch 9 by orders-1");
        assert_eq!(
            status.not_running().as_deref(),
            Some(
                "task 3: taken over by another owner; this worker no longer runs it: HEAD epoch 9 by orders-1"
            )
        );
        assert_eq!(status.state(), TaskState::Fenced);
    }
}
