//! Which worker owns which task. Pure.
//!
//! Task `p` is partition `p` of every input topic. With `N` workers, worker `p mod N` owns it:
//! deterministic, no coordination, the same rule the operator and every worker apply. When `N`
//! changes, tasks whose owner changes move; the new owner fences the old one through the
//! task's HEAD on object storage, never through timing.

/// Index of a task: the partition number it reads in every input topic.
pub type TaskId = u32;

/// The ordinal of the worker that owns `task` when `parallelism` workers run.
pub fn owner_of(task: TaskId, parallelism: u32) -> u32 {
    assert!(parallelism > 0, "parallelism is at least 1");
    task % parallelism
}

/// The tasks worker `ordinal` owns, in increasing order, for topics with `partitions` partitions.
pub fn tasks_of(ordinal: u32, parallelism: u32, partitions: u32) -> Vec<TaskId> {
    (0..partitions)
        .filter(|&task| owner_of(task, parallelism) == ordinal)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_has_exactly_one_owner() {
        for parallelism in 1..=13 {
            for partitions in 0..=40 {
                let mut owned: Vec<TaskId> = (0..parallelism)
                    .flat_map(|ordinal| tasks_of(ordinal, parallelism, partitions))
                    .collect();
                owned.sort_unstable();
                assert_eq!(owned, (0..partitions).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn three_workers_share_twelve_partitions_round_robin() {
        assert_eq!(tasks_of(0, 3, 12), vec![0, 3, 6, 9]);
        assert_eq!(tasks_of(1, 3, 12), vec![1, 4, 7, 10]);
        assert_eq!(tasks_of(2, 3, 12), vec![2, 5, 8, 11]);
    }

    #[test]
    fn workers_beyond_the_partition_count_own_nothing() {
        assert_eq!(tasks_of(4, 6, 4), Vec::<TaskId>::new());
        assert_eq!(tasks_of(3, 6, 4), vec![3]);
    }

    #[test]
    fn growing_from_three_to_six_workers_keeps_tasks_below_three_in_place() {
        // A task stays on its worker when p mod 3 == p mod 6, i.e. for p mod 6 < 3.
        for task in 0..24 {
            let stays = owner_of(task, 3) == owner_of(task, 6);
            assert_eq!(stays, task % 6 < 3, "task {task}");
        }
    }
}
