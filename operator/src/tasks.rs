//! `status.tasks`: each task as the operator last read it, pure. From each task's HEAD
//! descriptor (offsets, watermark, state bytes, last checkpoint), its latest report (owner,
//! state, where its state came from at its last start) and the brokers (lag). Listed with the
//! most lag first and capped at [`LISTED`]; `status.taskTotals` counts every task.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sluice_core::checkpoint::descriptor::{Descriptor, ReportedState, TaskReport};
use sluice_crds::v1alpha1::{CheckpointRef, TaskInfo, TaskTotals};

use crate::plan::LISTED;

/// The tasks of a job of `partitions` tasks, and their totals; nothing for a job whose
/// partitions are unknown.
pub fn tasks(
    partitions: u32,
    heads: Option<&[Option<Descriptor>]>,
    reports: &[TaskReport],
    lags: Option<&[i64]>,
) -> (Vec<TaskInfo>, Option<TaskTotals>) {
    if partitions == 0 {
        return (Vec::new(), None);
    }
    let time = |ms: i64| Timestamp::from_millisecond(ms).ok().map(Time);
    let mut all: Vec<TaskInfo> = (0..partitions)
        .map(|task| {
            let head = heads
                .and_then(|h| h.get(task as usize))
                .and_then(Option::as_ref);
            let report = reports.iter().find(|r| r.task == task);
            TaskInfo {
                task: task.into(),
                owner: report.map(|r| r.owner.clone()),
                state: report.map(|r| state(r.state).to_string()),
                offsets: head.map(|d| d.source_offsets.clone()).unwrap_or_default(),
                lag: lags.and_then(|l| l.get(task as usize)).copied(),
                watermark: head.and_then(|d| d.watermark_ms).and_then(time),
                state_bytes: head.map_or(0, |d| i64::try_from(d.state_bytes()).unwrap_or(i64::MAX)),
                last_checkpoint: head.and_then(|d| {
                    Some(CheckpointRef {
                        id: d.id.0 as i64,
                        time: time(d.created_at_ms)?,
                    })
                }),
                restored_from: report.and_then(|r| r.restored.clone()),
            }
        })
        .collect();
    // Most lag first; unknown lag last; then by task.
    all.sort_by_key(|t| (std::cmp::Reverse(t.lag), t.task));
    let worst = all.first().filter(|t| t.lag.is_some());
    let totals = TaskTotals {
        tasks: all.len() as i64,
        listed: all.len().min(LISTED) as i64,
        worst_lag: worst.and_then(|t| t.lag),
        worst_task: worst.map(|t| t.task),
        state_bytes: all.iter().map(|t| t.state_bytes).sum(),
        failed: reports
            .iter()
            .filter(|r| r.state == ReportedState::Failed)
            .count() as i64,
    };
    all.truncate(LISTED);
    (all, Some(totals))
}

fn state(state: ReportedState) -> &'static str {
    match state {
        ReportedState::Starting => "Starting",
        ReportedState::Running => "Running",
        ReportedState::Restarting => "Restarting",
        ReportedState::Failed => "Failed",
    }
}

#[cfg(test)]
mod tests;
