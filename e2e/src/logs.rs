//! Reading the workers' plain-text logs (`message field=value …` lines), as the tests that
//! check what a worker decided do.

/// The value of `name=value` in a log line.
pub fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

/// True when the line is about task `task` (`task=N`).
pub fn of_task(line: &str, task: u32) -> bool {
    field(line, "task") == Some(task.to_string().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_whole_words() {
        let line = "2026-11-22T11:14:07Z  INFO sluice_worker::checkpoint: restored task state task=17 plan=Local(CheckpointId(3))";
        assert_eq!(field(line, "plan"), Some("Local(CheckpointId(3))"));
        assert_eq!(field(line, "task"), Some("17"));
        assert!(of_task(line, 17));
        assert!(!of_task(line, 1));
        assert_eq!(field(line, "ask"), None);
    }
}
