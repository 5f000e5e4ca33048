//! Event time and the task's watermark. Pure: the caller passes records' event times and the
//! processing time, and stores what [`Clock::snapshot`] returns with the task's state.
//!
//! Per source topic (the task reads one partition of each), the watermark trails the largest
//! event time seen by `maxOutOfOrderness` and one millisecond, as Flink's bounded
//! out-of-orderness strategy does (a watermark `w` says no record at or before `w` is expected); the task's watermark is the smallest of them, so a
//! window closes only once every input has passed its end. It advances record by record, so
//! which records are late depends only on the input order, never on batching or timing.
//!
//! Idleness is the one exception, and it is about processing time: an input that received
//! nothing for `idleTimeout` stops holding back the others; when every input of the task is idle,
//! the watermark moves on at the speed of the wall clock from where the inputs left it, so the
//! last windows of a quiet partition still close instead of waiting for the next record.

use std::time::Duration;

/// No watermark yet.
pub const NONE: i64 = i64::MIN;

/// One input (topic partition) of the task.
#[derive(Clone, Debug)]
struct Input {
    topic: String,
    /// Largest event time seen, or [`NONE`].
    max_event_ms: i64,
    /// Processing time (ms) of its last record, or of the task's start.
    last_record_at: i64,
}

/// The watermark of one task.
#[derive(Clone, Debug)]
pub struct Clock {
    out_of_orderness_ms: i64,
    idle_timeout_ms: Option<i64>,
    inputs: Vec<Input>,
    watermark: i64,
}

impl Clock {
    /// A clock over the task's input `topics`, started at processing time `now_ms`.
    pub fn new(
        topics: &[String],
        out_of_orderness: Duration,
        idle_timeout: Option<Duration>,
        now_ms: i64,
    ) -> Self {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self {
            out_of_orderness_ms: ms(out_of_orderness),
            idle_timeout_ms: idle_timeout.map(ms),
            inputs: topics
                .iter()
                .map(|t| Input {
                    topic: t.clone(),
                    max_event_ms: NONE,
                    last_record_at: now_ms,
                })
                .collect(),
            watermark: NONE,
        }
    }

    /// The watermark: every record with an event time at or below it is late.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// A record of `topic` with event time `event_ms` arrived at processing time `now_ms`;
    /// returns the watermark, which never goes back.
    #[inline]
    pub fn observe(&mut self, topic: &str, event_ms: i64, now_ms: i64) -> i64 {
        if let Some(input) = self.inputs.iter_mut().find(|i| i.topic == topic) {
            input.max_event_ms = input.max_event_ms.max(event_ms);
            input.last_record_at = now_ms;
        }
        self.advance(now_ms)
    }

    /// Recomputes the watermark at processing time `now_ms` (for idleness); returns it.
    pub fn advance(&mut self, now_ms: i64) -> i64 {
        let idle = |i: &Input| {
            self.idle_timeout_ms
                .is_some_and(|t| now_ms.saturating_sub(i.last_record_at) >= t)
        };
        let trailing = |i: &Input| {
            if i.max_event_ms == NONE {
                NONE
            } else {
                i.max_event_ms
                    .saturating_sub(self.out_of_orderness_ms)
                    .saturating_sub(1)
            }
        };
        let active = self.inputs.iter().filter(|i| !idle(i)).map(trailing).min();
        let candidate = match active {
            Some(w) => w,
            None => {
                // Every input is idle: move on with the wall clock since the last of them went idle.
                let (Some(timeout), Some(last)) = (
                    self.idle_timeout_ms,
                    self.inputs.iter().map(|i| i.last_record_at).max(),
                ) else {
                    return self.watermark;
                };
                let from = self.inputs.iter().map(trailing).max().unwrap_or(NONE);
                if from == NONE {
                    NONE
                } else {
                    from.saturating_add(now_ms.saturating_sub(last).saturating_sub(timeout))
                }
            }
        };
        self.watermark = self.watermark.max(candidate);
        self.watermark
    }

    /// What to keep in the task's state: the watermark and each input's largest event time.
    pub fn snapshot(&self) -> Vec<u8> {
        let inputs: Vec<(&str, i64)> = self
            .inputs
            .iter()
            .map(|i| (i.topic.as_str(), i.max_event_ms))
            .collect();
        serde_json::to_vec(&(self.watermark, inputs)).unwrap_or_default()
    }

    /// Restores what [`Clock::snapshot`] kept; inputs count as having just received a record.
    pub fn restore(&mut self, snapshot: &[u8]) {
        if let Ok((watermark, inputs)) =
            serde_json::from_slice::<(i64, Vec<(String, i64)>)>(snapshot)
        {
            self.watermark = watermark;
            for (topic, max) in inputs {
                if let Some(input) = self.inputs.iter_mut().find(|i| i.topic == topic) {
                    input.max_event_ms = max;
                }
            }
        }
    }
}

/// Parses an event time: epoch milliseconds, or an RFC 3339 string.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(topics: &[&str], ooo_ms: u64, idle_ms: Option<u64>) -> Clock {
        let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        Clock::new(
            &topics,
            Duration::from_millis(ooo_ms),
            idle_ms.map(Duration::from_millis),
            0,
        )
    }

    #[test]
    fn the_watermark_trails_the_largest_event_time_and_never_goes_back() {
        let mut c = clock(&["a"], 5, None);
        assert_eq!(c.watermark(), NONE);
        assert_eq!(c.observe("a", 100, 0), 94);
        assert_eq!(
            c.observe("a", 90, 0),
            94,
            "an out-of-order record does not move it"
        );
        assert_eq!(c.observe("a", 120, 0), 114);
    }

    #[test]
    fn the_slowest_input_holds_the_watermark_back_until_it_is_idle() {
        let mut c = clock(&["a", "b"], 0, Some(1000));
        assert_eq!(c.observe("a", 100, 10), NONE, "b has seen nothing");
        assert_eq!(c.observe("b", 50, 20), 49);
        assert_eq!(c.observe("a", 200, 500), 49);
        // b idle since 20: from 1020 on it no longer counts.
        assert_eq!(c.advance(1019), 49);
        assert_eq!(c.advance(1020), 199);
    }

    #[test]
    fn when_every_input_is_idle_the_watermark_follows_the_wall_clock() {
        let mut c = clock(&["a"], 10, Some(1000));
        assert_eq!(c.observe("a", 5000, 0), 4989);
        assert_eq!(c.advance(999), 4989);
        assert_eq!(c.advance(1000), 4989);
        assert_eq!(c.advance(1500), 5489);
        assert_eq!(
            c.observe("a", 5100, 1600),
            5489,
            "a new record does not move it back"
        );
    }

    #[test]
    fn a_restored_clock_resumes_where_the_snapshot_was() {
        let mut c = clock(&["a", "b"], 0, None);
        c.observe("a", 10, 0);
        c.observe("b", 7, 0);
        let mut restored = clock(&["a", "b"], 0, None);
        restored.restore(&c.snapshot());
        assert_eq!(restored.watermark(), 6);
        assert_eq!(restored.observe("b", 8, 0), 7);
    }
}
